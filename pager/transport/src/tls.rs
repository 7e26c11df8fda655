//! TLS 1.3 with the cell's keys: the configurations of both sides, reloadable.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use clu_sys::sync::{read, write};
use rustls::server::WebPkiClientVerifier;
use rustls::StreamOwned;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::info;

use crate::{Peer, Stream, TransportError, HANDSHAKE_TIMEOUT};

/// The three files of a site's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFiles {
    /// The site's certificate (PEM), signed by the cell's CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cell's CA certificate (PEM): peers must chain to it.
    pub ca: PathBuf,
}

impl KeyFiles {
    /// The layout `pager keys` writes: `DIR/SITE.crt`, `DIR/SITE.key`, `DIR/ca.crt`.
    pub fn in_dir(dir: &Path, site: &str) -> KeyFiles {
        KeyFiles {
            cert: dir.join(format!("{site}.crt")),
            key: dir.join(format!("{site}.key")),
            ca: dir.join("ca.crt"),
        }
    }
}

struct Loaded {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    fingerprint: String,
}

pub(crate) struct Tls {
    files: KeyFiles,
    site: String,
    loaded: RwLock<Arc<Loaded>>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> TransportError {
    TransportError::Keys {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// The SHA-256 of a certificate, in hex.
pub(crate) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load(files: &KeyFiles) -> Result<Loaded, TransportError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, e))?;
    let first = chain
        .first()
        .ok_or_else(|| bad(&files.cert, "holds no certificate"))?;
    let fingerprint = fingerprint(first);
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).map_err(|e| bad(&files.ca, e))? {
        roots
            .add(ca.map_err(|e| bad(&files.ca, e))?)
            .map_err(|e| bad(&files.ca, e))?;
    }
    if roots.is_empty() {
        return Err(bad(&files.ca, "holds no certificate"));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = |e: rustls::Error| TransportError::Config(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| bad(&files.key, e))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(&files.key, e))?;
    Ok(Loaded {
        client: Arc::new(client),
        server: Arc::new(server),
        fingerprint,
    })
}

/// The host part of `HOST:PORT` (`[::1]:7701` gives `::1`).
fn host(addr: &str) -> &str {
    let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    h.trim_start_matches('[').trim_end_matches(']')
}

/// Drives a handshake to its end within [`HANDSHAKE_TIMEOUT`].
fn handshake<C, S>(conn: &mut C, tcp: &mut TcpStream, peer: &str) -> Result<(), TransportError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let fail = |why: String| TransportError::Handshake {
        peer: peer.to_string(),
        why,
    };
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    while conn.is_handshaking() {
        conn.complete_io(tcp)
            .map_err(|e| fail(handshake_failure(&e)))?;
    }
    // Send what the handshake left to say (the client's Finished) now.
    while conn.wants_write() {
        conn.write_tls(tcp).map_err(|e| fail(e.to_string()))?;
    }
    let _ = tcp.set_read_timeout(None);
    let _ = tcp.set_write_timeout(None);
    Ok(())
}

/// Why a handshake failed, with what to check.
fn handshake_failure(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        // rustls's own errors (a certificate refused, by us or by the peer's alert).
        InvalidData => format!(
            "{e}; check that both sides' certificates come from the same CA and that the peer's certificate names the address used (`pager keys issue ... --host HOST`)"
        ),
        UnexpectedEof | ConnectionReset | ConnectionAborted => format!(
            "{e}: the peer closed the connection (a port probe, or a peer that refused this side's certificate: see its log)"
        ),
        _ => e.to_string(),
    }
}

impl Tls {
    pub(crate) fn load(files: KeyFiles, site: &str) -> Result<Tls, TransportError> {
        if ServerName::try_from(site).is_err() {
            return Err(TransportError::Config(format!(
                "`{site}` is not a site name: use lowercase letters, digits and `-`, as in a host name"
            )));
        }
        let loaded = load(&files)?;
        info!(site, certificate = %loaded.fingerprint, "TLS keys loaded");
        Ok(Tls {
            files,
            site: site.to_string(),
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    pub(crate) fn site(&self) -> &str {
        &self.site
    }

    pub(crate) fn fingerprint(&self) -> String {
        read(&self.loaded).fingerprint.clone()
    }

    pub(crate) fn reload(&self) -> Result<(), TransportError> {
        let loaded = load(&self.files)?;
        info!(site = %self.site, certificate = %loaded.fingerprint, "TLS keys reloaded: new connections use them");
        *write(&self.loaded) = Arc::new(loaded);
        Ok(())
    }

    pub(crate) fn connect(&self, addr: &str, mut tcp: TcpStream) -> Result<Stream, TransportError> {
        let cfg = read(&self.loaded).client.clone();
        let name =
            ServerName::try_from(host(addr).to_string()).map_err(|e| TransportError::Address {
                addr: addr.to_string(),
                why: e.to_string(),
            })?;
        let mut conn = ClientConnection::new(cfg, name).map_err(|e| TransportError::Handshake {
            peer: addr.to_string(),
            why: e.to_string(),
        })?;
        handshake(&mut conn, &mut tcp, addr)?;
        Ok(Stream::client(StreamOwned::new(conn, tcp)))
    }

    pub(crate) fn accept(&self, mut tcp: TcpStream) -> Result<(Stream, Peer), TransportError> {
        let addr = tcp.peer_addr().ok();
        let peer = addr.map_or("an unknown peer".to_string(), |a| a.to_string());
        let cfg = read(&self.loaded).server.clone();
        let mut conn = ServerConnection::new(cfg).map_err(|e| TransportError::Handshake {
            peer: peer.clone(),
            why: e.to_string(),
        })?;
        handshake(&mut conn, &mut tcp, &peer)?;
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| TransportError::Handshake {
                peer: peer.clone(),
                why: "the peer presented no certificate".into(),
            })?;
        let p = Peer {
            addr,
            fingerprint: Some(fingerprint(&cert)),
            cert: Some(cert),
        };
        Ok((Stream::server(StreamOwned::new(conn, tcp)), p))
    }
}
