//! `pager backup-server`: a backup server (*serveur de secours*, thesis M4, M6). It keeps its
//! image of each reliable volume it backs up with the fast local service (its own journal), and
//! serves several volumes of several primaries.
//!
//! ```text
//! <root>/lock                          one server per root
//! <root>/v-<uid>/volume.meta, ...      the volume's image: an SSR volume (journal, clusters)
//! <root>/v-<uid>/goofy.state           identity, epoch, position, settings (two slots)
//! ```
//!
//! An operation is applied through the local journal together with its position (the image's
//! note, [`LocalVolume::clu_write_noted`]: one `fdatasync` for both), then acknowledged. A crash
//! in between makes the primary send it again, and applying whole pages twice is harmless. A full copy first marks the image
//! incomplete (a crash during it leaves an image that asks for another copy). A primary or a
//! restorer whose epoch is older than the one recorded is refused (fencing).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clu_proto::VolId;
use clu_storage::fsutil::{lock_root, write_atomic};
use clu_storage::ssr::{LocalVolume, Ssr};
use clu_storage::{StorageError, StorageService, Volume, VolumeParams};
use clu_sys::sync::lock;
use nix::fcntl::Flock;
use tracing::{info, warn};

use crate::copy::{copy_chunk, copy_chunks};

mod apply;
use crate::position::{Heard, Position};
use crate::state::{State, SLOT};
use crate::wire::{self, CluInfo, Conn, Msg, WireError};
use apply::handle;
use clu_transport::{Peer, Stream, Transport};

/// One volume's image on this backup.
struct VolumeImage {
    volume: LocalVolume,
    state: State,
    /// `goofy.state`, its path, and the sequence number of its newest slot.
    file: File,
    path: PathBuf,
    seq: u64,
}

impl VolumeImage {
    /// Writes the state held into the older slot of `goofy.state`, durably.
    fn save_state(&mut self) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let slot = self.state.encode_slot(seq).ok_or_else(|| {
            StorageError::Invalid("the volume's settings are too long for goofy.state".into())
        })?;
        self.file
            .write_all_at(&slot, (seq % 2) * SLOT as u64)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StorageError::io(&self.path, e))?;
        self.seq = seq;
        Ok(())
    }

    /// Records the position held, durably: in the image's note (where operations record it
    /// with their pages), then in `goofy.state`.
    fn save_position(&mut self) -> Result<(), StorageError> {
        self.volume
            .write_note(&self.state.position.encode_note(&self.state.heard))?;
        self.save_state()
    }

    /// Refuses a request of an epoch older than the newest seen.
    fn check_epoch(&self, epoch: u64) -> Result<(), BackupError> {
        if epoch < self.state.epoch {
            return Err(BackupError::Stale {
                name: self.state.name.clone(),
                have: self.state.epoch,
                got: epoch,
            });
        }
        Ok(())
    }

    /// Records `epoch` as the newest if it is, owned by `site` (a restorer fencing the old
    /// primary). The same epoch from another site than its owner is refused.
    fn raise_epoch(&mut self, epoch: u64, site: &str) -> Result<(), BackupError> {
        self.check_epoch(epoch)?;
        if epoch > self.state.epoch {
            self.state.epoch = epoch;
            self.state.writer = site.to_string();
            self.save_state()?;
        } else {
            self.check_site(site)?;
        }
        Ok(())
    }

    /// At the newest epoch, only the site that owns it may write (a site other than the one
    /// that created or last restored the image needs a higher epoch: a restoration).
    fn check_site(&self, site: &str) -> Result<(), BackupError> {
        let w = &self.state.writer;
        if !w.is_empty() && w != site {
            return Err(BackupError::OtherSite {
                name: self.state.name.clone(),
                writer: w.clone(),
                site: site.to_string(),
                epoch: self.state.epoch,
            });
        }
        Ok(())
    }
}

const STATE: &str = "goofy.state";

/// One volume's place in the backup server's table: empty until its image is opened.
type ImageSlot = Mutex<Option<Arc<Mutex<VolumeImage>>>>;

/// The backup server.
pub struct BackupServer {
    root: PathBuf,
    /// The images opened, by volume uid: each slot is filled once, under its own lock, so that
    /// opening one image (creating or mounting a volume) holds up no other.
    images: Mutex<HashMap<u64, Arc<ImageSlot>>>,
    /// What it did since it started, for `/metrics`.
    stats: BackupStats,
    _lock: Flock<File>,
}

/// A backup server's figures since it started (atomics: read by `/metrics` without a lock).
#[derive(Debug, Default)]
pub struct BackupStats {
    /// Primaries' sessions open now.
    pub sessions: AtomicU64,
    /// Operations applied (each stored with its position in one journal sync).
    pub operations: AtomicU64,
    /// Bytes of pages those operations carried.
    pub page_bytes: AtomicU64,
    /// Requests refused (stale epochs, damaged messages, failures).
    pub refused: AtomicU64,
}

