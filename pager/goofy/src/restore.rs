//! `pager vol restore VOL --from HOST:PORT`: immediate restoration after the failure of a
//! primary (thesis VII.3.3, N1-N5), finished here.
//!
//! 1. Ask the named backup what it holds of `VOL`: the volume's identity, epoch and the list of
//!    its backup servers.
//! 2. Ask every one of them; the new epoch is one past the highest any of them recorded.
//! 3. **Fence** every backup reached with the new epoch, before anything else: from then on
//!    they refuse the old primary, which can no longer move any of them. Each answers with
//!    where its image stands once fenced.
//! 4. Pick the freshest complete image (highest epoch, then LSN) and fetch it into a new local
//!    volume whose journal starts after that LSN; its `goofy.conf` records the new epoch and
//!    the origin (that epoch and LSN), so the backups at exactly that point are in sync and
//!    the others get a full copy when the restored volume is mounted.
//!
//! The LSN restored to is the loss window: every commit the chosen backup acknowledged is in
//! the restored volume; commits after it are lost. A backup that could not be reached keeps
//! the old epoch; if the old primary comes back and reaches only such a backup, it is not
//! fenced (there is no quorum): reach them all, or keep the old primary down.

use std::io::BufReader;
use std::sync::Mutex;
use std::time::Duration;

use clu_proto::{CluId, PAGE_SIZE};
use clu_storage::ssr::LocalVolume;
use clu_storage::Volume;
use clu_sys::sync::lock;
use journal::Lsn;
use tracing::{info, warn};

use crate::position::{Heard, Position};
use crate::state::State;
use crate::wire::{self, Conn, Msg, Run};
use crate::GoofyError;
use clu_transport::Transport;

type Result<T, E = GoofyError> = std::result::Result<T, E>;

/// A restoration's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The volume.
    pub name: String,
    /// The backup the image comes from.
    pub source: String,
    /// Pages of the image's clusters (zero pages are not sent).
    pub total_pages: u64,
    /// Pages received so far.
    pub received_pages: u64,
}

/// The restorations under way in this process, for `pager status` (the reliable service owns
/// one).
#[derive(Debug, Default)]
pub struct Restorations(Mutex<Vec<Progress>>);

impl Restorations {
    /// The restorations under way.
    pub fn list(&self) -> Vec<Progress> {
        lock(&self.0).clone()
    }
}

/// Removes its entry from the registry when the fetch ends, however it ends.
struct Registered<'a> {
    registry: &'a Restorations,
    name: String,
}

impl<'a> Registered<'a> {
    fn new(registry: &'a Restorations, plan: &Plan) -> Registered<'a> {
        lock(&registry.0).push(Progress {
            name: plan.name.clone(),
            source: plan.source.clone(),
            total_pages: 0,
            received_pages: 0,
        });
        Registered {
            registry,
            name: plan.name.clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = lock(&self.registry.0)
            .iter_mut()
            .find(|p| p.name == self.name)
        {
            f(p);
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.registry.0).retain(|p| p.name != self.name);
    }
}

/// What a restoration will do, decided and fenced before anything is fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The volume's identity.
    pub uid: u64,
    /// Its name.
    pub name: String,
    /// The new epoch (raised on every backup reached).
    pub epoch: u64,
    /// The backup the image comes from.
    pub source: String,
    /// Where its image stands: the epoch and LSN restored to.
    pub origin: (u64, Lsn),
    /// The volume's backup servers (kept).
    pub backups: Vec<String>,
    /// Its `sync` setting (kept).
    pub sync: u32,
    /// Backups fenced, with where each stood.
    pub fenced: Vec<(String, Position)>,
    /// Backups not reached, and why.
    pub unreachable: Vec<(String, String)>,
    /// What the restoration loses, as the backups knew it.
    pub loss: LossWindow,
}

/// What a restoration loses, as the backups knew it: the operations the old primary's
/// journal wrote after the one restored to (for a synchronous volume, none it acknowledged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossWindow {
    /// The epoch and LSN restored to.
    pub restored: (u64, Lsn),
    /// The furthest end of that primary's log a backup heard of (at least the LSN restored
    /// to).
    pub heard: Lsn,
    /// How many operations (commits) that primary wrote after the one restored to, as the
    /// backups heard; `None` when their ordinals are not known (the image restored was a
    /// full copy, or its last operation was read back from the primary's log).
    pub lost: Option<u64>,
}

