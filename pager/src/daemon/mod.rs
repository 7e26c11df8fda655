//! The pager daemon (`pager serve`): the memory manager serving clusters to the processes of
//! this machine over a Unix socket. This module assembles the site: the driver table (the fast
//! local service and the reliable one), the storage root, the paging partition, the manager;
//! then it accepts connections.
//!
//! - `connection`: one client process: its requests, in order.
//! - `faults`: that process's fault thread, reading its userfaultfd.
//! - `admin`: the administration commands, executed for a connection.
//!
//! A cluster mapped on this machine lives in a memfd owned by the pager. A client receives the
//! memfd (`SCM_RIGHTS`), maps it shared, registers the mapping with its own userfaultfd
//! (MISSING, MINOR, WP) and sends a copy of the uffd; the pager resolves every fault by filling
//! the memfd and answering with `UFFDIO_CONTINUE`. All processes share one image.

mod admin;
mod cell;
mod connection;
mod failover;
mod faults;
mod metrics;
mod rejoin;
mod throttle;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clu_goofy::{GoofyError, Ssf};
use clu_mm::paging::{PagingError, PagingPartition};
use clu_mm::site::Counter;
use clu_mm::{ConnId, Manager, Refusal, Site};
use clu_proto::ClusterKind;
use clu_remote::memory::MemoryClient;
use clu_storage::{DriverTable, Storage, StorageError, VolumeParams};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

use crate::config::ServeConfig;
pub use cell::CellConfig;
use cell::CellSite;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The storage root.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The paging partition.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// The metrics address could not be served.
    #[error("{0}")]
    Metrics(String),
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
    /// The storage root could not be opened or made.
    #[error("cannot open the storage root {root}: {why}; pass a --root DIR (or CLU_STORAGE_ROOT) that this user can write")]
    Root {
        /// The root.
        root: PathBuf,
        /// What failed.
        why: StorageError,
    },
    /// The socket systemd passed could not be taken.
    #[error("the socket passed by systemd (LISTEN_FDS) is not a listening Unix socket: {0}; give the socket unit a ListenStream= path")]
    Inherited(#[source] io::Error),
    /// The socket could not be given to its group.
    #[error("cannot give the socket {path} to group {gid} ({why}); run the pager as root or as a member of that group, or drop --socket-group")]
    SocketGroup {
        /// The socket.
        path: PathBuf,
        /// The group.
        gid: u32,
        /// The OS error.
        why: io::Error,
    },
    /// Signal setup.
    #[error("signals: {0}")]
    Signals(#[source] io::Error),
    /// Joining the cell.
    #[error(transparent)]
    Cell(#[from] clu_cell::CellError),
    /// The transport between sites.
    #[error("connections to other sites (--catalog with --listen, --paging-server) need the cell's keys: {0}")]
    Transport(#[from] clu_transport::TransportError),
    /// The address for the other sites.
    #[error("cannot listen on {addr} for the cell's other sites: {source}; pass another --listen")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The volume a new root gets, so that `clu_CreateMap(1, ...)` works at once.
pub const DEFAULT_VOLUME: &str = "default";

/// What every connection of the daemon shares.
pub(crate) struct Daemon {
    /// The memory manager (with the storage root and the site's resources).
    pub manager: Manager,
    /// The reliable service, for what only it knows (replication, restorations).
    pub ssf: Arc<Ssf>,
    /// The socket path.
    pub socket: PathBuf,
    /// How long a fault thread keeps polling for the next fault before sleeping.
    pub spin: Duration,
    /// When the daemon started.
    pub started: Instant,
    /// Connections since start.
    pub connections: Counter,
    /// Connections open now.
    pub live_connections: AtomicU64,
    /// This site's membership of its cell, if it is in one.
    pub cell: Option<Arc<CellSite>>,
    /// The memory server this site pages to (`--paging-server`), if any.
    pub memory: Option<Arc<MemoryClient>>,
}

/// The client-visible form of a reliable service error.
pub(crate) fn goofy_refusal(e: GoofyError) -> Refusal {
    match e {
        GoofyError::Storage(e) => Refusal::from(e),
        GoofyError::Invalid(m) => Refusal::invalid(m),
        other => Refusal::new(clu_proto::ErrorCode::Io, other.to_string()),
    }
}

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
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| ServeError::SocketGroup {
            path: path.to_owned(),
            gid: gid.as_raw(),
            why: io::Error::from_raw_os_error(e as i32),
        })?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777)).map_err(err)?;
    Ok(listener)
}

