//! Automated failover (issue 17): a reliable volume created with `--failover restore
//! --standby site-b` on site a; a's pager is SIGKILLed while a process commits; site b, the
//! standby, sees a's lease end, wins the mount in etcd, fences the backups, restores the
//! volume under its own id and serves it. A process on site c then maps the same cluster id
//! (through b now) and finds every acknowledged commit, byte for byte, and commits again; the
//! old primary, started again, does not take the volume back. Every site and backup server in
//! a network namespace of its own.

use std::time::{Duration, Instant};

use clu_tests::etcd::Etcd;
use clu_tests::harness::{id_of, Pager, Tool};
use clu_tests::lan::Lan;

const TTL: u64 = 2;
const REMOTE_TIMEOUT: u64 = 2;
const PAGES: u64 = 32;

fn site(lan: &mut Lan, root: &std::path::Path, etcd: &Etcd) -> Pager {
    lan.pager(root, &etcd.url(), TTL, REMOTE_TIMEOUT)
}

/// Maps `id` on `p`, checks that every page holds version `v - 1`, and commits version `v` of
/// every page, retrying until it is accepted; returns how long that took.
fn commit_when_served(p: &Pager, id: &str, v: u64, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let mut t = Tool::start(p);
        let mapped = t.cmd(&format!("map {id}"));
        if mapped.starts_with("ok") {
            let found = t.ok(&format!("which {id} 0 {PAGES}"));
            assert_eq!(
                found.trim().parse::<u64>().ok(),
                Some(v - 1),
                "the last acknowledged commit is not what the volume holds"
            );
            t.ok(&format!("fill {id} {v} 0 {PAGES}"));
            if t.cmd(&format!("commit {id}")).starts_with("ok") {
                let took = t0.elapsed();
                t.ok(&format!("unmap {id}"));
                return took;
            }
        }
        assert!(
            t0.elapsed() < within,
            "cluster {id} was not served again within {within:?}: {mapped}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The version every page of `id` holds, read by a fresh process on `p`.
fn version_on(p: &Pager, id: &str) -> u64 {
    let mut t = Tool::start(p);
    t.ok(&format!("map {id} ro"));
    let v = t.ok(&format!("which {id} 0 {PAGES}"));
    t.ok(&format!("unmap {id}"));
    v.trim().parse().expect("a version")
}

#[test]
fn a_standby_takes_a_dead_primarys_volume_over_with_every_acknowledged_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let bk1 = lan.backup(&dir.path().join("bk1"), "backup-1");
    let bk2 = lan.backup(&dir.path().join("bk2"), "backup-2");
    let mut a = site(&mut lan, &dir.path().join("a"), &etcd);
    let b = site(&mut lan, &dir.path().join("b"), &etcd);
    let c = site(&mut lan, &dir.path().join("c"), &etcd);

    // Refused: only the primary itself as standby, a bad site name, standbys without the
    // policy, the policy without backups.
    let e = a.admin_fails(&[
        "vol",
        "create",
        "x",
        "--backup",
        &bk1.addr,
        "--failover",
        "restore",
        "--standby",
        "site-a",
    ]);
    assert!(e.contains("only this site"), "{e}");
    let e = a.admin_fails(&[
        "vol",
        "create",
        "x",
        "--backup",
        &bk1.addr,
        "--failover",
        "restore",
        "--standby",
        "Bad Name",
    ]);
    assert!(e.contains("bad site name"), "{e}");
    let e = a.admin_fails(&[
        "vol",
        "create",
        "x",
        "--backup",
        &bk1.addr,
        "--standby",
        "site-b",
    ]);
    assert!(e.contains("--failover restore"), "{e}");
    let e = a.admin_fails(&[
        "vol",
        "create",
        "x",
        "--failover",
        "restore",
        "--standby",
        "site-b",
    ]);
    assert!(e.contains("--backup"), "{e}");

    let made = a.admin(&[
        "vol",
        "create",
        "rel",
        "--backup",
        &bk1.addr,
        "--backup",
        &bk2.addr,
        "--sync",
        "2",
        "--failover",
        "restore",
        "--standby",
        "site-b",
    ]);
    let vol: u16 = made
        .split(['(', ')'])
        .nth(1)
        .and_then(|v| u16::from_str_radix(v, 16).ok())
        .unwrap_or_else(|| panic!("{made}"));

    // A process on a commits versions 1, 2, ... (each acknowledged by both backups) until a
    // dies.
    let id = {
        let mut t = Tool::start(&a);
        let id = id_of(&t.ok(&format!("create {PAGES} protected {vol}")));
        t.ok(&format!("fill {id} 1 0 {PAGES}"));
        t.ok(&format!("commit {id}"));
        id
    };
    let mut writer = Tool::start(&a);
    writer.ok(&format!("map {id}"));
    let mut acked = 1;
    for v in 2..=20 {
        writer.ok(&format!("fill {id} {v} 0 {PAGES}"));
        writer.ok(&format!("commit {id}"));
        acked = v;
    }
    // b is a standby, watching.
    a.kill();
    let killed = Instant::now();
    drop(writer);

    // c reaches the cluster again (through b) and commits: under 10 s here (the bench
    // measures it; the goal is 5 s with a 2 s lease).
    let took = commit_when_served(&c, &id, acked + 1, Duration::from_secs(30));
    let since_kill = killed.elapsed();
    eprintln!("first commit on the new primary {since_kill:?} after the kill (c's loop: {took:?})");
    assert!(
        since_kill < Duration::from_secs(10),
        "failover took {since_kill:?}"
    );
    let list = c.admin(&["vol", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("rel") && l.contains("site-b")),
        "the catalog does not name b as rel's site: {list}"
    );
    assert_eq!(version_on(&b, &id), acked + 1, "read on the new primary");
    assert_eq!(version_on(&c, &id), acked + 1, "read through it");

    // The new primary commits too.
    commit_when_served(&b, &id, acked + 2, Duration::from_secs(10));
    let status = b.status();
    assert!(status.contains("rel"), "{status}");

    // The old primary comes back: it does not take the volume back, and reaches it on b.
    a.restart();
    std::thread::sleep(Duration::from_secs(1));
    let list = a.admin(&["vol", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("rel") && l.contains("site-b")),
        "{list}"
    );
    assert_eq!(
        version_on(&a, &id),
        acked + 2,
        "read on the old primary, through b"
    );
    drop((bk1, bk2));
}
