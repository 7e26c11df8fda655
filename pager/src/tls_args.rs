//! The flags every command that opens or accepts connections between sites takes (the names
//! etcd users know), and the transport they make.

use std::path::PathBuf;

use clap::Args;
use clu_transport::{KeyFiles, Transport, TransportError};

/// How this process authenticates to other sites.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// This site's certificate (PEM), signed by the cell's CA.
    #[arg(long, env = "CLU_CERT_FILE", value_name = "FILE")]
    cert_file: Option<PathBuf>,
    /// This site's private key (PEM).
    #[arg(long, env = "CLU_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The cell's CA certificate (PEM): peers must present a certificate it signed.
    #[arg(long, env = "CLU_TRUSTED_CA_FILE", value_name = "FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// The directory `pager keys` wrote: DIR/SITE.crt, DIR/SITE.key and DIR/ca.crt.
    #[arg(long, env = "CLU_KEYS", value_name = "DIR")]
    keys: Option<PathBuf>,
    /// This site's name, as its certificate names it (what it claims to its peers).
    #[arg(long, env = "CLU_SITE", value_name = "NAME")]
    site: Option<String>,
    /// Plaintext connections between sites, for experiments on loopback only (refused for any
    /// other address, and logged at every connection).
    #[arg(
        long,
        env = "CLU_INSECURE",
        conflicts_with_all = ["cert_file", "key_file", "trusted_ca_file", "keys"]
    )]
    insecure: bool,
}

/// The flags do not make a transport.
#[derive(Debug, thiserror::Error)]
pub enum TlsArgsError {
    /// A site name is needed with keys.
    #[error("TLS keys need --site NAME (the name in this site's certificate)")]
    NoSite,
    /// Some of the three files were given, not all.
    #[error(
        "give --cert-file, --key-file and --trusted-ca-file together, or --keys DIR --site NAME"
    )]
    Partial,
    /// The keys could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl TlsArgs {
    /// The site's name (`--site`).
    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    /// The transport the flags describe: TLS, plaintext, or none (connections between sites
    /// refused with a message saying how to make keys).
    pub fn transport(&self) -> Result<Transport, TlsArgsError> {
        if self.insecure {
            return Ok(Transport::insecure());
        }
        let files = match (
            &self.keys,
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
        ) {
            (None, None, None, None) => return Ok(Transport::unconfigured()),
            (Some(dir), None, None, None) => {
                KeyFiles::in_dir(dir, self.site.as_deref().ok_or(TlsArgsError::NoSite)?)
            }
            // Explicit files win over a directory's layout.
            (_, Some(cert), Some(key), Some(ca)) => KeyFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            _ => return Err(TlsArgsError::Partial),
        };
        let site = self.site.as_deref().ok_or(TlsArgsError::NoSite)?;
        Ok(Transport::tls(files, site)?)
    }
}
