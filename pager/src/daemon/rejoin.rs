//! The `rejoin` thread: a site whose lease was lost (etcd unreachable for longer than the
//! lease, or an etcd member's death that outlasted it) joins the cell again by itself once
//! etcd answers, under a new lease, and mounts again the volumes it mounted under the old one
//! unless another site (a standby) took them over meanwhile. Until then it refuses every
//! change (self-fencing, `clu_storage::Fenced`); clusters mapped under the old lease keep
//! refusing commits and must be mapped again.

use std::time::Duration;

use clu_storage::StorageError;
use tracing::{info, warn};

use super::cell::CellSite;
use super::Daemon;

/// How often the thread looks at the lease (a local check, no call to etcd).
const LOOK: Duration = Duration::from_millis(200);

/// The thread's body (started by `daemon::spawn_in_cell`).
pub(crate) fn watch(d: &Daemon, site: &CellSite) {
    let mut last_error = String::new();
    loop {
        std::thread::sleep(LOOK);
        match site.rejoin_if_lost() {
            Ok(false) => continue,
            Ok(true) => last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    warn!("joining the cell again after losing the lease: {e}; trying again");
                    last_error = e;
                }
                continue;
            }
        }
        for (vol, outcome) in d.manager.storage().remount_fenced() {
            match outcome {
                Ok(()) => info!(%vol, "mounted again under the new lease"),
                Err(StorageError::MountedElsewhere { site, .. }) => {
                    info!(%vol, site, "not mounted again: site {site} mounts it now")
                }
                Err(e) => {
                    warn!(%vol, "mounting again under the new lease failed: {e}; mount it by hand (`pager vol mount`)")
                }
            }
        }
    }
}