/// Decrements the live sessions when a session ends, however it ends.
struct Live<'a>(&'a AtomicU64);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
    /// This server holds no image of the volume.
    #[error("this backup server holds no image of volume {0}; check the volume's name (as on its primary) and the backup's address")]
    Unknown(String),
    /// A request out of order.
    #[error("{0}")]
    Protocol(String),
    /// A site that does not own the image's epoch.
    #[error("the image of volume {name} at epoch {epoch} is written by site {writer}; site {site} may write it only with a higher epoch (after `pager vol restore`)")]
    OtherSite {
        /// The volume.
        name: String,
        /// The site that owns the epoch.
        writer: String,
        /// The site that asked.
        site: String,
        /// The epoch.
        epoch: u64,
    },
}

impl BackupServer {
    /// Opens (creating if needed) a backup root.
    pub fn open(root: &Path) -> Result<BackupServer, StorageError> {
        let lock = lock_root(root)?;
        Ok(BackupServer {
            root: root.to_owned(),
            images: Mutex::new(HashMap::new()),
            stats: BackupStats::default(),
            _lock: lock,
        })
    }

    /// Its figures since it started.
    pub fn stats(&self) -> &BackupStats {
        &self.stats
    }

    /// How many volumes' images it has opened.
    pub fn images_open(&self) -> usize {
        lock(&self.images).len()
    }

    /// Where volume `uid`'s image lives.
    pub fn image_dir(root: &Path, uid: u64) -> PathBuf {
        root.join(format!("v-{uid:016x}"))
    }

    /// The image of `uid`; created empty from `hello` (uid, name) if there is none and it is given.
    fn image(&self, uid: u64, hello: Option<&str>) -> Result<Arc<Mutex<VolumeImage>>, BackupError> {
        // Lock order: a slot, then the table (the table is only ever held briefly).
        loop {
            let slot = lock(&self.images).entry(uid).or_default().clone();
            let mut guard = lock(&slot);
            let current = |images: &HashMap<u64, Arc<ImageSlot>>| {
                images.get(&uid).is_some_and(|s| Arc::ptr_eq(s, &slot))
            };
            if !current(&lock(&self.images)) {
                // An opener that failed removed this slot while we waited for it: start over.
                continue;
            }
            if let Some(img) = &*guard {
                return Ok(img.clone());
            }
            return match self.open_image(uid, hello) {
                Ok(img) => {
                    let img = Arc::new(Mutex::new(img));
                    *guard = Some(img.clone());
                    Ok(img)
                }
                Err(e) => {
                    // An unknown or broken image leaves no slot behind (a hostile peer naming
                    // random uids must not grow the table); removed while the slot is held, so
                    // nobody fills a slot the table no longer has.
                    let mut images = lock(&self.images);
                    if current(&images) {
                        images.remove(&uid);
                    }
                    Err(e)
                }
            };
        }
    }

