//! What this machine's userfaultfd offers the pager: `pager check`.
//!
//! The pager's design (`docs/uffd-facts.md`) needs a userfaultfd that reports write-protect
//! faults and handles shared memory (memfd) mappings. This probe creates userfaultfds as the
//! current user, one feature at a time, and says for each missing piece what enables it (a
//! sysctl, a capability, a device's permissions, a kernel version): [`advice`], a pure
//! function of what was found.

use std::fmt;
use std::fs;

/// The outcome of the probe.
#[derive(Debug)]
pub struct Probe {
    /// Effective uid of the probing process.
    pub euid: u32,
    /// Whether only user-mode faults could be had (what unprivileged clients fall back to).
    pub user_mode_only: bool,
    /// `Ok` if a userfaultfd with every feature a client needs was created, or why not.
    pub result: Result<(), std::io::Error>,
    /// What was found, for [`advice`].
    pub found: Found,
}

/// What the probe found, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// A userfaultfd with no feature at all could be created; otherwise the errno's name.
    pub created: Result<(), String>,
    /// `vm.unprivileged_userfaultfd` (None: unreadable).
    pub sysctl: Option<String>,
    /// `/dev/userfaultfd` exists.
    pub dev: bool,
    /// Each feature the clients need, and whether a userfaultfd with it could be created.
    pub features: Vec<(Feature, bool)>,
}

/// A userfaultfd feature the design relies on (`docs/uffd-facts.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Write-protect faults: first writes to clean pages.
    WriteProtect,
    /// Missing faults on shared memory: the memfd images.
    MissingShmem,
    /// The faulting thread's id.
    ThreadId,
    /// Minor faults on shared memory: a page resident in the image, not mapped here.
    MinorShmem,
    /// Write protection on shared memory.
    WpShmem,
    /// `UFFDIO_POISON`: a refused fault raises SIGBUS.
    Poison,
}

impl Feature {
    /// Every one, in the order `pager check` prints them.
    pub const ALL: [Feature; 6] = [
        Feature::WriteProtect,
        Feature::MissingShmem,
        Feature::ThreadId,
        Feature::MinorShmem,
        Feature::WpShmem,
        Feature::Poison,
    ];

    fn bits(self) -> u64 {
        use clu_sys::uffd::feature as f;
        match self {
            Feature::WriteProtect => f::PAGEFAULT_FLAG_WP,
            Feature::MissingShmem => f::MISSING_SHMEM,
            Feature::ThreadId => f::THREAD_ID,
            Feature::MinorShmem => f::MINOR_SHMEM,
            Feature::WpShmem => f::WP_HUGETLBFS_SHMEM,
            Feature::Poison => f::POISON,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Feature::WriteProtect => "write-protect faults (UFFD_FEATURE_PAGEFAULT_FLAG_WP)",
            Feature::MissingShmem => "shared memory (UFFD_FEATURE_MISSING_SHMEM)",
            Feature::ThreadId => "thread ids (UFFD_FEATURE_THREAD_ID)",
            Feature::MinorShmem => "minor faults on shared memory (UFFD_FEATURE_MINOR_SHMEM)",
            Feature::WpShmem => "write-protect on shared memory (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)",
            Feature::Poison => "poisoned pages (UFFD_FEATURE_POISON)",
        }
    }

    /// What it takes to have it.
    fn needs(self) -> &'static str {
        match self {
            Feature::WriteProtect => {
                "a kernel of 5.7 or later built with CONFIG_HAVE_ARCH_USERFAULTFD_WP"
            }
            Feature::MissingShmem => "a kernel of 4.11 or later",
            Feature::ThreadId => "a kernel of 4.14 or later",
            Feature::MinorShmem => {
                "a kernel of 5.14 or later built with CONFIG_HAVE_ARCH_USERFAULTFD_MINOR"
            }
            Feature::WpShmem => "a kernel of 5.19 or later built with CONFIG_PTE_MARKER_UFFD_WP",
            Feature::Poison => "a kernel of 6.6 or later",
        }
    }
}

/// A userfaultfd with `features`, as a client process makes one: trapping kernel-mode faults
/// too when allowed, else user-mode faults only (what any user may ask for since 5.11).
/// Returns whether it had to be user-mode only.
fn open(features: u64) -> std::io::Result<bool> {
    match clu_sys::uffd::open(features, false) {
        Ok(_) => Ok(false),
        Err(_) => clu_sys::uffd::open(features, true).map(|_| true),
    }
}

/// Runs the probe, as the current user.
pub fn probe() -> Probe {
    let euid = nix::unistd::geteuid().as_raw();
    let all = Feature::ALL.iter().fold(0, |f, x| f | x.bits());
    let result = open(all);
    let created = open(0).map(drop).map_err(|e| match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    });
    let features = Feature::ALL
        .iter()
        .map(|&f| (f, created.is_ok() && open(f.bits()).is_ok()))
        .collect();
    let sysctl = fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .map(|s| s.trim().to_owned());
    let dev = fs::metadata("/dev/userfaultfd").is_ok();
    Probe {
        euid,
        user_mode_only: *result.as_ref().unwrap_or(&false),
        result: result.map(drop),
        found: Found {
            created,
            sysctl,
            dev,
            features,
        },
    }
}

