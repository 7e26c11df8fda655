//! The one transport of every connection between sites (thesis: the sites of a *cellule*):
//! TLS 1.3 only, with mutual authentication by certificates signed by the cell's CA, as etcd,
//! PostgreSQL and Ceph's messenger do. Goofy's links, the backup server and the restorer go
//! through it; remote paging will too.
//!
//! - [`keys`]: the cell's keys (`pager keys init`, `pager keys issue`), made with `rcgen`.
//! - [`Transport`]: connects and accepts; a peer is admitted when its certificate chains to the
//!   cell's CA and is valid now; [`Peer::check_site`] then checks that the site it claims is a
//!   name its certificate holds. [`Transport::reload`] rereads the files (SIGHUP): connections
//!   already open keep their session.
//! - `--insecure` (plaintext) exists for loopback experiments only: it is refused for any
//!   address that is not loopback, and logged at every connection.

pub mod keys;
mod stream;
mod tls;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

pub use stream::Stream;
pub use tls::KeyFiles;

use tls::Tls;

/// How long a TLS handshake may take before the connection is dropped (a peer that connects
/// and says nothing must not hold a thread).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the transport can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No keys were given.
    #[error("this pager has no TLS keys for connections between sites: make them with `pager keys init DIR` and `pager keys issue DIR SITE --host HOST`, then (re)start `pager serve` (or `backup-server`, `memory-server`) with --keys DIR --site SITE (or --insecure, on loopback only)")]
    NoKeys,
    /// A key or certificate file could not be used.
    #[error("{path}: {why}; make the site's keys with `pager keys issue DIR SITE --host HOST`, and check --keys and --site")]
    Keys {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// TLS could not be set up with these keys.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Plaintext asked for a peer that is not on this machine.
    #[error("{0} is not a loopback address: --insecure (plaintext) is for loopback experiments only; use TLS keys")]
    NotLoopback(String),
    /// The address does not resolve or is malformed.
    #[error("{addr}: {why}")]
    Address {
        /// `HOST:PORT`.
        addr: String,
        /// What is wrong.
        why: String,
    },
    /// The TCP connection failed.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (the peer's certificate, or ours, was refused).
    #[error("TLS handshake with {peer} failed: {why}")]
    Handshake {
        /// The peer.
        peer: String,
        /// Why.
        why: String,
    },
    /// The peer claims a site its certificate does not name.
    #[error("peer {peer} claims to be site `{claimed}`, which its certificate does not name")]
    WrongSite {
        /// The peer's address.
        peer: String,
        /// The site it claimed.
        claimed: String,
    },
}

enum Mode {
    Tls(Tls),
    Insecure,
    Unconfigured,
}

/// Connects to and accepts peers of the cell. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    mode: Arc<Mode>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &*self.mode {
            Mode::Tls(_) => "Transport(TLS)",
            Mode::Insecure => "Transport(insecure)",
            Mode::Unconfigured => "Transport(no keys)",
        })
    }
}

/// A peer that completed the handshake.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// The SHA-256 of its certificate, in hex (`None` without TLS).
    pub fingerprint: Option<String>,
    cert: Option<rustls_pki_types::CertificateDer<'static>>,
}

impl Peer {
    /// Checks that the peer may call itself `site`: its certificate names it (always true
    /// without TLS, where nobody is authenticated).
    pub fn check_site(&self, site: &str) -> Result<(), TransportError> {
        let Some(cert) = &self.cert else {
            return Ok(());
        };
        let wrong = || TransportError::WrongSite {
            peer: self.name(),
            claimed: site.to_string(),
        };
        let name = rustls_pki_types::ServerName::try_from(site).map_err(|_| wrong())?;
        let ee = webpki::EndEntityCert::try_from(cert).map_err(|_| wrong())?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|_| wrong())
    }

    /// Its address, for logs.
    pub fn name(&self) -> String {
        self.addr
            .map_or("an unknown peer".to_string(), |a| a.to_string())
    }
}

/// Whether every address `addr` resolves to is a loopback address.
fn loopback(addr: &str) -> Result<Vec<SocketAddr>, TransportError> {
    let all: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| TransportError::Address {
            addr: addr.to_string(),
            why: e.to_string(),
        })?
        .collect();
    if all.is_empty() || all.iter().any(|a| !a.ip().is_loopback()) {
        return Err(TransportError::NotLoopback(addr.to_string()));
    }
    Ok(all)
}

