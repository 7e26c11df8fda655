//! `pager backup-server`: a backup server (*serveur de secours*, thesis M4, M6). It keeps its
//! image of each reliable volume it backs up with the fast local service (its own journal), and
//! serves several volumes of several primaries.
//!
//! ```text
//! <root>/lock                          one server per root
//! <root>/v-<uid>/volume.meta, ...      the volume's image: an SSR volume (journal, clusters)
//! <root>/v-<uid>/goofy.state           name, epoch, and the primary's LSN last applied
//! ```
//!
//! An operation is applied through the local journal (atomic, durable), then `goofy.state`
//! records its LSN, then it is acknowledged. A crash in between makes the primary send it again,
//! and applying whole pages twice is harmless. A primary whose epoch is older than the one
//! recorded is refused: it was replaced by a restoration (fencing).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use client::{CluId, VolId};
use journal::{Lsn, PageRun};
use nix::fcntl::Flock;
use tracing::{info, warn};

use super::wire::{self, Msg, WireError};
use crate::storage::fsutil::{lock_root, write_atomic};
use crate::storage::ssr::{LocalVolume, Ssr};
use crate::storage::{StorageError, StorageService, Volume, VolumeParams};
use crate::sync::lock;

/// What a backup records of a volume besides its pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The volume's name on its primary.
    pub name: String,
    /// The newest epoch seen.
    pub epoch: u64,
    /// The primary's LSN of the last operation applied.
    pub applied: Lsn,
}

impl State {
    fn format(&self) -> String {
        format!(
            "name {}\nepoch {}\napplied {} {}\n",
            self.name, self.epoch, self.applied.file, self.applied.offset
        )
    }

    fn parse(text: &str) -> Option<State> {
        let mut name = None;
        let mut epoch = None;
        let mut applied = None;
        for line in text.lines() {
            match line.split_once(' ')? {
                ("name", v) => name = Some(v.to_string()),
                ("epoch", v) => epoch = Some(v.parse().ok()?),
                ("applied", v) => {
                    let (f, o) = v.split_once(' ')?;
                    applied = Some(Lsn::new(f.parse().ok()?, o.parse().ok()?));
                }
                _ => return None,
            }
        }
        Some(State {
            name: name?,
            epoch: epoch?,
            applied: applied?,
        })
    }
}

/// One volume's image on this backup.
struct Image {
    dir: PathBuf,
    volume: LocalVolume,
    state: State,
}

impl Image {
    /// Replaces `goofy.state` with the state held, durably.
    fn save_state(&self) -> Result<(), StorageError> {
        write_atomic(
            &self.dir.join("goofy.state"),
            self.state.format().as_bytes(),
        )
    }
}

/// The backup server.
pub struct BackupServer {
    root: PathBuf,
    images: Mutex<HashMap<u64, Arc<Mutex<Image>>>>,
    _lock: Flock<File>,
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Storage failed here.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A primary of an older epoch.
    #[error("volume {name} is at epoch {have} here; a primary at epoch {got} was replaced by a restoration and must not write (fenced)")]
    Stale {
        /// The volume.
        name: String,
        /// The epoch recorded here.
        have: u64,
        /// The epoch of the request.
        got: u64,
    },
    /// A request out of order.
    #[error("{0}")]
    Protocol(String),
}