/// What to do about what is missing (empty: nothing is). Pure.
pub fn advice(f: &Found) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(errno) = &f.created {
        match errno.as_str() {
            "ENOSYS" => out.push(
                "the kernel has no userfaultfd: it needs CONFIG_USERFAULTFD=y (kernel 4.3 or later)".into(),
            ),
            "EPERM" | "EACCES" if f.dev => out.push(
                "/dev/userfaultfd exists but this user may not open it: give it access (e.g. `setfacl -m u:$USER:rw /dev/userfaultfd`, or a udev rule for a group), or set `sysctl vm.unprivileged_userfaultfd=1`, or run as root".into(),
            ),
            "EPERM" | "EACCES" => out.push(format!(
                "this user may not create a userfaultfd (vm.unprivileged_userfaultfd is {}): set `sysctl vm.unprivileged_userfaultfd=1`, or give the process CAP_SYS_PTRACE, or use a kernel of 5.11 or later (user-mode-only userfaultfds need no privilege)",
                f.sysctl.as_deref().unwrap_or("unreadable")
            )),
            "EINVAL" => out.push(
                "the kernel refused the userfaultfd's flags: it needs 5.11 or later for user-mode-only userfaultfds, or run as root".into(),
            ),
            other => out.push(format!(
                "creating a userfaultfd failed ({other}); see userfaultfd(2)"
            )),
        }
        return out;
    }
    for (feature, ok) in &f.features {
        if !ok {
            out.push(format!(
                "{} is missing: it needs {}",
                feature.name(),
                feature.needs()
            ));
        }
    }
    out
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "uid:                        {}", self.euid)?;
        writeln!(
            f,
            "vm.unprivileged_userfaultfd: {}",
            self.found.sysctl.as_deref().unwrap_or("unreadable")
        )?;
        writeln!(
            f,
            "/dev/userfaultfd:           {}",
            if self.found.dev { "present" } else { "absent" }
        )?;
        writeln!(f, "user-mode faults only:      {}", self.user_mode_only)?;
        if self.user_mode_only {
            writeln!(
                f,
                "  (a system call that reads or writes a cluster page not loaded yet fails with EFAULT \
                 instead of waiting for the pager; `sysctl vm.unprivileged_userfaultfd=1`, or \
                 CAP_SYS_PTRACE for the client, traps kernel-mode faults too)"
            )?;
        }
        for (feature, ok) in &self.found.features {
            let state = if *ok { "yes" } else { "MISSING" };
            writeln!(f, "  {:<66} {state}", feature.name())?;
        }
        match &self.result {
            Ok(()) => write!(
                f,
                "userfaultfd:                ok (every feature the clients need)"
            ),
            Err(e) => {
                write!(f, "userfaultfd:                FAILED: {e}")?;
                for a in advice(&self.found) {
                    write!(f, "\n  - {a}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(created: Result<(), &str>, dev: bool, features: [bool; 6]) -> Found {
        Found {
            created: created.map_err(str::to_owned),
            sysctl: Some("0".into()),
            dev,
            features: Feature::ALL.into_iter().zip(features).collect(),
        }
    }

    #[test]
    fn each_missing_piece_gets_what_enables_it() {
        assert!(advice(&found(Ok(()), false, [true; 6])).is_empty());
        let a = advice(&found(Err("EPERM"), false, [false; 6]));
        assert_eq!(a.len(), 1);
        assert!(a[0].contains("vm.unprivileged_userfaultfd=1") && a[0].contains("CAP_SYS_PTRACE"));
        let a = advice(&found(Err("EACCES"), true, [false; 6]));
        assert!(a[0].contains("/dev/userfaultfd"), "{a:?}");
        assert!(advice(&found(Err("ENOSYS"), false, [false; 6]))[0].contains("CONFIG_USERFAULTFD"));
        assert!(advice(&found(Err("EINVAL"), false, [false; 6]))[0].contains("5.11"));
        // Every combination of missing features: one line for each, naming what it needs.
        for mask in 0..64u8 {
            let have: [bool; 6] = std::array::from_fn(|i| mask & (1 << i) != 0);
            let a = advice(&found(Ok(()), false, have));
            assert_eq!(a.len(), have.iter().filter(|h| !**h).count(), "{have:?}");
            for (feature, ok) in Feature::ALL.iter().zip(have) {
                let named = a.iter().any(|l| l.contains(feature.name()));
                assert_eq!(named, !ok, "{feature:?}");
            }
        }
        let wp = advice(&found(Ok(()), false, [true, true, true, true, false, true]));
        assert!(wp[0].contains("5.19"), "{wp:?}");
    }
}