impl Transport {
    /// TLS with the cell's keys; `site` is the name this process claims.
    pub fn tls(files: KeyFiles, site: &str) -> Result<Transport, TransportError> {
        Ok(Transport {
            mode: Arc::new(Mode::Tls(Tls::load(files, site)?)),
        })
    }

    /// Plaintext, for loopback experiments only.
    pub fn insecure() -> Transport {
        warn!("inter-site connections are in plaintext (--insecure): loopback only, and anybody on this machine can read and forge them");
        Transport {
            mode: Arc::new(Mode::Insecure),
        }
    }

    /// No keys: every connection between sites is refused with a message saying how to make
    /// keys.
    pub fn unconfigured() -> Transport {
        Transport {
            mode: Arc::new(Mode::Unconfigured),
        }
    }

    /// Whether connections can be made at all.
    pub fn check(&self) -> Result<(), TransportError> {
        match &*self.mode {
            Mode::Unconfigured => Err(TransportError::NoKeys),
            _ => Ok(()),
        }
    }

    /// The site this process claims, and the fingerprint of its certificate (TLS only).
    pub fn identity(&self) -> Option<(String, String)> {
        match &*self.mode {
            Mode::Tls(t) => Some((t.site().to_string(), t.fingerprint())),
            _ => None,
        }
    }

    /// The site name to claim to peers: the certificate's site, or `insecure` without TLS.
    pub fn site(&self) -> String {
        self.identity()
            .map_or_else(|| "insecure".to_string(), |(site, _)| site)
    }

    /// Rereads the key and certificate files (SIGHUP): new connections use them; open ones
    /// keep their session. A failure keeps the keys in use.
    pub fn reload(&self) -> Result<(), TransportError> {
        match &*self.mode {
            Mode::Tls(t) => t.reload(),
            _ => Ok(()),
        }
    }

    /// Whether a server may listen on `addr` with this transport (plaintext: loopback only).
    pub fn check_listen(&self, addr: &SocketAddr) -> Result<(), TransportError> {
        match &*self.mode {
            Mode::Insecure if !addr.ip().is_loopback() => {
                Err(TransportError::NotLoopback(addr.to_string()))
            }
            Mode::Unconfigured => Err(TransportError::NoKeys),
            _ => Ok(()),
        }
    }

    /// Connects to `addr` (`HOST:PORT`) and completes the handshake: the peer's certificate
    /// must chain to the cell's CA and name `HOST`.
    pub fn connect(&self, addr: &str, timeout: Duration) -> Result<Stream, TransportError> {
        let targets = match &*self.mode {
            Mode::Unconfigured => return Err(TransportError::NoKeys),
            Mode::Insecure => loopback(addr)?,
            Mode::Tls(_) => addr
                .to_socket_addrs()
                .map_err(|e| TransportError::Address {
                    addr: addr.to_string(),
                    why: e.to_string(),
                })?
                .collect(),
        };
        let mut last = None;
        let mut tcp = None;
        for a in targets {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| TransportError::Connect {
            addr: addr.to_string(),
            source: last.unwrap_or_else(|| std::io::Error::other("it resolves to no address")),
        })?;
        let _ = tcp.set_nodelay(true);
        match &*self.mode {
            Mode::Tls(t) => t.connect(addr, tcp),
            _ => {
                warn!(peer = %addr, "plaintext connection (--insecure)");
                Ok(Stream::plain(tcp))
            }
        }
    }

    /// Completes the handshake of a connection accepted on a listener: the peer must present
    /// a certificate that chains to the cell's CA and is valid now.
    pub fn accept(&self, tcp: TcpStream) -> Result<(Stream, Peer), TransportError> {
        let addr = tcp.peer_addr().ok();
        let _ = tcp.set_nodelay(true);
        match &*self.mode {
            Mode::Tls(t) => t.accept(tcp),
            Mode::Insecure => {
                warn!(peer = ?addr, "plaintext connection accepted (--insecure)");
                Ok((
                    Stream::plain(tcp),
                    Peer {
                        addr,
                        fingerprint: None,
                        cert: None,
                    },
                ))
            }
            Mode::Unconfigured => Err(TransportError::NoKeys),
        }
    }
}