/// The listening socket systemd passed (socket activation: `clu-pager.socket`, or
/// `systemd-socket-activate`), if it passed one.
fn inherited() -> Result<Option<UnixListener>, ServeError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    fds.take_unix_listener(0).map_err(ServeError::Inherited)
}

/// Temporary clusters do not outlive the pager that held them (thesis G1-G4): at start, every
/// one left in a mounted volume is destroyed.
fn purge_temporary(storage: &Storage) {
    for v in storage.volumes() {
        let Ok(vol) = storage.mounted_here(v.entry.vol) else {
            continue;
        };
        for d in vol.clu_list() {
            if d.kind == ClusterKind::Temporary {
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

/// Starts thread `name` running `body` for the life of the daemon, if the site is in a cell.
fn spawn_in_cell(d: &Arc<Daemon>, name: &str, body: fn(&Daemon, &CellSite)) -> std::io::Result<()> {
    let Some(site) = d.cell.clone() else {
        return Ok(());
    };
    let d = d.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(&d, &site))?;
    Ok(())
}

/// Serves a backup server's metrics (`pager backup-server --metrics-listen`).
pub fn start_backup_metrics(
    server: Arc<clu_goofy::backup::BackupServer>,
    listen: &str,
) -> Result<(), String> {
    metrics::start_backup(server, listen)
}

/// Rereads `transport`'s keys at every SIGHUP, in a thread of its own (for `pager
/// backup-server`; `pager serve` does it in its signal thread).
pub fn reload_on_sighup(transport: clu_transport::Transport) -> Result<(), ServeError> {
    let mut hup = SigSet::empty();
    hup.add(Signal::SIGHUP);
    hup.thread_block()
        .map_err(|e| ServeError::Signals(io::Error::from_raw_os_error(e as i32)))?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || loop {
            if let Ok(Signal::SIGHUP) = hup.wait() {
                if let Err(e) = transport.reload() {
                    warn!("SIGHUP: the TLS keys were not reloaded, the old ones stay in use: {e}");
                }
            }
        })
        .map_err(ServeError::Signals)?;
    Ok(())
}

/// Listens for the other sites of the cell on `--listen` (remote paging of the volumes mounted
/// here), on a thread of its own.
fn serve_sites(storage: Arc<Storage>, c: &CellConfig, site: &CellSite) -> Result<(), ServeError> {
    site.transport.check()?;
    let listener = std::net::TcpListener::bind(&c.listen).map_err(|source| ServeError::Listen {
        addr: c.listen.clone(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: c.listen.clone(),
        source,
    })?;
    site.transport.check_listen(&local)?;
    let (transport, me) = (site.transport.clone(), c.site.clone());
    std::thread::Builder::new()
        .name("remote-listen".into())
        .spawn(move || clu_remote::server::serve(storage, listener, transport, me))
        .map_err(ServeError::Signals)?;
    info!(listen = %local, "serving this site's volumes to the cell");
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP rereads the TLS keys.
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    // Block the stop signals in every thread; one thread waits for them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGHUP);
    stop.thread_block()
        .map_err(|e| ServeError::Signals(io::Error::from_raw_os_error(e as i32)))?;

    // The driver table: the services this pager offers, by the names catalogs record.
    let ssf = Arc::new(Ssf::new(config.goofy.clone()));
    let drivers = DriverTable::local(config.goofy.journal.clone()).with(ssf.clone());
    // In a cell: join first (the site's lease), so that the root's volumes are mounted under
    // their mount locks.
    let cell = match &config.cell {
        Some(c) => Some(Arc::new(CellSite::join(c, config.goofy.transport.clone())?)),
        None => None,
    };
    let storage = Storage::open_in_cell(
        &config.root,
        drivers,
        cell.clone().map(|c| c as Arc<dyn clu_storage::CellCatalog>),
    )
    .map_err(|e| match e {
        StorageError::Io { .. } => ServeError::Root {
            root: config.root.clone(),
            why: e,
        },
        e => e.into(),
    })?;
    if storage.volumes().is_empty() {
        let entry = storage.vol_create(DEFAULT_VOLUME, &VolumeParams::default())?;
        storage.vol_mount(entry.vol)?;
        info!(vol = %entry.vol, "new storage root: created and mounted volume `{DEFAULT_VOLUME}`");
    }
    purge_temporary(&storage);
    let storage = Arc::new(storage);
    if let (Some(c), Some(site)) = (&config.cell, &cell) {
        serve_sites(storage.clone(), c, site)?;
    }
    let (paging, memory) = match &config.paging_server {
        Some(p) => {
            config.goofy.transport.check()?;
            let client = Arc::new(MemoryClient::new(
                &p.address,
                &p.site,
                config.goofy.transport.clone(),
                p.timeout,
            ));
            client.check()?;
            client.start_freeing().map_err(ServeError::Signals)?;
            info!(server = %p.address, "paging to a memory server");
            (PagingPartition::remote(client.clone()), Some(client))
        }
        None => (
            PagingPartition::create(&config.root.join("paging"), config.paging_pages)?,
            None,
        ),
    };
    // Socket activation: systemd made the socket (its path, owner and mode are the socket
    // unit's) and keeps it across restarts; otherwise the pager makes it.
    let (listener, socket, activated) = match inherited()? {
        Some(l) => {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_else(|| config.socket.clone());
            info!(socket = %path.display(), "listening on the socket systemd passed");
            (l, path, true)
        }
        None => (
            bind(&config.socket, config.socket_mode, config.socket_group)?,
            config.socket.clone(),
            false,
        ),
    };
    let site = Site::new(config.resident_pages, paging);
    let site = Arc::new(if config.cache_images {
        site
    } else {
        site.without_cache()
    });
    let daemon = Arc::new(Daemon {
        manager: Manager::new(storage.clone(), site),
        ssf,
        socket: socket.clone(),
        spin: config.spin,
        started: Instant::now(),
        connections: Counter::default(),
        live_connections: AtomicU64::new(0),
        cell: cell.clone(),
        memory,
    });
    spawn_in_cell(&daemon, "failover", failover::watch).map_err(ServeError::Signals)?;
    spawn_in_cell(&daemon, "rejoin", rejoin::watch).map_err(ServeError::Signals)?;
    if let Some(listen) = &config.metrics_listen {
        metrics::start(daemon.clone(), listen).map_err(ServeError::Metrics)?;
    }
    {
        let socket = socket.clone();
        let transport = config.goofy.transport.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = loop {
                    match stop.wait() {
                        // SIGHUP: reread the TLS keys (connections already open keep theirs).
                        Ok(Signal::SIGHUP) => {
                            if let Err(e) = transport.reload() {
                                warn!("SIGHUP: the TLS keys were not reloaded, the old ones stay in use: {e}");
                            }
                        }
                        other => break other,
                    }
                };
                info!("{sig:?}: stopping; mapped clusters lose their uncommitted changes");
                // An inherited socket is systemd's: it keeps it (and queues connections) while
                // the pager is down.
                if !activated {
                    let _ = fs::remove_file(&socket);
                }
                for v in storage.volumes() {
                    if let Ok(vol) = storage.mounted_here(v.entry.vol) {
                        if let Err(e) = vol.checkpoint() {
                            warn!(vol = %v.entry.vol, "checkpoint at stop: {e}");
                        }
                    }
                }
                // Leave the cell: the lease is revoked, the mount locks go with it at once.
                if let Some(c) = &cell {
                    c.leave();
                }
                std::process::exit(0);
            })
            .map_err(ServeError::Signals)?;
    }
    info!(
        socket = %socket.display(),
        root = %config.root.display(),
        resident_pages = config.resident_pages,
        "pager ready"
    );
    let mut next = 0u64;
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                next += 1;
                let (d, conn) = (daemon.clone(), ConnId(next));
                if let Err(e) = std::thread::Builder::new()
                    .name(format!("conn-{next}"))
                    .spawn(move || connection::serve(d, s, conn))
                {
                    error!("cannot start a connection thread: {e}");
                }
            }
            Err(e) => warn!("accept: {e}"),
        }
    }
    Ok(())
}