impl BackupServer {
    /// Opens (creating if needed) a backup root.
    pub fn open(root: &Path) -> Result<BackupServer, StorageError> {
        let lock = lock_root(root)?;
        Ok(BackupServer {
            root: root.to_owned(),
            images: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// Where volume `uid`'s image lives.
    pub fn image_dir(root: &Path, uid: u64) -> PathBuf {
        root.join(format!("v-{uid:016x}"))
    }

    fn image(&self, uid: u64, name: &str, epoch: u64) -> Result<Arc<Mutex<Image>>, BackupError> {
        let mut images = lock(&self.images);
        if let Some(img) = images.get(&uid) {
            return Ok(img.clone());
        }
        let dir = Self::image_dir(&self.root, uid);
        let ssr = Ssr::default();
        let state_path = dir.join("goofy.state");
        if !dir.join("volume.meta").exists() {
            // A new volume: its image starts empty (a full copy follows from the primary).
            let _ = fs::remove_dir_all(&dir);
            ssr.vol_create(VolId(1), &dir, &VolumeParams::default())?;
            let state = State {
                name: name.to_string(),
                epoch,
                applied: Lsn::default(),
            };
            write_atomic(&state_path, state.format().as_bytes())?;
        }
        let text = fs::read_to_string(&state_path).map_err(|e| StorageError::io(&state_path, e))?;
        let state = State::parse(&text)
            .ok_or_else(|| StorageError::corrupt(&state_path, "not a backup state"))?;
        let volume = LocalVolume::mount(VolId(1), &dir, Default::default())?;
        info!(uid = format_args!("{uid:016x}"), name = %state.name, applied = %state.applied, "backup image mounted");
        let img = Arc::new(Mutex::new(Image { dir, volume, state }));
        images.insert(uid, img.clone());
        Ok(img)
    }

    /// Serves `listener` for ever, a thread per connection.
    pub fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    warn!("accept: {e}");
                    continue;
                }
            };
            let me = self.clone();
            std::thread::spawn(move || {
                let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = me.connection(conn) {
                    info!(%peer, "connection ended: {e}");
                }
            });
        }
        Ok(())
    }

    fn connection(&self, conn: TcpStream) -> Result<(), WireError> {
        conn.set_nodelay(true)?;
        let mut rd = BufReader::new(conn.try_clone()?);
        let mut wr = BufWriter::new(conn);
        let (img, epoch) = match wire::recv(&mut rd)? {
            Msg::Hello { uid, epoch, name } => match self.hello(uid, &name, epoch) {
                Ok((img, applied)) => {
                    wire::send(&mut wr, &Msg::Welcome { applied })?;
                    (img, epoch)
                }
                Err(e) => {
                    warn!(%name, "refused: {e}");
                    wire::send(&mut wr, &Msg::Refused { why: e.to_string() })?;
                    return Ok(());
                }
            },
            other => {
                let why = format!("expected Hello, got {}", kind(&other));
                wire::send(&mut wr, &Msg::Refused { why: why.clone() })?;
                return Err(WireError::Malformed("no Hello"));
            }
        };
        loop {
            let msg = match wire::recv(&mut rd) {
                Ok(m) => m,
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Err(e) => {
                    warn!("refusing a damaged message: {e}");
                    let _ = wire::send(&mut wr, &Msg::Refused { why: e.to_string() });
                    return Err(e);
                }
            };
            let answer = match msg {
                Msg::Op {
                    epoch: e,
                    lsn,
                    clu,
                    npages,
                    runs,
                } => match apply(&img, epoch, e, lsn, clu, npages, &runs) {
                    Ok(()) => Msg::Ack { lsn },
                    Err(err) => {
                        warn!("refused an operation: {err}");
                        Msg::Refused {
                            why: err.to_string(),
                        }
                    }
                },
                other => Msg::Refused {
                    why: format!("unexpected {}", kind(&other)),
                },
            };
            let refused = matches!(answer, Msg::Refused { .. });
            wire::send(&mut wr, &answer)?;
            if refused {
                return Ok(());
            }
        }
    }

    /// A primary introduces itself: returns the volume's image and the LSN applied there.
    fn hello(
        &self,
        uid: u64,
        name: &str,
        epoch: u64,
    ) -> Result<(Arc<Mutex<Image>>, Lsn), BackupError> {
        let arc = self.image(uid, name, epoch)?;
        let mut img = lock(&arc);
        if epoch < img.state.epoch {
            return Err(BackupError::Stale {
                name: img.state.name.clone(),
                have: img.state.epoch,
                got: epoch,
            });
        }
        if epoch > img.state.epoch {
            img.state.epoch = epoch;
            img.save_state()?;
        }
        let applied = img.state.applied;
        drop(img);
        Ok((arc, applied))
    }
}

/// Applies an operation of the connection's volume (introduced at `session_epoch`).
fn apply(
    img: &Mutex<Image>,
    session_epoch: u64,
    epoch: u64,
    lsn: Lsn,
    clu: u16,
    npages: u64,
    runs: &[wire::Run],
) -> Result<(), BackupError> {
    let mut img = lock(img);
    if epoch != session_epoch || epoch < img.state.epoch {
        return Err(BackupError::Stale {
            name: img.state.name.clone(),
            have: img.state.epoch,
            got: epoch,
        });
    }
    if lsn <= img.state.applied {
        // Already applied (sent again after a reconnection).
        return Ok(());
    }
    let id = CluId(clu);
    img.volume.clu_ensure(id, npages)?;
    let runs: Vec<PageRun<'_>> = runs
        .iter()
        .map(|r| PageRun {
            first_page: r.first_page,
            pages: &r.pages,
        })
        .collect();
    img.volume.clu_write(id, &runs)?;
    img.state.applied = lsn;
    img.save_state()?;
    Ok(())
}

fn kind(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "Hello",
        Msg::Welcome { .. } => "Welcome",
        Msg::Op { .. } => "Op",
        Msg::Ack { .. } => "Ack",
        Msg::Refused { .. } => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let s = State {
            name: "rel".into(),
            epoch: 4,
            applied: Lsn::new(2, 8192),
        };
        assert_eq!(State::parse(&s.format()), Some(s));
        assert_eq!(State::parse("name x\nepoch z\napplied 1 2\n"), None);
    }
}
