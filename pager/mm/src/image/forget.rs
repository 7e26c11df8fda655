//! Forgetting a coordinator's decisions once they are no longer needed. After a two-phase
//! commit, each participant's decide record is written but not waited for (the group returns
//! after the decision, one sync earlier); a crash before that record's sync leaves the part in
//! doubt again, and the next mount decides it from the coordinator's decisions file. So the
//! decision is kept until every participant's decide record is durable: a background thread
//! waits a moment (later commits usually sync the logs past those records meanwhile), makes
//! sure of it, and then forgets the decision. A decision that cannot be forgotten (a volume
//! unmounted or stopped meanwhile) stays in the file: 32 bytes, harmless.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use clu_storage::Volume;
use clu_sys::sync::{lock, wait};
use journal::Lsn;
use tracing::warn;

/// A decision to forget once every participant's outcome is durable.
pub(crate) struct Forget {
    pub(crate) txid: u64,
    pub(crate) coordinator: Arc<dyn Volume>,
    /// Each participant and the position its decide record must be durable to.
    pub(crate) parts: Vec<(Arc<dyn Volume>, Lsn)>,
}

/// How long the thread lets later commits sync the logs before syncing them itself.
const LINGER: Duration = Duration::from_millis(100);

struct Queue {
    items: Mutex<Vec<Forget>>,
    cv: Condvar,
}

fn queue() -> &'static Queue {
    static Q: OnceLock<Queue> = OnceLock::new();
    Q.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("clu-forget".into())
            .spawn(run);
        if let Err(e) = spawned {
            warn!("the thread that forgets decisions could not start: {e}; decisions are kept");
        }
        Queue {
            items: Mutex::new(Vec::new()),
            cv: Condvar::new(),
        }
    })
}

/// Hands `f` to the background thread.
pub(crate) fn later(f: Forget) {
    let q = queue();
    lock(&q.items).push(f);
    q.cv.notify_one();
}

fn run() {
    let q = queue();
    loop {
        {
            let mut items = lock(&q.items);
            while items.is_empty() {
                items = wait(&q.cv, items);
            }
        }
        std::thread::sleep(LINGER);
        let batch = std::mem::take(&mut *lock(&q.items));
        for f in batch {
            forget(f);
        }
    }
}

fn forget(f: Forget) {
    for (vol, lsn) in &f.parts {
        if let Err(e) = vol.clu_sync_to(*lsn) {
            warn!(vol = %vol.id(), txid = format!("{:#x}", f.txid),
                "a participant's outcome could not be made durable: {e}; its decision is kept");
            return;
        }
    }
    if let Err(e) = f.coordinator.forget_decision(f.txid) {
        warn!(
            txid = format!("{:#x}", f.txid),
            "forgetting a decision: {e}"
        );
    }
}
