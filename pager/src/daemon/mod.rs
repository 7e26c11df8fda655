//! The pager daemon (`pager serve`): the memory manager serving clusters to the processes of
//! this machine over a Unix socket.
//!
//! - [`manager`]: the images of the mapped clusters, the resident budget, the operations.
//! - `image`: one cluster's image: memfd, page states, mappers; carries out the page state
//!   machine's actions (supply, write-protect, evict, commit, abort).
//! - `connection`: one client process: its requests and its fault thread.
//!
//! A cluster mapped on this machine lives in a memfd owned by the pager. A client receives the
//! memfd (`SCM_RIGHTS`), maps it shared, registers the mapping with its own userfaultfd
//! (MISSING, MINOR, WP) and sends a copy of the uffd; the pager resolves every fault by filling
//! the memfd and answering with `UFFDIO_CONTINUE`. All processes share one image.

mod connection;
mod error;
mod image;
mod manager;
mod rights;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

pub use error::Refusal;
pub use manager::{Manager, MAX_CLUSTER_PAGES};

use crate::paging::{PagingError, PagingPartition};
use crate::storage::{Storage, StorageConfig, StorageError, VolumeParams};

/// The settings of `pager serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The storage root.
    pub root: PathBuf,
    /// The socket path.
    pub socket: PathBuf,
    /// The resident budget, in pages, over all clusters.
    pub resident_pages: u64,
    /// The paging partition's capacity, in pages.
    pub paging_pages: u32,
    /// How long a fault thread keeps polling for the next fault before it sleeps.
    pub spin: std::time::Duration,
    /// The socket's permission bits: who may connect at all (rights are checked per request).
    pub socket_mode: u32,
    /// The socket's group, if not the pager's.
    pub socket_group: Option<nix::unistd::Gid>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The storage root.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The paging partition.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// Another pager answers on the socket.
    #[error("a pager is already listening on {0}; stop it or pass another --socket")]
    SocketInUse(PathBuf),
    /// The socket could not be made.
    #[error("socket {path}: {source}; pass another --socket")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Signal setup.
    #[error("signals: {0}")]
    Signals(#[source] io::Error),
}

/// The volume a new root gets, so that `clu_CreateMap(1, ...)` works at once.
pub const DEFAULT_VOLUME: &str = "default";

fn bind(
    path: &Path,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse(path.to_owned()));
        }
        // A socket left by a pager that died: nobody answers on it.
        fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // Who may connect at all; each request is then checked against the peer's uid (SO_PEERCRED).
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| err(io::Error::from_raw_os_error(e as i32)))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777)).map_err(err)?;
    Ok(listener)
}

/// Temporary clusters do not outlive the pager that held them (thesis G1-G4): at start, every
/// one left in a mounted volume is destroyed.
fn purge_temporary(storage: &Storage) {
    for v in storage.volumes() {
        let Ok(vol) = storage.volume(v.entry.vol) else {
            continue;
        };
        for d in vol.clu_list() {
            if d.kind == client::ClusterKind::Temporary {
                match vol.clu_destroy(d.id.clu()) {
                    Ok(()) => {
                        info!(cluster = %d.id, "temporary cluster of an earlier run destroyed")
                    }
                    Err(e) => warn!(cluster = %d.id, "destroying a temporary cluster: {e}"),
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    // Block the stop signals in every thread; one thread waits for them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()
        .map_err(|e| ServeError::Signals(io::Error::from_raw_os_error(e as i32)))?;

    let storage = Storage::open(&config.root, StorageConfig::default())?;
    if storage.volumes().is_empty() {
        let entry = storage.vol_create(DEFAULT_VOLUME, &VolumeParams::default())?;
        storage.vol_mount(entry.vol)?;
        info!(vol = %entry.vol, "new storage root: created and mounted volume `{DEFAULT_VOLUME}`");
    }
    purge_temporary(&storage);
    let paging = PagingPartition::create(&config.root.join("paging"), config.paging_pages)?;
    let listener = bind(&config.socket, config.socket_mode, config.socket_group)?;
    let manager = Arc::new(Manager::new(
        storage,
        paging,
        config.resident_pages,
        config.socket.clone(),
        config.spin,
    ));
    {
        let (m, socket) = (manager.clone(), config.socket.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = stop.wait();
                info!("{sig:?}: stopping; mapped clusters lose their uncommitted changes");
                let _ = fs::remove_file(&socket);
                for v in m.storage.volumes() {
                    if let Ok(vol) = m.storage.volume(v.entry.vol) {
                        if let Err(e) = vol.checkpoint() {
                            warn!(vol = %v.entry.vol, "checkpoint at stop: {e}");
                        }
                    }
                }
                std::process::exit(0);
            })
            .map_err(ServeError::Signals)?;
    }
    info!(
        socket = %config.socket.display(),
        root = %config.root.display(),
        resident_pages = config.resident_pages,
        "pager ready"
    );
    let mut next = 0u64;
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                next += 1;
                let (m, conn) = (manager.clone(), next);
                if let Err(e) = std::thread::Builder::new()
                    .name(format!("conn-{conn}"))
                    .spawn(move || connection::serve(m, s, conn))
                {
                    error!("cannot start a connection thread: {e}");
                }
            }
            Err(e) => warn!("accept: {e}"),
        }
    }
    Ok(())
}