impl LossWindow {
    /// The loss window of restoring `best` (position and what its backup heard), given what
    /// every backup fenced heard (`best` among them). Pure.
    pub fn of(best: (Position, Heard), fenced: &[(Position, Heard)]) -> LossWindow {
        let (at, own) = best;
        // What the backups heard of the same primary (the same epoch), furthest first.
        let furthest = fenced
            .iter()
            .filter(|(p, _)| p.epoch == at.epoch)
            .map(|(_, h)| *h)
            .chain([own])
            .max_by_key(|h| (h.written.end, h.written.ops))
            .unwrap_or(own);
        let heard = furthest.written.end.max(at.lsn);
        let lost = if heard == at.lsn {
            Some(0)
        } else if own.seq > 0
            && furthest.written.run == own.written.run
            && furthest.written.ops >= own.seq
        {
            Some(furthest.written.ops - own.seq)
        } else {
            None
        };
        LossWindow {
            restored: (at.epoch, at.lsn),
            heard,
            lost,
        }
    }
}

impl std::fmt::Display for LossWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (epoch, lsn) = self.restored;
        write!(f, "restored to LSN {lsn} of epoch {epoch}; ")?;
        match self.lost {
            Some(0) => write!(f, "no backup heard of a later operation"),
            Some(n) => write!(
                f,
                "{n} later operations (commits) are lost: the old primary wrote them up to LSN {}, as the backups heard",
                self.heard
            ),
            None => write!(
                f,
                "the operations the old primary wrote after it, up to LSN {} as the backups heard, are lost (how many is not known)",
                self.heard
            ),
        }
    }
}

fn failed(why: String) -> GoofyError {
    GoofyError::Restore(why)
}

