//! Kill -9 either side during remote commits (issue 16): a process on site a commits version
//! after version of a cluster of site b's volume; at a random moment a's pager or b's pager is
//! SIGKILLed and started again. After each kill, the cluster holds exactly one committed
//! version (every page of the same version, never a torn one), and that version is the last
//! acknowledged one or the one in flight: no acknowledged commit is lost. Read on b from its
//! storage and on a across the network. Each site in a network namespace of its own. `CLU_SITES_CRASH_ROUNDS` sets the rounds (6).

use std::time::{Duration, Instant};

use clu_tests::etcd::Etcd;
use clu_tests::harness::{id_of, Pager, Tool};
use clu_tests::lan::Lan;

const TTL: u64 = 2;
const REMOTE_TIMEOUT: u64 = 2;
const PAGES: u64 = 16;

/// A site on root `root` in a network namespace of its own on the test's LAN.
fn site(lan: &mut Lan, root: &std::path::Path, etcd: &Etcd) -> Pager {
    lan.pager(root, &etcd.url(), TTL, REMOTE_TIMEOUT)
}

/// The version every page holds, read by a fresh process on `p` (retried while the cluster's
/// image is still placed on the other site, or its volume is being mounted again).
fn version_on(p: &Pager, id: &str) -> u64 {
    let t0 = Instant::now();
    loop {
        let mut t = Tool::start(p);
        let mapped = t.cmd(&format!("map {id}"));
        if mapped.starts_with("ok") {
            let v = t.cmd(&format!("which {id} 0 {PAGES}"));
            assert!(v.starts_with("ok "), "torn or unreadable cluster: {v}");
            t.ok(&format!("unmap {id}"));
            return v[3..].trim().parse().expect("a version");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "cluster {id} never mapped again: {mapped}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_of_either_site_during_remote_commits_loses_no_acknowledged_commit() {
    let rounds: usize = std::env::var("CLU_SITES_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let mut a = site(&mut lan, &dir.path().join("a"), &etcd);
    let mut b = site(&mut lan, &dir.path().join("b"), &etcd);

    // A cluster of b's volume 2, created from a.
    let id = {
        let mut t = Tool::start(&a);
        let id = id_of(&t.ok(&format!("create {PAGES} protected 2")));
        t.ok(&format!("fill {id} 1"));
        t.ok(&format!("commit {id}"));
        t.ok(&format!("unmap {id}"));
        id
    };
    let mut committed = 1u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut total_acked = 0u64;
    for round in 0..rounds {
        // a commits committed+1, committed+2, ... until the kill.
        let mut writer = Tool::start(&a);
        writer.ok(&format!("map {id}"));
        writer.send(&format!("loop {id} {} 0 {PAGES}", committed + 1));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        let kill_a = round % 2 == 0;
        if kill_a {
            a.kill();
        } else {
            b.kill();
        }
        // The writer's process: gone with its pager, or failing its commits; killed either way.
        writer.kill();
        let mut last_acked = committed;
        while let Some(line) = writer.line(Duration::from_millis(500)) {
            let Some(v) = line.strip_prefix("acked ") else {
                continue;
            };
            let v: u64 = v.trim().parse().expect("a version");
            assert_eq!(v, last_acked + 1, "versions are acknowledged in order");
            last_acked = v;
        }
        assert!(
            last_acked > committed,
            "round {round}: nothing was acknowledged before the kill"
        );
        if kill_a {
            a.restart_when_lease_ends(Duration::from_secs(TTL * 10));
        } else {
            b.restart_when_lease_ends(Duration::from_secs(TTL * 10));
        }
        let on_b = version_on(&b, &id);
        assert!(
            on_b == last_acked || on_b == last_acked + 1,
            "round {round} (killed {}): b holds version {on_b}, the last acknowledged was {last_acked}",
            if kill_a { "a" } else { "b" }
        );
        let on_a = version_on(&a, &id);
        assert_eq!(on_a, on_b, "round {round}: a reads what b stores");
        total_acked += last_acked - committed;
        committed = on_b;
    }
    eprintln!("sites crash test: {rounds} rounds, {total_acked} acknowledged remote commits, none lost, none torn");
}