    /// Opens (or creates, from `hello`) the image of `uid` on disk.
    fn open_image(&self, uid: u64, hello: Option<&str>) -> Result<VolumeImage, BackupError> {
        let dir = Self::image_dir(&self.root, uid);
        let state_path = dir.join(STATE);
        if !dir.join("volume.meta").exists() || !state_path.exists() {
            let Some(name) = hello else {
                return Err(BackupError::Unknown(format!("{uid:016x}")));
            };
            // A new volume: its image starts empty (at position 0 of epoch 0).
            let _ = fs::remove_dir_all(&dir);
            Ssr::default().vol_create(VolId(1), &dir, &VolumeParams::default())?;
            let state = State {
                uid,
                name: name.to_string(),
                epoch: 0,
                position: Position {
                    complete: true,
                    ..Position::default()
                },
                heard: Heard::default(),
                backups: Vec::new(),
                sync: 0,
                creator: String::new(),
                writer: String::new(),
            };
            let mut bytes = state
                .encode_slot(0)
                .ok_or_else(|| StorageError::Invalid("a volume name too long".into()))?;
            bytes.resize(2 * SLOT, 0);
            write_atomic(&state_path, &bytes)?;
        }
        let bytes = fs::read(&state_path).map_err(|e| StorageError::io(&state_path, e))?;
        let (state, seq) = State::decode_slots(&bytes)
            .ok_or_else(|| StorageError::corrupt(&state_path, "no intact backup state slot"))?;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&state_path)
            .map_err(|e| StorageError::io(&state_path, e))?;
        if state.uid != uid {
            return Err(StorageError::corrupt(
                &state_path,
                format!("names volume {:016x}", state.uid),
            )
            .into());
        }
        let volume = LocalVolume::mount(VolId(1), &dir, Default::default())?;
        let mut state = state;
        // Operations record the position in the image's note, with their pages; goofy.state
        // has it as of the last full copy (and is all an image older than notes has).
        if let Some((p, h)) = volume.note()?.as_deref().and_then(Position::decode_note) {
            state.position = p;
            state.heard = h;
        }
        info!(uid = format_args!("{uid:016x}"), name = %state.name, position = ?state.position, "backup image mounted");
        Ok(VolumeImage {
            volume,
            state,
            file,
            path: state_path,
            seq,
        })
    }

    /// The image of the volume called `name` (a restorer knows the name, not the uid).
    fn image_named(&self, name: &str) -> Result<Arc<Mutex<VolumeImage>>, BackupError> {
        let entries = fs::read_dir(&self.root).map_err(|e| StorageError::io(&self.root, e))?;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(hex) = file_name.to_str().and_then(|n| n.strip_prefix("v-")) else {
                continue;
            };
            let Ok(uid) = u64::from_str_radix(hex, 16) else {
                continue;
            };
            let Ok(img) = self.image(uid, None) else {
                continue;
            };
            if lock(&img).state.name == name {
                return Ok(img);
            }
        }
        Err(BackupError::Unknown(name.to_string()))
    }

    /// Serves `listener` for ever, a thread per connection. Every connection first completes
    /// the transport's handshake (the peer's certificate must chain to the cell's CA); a peer
    /// refused there is logged with its address and why, and nothing it sent is read.
    pub fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        transport: Transport,
    ) -> std::io::Result<()> {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    warn!("accept: {e}");
                    continue;
                }
            };
            let (me, transport) = (self.clone(), transport.clone());
            std::thread::spawn(move || {
                let addr = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let (stream, peer) = match transport.accept(conn) {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(peer = %addr, "connection refused: {e}");
                        return;
                    }
                };
                if let Err(e) = me.connection(stream, &peer) {
                    info!(peer = %addr, "connection ended: {e}");
                }
            });
        }
        Ok(())
    }

    fn connection(&self, stream: Stream, peer: &Peer) -> Result<(), WireError> {
        let mut conn = BufReader::new(stream);
        let first = match wire::recv(&mut conn) {
            Ok(m) => m,
            Err(e) => {
                warn!(peer = %peer.name(), "refusing what is not a message: {e}");
                let _ = wire::send(conn.get_mut(), &Msg::Refused { why: e.to_string() });
                return Err(e);
            }
        };
        let refuse = |conn: &mut Conn, e: BackupError| {
            warn!(peer = %peer.name(), "refused a {}: {e}", first.kind());
            wire::send(conn.get_mut(), &refusal(&e))
        };
        // The site the peer claims must be one its certificate names.
        let claimed = match &first {
            Msg::Hello { site, .. }
            | Msg::Inquire { site, .. }
            | Msg::Fence { site, .. }
            | Msg::Fetch { site, .. } => Some(site.clone()),
            _ => None,
        };
        if let Some(site) = &claimed {
            if let Err(e) = peer.check_site(site) {
                return Ok(refuse(&mut conn, BackupError::Protocol(e.to_string()))?);
            }
        }
        let site = claimed.unwrap_or_default();
        match &first {
            Msg::Hello {
                site: _,
                uid,
                epoch,
                name,
                backups,
                sync,
            } => match self.hello(&site, *uid, name, *epoch, backups, *sync) {
                Ok((img, position)) => {
                    info!(peer = %peer.name(), %site, certificate = peer.fingerprint.as_deref().unwrap_or("none (plaintext)"), volume = %name, "primary connected");
                    wire::send(conn.get_mut(), &Msg::Welcome { position })?;
                    self.session(&img, *epoch, &mut conn)
                }
                Err(e) => Ok(refuse(&mut conn, e)?),
            },
            Msg::Inquire { name, .. } => {
                match self.image_named(name).map(|img| lock(&img).state.clone()) {
                    Ok(info) => wire::send(conn.get_mut(), &Msg::Image(info))?,
                    Err(e) => refuse(&mut conn, e)?,
                }
                Ok(())
            }
            Msg::Fence { uid, epoch, .. } => {
                let fenced = self.image(*uid, None).and_then(|img| {
                    let mut img = lock(&img);
                    img.raise_epoch(*epoch, &site)?;
                    info!(name = %img.state.name, epoch, %site, "fenced: older primaries are refused from now on");
                    Ok(img.state.clone())
                });
                match fenced {
                    Ok(info) => wire::send(conn.get_mut(), &Msg::Image(info))?,
                    Err(e) => refuse(&mut conn, e)?,
                }
                Ok(())
            }
            Msg::Fetch { uid, epoch, .. } => match self.image(*uid, None) {
                Ok(img) => {
                    let img = lock(&img);
                    if let Err(e) = img.check_epoch(*epoch) {
                        return Ok(refuse(&mut conn, e)?);
                    }
                    info!(name = %img.state.name, %site, "sending the image to a restorer");
                    send_image(&img, conn.get_mut())
                }
                Err(e) => Ok(refuse(&mut conn, e)?),
            },
            other => {
                let why = format!(
                    "expected Hello, Inquire, Fence or Fetch, got {}",
                    other.kind()
                );
                wire::send(conn.get_mut(), &Msg::Refused { why })?;
                Err(WireError::Malformed("a session must start with Hello"))
            }
        }
    }

    /// A primary's session: operations and full copies, each answered.
    fn session(
        &self,
        img: &Mutex<VolumeImage>,
        session_epoch: u64,
        conn: &mut Conn,
    ) -> Result<(), WireError> {
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let _live = Live(&self.stats.sessions);
        let mut group = apply::PendingGroup::default();
        loop {
            let msg = match wire::recv(conn) {
                Ok(m) => m,
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Err(e) => {
                    warn!("refusing a damaged message: {e}");
                    let _ = wire::send(conn.get_mut(), &Msg::Refused { why: e.to_string() });
                    return Err(e);
                }
            };
            let kind = msg.kind();
            let bytes: usize = match &msg {
                Msg::Op { runs, .. } => runs.iter().map(|r| r.pages.len()).sum(),
                _ => 0,
            };
            let answer = match handle(img, session_epoch, msg, &mut group) {
                Ok(Some(lsn)) => {
                    if kind == "Op" {
                        self.stats.operations.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .page_bytes
                            .fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    Msg::Ack { lsn }
                }
                Ok(None) => continue,
                Err(err) => {
                    warn!("refused a {kind}: {err}");
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    refusal(&err)
                }
            };
            let refused = !matches!(answer, Msg::Ack { .. });
            if refused {
                let _ = wire::send(conn.get_mut(), &answer);
                return Ok(());
            }
            if let Err(e) = wire::send(conn.get_mut(), &answer) {
                // The primary is gone (killed: its socket is closed). What it sent before is
                // still read and applied: an operation validated there, and what it said of
                // its journal (the loss window); the next read ends the session.
                warn!("acknowledging to the primary failed: {e}; reading what it sent before");
            }
        }
    }

    /// A primary introduces itself: returns the volume's image and where it stands.
    fn hello(
        &self,
        site: &str,
        uid: u64,
        name: &str,
        epoch: u64,
        backups: &[String],
        sync: u32,
    ) -> Result<(Arc<Mutex<VolumeImage>>, Position), BackupError> {
        let arc = self.image(uid, Some(name))?;
        let mut img = lock(&arc);
        img.check_epoch(epoch)?;
        if epoch == img.state.epoch {
            img.check_site(site)?;
        }
        let fresh = img.state.creator.is_empty();
        if fresh || epoch > img.state.epoch || img.state.writer != site {
            if fresh {
                img.state.creator = site.to_string();
                info!(name = %name, %site, "image created by site {site}");
            }
            img.state.writer = site.to_string();
            img.save_state()?;
        }
        if epoch > img.state.epoch || img.state.backups != backups || img.state.sync != sync {
            img.state.epoch = epoch;
            img.state.backups = backups.to_vec();
            img.state.sync = sync;
            img.save_state()?;
        }
        let position = img.state.position;
        drop(img);
        Ok((arc, position))
    }
}

/// The answer refusing a request for `e`.
fn refusal(e: &BackupError) -> Msg {
    match e {
        BackupError::Stale { .. } => Msg::Fenced { why: e.to_string() },
        _ => Msg::Refused { why: e.to_string() },
    }
}

/// Streams the image to a restorer: `CopyBegin`, `CopyPages`..., `CopyEnd`.
fn send_image(img: &VolumeImage, wr: &mut impl Write) -> Result<(), WireError> {
    let epoch = img.state.epoch;
    let descs = img.volume.clu_list();
    let clusters = descs.iter().map(CluInfo::of).collect();
    wire::send(wr, &Msg::CopyBegin { epoch, clusters })?;
    for d in &descs {
        for (first, n) in copy_chunks(d.npages) {
            match copy_chunk(&img.volume, epoch, d, first, n) {
                Ok(Some(msg)) => wire::send(wr, &msg)?,
                Ok(None) => {}
                Err(e) => {
                    let why = format!("reading cluster {} here failed: {e}", d.id);
                    wire::send(wr, &Msg::Refused { why })?;
                    return Ok(());
                }
            }
        }
    }
    let position = img.state.position;
    wire::send(wr, &Msg::CopyEnd { epoch, position })?;
    Ok(())
}
