//! The cell's keys, so that nobody needs openssl to start: a CA (`pager keys init DIR`: `ca.crt`,
//! `ca.key`), and a certificate per site signed by it (`pager keys issue DIR NAME --host HOST`:
//! `NAME.crt`, `NAME.key`, with the site's name and its addresses in the subject alternative
//! names). Keys are ECDSA P-256; private keys are written mode 600.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Why keys could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No CA in the directory.
    #[error("no CA in {dir} ({source}): make one with `pager keys init {dir}`, or pass the directory that holds ca.crt and ca.key")]
    NoCa {
        /// The directory.
        dir: PathBuf,
        /// Why ca.key or ca.crt could not be read.
        source: std::io::Error,
    },
    /// Generating or signing.
    #[error("cannot make the key or certificate: {0}")]
    Crypto(String),
    /// A file that would be overwritten.
    #[error("{0} exists already; remove it first or use another directory")]
    Exists(PathBuf),
    /// A name that is not a site name.
    #[error("`{0}` is not a site name: use lowercase letters, digits and `-`, as in a host name")]
    BadName(String),
}

fn crypto(e: rcgen::Error) -> KeysError {
    KeysError::Crypto(e.to_string())
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeysError> {
    let io = |source| KeysError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeysError::Exists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)
}

#[cfg(test)]
fn read(path: &Path) -> Result<String, KeysError> {
    std::fs::read_to_string(path).map_err(|source| KeysError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a new CA for a cell into `dir` (`ca.crt`, and `ca.key` mode 600), valid for
/// `days` days. Returns the two paths.
pub fn init(dir: &Path, days: i64) -> Result<(PathBuf, PathBuf), KeysError> {
    std::fs::create_dir_all(dir).map_err(|source| KeysError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "clu cell CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    let cert = params.self_signed(&key).map_err(crypto)?;
    let (crt, pem) = (dir.join("ca.crt"), dir.join("ca.key"));
    write_new(&pem, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok((crt, pem))
}

/// What a site certificate is made of.
#[derive(Clone, Debug)]
pub struct Issue<'a> {
    /// The site's name (a DNS-style label): what it claims to its peers.
    pub name: &'a str,
    /// The host names and addresses it is reached at.
    pub hosts: &'a [String],
    /// Valid from this long ago (or in the future, if negative)...
    pub not_before: Duration,
    /// ...for this long.
    pub lifetime: Duration,
}

impl Issue<'_> {
    /// A site certificate valid from now for `days` days.
    pub fn for_days<'a>(name: &'a str, hosts: &'a [String], days: i64) -> Issue<'a> {
        Issue {
            name,
            hosts,
            not_before: Duration::hours(1),
            lifetime: Duration::days(days),
        }
    }
}

/// Writes `NAME.crt` and `NAME.key` (mode 600) into `dir`, signed by the CA there. Returns the
/// two paths.
pub fn issue(dir: &Path, what: &Issue<'_>) -> Result<(PathBuf, PathBuf), KeysError> {
    if rustls_pki_types::DnsName::try_from(what.name).is_err()
        || what.name.contains('/')
        || what.name.parse::<std::net::IpAddr>().is_ok()
        // The cell's rule for site names (its catalog keys): no capitals.
        || what.name.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Err(KeysError::BadName(what.name.to_string()));
    }
    let ca_file = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|source| KeysError::NoCa {
            dir: dir.to_owned(),
            source,
        })
    };
    let ca_key = KeyPair::from_pem(&ca_file("ca.key")?).map_err(crypto)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_file("ca.crt")?).map_err(crypto)?;
    let ca = ca_params.self_signed(&ca_key).map_err(crypto)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut names = vec![what.name.to_string()];
    names.extend(what.hosts.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(crypto)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, what.name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - what.not_before;
    params.not_after = params.not_before + what.lifetime;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(crypto)?;
    let (crt, pem) = (
        dir.join(format!("{}.crt", what.name)),
        dir.join(format!("{}.key", what.name)),
    );
    write_new(&pem, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok((crt, pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cell_and_a_site_are_made_private_keys_600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path(), 30).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(read(&crt).unwrap().contains("BEGIN CERTIFICATE"));
        assert!(matches!(init(dir.path(), 30), Err(KeysError::Exists(_))));
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (c, k) = issue(dir.path(), &Issue::for_days("site-a", &hosts, 10)).unwrap();
        assert!(c.ends_with("site-a.crt") && k.ends_with("site-a.key"));
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for bad in ["", "a/b", "../x", "10.0.0.1", "a b", "Site-A"] {
            assert!(
                matches!(
                    issue(dir.path(), &Issue::for_days(bad, &[], 1)),
                    Err(KeysError::BadName(_))
                ),
                "{bad}"
            );
        }
    }
}
