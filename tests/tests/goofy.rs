//! Goofy end to end, on loopback: a pager with a reliable volume and two real backup servers.
//! Backups byte-equal to the primary after a burst of commits; a backup killed during commits,
//! restarted and caught up (from the primary's queue); garbage and a stale epoch refused.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clu_tests::harness::{pager_bin, Pager, Tool};
use pager::goofy::wire::{self, Msg};

struct Backup {
    child: Child,
    root: PathBuf,
}

impl Backup {
    fn start(root: &Path, addr: &str) -> Backup {
        let child = Command::new(pager_bin())
            .args(["backup-server", "--root"])
            .arg(root)
            .args(["--listen", addr])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start a backup server");
        let t0 = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "backup did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Backup {
            child,
            root: root.to_owned(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn uid_of(vol_dir: &Path) -> u64 {
    let conf = std::fs::read_to_string(vol_dir.join("goofy.conf")).unwrap();
    let line = conf.lines().find_map(|l| l.strip_prefix("uid ")).unwrap();
    u64::from_str_radix(line, 16).unwrap()
}

/// Waits until every backup of the status is in sync with nothing queued.
fn wait_in_sync(pager: &Pager, n: usize) {
    let t0 = Instant::now();
    loop {
        let status = pager.status();
        let synced = status
            .lines()
            .filter(|l| l.contains(": in sync;") && l.contains(" 0 operations"))
            .count();
        if synced == n {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_equal(primary: &Path, backup: &Path, what: &str) {
    let a = std::fs::read(primary).unwrap();
    let b = std::fs::read(backup).unwrap_or_default();
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(p) =
        (0..a.len() / 4096).find(|&p| a[p * 4096..(p + 1) * 4096] != b[p * 4096..(p + 1) * 4096])
    {
        panic!("{what}: page {p} differs");
    }
}

#[test]
fn backups_follow_the_primary_and_refuse_garbage_and_stale_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Backup::start(&dir.path().join("backup-a"), &a_addr);
    let mut b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let made = pager.admin(&[
        "vol", "create", "rel", "--backup", &a_addr, "--backup", &b_addr,
    ]);
    assert!(made.contains("created volume rel (0002)"), "{made}");
    let vol_dir = dir.path().join("root/vol-0002");
    let uid = uid_of(&vol_dir);

    let mut t = Tool::start(&pager);
    let id = t
        .ok("create 64 shareable 2")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    for v in 1..=20 {
        t.ok(&format!("fill {id} {v} {} 16", (v * 7) % 48));
        t.ok(&format!("commit {id}"));
    }
    wait_in_sync(&pager, 2);
    let data = vol_dir.join("clusters/0000.data");
    let image = |bk: &Backup| {
        pager::goofy::backup::BackupServer::image_dir(&bk.root, uid).join("clusters/0000.data")
    };
    assert_equal(&data, &image(&a), "backup a after 20 commits");
    assert_equal(&data, &image(&b), "backup b after 20 commits");

    // Backup b dies during commits; the primary keeps its operations and sends them when it
    // comes back.
    t.send(&format!("loop {id} 100"));
    std::thread::sleep(Duration::from_millis(200));
    b.kill();
    std::thread::sleep(Duration::from_millis(300));
    let status = pager.status();
    assert!(
        status.contains(&format!("backup {b_addr}: unreachable")),
        "{status}"
    );
    drop(t);
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    wait_in_sync(&pager, 2);
    assert_equal(&data, &image(&a), "backup a after the loop");
    assert_equal(&data, &image(&b), "backup b, restarted and caught up");

    // Garbage is refused, the backup goes on serving.
    let mut junk = TcpStream::connect(&a_addr).unwrap();
    junk.write_all(&[0xff; 64]).unwrap();
    let answer = wire::recv(&mut BufReader::new(&junk));
    assert!(!matches!(answer, Ok(Msg::Welcome { .. })), "{answer:?}");
    // A primary of an older epoch is fenced.
    let mut old = TcpStream::connect(&a_addr).unwrap();
    wire::send(
        &mut old,
        &Msg::Hello {
            uid,
            epoch: 0,
            name: "rel".into(),
        },
    )
    .unwrap();
    match wire::recv(&mut BufReader::new(&old)) {
        Ok(Msg::Refused { why }) => assert!(why.contains("fenced"), "{why}"),
        other => panic!("a stale epoch was not refused: {other:?}"),
    }
    let mut t = Tool::start(&pager);
    t.ok(&format!("map {id}"));
    t.ok(&format!("fill {id} 999"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&pager, 2);
    assert_equal(&data, &image(&a), "backup a after garbage");
    assert_equal(&data, &image(&b), "backup b at the end");
}
