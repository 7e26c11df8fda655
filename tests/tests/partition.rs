//! Remote paging across a real network stack (issue 16): site b runs in a network namespace of
//! its own, linked to the host (site a, and etcd) by a veth pair; a partition is that link
//! taken down. While it is down, a's fault on a page only b has raises SIGBUS after the bounded
//! wait, and a's commit fails with its pages still dirty; once the link is back (within b's
//! lease), the same commit succeeds and b holds it.

use std::time::{Duration, Instant};

use clu_tests::etcd::{free_port, Etcd};
use clu_tests::harness::{id_of, signal_of, site_args, Pager, Tool};
use clu_tests::netns::Netns;

/// b's lease outlives the partition, so that b still mounts its volume when the link is back.
const TTL: u64 = 20;
/// How long a's requests to b wait.
const REMOTE_TIMEOUT: u64 = 1;

#[test]
fn a_partition_fails_faults_and_commits_in_bounded_time_and_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = Netns::new(0);
    let etcd = Etcd::start_on(dir.path(), &ns.host_ip);
    let common = |listen: String| site_args(&etcd.url(), &listen, TTL, REMOTE_TIMEOUT);
    let a_args = common(format!("{}:{}", ns.host_ip, free_port()));
    let b_args = common(format!("{}:{}", ns.ns_ip, free_port()));
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let a = Pager::start_with(&dir.path().join("pa"), 1024, &a_args);
    let b = Pager::start_in(&ns.name, &ns.ns_ip, &dir.path().join("pb"), 1024, &b_args);

    // a writes a cluster of b's volume 2 and commits it there, across the link.
    let mut ta = Tool::start(&a);
    let id = id_of(&ta.ok("create 64 protected 2"));
    ta.ok(&format!("fill {id} 5"));
    ta.ok(&format!("commit {id}"));
    ta.ok(&format!("unmap {id}"));
    // No access history: the next map fetches nothing ahead, every page waits for a fault.
    a.admin(&["clu", "history", &id, "--clear"]);

    // Two processes on a: one maps the cluster and reads half of it; the other maps it too.
    let mut reader = Tool::start(&a);
    reader.ok(&format!("map {id}"));
    reader.ok(&format!("check {id} 5 0 32"));
    ta.ok(&format!("map {id}"));
    ta.ok(&format!("fill {id} 9 0 8"));

    ns.down();
    // A page only b has (the reads above brought pages 0..48 at most): the fault fails after
    // the bounded wait and raises SIGBUS.
    let t0 = Instant::now();
    reader.send(&format!("check {id} 5 60 1"));
    let st = reader
        .wait(Duration::from_secs(REMOTE_TIMEOUT * 10 + 10))
        .expect("the faulting process ended");
    assert_eq!(signal_of(st), Some(nix::libc::SIGBUS), "{st:?}");
    let fault_wait = t0.elapsed();
    // A commit fails in bounded time, its pages staying dirty.
    let t0 = Instant::now();
    let refused = ta.cmd(&format!("commit {id}"));
    assert!(refused.starts_with("err -107"), "{refused}");
    let commit_wait = t0.elapsed();
    assert!(
        commit_wait < Duration::from_secs(REMOTE_TIMEOUT * 10 + 5),
        "the refused commit took {commit_wait:?}"
    );
    eprintln!("partition: fault failed after {fault_wait:?}, commit after {commit_wait:?}");

    ns.up();
    // Within b's lease: the same commit goes through, and b holds it.
    let t0 = Instant::now();
    loop {
        let r = ta.cmd(&format!("commit {id}"));
        if r.starts_with("ok") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the commit never succeeded after the link came back: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ta.ok(&format!("unmap {id}"));
    let mut tb = Tool::start(&b);
    tb.ok(&format!("map {id}"));
    tb.ok(&format!("check {id} 9 0 8"));
    tb.ok(&format!("check {id} 5 8 56"));
}
