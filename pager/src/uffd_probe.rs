//! What this machine's userfaultfd offers the pager: `pager check`.
//!
//! The pager's design (`docs/uffd-facts.md`) needs a userfaultfd that reports write-protect faults and handles
//! shared memory (memfd) mappings. This probe creates one with those features, as the current
//! user, and reports what a deployment needs when it cannot.

use std::fmt;
use std::fs;

use userfaultfd::{FeatureFlags, UffdBuilder};

/// The outcome of the probe.
#[derive(Debug)]
pub struct Probe {
    /// Effective uid of the probing process.
    pub euid: u32,
    /// `vm.unprivileged_userfaultfd`, if readable.
    pub unprivileged_sysctl: Option<String>,
    /// Whether `/dev/userfaultfd` exists.
    pub dev_userfaultfd: bool,
    /// Whether only user-mode faults were asked for (non-root).
    pub user_mode_only: bool,
    /// `Ok` if a userfaultfd with the features the pager needs was created, or why not.
    pub result: Result<(), userfaultfd::Error>,
}

/// The features the pager relies on.
pub fn required_features() -> FeatureFlags {
    FeatureFlags::PAGEFAULT_FLAG_WP | FeatureFlags::MISSING_SHMEM | FeatureFlags::THREAD_ID
}

/// Runs the probe.
pub fn probe() -> Probe {
    let euid = nix::unistd::geteuid().as_raw();
    let user_mode_only = euid != 0;
    let result = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(user_mode_only)
        .require_features(required_features())
        .create()
        .map(drop);
    Probe {
        euid,
        unprivileged_sysctl: fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
            .ok()
            .map(|s| s.trim().to_owned()),
        dev_userfaultfd: fs::metadata("/dev/userfaultfd").is_ok(),
        user_mode_only,
        result,
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "uid:                        {}", self.euid)?;
        writeln!(
            f,
            "vm.unprivileged_userfaultfd: {}",
            self.unprivileged_sysctl.as_deref().unwrap_or("unreadable")
        )?;
        writeln!(
            f,
            "/dev/userfaultfd:           {}",
            if self.dev_userfaultfd {
                "present"
            } else {
                "absent"
            }
        )?;
        writeln!(f, "user-mode faults only:      {}", self.user_mode_only)?;
        match &self.result {
            Ok(()) => write!(f, "userfaultfd:                ok (write-protect faults, shared memory, thread ids)"),
            Err(e) => write!(
                f,
                "userfaultfd:                FAILED: {e}\n\
                 A non-root pager client needs UFFD_USER_MODE_ONLY (kernel 5.11+) or access to \
                 /dev/userfaultfd, and a kernel with write-protect support for shared memory (5.19+)."
            ),
        }
    }
}
