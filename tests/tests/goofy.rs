//! Goofy end to end, on loopback: pagers with a reliable volume and real backup servers.
//! - backups byte-equal to the primary after a burst of commits; a backup killed during
//!   commits, restarted and caught up from the primary's journal (its image files are the same
//!   files: no full copy); garbage and a stale epoch refused;
//! - a backup down long enough to go stale, then a full copy;
//! - the primary killed during synchronous commits, the volume restored on another manager from
//!   the freshest backup with every acknowledged commit; the old primary restarted is fenced;
//! - a restoration while the old primary still commits: it is fenced before the image is
//!   fetched, so its next commit fails.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clu_goofy::backup::BackupServer;
use clu_goofy::wire::{self, Msg};
use clu_tests::harness::{cell_keys, pager_bin, wait_listening, Pager, Tool};
use clu_transport::{KeyFiles, Transport};
struct Backup {
    child: Child,
    root: PathBuf,
}

impl Backup {
    fn start(root: &Path, addr: &str) -> Backup {
        let site = format!("backup-{}", addr.rsplit(':').next().unwrap_or("0"));
        let keys = cell_keys(&site);
        let child = Command::new(pager_bin())
            .args(["backup-server", "--root"])
            .arg(root)
            .args(["--listen", addr])
            .arg("--keys")
            .arg(&keys)
            .args(["--site", &site])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start a backup server");
        wait_listening(addr);
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

/// Waits until `n` backups of the status are in sync with nothing left to send.
fn wait_in_sync(pager: &Pager, n: usize) {
    let t0 = Instant::now();
    loop {
        let status = pager.status();
        let synced = status
            .lines()
            .filter(|l| l.contains(": in sync;") && l.contains(", 0 bytes and"))
            .count();
        if synced == n {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the status has a line with `what`.
fn wait_status(pager: &Pager, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        let status = pager.status();
        if status.contains(what) {
            return status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no `{what}` in {status}"
        );
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

/// Every cluster file of the volume at `vol_dir` equals the backup's image of it.
fn assert_volume_equal(vol_dir: &Path, bk: &Backup, uid: u64, what: &str) {
    let image = BackupServer::image_dir(&bk.root, uid).join("clusters");
    let mut n = 0;
    for e in std::fs::read_dir(vol_dir.join("clusters")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".data") {
            assert_equal(
                &vol_dir.join("clusters").join(&name),
                &image.join(&name),
                &format!("{what}: {name}"),
            );
            n += 1;
        }
    }
    assert!(n > 0, "{what}: no cluster compared");
}

/// A file's identity: inode and birth time (an inode number alone can be reused).
/// The LSN (file, offset) the status line of backup `addr` says it acknowledged.
fn acknowledged(status: &str, addr: &str) -> (u64, u64) {
    let line = status
        .lines()
        .find(|l| l.contains(&format!("backup {addr}:")))
        .unwrap_or_else(|| panic!("no backup {addr} in {status}"));
    let lsn = line
        .split("acknowledged ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no acknowledged LSN in {line}"));
    let (file, offset) = lsn.split_once(":0x").expect("an LSN");
    (
        file.parse().unwrap(),
        u64::from_str_radix(offset, 16).unwrap(),
    )
}

fn inode(p: &Path) -> (u64, std::time::SystemTime) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.created().unwrap())
}

fn create_cluster(t: &mut Tool, pages: u64) -> String {
    t.ok(&format!("create {pages} shareable 2"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
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
    let id = create_cluster(&mut t, 64);
    for v in 1..=20 {
        t.ok(&format!("fill {id} {v} {} 16", (v * 7) % 48));
        t.ok(&format!("commit {id}"));
    }
    wait_in_sync(&pager, 2);
    let data = vol_dir.join("clusters/0000.data");
    let image = |bk: &Backup| BackupServer::image_dir(&bk.root, uid).join("clusters/0000.data");
    assert_equal(&data, &image(&a), "backup a after 20 commits");
    assert_equal(&data, &image(&b), "backup b after 20 commits");

    // Backup b dies during commits; the primary's journal keeps what it misses, and sends it
    // when it comes back: the same image files, brought up to date (no full copy).
    let b_inode = inode(&image(&b));
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
    // What b acknowledged before it died is where it stands when it comes back (its image's
    // note, written with the pages in one sync): asked while the primary is stopped.
    let acked = acknowledged(&pager.status(), &b_addr);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pager.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    let t_old = Transport::tls(KeyFiles::in_dir(&cell_keys("site-x"), "site-x"), "site-x").unwrap();
    let mut conn = BufReader::new(t_old.connect(&b_addr, Duration::from_secs(3)).unwrap());
    let inquire = Msg::Inquire {
        site: "site-x".into(),
        name: "rel".into(),
    };
    wire::send(conn.get_mut(), &inquire).unwrap();
    let answer = wire::recv(&mut conn);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pager.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    match answer {
        Ok(Msg::Image(i)) => assert!(
            (i.position.lsn.file, i.position.lsn.offset) >= acked && i.position.complete,
            "b restarted at {:?}, having acknowledged {acked:?}",
            i.position
        ),
        other => panic!("b did not say where it stands: {other:?}"),
    }
    wait_in_sync(&pager, 2);
    assert_equal(&data, &image(&a), "backup a after the loop");
    assert_equal(&data, &image(&b), "backup b, restarted and caught up");
    assert_eq!(
        inode(&image(&b)),
        b_inode,
        "caught up from the log, not copied"
    );

    // Garbage is refused, the backup goes on serving.
    let mut junk = TcpStream::connect(&a_addr).unwrap();
    junk.write_all(&[0xff; 64]).unwrap();
    let answer = wire::recv(&mut BufReader::new(&junk));
    assert!(!matches!(answer, Ok(Msg::Welcome { .. })), "{answer:?}");
    // A primary of an older epoch is fenced (over TLS, with a certificate of the cell).
    let t = Transport::tls(
        KeyFiles::in_dir(&cell_keys("site-old"), "site-old"),
        "site-old",
    )
    .expect("the cell's keys");
    let mut old = BufReader::new(t.connect(&a_addr, Duration::from_secs(3)).unwrap());
    wire::send(
        old.get_mut(),
        &Msg::Hello {
            site: "site-old".into(),
            uid,
            epoch: 0,
            name: "rel".into(),
            backups: vec![],
            sync: 0,
        },
    )
    .unwrap();
    match wire::recv(&mut old) {
        Ok(Msg::Fenced { why }) => assert!(why.contains("fenced"), "{why}"),
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

#[test]
fn a_backup_too_far_behind_goes_stale_and_gets_a_full_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Backup::start(&dir.path().join("backup-a"), &a_addr);
    let mut b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    // A retention bound of 1 MiB of log.
    let pager = Pager::start_env(
        &dir.path().join("root"),
        4096,
        &[("CLU_GOOFY_RETAIN_MB", "1")],
    );
    pager.admin(&[
        "vol", "create", "rel", "--backup", &a_addr, "--backup", &b_addr,
    ]);
    let vol_dir = dir.path().join("root/vol-0002");
    let uid = uid_of(&vol_dir);
    let mut t = Tool::start(&pager);
    let x = create_cluster(&mut t, 128);
    let y = create_cluster(&mut t, 16);
    t.ok(&format!("fill {x} 1"));
    t.ok(&format!("commit {x}"));
    t.ok(&format!("fill {y} 2"));
    t.ok(&format!("commit {y}"));
    wait_in_sync(&pager, 2);
    let image = BackupServer::image_dir(&b.root, uid).join("clusters/0000.data");
    let b_inode = inode(&image);

    b.kill();
    // Damage the image of y, which no later commit touches: only a full copy repairs it.
    let y_image = BackupServer::image_dir(&b.root, uid).join("clusters/0001.data");
    let mut bytes = std::fs::read(&y_image).unwrap();
    bytes[5000] ^= 0x5a;
    std::fs::write(&y_image, bytes).unwrap();
    // 10 commits of 128 pages: 5 MiB of log, past the bound.
    for v in 3..13 {
        t.ok(&format!("fill {x} {v}"));
        t.ok(&format!("commit {x}"));
    }
    wait_status(&pager, &format!("backup {b_addr}: stale"));
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    // Commits go on during the copy.
    for v in 13..16 {
        t.ok(&format!("fill {x} {v}"));
        t.ok(&format!("commit {x}"));
    }
    wait_in_sync(&pager, 2);
    assert_volume_equal(&vol_dir, &a, uid, "backup a");
    assert_volume_equal(&vol_dir, &b, uid, "backup b after its full copy");
    assert_ne!(inode(&image), b_inode, "a full copy rebuilt the image");
}

/// A primary on a reliable volume with `--sync 1` and two backups, and a writer committing
/// version after version of a 32-page cluster (30 acknowledged so far).
struct Scene {
    dir: tempfile::TempDir,
    a_addr: String,
    b_addr: String,
    a: Backup,
    b: Backup,
    old: Pager,
    uid: u64,
    t: Tool,
    id: String,
    acked: u64,
}

fn writing_primary() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Backup::start(&dir.path().join("backup-a"), &a_addr);
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    let old = Pager::start(&dir.path().join("root-1"), 4096);
    // Commits wait for one acknowledgement: each one the writer saw return is on a backup.
    old.admin(&[
        "vol", "create", "rel", "--backup", &a_addr, "--backup", &b_addr, "--sync", "1",
    ]);
    let uid = uid_of(&dir.path().join("root-1/vol-0002"));
    let mut t = Tool::start(&old);
    let id = create_cluster(&mut t, 32);
    t.send(&format!("loop {id} 1"));
    let mut acked = 0u64;
    let t0 = Instant::now();
    while acked < 30 {
        let line = t.line(Duration::from_secs(10)).expect("the writer commits");
        acked = line.strip_prefix("acked ").unwrap().parse().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    Scene {
        dir,
        a_addr,
        b_addr,
        a,
        b,
        old,
        uid,
        t,
        id,
        acked,
    }
}

/// Checks a restoration's report and the restored version (the last acknowledged or the one
/// in flight); returns a client of the restored volume with the cluster mapped.
fn check_restored(
    new: &Pager,
    report: &str,
    a_addr: &str,
    b_addr: &str,
    id: &str,
    acked: u64,
) -> Tool {
    assert!(report.contains("restored volume rel"), "{report}");
    assert!(report.contains("to LSN "), "{report}");
    assert!(
        report.contains(&format!("fenced {a_addr} at epoch 2")),
        "{report}"
    );
    assert!(
        report.contains(&format!("fenced {b_addr} at epoch 2")),
        "{report}"
    );
    let mut t = Tool::start(new);
    t.ok(&format!("map {id}"));
    let seed: u64 = t.ok(&format!("which {id}")).parse().unwrap();
    assert!(
        seed == acked || seed == acked + 1,
        "restored version {seed}, last acknowledged {acked}"
    );
    t
}

#[test]
fn a_restored_volume_has_every_acknowledged_commit_and_the_old_primary_is_fenced() {
    let Scene {
        dir,
        a_addr,
        b_addr,
        a,
        b,
        mut old,
        uid,
        mut t,
        id,
        mut acked,
    } = writing_primary();
    old.kill();
    while let Some(line) = t.line(Duration::from_secs(2)) {
        if let Some(v) = line.strip_prefix("acked ") {
            acked = v.parse().unwrap();
        }
    }
    drop(t);

    // Restored on another manager, from backup b (which finds a through its state).
    let new = Pager::start(&dir.path().join("root-2"), 4096);
    let report = new.admin(&["vol", "restore", "rel", "--from", &b_addr]);
    let mut t = check_restored(&new, &report, &a_addr, &b_addr, &id, acked);
    // The new primary keeps the volume's backups: they follow it.
    t.ok(&format!("fill {id} 1000"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&new, 2);
    let vol_dir = dir.path().join("root-2/vol-0002");
    assert_volume_equal(&vol_dir, &a, uid, "backup a after the restoration");
    assert_volume_equal(&vol_dir, &b, uid, "backup b after the restoration");
    let json = new.admin(&["status", "--json"]);
    assert!(json.contains("\"epoch\":2"), "{json}");
    assert!(json.contains("\"state\":\"in sync\""), "{json}");

    // The old primary restarts: it learns it was replaced, and refuses the volume.
    old.restart();
    let status = old.status();
    assert!(status.contains("FENCED"), "{status}");
    let mut t = Tool::start(&old);
    let refused = t.cmd(&format!("map {id}"));
    assert!(refused.contains("fenced"), "{refused}");
    // And the backups still follow the new primary only.
    let mut t = Tool::start(&new);
    t.ok(&format!("map {id}"));
    t.ok(&format!("fill {id} 1001"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&new, 2);
    assert_volume_equal(&vol_dir, &a, uid, "backup a at the end");
}

#[test]
fn a_restoration_fences_a_primary_that_still_runs_before_it_fetches() {
    let Scene {
        dir,
        a_addr,
        b_addr,
        a,
        b,
        mut old,
        uid,
        mut t,
        id,
        mut acked,
    } = writing_primary();
    // The old primary is still running (a manager cut off, say) when the volume is restored
    // elsewhere: the restoration fences the backups first, so its next commit fails.
    // Restored on another manager, from backup b (which finds a through its state).
    let new = Pager::start(&dir.path().join("root-2"), 4096);
    let report = new.admin(&["vol", "restore", "rel", "--from", &b_addr]);
    let refusal = loop {
        let line = t
            .line(Duration::from_secs(40))
            .expect("the old writer ends");
        match line.strip_prefix("acked ") {
            Some(v) => acked = v.parse().unwrap(),
            None => break line,
        }
    };
    assert!(refusal.contains("fenced"), "{refusal}");
    drop(t);
    let _t = check_restored(&new, &report, &a_addr, &b_addr, &id, acked);
    // Nothing the old primary did after the fence reached the backups: they hold exactly the
    // restored volume.
    wait_in_sync(&new, 2);
    let vol_dir = dir.path().join("root-2/vol-0002");
    assert_volume_equal(&vol_dir, &a, uid, "backup a");
    assert_volume_equal(&vol_dir, &b, uid, "backup b");
    // The old primary, restarted, stays fenced.
    old.restart();
    assert!(old.status().contains("FENCED"));
}

#[test]
fn a_primary_killed_and_restarted_waits_for_repair_and_its_backups_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Backup::start(&dir.path().join("backup-a"), &a_addr);
    let mut b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    pager.admin(&[
        "vol", "create", "rel", "--backup", &a_addr, "--backup", &b_addr,
    ]);
    let vol_dir = dir.path().join("root/vol-0002");
    let uid = uid_of(&vol_dir);
    let mut t = Tool::start(&pager);
    let id = create_cluster(&mut t, 64);
    t.ok(&format!("fill {id} 1"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&pager, 2);
    // Backup b is down while the primary commits and is killed: what b misses is in the
    // primary's journal, which recovery keeps (everything since its last checkpoint).
    b.kill();
    t.send(&format!("loop {id} 2"));
    for _ in 0..20 {
        t.line(Duration::from_secs(10)).expect("the writer commits");
    }
    pager.kill();
    drop(t);
    let b_image =
        BackupServer::image_dir(&dir.path().join("backup-b"), uid).join("clusters/0000.data");
    let b_inode = inode(&b_image);
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    pager.restart();
    wait_in_sync(&pager, 2);
    assert!(!pager.status().contains("FENCED"));
    assert_volume_equal(&vol_dir, &a, uid, "backup a after the primary's restart");
    assert_volume_equal(&vol_dir, &b, uid, "backup b after the primary's restart");
    assert_eq!(
        inode(&b_image),
        b_inode,
        "caught up from the log, not copied"
    );
    let mut t = Tool::start(&pager);
    t.ok(&format!("map {id}"));
    t.ok(&format!("fill {id} 77"));
    t.ok(&format!("commit {id}"));
    wait_in_sync(&pager, 2);
    assert_volume_equal(&vol_dir, &b, uid, "backup b at the end");
}

/// Waits until `path` is gone (a cluster file the backup destroyed).
fn wait_gone(path: &Path, what: &str) {
    let t0 = Instant::now();
    while path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: {path:?} still there"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_destroyed_cluster_is_destroyed_on_every_backup_even_one_that_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Backup::start(&dir.path().join("backup-a"), &a_addr);
    let mut b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    pager.admin(&[
        "vol", "create", "rel", "--backup", &a_addr, "--backup", &b_addr,
    ]);
    let vol_dir = dir.path().join("root/vol-0002");
    let uid = uid_of(&vol_dir);
    let mut t = Tool::start(&pager);
    let gone = create_cluster(&mut t, 16);
    let kept = create_cluster(&mut t, 16);
    for id in [&gone, &kept] {
        t.ok(&format!("fill {id} 5"));
        t.ok(&format!("commit {id}"));
        t.ok(&format!("unmap {id}"));
    }
    wait_in_sync(&pager, 2);
    let image = |bk: &Backup, n: u16| {
        BackupServer::image_dir(&bk.root, uid).join(format!("clusters/{n:04x}.data"))
    };
    assert!(image(&a, 0).exists() && image(&b, 0).exists());

    // b is down when the cluster is destroyed: a destroys it at once; the primary records
    // that b is still to be told, across a restart of its own.
    b.kill();
    pager.admin(&["clu", "destroy", &gone]);
    wait_gone(&image(&a, 0), "backup a");
    let conf = std::fs::read_to_string(vol_dir.join("goofy.conf")).unwrap();
    assert!(conf.contains("destroyed 0"), "{conf}");
    pager.restart();
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    wait_gone(&image(&b, 0), "backup b, back");
    assert!(
        image(&a, 1).exists() && image(&b, 1).exists(),
        "the other cluster stays"
    );
    // Both told: the record goes.
    let t0 = Instant::now();
    loop {
        let conf = std::fs::read_to_string(vol_dir.join("goofy.conf")).unwrap();
        if !conf.contains("destroyed") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{conf}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A restoration from a backup does not bring it back.
    pager.kill();
    let new = Pager::start(&dir.path().join("root-new"), 4096);
    new.admin(&["vol", "restore", "rel", "--from", &b_addr]);
    let list = new.admin(&["clu", "list", "2"]);
    assert!(!list.contains(&gone), "{list}");
    assert!(list.contains(&kept), "{list}");
    let mut t = Tool::start(&new);
    t.ok(&format!("map {kept}"));
    t.ok(&format!("check {kept} 5"));
}

#[test]
fn a_restoration_that_cannot_meet_every_acknowledged_commit_is_refused_unless_forced() {
    // `--sync 1` with two backups: a commit returned once one of them had it, so a
    // restoration must reach both. With a down, it is refused (b is fenced all the same);
    // `--force` restores from b.
    let Scene {
        dir,
        mut a,
        b: _b,
        b_addr,
        mut old,
        t,
        id,
        acked,
        ..
    } = writing_primary();
    drop(t);
    old.kill();
    a.kill();
    let new = Pager::start(&dir.path().join("root-2"), 4096);
    let refused = new.admin_fails(&["vol", "restore", "rel", "--from", &b_addr]);
    assert!(
        refused.contains("not restored") && refused.contains("needs 2"),
        "{refused}"
    );
    assert!(
        new.admin(&["vol", "list"])
            .lines()
            .all(|l| !l.contains("rel")),
        "a refused restoration left a volume behind"
    );
    let report = new.admin(&["vol", "restore", "rel", "--from", &b_addr, "--force"]);
    assert!(report.contains("--force"), "{report}");
    assert!(report.contains("restored volume rel"), "{report}");
    let mut t = Tool::start(&new);
    t.ok(&format!("map {id}"));
    let seed: u64 = t.ok(&format!("which {id}")).parse().unwrap();
    // b may lack the last commits a alone acknowledged: what it has is a whole version.
    assert!(
        seed <= acked + 1,
        "version {seed}, last acknowledged {acked}"
    );
}

#[test]
fn an_asynchronous_restoration_reports_the_commits_it_loses() {
    // An asynchronous volume: commits return before any backup has them. Both backups are
    // stopped (SIGSTOP) while the primary commits versions 4 to 8: version 4's operation
    // reaches their sockets, and, while the links wait for its acknowledgement, what the
    // journal wrote after it (versions 5 to 8). The primary is SIGKILLed; the restoration
    // gets version 4 and reports exactly the 4 commits lost.
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Backup::start(&dir.path().join("backup-a"), &a_addr);
    let b = Backup::start(&dir.path().join("backup-b"), &b_addr);
    let mut old = Pager::start(&dir.path().join("root-1"), 4096);
    old.admin(&[
        "vol", "create", "arel", "--backup", &a_addr, "--backup", &b_addr,
    ]);
    let mut t = Tool::start(&old);
    let id = create_cluster(&mut t, 8);
    for v in 1..=3 {
        t.ok(&format!("fill {id} {v}"));
        t.ok(&format!("commit {id}"));
    }
    wait_in_sync(&old, 2);
    let signal = |b: &Backup, sig: &str| {
        let st = Command::new("kill")
            .args([sig, &b.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    signal(&a, "-STOP");
    signal(&b, "-STOP");
    for v in 4..=8 {
        t.ok(&format!("fill {id} {v}"));
        t.ok(&format!("commit {id}"));
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(300));
    old.kill();
    drop(t);
    signal(&a, "-CONT");
    signal(&b, "-CONT");
    std::thread::sleep(Duration::from_millis(500));

    let new = Pager::start(&dir.path().join("root-2"), 4096);
    let report = new.admin(&["vol", "restore", "arel", "--from", &a_addr]);
    assert!(
        report.contains("4 later operations (commits) are lost"),
        "{report}"
    );
    let mut t = Tool::start(&new);
    t.ok(&format!("map {id}"));
    let version: u64 = t.ok(&format!("which {id}")).parse().unwrap();
    assert_eq!(version, 4, "{report}");
    // The new primary says so too.
    let status = new.status();
    assert!(
        status.contains("restored from") && status.contains("4 later operations"),
        "{status}"
    );
}