/// Why a backup did not answer a restorer's question.
#[derive(Debug, thiserror::Error)]
enum AskError {
    /// It could not be reached.
    #[error("{0}")]
    Connect(String),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer was damaged.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// It refused.
    #[error("{0}")]
    Refused(String),
    /// It answered something else.
    #[error("unexpected answer {0}")]
    Unexpected(&'static str),
}

/// A connection to a backup server whose reads wait at most `read_timeout`.
fn open(t: &Transport, addr: &str, read_timeout: Duration) -> std::result::Result<Conn, AskError> {
    let conn = t
        .connect(addr, Duration::from_secs(3))
        .map_err(|e| AskError::Connect(e.to_string()))?;
    conn.set_read_timeout(Some(read_timeout))?;
    Ok(BufReader::new(conn))
}

/// One request, one answer (a fresh connection each: a restoration is rare).
fn ask(t: &Transport, addr: &str, msg: &Msg) -> std::result::Result<Msg, AskError> {
    let mut conn = open(t, addr, Duration::from_secs(30))?;
    wire::send(conn.get_mut(), msg)?;
    Ok(wire::recv(&mut conn)?)
}

fn image(t: &Transport, addr: &str, msg: &Msg) -> std::result::Result<State, AskError> {
    match ask(t, addr, msg)? {
        Msg::Image(i) => Ok(i),
        Msg::Refused { why } | Msg::Fenced { why } => Err(AskError::Refused(why)),
        other => Err(AskError::Unexpected(other.kind())),
    }
}

/// Whether a restoration that fenced `fenced` of a volume's `backups` backup servers may go
/// on (pure): a commit of a `--sync K` volume was acknowledged by K backups, so the
/// restoration must reach at least `backups - K + 1` of them to meet every such commit, and
/// fence them, so that an old primary cannot have K acknowledgements any more. An asynchronous
/// volume (K = 0) needs one backup (the loss window is then reported). `Err` says why not.
pub fn enough_fenced(backups: usize, sync: u32, fenced: usize) -> std::result::Result<(), String> {
    let k = (sync as usize).min(backups);
    let need = if k == 0 { 1 } else { backups - k + 1 };
    if fenced >= need {
        Ok(())
    } else {
        Err(format!(
            "{fenced} of its {backups} backups were reached and fenced; a volume whose commits wait for {k} needs {need}, or an acknowledged commit may be missing and an old primary may still get its acknowledgements"
        ))
    }
}

/// Steps 1 to 3: inquire, fence, choose. The new epoch is above every epoch a backup
/// reached recorded, and at least `at_least` (an automated failover passes the etcd
/// revision of the mount it won, so that every party orders the epochs as etcd does).
pub fn prepare(t: &Transport, name: &str, from: &str, at_least: u64) -> Result<Plan> {
    let first = image(
        t,
        from,
        &Msg::Inquire {
            site: t.site(),
            name: name.to_string(),
        },
    )
    .map_err(|why| failed(format!("backup server {from}: {why}; is `pager backup-server --listen {from}` running there, and is --from right?")))?;
    let mut addrs = first.backups.clone();
    if !addrs.iter().any(|a| a == from) {
        addrs.insert(0, from.to_string());
    }
    let mut reached = Vec::new();
    let mut unreachable = Vec::new();
    for addr in &addrs {
        match image(
            t,
            addr,
            &Msg::Inquire {
                site: t.site(),
                name: name.to_string(),
            },
        ) {
            Ok(i) if i.uid == first.uid => reached.push((addr.clone(), i)),
            Ok(i) => unreachable.push((
                addr.clone(),
                format!("holds another volume called {name} ({:016x})", i.uid),
            )),
            Err(why) => unreachable.push((addr.clone(), why.to_string())),
        }
    }
    let epoch = reached
        .iter()
        .map(|(_, i)| i.epoch)
        .max()
        .unwrap_or(first.epoch)
        .saturating_add(1)
        .max(at_least);
    let mut fenced = Vec::new();
    let mut heard = Vec::new();
    for (addr, _) in reached {
        match image(
            t,
            &addr,
            &Msg::Fence {
                site: t.site(),
                uid: first.uid,
                epoch,
            },
        ) {
            Ok(i) => {
                heard.push((i.position, i.heard));
                fenced.push((addr, i.position));
            }
            Err(why) => unreachable.push((addr, why.to_string())),
        }
    }
    let Some((source, best, best_heard)) = fenced
        .iter()
        .zip(&heard)
        .filter(|((_, p), _)| p.complete)
        .max_by_key(|((_, p), _)| (p.epoch, p.lsn))
        .map(|((a, p), (_, h))| (a.clone(), *p, *h))
    else {
        return Err(failed(format!(
            "no backup of {name} with a complete image could be reached and fenced: bring one of its backup servers back and run `pager vol restore` again (unreachable: {})", unreachable.iter().map(|(a, why)| format!("{a} ({why})")).collect::<Vec<_>>().join(", ")
        )));
    };
    let loss = LossWindow::of((best, best_heard), &heard);
    info!(volume = %name, %source, epoch, position = ?best, "restoring: {loss}");
    Ok(Plan {
        uid: first.uid,
        name: name.to_string(),
        epoch,
        source,
        origin: (best.epoch, best.lsn),
        backups: first.backups,
        sync: first.sync,
        fenced,
        unreachable,
        loss,
    })
}

/// Step 4: fetches the source's image into `volume` (new and empty).
pub fn fetch(
    t: &Transport,
    plan: &Plan,
    volume: &LocalVolume,
    registry: &Restorations,
) -> Result<()> {
    let src = &plan.source;
    let broken = |why: String| failed(format!("fetching from {src}: {why}"));
    let mut conn = open(t, src, Duration::from_secs(60)).map_err(|e| broken(e.to_string()))?;
    let fetch = Msg::Fetch {
        site: t.site(),
        uid: plan.uid,
        epoch: plan.epoch,
    };
    wire::send(conn.get_mut(), &fetch).map_err(|e| broken(e.to_string()))?;
    let mut pages = 0;
    let progress = Registered::new(registry, plan);
    loop {
        match wire::recv(&mut conn).map_err(|e| broken(e.to_string()))? {
            Msg::CopyBegin { clusters: list, .. } => {
                let total = list.iter().map(|c| c.npages).sum();
                progress.update(|p| p.total_pages = total);
                for c in list {
                    volume.clu_ensure(CluId(c.clu), c.npages, c.owner, c.kind)?;
                }
            }
            Msg::CopyPages { clu, runs, .. } => {
                pages += runs
                    .iter()
                    .map(|r| (r.pages.len() / PAGE_SIZE) as u64)
                    .sum::<u64>();
                volume.clu_write(CluId(clu), &Run::page_runs(&runs))?;
                progress.update(|p| p.received_pages = pages);
            }
            Msg::CopyEnd { position, .. } => {
                if (position.epoch, position.lsn) != plan.origin {
                    let (e, l) = plan.origin;
                    let why = format!(
                        "its image moved from LSN {l} of epoch {e} to LSN {} of epoch {} after it was fenced; try again",
                        position.lsn, position.epoch
                    );
                    warn!("{why}");
                    return Err(broken(why));
                }
                volume.checkpoint()?;
                return Ok(());
            }
            Msg::Refused { why } | Msg::Fenced { why } => return Err(broken(why)),
            other => return Err(broken(format!("unexpected {}", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{enough_fenced, Heard, LossWindow, Position};
    use journal::{Lsn, Written};

    /// Operation `i` of the model's run of the primary's journal ends here (0: the run's
    /// start).
    fn end(i: u64) -> Lsn {
        Lsn::new(1, 4096 * (i + 1))
    }

    /// A backup that applied the first `k` operations of the run and heard of the first `h`.
    fn backup(epoch: u64, k: u64, h: u64) -> (Position, Heard) {
        let run = end(0);
        (
            Position {
                epoch,
                lsn: end(k),
                complete: true,
            },
            Heard {
                seq: k,
                written: Written {
                    run,
                    end: end(h),
                    ops: h,
                },
            },
        )
    }

    #[test]
    fn the_loss_window_counts_what_the_backups_heard_beyond_the_image_restored() {
        // Exhaustive for runs of up to 6 operations and 3 backups: each applied a prefix and
        // heard of a longer one (or the same).
        let n = 6u64;
        let mut cases = 0;
        for ka in 0..=n {
            for ha in ka..=n {
                for kb in 0..=n {
                    for hb in kb..=n {
                        for (kc, hc) in [(0, 0), (1, n), (n, n)] {
                            let all = [backup(3, ka, ha), backup(3, kb, hb), backup(3, kc, hc)];
                            let best = *all.iter().max_by_key(|(p, _)| p.lsn).unwrap();
                            let w = LossWindow::of(best, &all);
                            let k = ka.max(kb).max(kc);
                            let h = ha.max(hb).max(hc);
                            assert_eq!(w.restored, (3, end(k)));
                            assert_eq!(w.heard, end(h));
                            let expect = if h == k {
                                Some(0)
                            } else {
                                (k > 0).then(|| h - k)
                            };
                            assert_eq!(w.lost, expect, "{all:?}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 1000);
    }

    #[test]
    fn another_epoch_or_run_does_not_count() {
        // A backup of an older epoch heard of more (its primary was replaced): not this loss.
        let best = backup(4, 2, 2);
        let w = LossWindow::of(best, &[best, backup(3, 1, 6)]);
        assert_eq!(w.lost, Some(0));
        // Heard of another run of the journal (ordinals start again): the count is not known.
        let (p, mut other) = backup(4, 1, 5);
        other.written.run = Lsn::new(9, 4096);
        other.written.end = Lsn::new(9, 4096 * 9);
        let w = LossWindow::of(best, &[best, (p, other)]);
        assert_eq!((w.lost, w.heard), (None, Lsn::new(9, 4096 * 9)));
        // The image restored has no ordinal (a full copy): not known either, unless nothing
        // was heard beyond it.
        let (p, mut h) = backup(4, 3, 5);
        h.seq = 0;
        assert_eq!(LossWindow::of((p, h), &[(p, h)]).lost, None);
        let (p, mut h) = backup(4, 3, 3);
        h.seq = 0;
        assert_eq!(LossWindow::of((p, h), &[(p, h)]).lost, Some(0));
        let text = LossWindow::of(backup(4, 2, 5), &[]).to_string();
        assert!(text.contains("3 later operations"), "{text}");
    }

    #[test]
    fn a_restoration_must_meet_every_acknowledged_commit() {
        // Exhaustive for up to 5 backups: fencing enough backups means every set of K backups
        // (where an acknowledged commit may be) meets the fenced ones.
        for n in 1..=5usize {
            for k in 0..=n as u32 {
                for f in 0..=n {
                    let ok = enough_fenced(n, k, f).is_ok();
                    let meets_every_k_set = if k == 0 { f >= 1 } else { f + k as usize > n };
                    assert_eq!(ok, meets_every_k_set, "n={n} k={k} fenced={f}");
                }
            }
        }
        let why = enough_fenced(3, 2, 1).unwrap_err();
        assert!(why.contains("needs 2"), "{why}");
    }
}
