//! The pager end to end: a real `pager serve`, real client processes (`clu-tool`), real
//! SIGKILLs, data checked byte for byte.

use std::time::{Duration, Instant};

use clu_tests::harness::{id_of, signal_of, Pager, Tool};

const SIGBUS: i32 = 7;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn committed_data_survives_a_killed_pager_and_uncommitted_data_does_not() {
    let dir = scratch();
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 32"));
    a.ok(&format!("fill {id} 3"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    // A second cluster, committed once, then modified without commit.
    let id2 = id_of(&a.ok("create 8"));
    a.ok(&format!("fill {id2} 5"));
    a.ok(&format!("commit {id2}"));
    a.ok(&format!("fill {id2} 6 2 3"));
    a.ok(&format!("check {id2} 6 2 3"));

    pager.restart();
    let err = a.cmd(&format!("commit {id2}"));
    assert!(
        err.starts_with("err -107"),
        "a call after the pager died: {err}"
    );

    let mut b = Tool::start(&pager);
    assert_eq!(b.ok(&format!("map {id}")), "32");
    b.ok(&format!("check {id} 3"));
    assert_eq!(b.ok(&format!("map {id2}")), "8");
    b.ok(&format!("check {id2} 5"));
}

#[test]
fn two_processes_share_one_image() {
    let dir = scratch();
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let mut b = Tool::start(&pager);
    let id = id_of(&a.ok("create 8"));
    b.ok(&format!("map {id}"));
    a.ok(&format!("w {id} 100 42"));
    assert_eq!(b.ok(&format!("r {id} 100")), "42");
    b.ok(&format!("w {id} 20000 7"));
    assert_eq!(a.ok(&format!("r {id} 20000")), "7");
    // A store to a page the other process has mapped write-protected (clean after a commit).
    a.ok(&format!("commit {id}"));
    assert_eq!(b.ok(&format!("r {id} 100")), "42");
    b.ok(&format!("w {id} 101 9"));
    assert_eq!(a.ok(&format!("r {id} 101")), "9");
    // The last unmap writes back; the first does not end the image.
    a.ok(&format!("unmap {id}"));
    assert_eq!(b.ok(&format!("r {id} 101")), "9");
    b.ok(&format!("unmap {id}"));
    let mut c = Tool::start(&pager);
    c.ok(&format!("map {id}"));
    assert_eq!(
        c.ok(&format!("r {id} 101")),
        "9",
        "written back at the last unmap"
    );
    assert_eq!(c.ok(&format!("r {id} 20000")), "7");
}

#[test]
fn abort_restores_the_last_commit_even_from_the_paging_partition() {
    let dir = scratch();
    // A budget of 16 pages: most dirty pages of the 64-page cluster sit in the paging partition.
    let pager = Pager::start(&dir.path().join("root"), 16);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 64"));
    a.ok(&format!("fill {id} 1"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("fill {id} 2"));
    a.ok(&format!("check {id} 2"));
    a.ok(&format!("abort {id}"));
    a.ok(&format!("check {id} 1"));
    let status = pager.status();
    assert!(status.contains("paging slots     0 in use"), "{status}");
}

#[test]
fn resize_in_one_process_extend_in_another() {
    let dir = scratch();
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let mut b = Tool::start(&pager);
    let id = id_of(&a.ok("create 4"));
    a.ok(&format!("fill {id} 8"));
    b.ok(&format!("map {id}"));
    assert_eq!(b.ok(&format!("extend {id}")), "0");
    assert_eq!(a.ok(&format!("resize {id} 6")), "4 6");
    a.ok(&format!("fill {id} 9 4 6"));
    assert_eq!(b.ok(&format!("extend {id}")), "6");
    b.ok(&format!("check {id} 8 0 4"));
    b.ok(&format!("check {id} 9 4 6"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    b.ok(&format!("unmap {id}"));
    let mut c = Tool::start(&pager);
    assert_eq!(c.ok(&format!("map {id}")), "10");
    c.ok(&format!("check {id} 9 4 6"));
}

#[test]
fn a_cluster_larger_than_the_resident_budget_round_trips() {
    // Default: 16 MiB through a 1 MiB budget; CLU_SLOW=1: 1 GiB through 64 MiB.
    let slow = std::env::var_os("CLU_SLOW").is_some();
    let (pages, budget) = if slow { (262_144, 16_384) } else { (4096, 256) };
    let dir = scratch();
    let pager = Pager::start(&dir.path().join("root"), budget);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok(&format!("create {pages}")));
    a.ok(&format!("fill {id} 11"));
    a.ok(&format!("check {id} 11"));
    let status = pager.status();
    let resident: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("resident pages"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("resident pages in status");
    assert!(
        resident <= budget,
        "resident {resident} over budget {budget}\n{status}"
    );
    assert!(
        !status.contains(" 0 dirty (to the paging partition)"),
        "{status}"
    );
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    a.ok(&format!("map {id}"));
    a.ok(&format!("check {id} 11"));
}

#[test]
fn a_client_killed_mid_write_loses_only_its_uncommitted_changes() {
    let dir = scratch();
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 64"));
    a.ok(&format!("fill {id} 1"));
    a.ok(&format!("commit {id}"));
    for _ in 0..50 {
        a.send(&format!("fill {id} 2"));
    }
    std::thread::sleep(Duration::from_millis(20));
    a.kill();
    // The pager unmaps the dead process promptly (its connection closes, its uncommitted pages
    // are discarded); then the cluster maps afresh. A map sent before the pager saw the death
    // would share the image with the dead process's pages, as any second mapper does: wait
    // for the death to be seen (the `pager status` connection itself is the one left).
    let t0 = Instant::now();
    while pager.status_json()["connections"]["live"].as_u64() != Some(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the pager did not see the client's death within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 1"));
    assert!(pager.alive(), "the pager survived");
}

#[test]
fn a_killed_pager_makes_faults_sigbus_not_zeros_and_not_hangs() {
    let dir = scratch();
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    // Large enough that the read-around of the first fault (16 pages) leaves most unmapped.
    let id = id_of(&a.ok("create 1024"));
    a.ok(&format!("fill {id} 3"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    // No access-history prefetch and no cached image: either would map every page ahead of
    // the faults.
    pager.admin(&["clu", "history", &id, "--clear"]);
    pager.admin(&["cache", "drop", &id]);
    a.ok(&format!("map {id}"));
    let first = a.ok(&format!("r {id} 0"));
    pager.kill();
    let t0 = Instant::now();
    let err = a.cmd(&format!("commit {id}"));
    assert!(err.starts_with("err -107"), "{err}");
    // A page this process mapped before stays readable, with its data.
    assert_eq!(a.ok(&format!("r {id} 0")), first);
    // A page it never touched (far from the read-around of page 0): SIGBUS.
    a.send(&format!("r {id} {}", 700 * 4096));
    let st = a.wait(Duration::from_secs(10)).expect("no hang");
    assert_eq!(signal_of(st), Some(SIGBUS), "{st:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_fault_outside_the_cluster_raises_sigbus() {
    let dir = scratch();
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    a.send("outside");
    let st = a.wait(Duration::from_secs(10)).expect("no hang");
    assert_eq!(signal_of(st), Some(SIGBUS), "{st:?}");
    assert!(pager.status().contains("1 refused (SIGBUS)"));
}

#[test]
fn crash_rounds_never_show_a_torn_or_lost_commit() {
    let rounds: u32 = std::env::var("CLU_PAGER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = scratch();
    let mut pager = Pager::start(&dir.path().join("root"), 64);
    let mut a = Tool::start(&pager);
    // 96 pages with a 64-page budget: commits also take pages from the paging partition.
    let id = id_of(&a.ok("create 96"));
    drop(a);
    let (mut next, mut acked_total, mut unacked_seen) = (1u64, 0u64, 0u64);
    let mut rng = 0x1234_5678u64;
    for round in 0..rounds {
        let mut w = Tool::start(&pager);
        w.ok(&format!("map {id}"));
        w.send(&format!("loop {id} {next}"));
        rng = clu_tests::splitmix(rng);
        let deadline = Instant::now() + Duration::from_millis(30 + rng % 300);
        let mut last_acked = next - 1;
        while Instant::now() < deadline {
            if let Some(l) = w.line(Duration::from_millis(5)) {
                if let Some(v) = l.strip_prefix("acked ") {
                    last_acked = v.parse().expect("version");
                    acked_total += 1;
                }
            }
        }
        pager.restart();
        // Answers already written before the kill count too.
        while let Some(l) = w.line(Duration::from_millis(200)) {
            if let Some(v) = l.strip_prefix("acked ") {
                last_acked = v.parse().expect("version");
                acked_total += 1;
            }
        }
        drop(w);
        let mut r = Tool::start(&pager);
        r.ok(&format!("map {id}"));
        let seen: u64 = r.ok(&format!("which {id}")).parse().expect("a version");
        assert!(
            seen == last_acked || seen == last_acked + 1,
            "round {round}: storage holds version {seen}, last acknowledged {last_acked}"
        );
        if seen > last_acked {
            unacked_seen += 1;
        }
        r.ok(&format!("unmap {id}"));
        next = seen + 1;
    }
    eprintln!(
        "{rounds} pager kills: {acked_total} acknowledged commits, none lost or torn; {unacked_seen} in-flight commits found validated"
    );
    assert!(acked_total > 0, "the loop committed nothing");
}

#[test]
fn the_access_history_is_saved_at_unmap_and_replayed_at_the_next_map() {
    let dir = scratch();
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let history = |id: &str| pager.admin(&["clu", "history", id]);
    let wait_prefetched = |n: u64| {
        let t0 = Instant::now();
        while !pager.status().contains(&format!(", {n} prefetched")) {
            assert!(t0.elapsed() < Duration::from_secs(10), "{}", pager.status());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let clear = |id: &str| pager.admin(&["clu", "history", id, "--clear"]);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 256"));
    a.ok(&format!("fill {id} 4"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    assert!(
        history(&id).starts_with("256 pages: 0 1 2 3"),
        "{}",
        history(&id)
    );
    clear(&id);
    assert_eq!(history(&id), "0 pages:");
    // The history is for a map that starts from storage: the cached image goes.
    let uncache = |id: &str| pager.admin(&["cache", "drop", id]);
    uncache(&id);
    // A use with nothing to replay that reads three scattered pages: each fault brings in its
    // 16-page read-around block, recorded after the faulting page.
    a.ok(&format!("map {id}"));
    for page in [200u64, 3, 77] {
        a.ok(&format!("r {id} {}", page * 4096));
    }
    a.ok(&format!("unmap {id}"));
    assert!(
        history(&id).starts_with("48 pages: 200 192 193"),
        "{}",
        history(&id)
    );
    // The next map replays those 48 pages in the background; the data is right; the history
    // of this use is the replayed pages, then the pages that faulted.
    uncache(&id);
    a.ok(&format!("map {id}"));
    wait_prefetched(48);
    a.ok(&format!("check {id} 4"));
    a.ok(&format!("unmap {id}"));
    assert!(
        history(&id).starts_with("256 pages: 200 192 193"),
        "{}",
        history(&id)
    );
}

#[test]
fn write_protect_async_mode_loses_no_write_to_commit_eviction_or_abort() {
    let dir = scratch();
    // A 64-page budget for a 256-page cluster: pages written without a fault are evicted.
    let mut pager = Pager::start(&dir.path().join("root"), 64);
    let mut a = Tool::start_with(&pager, &[("CLU_WP_ASYNC", "1")]);
    let id = id_of(&a.ok("create 256"));
    a.ok(&format!("fill {id} 1"));
    a.ok(&format!("commit {id}"));
    // Writes to clean resident pages take no fault in this mode; the pager must find them.
    a.ok(&format!("fill {id} 2"));
    a.ok(&format!("check {id} 2"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("fill {id} 3 0 40"));
    a.ok(&format!("abort {id}"));
    a.ok(&format!("check {id} 2"));
    a.ok(&format!("w {id} 4096 77"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    pager.restart();
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    assert_eq!(b.ok(&format!("r {id} 4096")), "77");
    b.ok(&format!("w {id} 4096 2"));
    b.ok(&format!("check {id} 2 2 254"));
}
