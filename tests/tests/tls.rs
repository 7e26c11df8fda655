//! Nobody without the cell's keys talks to a backup server: real TLS on loopback between a real
//! pager and a real backup server. Peers with no certificate, a certificate of another CA, an
//! expired one, one that names another site than the one claimed, plain garbage and a
//! plaintext Hello are refused, logged with their address, and change nothing on the backup
//! (its files are byte-equal before and after). A recording proxy between primary and backup
//! never sees a page the primary committed.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clu_goofy::wire::{self, Msg};
use clu_tests::harness::{cell_keys, pager_bin, wait_listening, Pager, Tool};
use clu_transport::keys::{self, Issue};
use clu_transport::{KeyFiles, Transport};

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Backup {
    child: Child,
    log: PathBuf,
}

impl Backup {
    fn start(root: &Path, addr: &str, log: PathBuf) -> Backup {
        let site = "backup-tls";
        let keys = cell_keys(site);
        let child = Command::new(pager_bin())
            .args(["backup-server", "--root"])
            .arg(root)
            .args(["--listen", addr, "--site", site])
            .arg("--keys")
            .arg(&keys)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start a backup server");
        wait_listening(addr);
        Backup { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn wait_in_sync(pager: &Pager) {
    let t0 = Instant::now();
    loop {
        let status = pager.status();
        if status
            .lines()
            .any(|l| l.contains(": in sync;") && l.contains(", 0 bytes and"))
        {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP proxy that records every byte that goes through it, both ways.
fn recording_proxy(to: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { continue };
            let Ok(server) = TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (addr, seen)
}

/// What a connection that should have been refused got: never a Welcome.
fn hello_answer(
    conn: &mut BufReader<clu_transport::Stream>,
    site: &str,
    uid: u64,
    epoch: u64,
) -> String {
    let hello = Msg::Hello {
        site: site.into(),
        uid,
        epoch,
        name: "rel".into(),
        backups: vec![],
        sync: 0,
    };
    if let Err(e) = wire::send(conn.get_mut(), &hello) {
        return format!("send failed: {e}");
    }
    match wire::recv(conn) {
        Ok(Msg::Welcome { .. }) => panic!("a peer without the right keys was welcomed"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("{e}"),
    }
}

#[test]
fn peers_without_the_cells_keys_are_refused_and_pages_never_travel_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let backup_addr = free_addr();
    let backup = Backup::start(
        &dir.path().join("backup"),
        &backup_addr,
        dir.path().join("backup.log"),
    );
    let (proxy, seen) = recording_proxy(backup_addr.clone());
    let pager = Pager::start(&dir.path().join("root"), 1024);
    pager.admin(&["vol", "create", "rel", "--backup", &proxy, "--sync", "1"]);

    // Pages of a known pattern, committed and propagated through the proxy.
    let mut t = Tool::start(&pager);
    let id = t.ok("create 4 protected 2");
    let id = id.split_whitespace().next().unwrap().to_string();
    t.ok(&format!("fill {id} 77 1 3"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&pager);
    let capture = seen.lock().unwrap().clone();
    assert!(
        capture.len() > 4096,
        "the propagation went through the proxy"
    );
    // 64 bytes of page 2 as committed.
    let mut page = vec![0u8; 4096];
    clu_tests::fill_pattern(&mut page, 77, 2);
    let needle = &page[512..576];
    assert!(
        !capture.windows(needle.len()).any(|w| w == needle),
        "a committed page crossed the link in clear"
    );

    let uid = {
        let conf = std::fs::read_to_string(dir.path().join("root/vol-0002/goofy.conf")).unwrap();
        u64::from_str_radix(
            conf.lines().find_map(|l| l.strip_prefix("uid ")).unwrap(),
            16,
        )
        .unwrap()
    };
    let before = snapshot(&dir.path().join("backup"));

    // 1. Plain garbage on the TLS port.
    let mut junk = TcpStream::connect(&backup_addr).unwrap();
    junk.write_all(&[0xff; 64]).unwrap();
    let answer = wire::recv(&mut BufReader::new(&junk));
    assert!(!matches!(answer, Ok(Msg::Welcome { .. })), "{answer:?}");
    // 2. A plaintext Goofy Hello on the TLS port.
    let mut plain = TcpStream::connect(&backup_addr).unwrap();
    let _ = wire::send(
        &mut plain,
        &Msg::Hello {
            site: "site-root".into(),
            uid,
            epoch: 9,
            name: "rel".into(),
            backups: vec![],
            sync: 0,
        },
    );
    let answer = wire::recv(&mut BufReader::new(&plain));
    assert!(!matches!(answer, Ok(Msg::Welcome { .. })), "{answer:?}");
    // 3. A certificate of another CA.
    let other = dir.path().join("other-ca");
    keys::init(&other, 30).unwrap();
    let hosts = vec!["127.0.0.1".to_string()];
    keys::issue(&other, &Issue::for_days("site-root", &hosts, 30)).unwrap();
    let t = Transport::tls(KeyFiles::in_dir(&other, "site-root"), "site-root").unwrap();
    match t.connect(&backup_addr, Duration::from_secs(3)) {
        Err(e) => assert!(e.to_string().contains("handshake"), "{e}"),
        Ok(s) => {
            let a = hello_answer(&mut BufReader::new(s), "site-root", uid, 9);
            assert!(!a.contains("Welcome"), "{a}");
        }
    }
    // 4. An expired certificate of the cell (and 5. one for another name than it claims).
    let cell = cell_keys("site-root");
    keys::issue(
        &cell,
        &Issue {
            name: "site-expired",
            hosts: &hosts,
            not_before: time_days(10),
            lifetime: time_days(1),
        },
    )
    .unwrap();
    let t = Transport::tls(KeyFiles::in_dir(&cell, "site-expired"), "site-expired").unwrap();
    if let Ok(s) = t.connect(&backup_addr, Duration::from_secs(3)) {
        let a = hello_answer(&mut BufReader::new(s), "site-expired", uid, 9);
        assert!(!a.contains("Welcome"), "{a}");
    }
    let impostor = cell_keys("site-impostor");
    let t = Transport::tls(
        KeyFiles::in_dir(&impostor, "site-impostor"),
        "site-impostor",
    )
    .unwrap();
    let s = t.connect(&backup_addr, Duration::from_secs(3)).unwrap();
    let a = hello_answer(&mut BufReader::new(s), "site-root", uid, 9);
    assert!(a.contains("claims to be site"), "{a}");
    // 6. A client that presents no certificate at all (rustls without client auth).
    let no_cert = rustls_no_client_cert(&cell);
    let tcp = TcpStream::connect(&backup_addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(no_cert, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.write_all(&[0u8; 8]);
    let mut buf = [0u8; 16];
    assert!(
        !matches!(tls.read(&mut buf), Ok(n) if n > 0),
        "a client without a certificate got an answer"
    );

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        snapshot(&dir.path().join("backup")),
        before,
        "a refused peer changed the backup"
    );
    let log = backup.log();
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains("127.0.0.1"))
        .count();
    assert!(
        refusals >= 5,
        "each refusal is logged with the peer's address:\n{log}"
    );
    // The primary still propagates.
    let mut t = Tool::start(&pager);
    t.ok(&format!("map {id}"));
    t.ok(&format!("fill {id} 78"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&pager);
}

fn time_days(d: i64) -> time::Duration {
    time::Duration::days(d)
}

fn rustls_no_client_cert(cell: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cell.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The `certificate=` fingerprints the backup logged for primaries of `site`, in order.
fn fingerprints(log: &str, site: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("primary connected") && l.contains(&format!("site={site}")))
        .filter_map(|l| l.split("certificate=").nth(1))
        .map(|f| f.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn keys_rotated_by_sighup_serve_new_connections_while_commits_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let log = dir.path().join("backup.log");
    let start = |log: &Path| {
        let mut b = Backup::start(&dir.path().join("backup"), &addr, log.to_owned());
        // The backup logs each primary's certificate at info level.
        let _ = b.child.kill();
        let _ = b.child.wait();
        let site = "backup-tls";
        b.child = Command::new(pager_bin())
            .args(["backup-server", "--root"])
            .arg(dir.path().join("backup"))
            .args(["--listen", &addr, "--site", site])
            .arg("--keys")
            .arg(cell_keys(site))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(log).unwrap())
            .spawn()
            .unwrap();
        wait_listening(&addr);
        b
    };
    let backup = start(&log);
    // The primary's own copy of its keys, which the test replaces.
    let site = "site-rot";
    let mine = dir.path().join("keys");
    std::fs::create_dir_all(&mine).unwrap();
    let cell = cell_keys(site);
    for f in ["ca.crt", &format!("{site}.crt"), &format!("{site}.key")] {
        std::fs::copy(cell.join(f), mine.join(f)).unwrap();
    }
    let root = dir.path().join("rot");
    let pager = Pager::start_with(
        &root,
        1024,
        &["--keys", mine.to_str().unwrap(), "--site", site],
    );
    pager.admin(&["vol", "create", "rel", "--backup", &addr, "--sync", "1"]);
    let mut t = Tool::start(&pager);
    let id = t.ok("create 4 protected 2");
    let id = id.split_whitespace().next().unwrap().to_string();
    t.send(&format!("loop {id} 1"));
    let acked = |t: &mut Tool, n: usize| {
        for _ in 0..n {
            let l = t
                .line(Duration::from_secs(30))
                .expect("a commit acknowledged");
            assert!(l.starts_with("acked "), "a commit failed: {l}");
        }
    };
    acked(&mut t, 20);
    let before = fingerprints(&std::fs::read_to_string(&log).unwrap(), site);
    assert!(
        !before.is_empty(),
        "the backup logged the primary's certificate"
    );

    // Rotate: a new certificate and key for the same site, from the cell's CA, then SIGHUP.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(cell.join(f), fresh.join(f)).unwrap();
    }
    let hosts = vec!["127.0.0.1".to_string()];
    keys::issue(&fresh, &Issue::for_days(site, &hosts, 30)).unwrap();
    for f in [format!("{site}.crt"), format!("{site}.key")] {
        std::fs::copy(fresh.join(&f), mine.join(&f)).unwrap();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pager.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    acked(&mut t, 20);
    // A new connection: the backup restarts; the primary reconnects with the new certificate.
    drop(backup);
    let _backup = start(&log);
    acked(&mut t, 20);
    let after = fingerprints(&std::fs::read_to_string(&log).unwrap(), site);
    let last = after.last().expect("the primary reconnected").clone();
    assert!(
        !before.contains(&last),
        "the new connection used the old certificate ({last})"
    );
}
