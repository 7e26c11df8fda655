//! Pagers of several sites in one cell, its catalog on a real etcd (issue 16, thesis C5, C8,
//! M2, A6): volume ids allocated across the cell, mount = lock bound to the site's lease, a
//! site SIGKILLed losing its mounts when its lease expires, a site that loses etcd refusing
//! every change to its volumes. Every site runs in a network namespace of its own, on a
//! bridge with the host (where etcd listens).

use std::path::Path;
use std::time::{Duration, Instant};

use clu_tests::etcd::Etcd;
use clu_tests::harness::{id_of, Pager, Tool};
use clu_tests::lan::Lan;

/// The lease's TTL the pagers of these tests run with, in seconds.
const TTL: u64 = 2;
/// How long a request to another site waits, in seconds.
const REMOTE_TIMEOUT: u64 = 2;

/// A site on root `root` in a network namespace of its own on the test's LAN.
fn site(lan: &mut Lan, root: &Path, etcd: &Etcd) -> Pager {
    lan.pager(root, &etcd.url(), TTL, REMOTE_TIMEOUT)
}

/// The rows of a table whose first column is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
}

/// Waits until `pred` holds of `pager site list`, for at most `within`.
fn until_sites(p: &Pager, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let s = p.admin(&["site", "list"]);
        if pred(&s) {
            return s;
        }
        assert!(t0.elapsed() < within, "site list never changed:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sites_share_one_catalog_and_a_dead_sites_mounts_go_with_its_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let ra = dir.path().join("a");
    let mut a = site(&mut lan, &ra, &etcd);
    let b = site(&mut lan, &dir.path().join("b"), &etcd);

    // Each new root's `default` volume got its id from the cell: 1 and 2, in start order.
    let vols = b.admin(&["vol", "list"]);
    assert_eq!(row(&vols, "0001")[3], "site-a", "{vols}");
    assert_eq!(row(&vols, "0001")[4], "site-a", "{vols}");
    assert_eq!(row(&vols, "0002")[4], "site-b", "{vols}");

    // Volumes created on two sites at once get distinct ids.
    let (ca, cb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.admin(&["vol", "create", "data"]));
        let tb = s.spawn(|| b.admin(&["vol", "create", "more"]));
        (ta.join().expect("a"), tb.join().expect("b"))
    });
    let vols = a.admin(&["vol", "list"]);
    let data = row(&vols, "0003")[1].to_owned();
    let more = row(&vols, "0004")[1].to_owned();
    let mut names = [data.clone(), more.clone()];
    names.sort();
    assert_eq!(names, ["data", "more"], "{ca} / {cb}\n{vols}");
    let data_id = if data == "data" { "0003" } else { "0004" };
    let epoch_a: u64 = row(&vols, data_id)[5].parse().expect("an epoch");

    let status = b.status();
    assert!(status.contains("site site-b of cell default"), "{status}");
    assert!(status.contains("lease alive"), "{status}");

    // Both sites alive, each with its volumes.
    let sites = b.admin(&["site", "list"]);
    assert_eq!(row(&sites, "site-a")[2], "yes", "{sites}");
    assert_eq!(row(&sites, "site-b")[2], "yes", "{sites}");

    // Data committed on a, for the byte-for-byte check after the restart below.
    let mut t = Tool::start(&a);
    let id = id_of(&t.ok(&format!("create 8 protected {}", &data_id[2..])));
    t.ok(&format!("fill {id} 7"));
    t.ok(&format!("commit {id}"));
    t.kill();

    // A third site on a copy of a's storage (as if it shared a's disks): the cell lets it
    // mount none of a's volumes while a holds them, and names a.
    let rc = dir.path().join("c");
    let cp = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&ra)
        .arg(&rc)
        .status()
        .expect("cp");
    assert!(cp.success());
    let c = site(&mut lan, &rc, &etcd);
    let err = c.admin_fails(&["vol", "mount", "data"]);
    assert!(err.contains("mounted by site `site-a`"), "{err}");

    // SIGKILL a: its lease outlives it by at most TTL, then its mounts are gone.
    a.kill();
    let sites = until_sites(&b, Duration::from_secs(TTL * 3 + 2), |s| {
        s.lines()
            .any(|l| l.starts_with("site-a ") && l.contains(" no "))
    });
    assert_eq!(row(&sites, "site-a")[3], "-", "{sites}");
    let vols = b.admin(&["vol", "list"]);
    assert_eq!(row(&vols, data_id)[4], "-", "{vols}");

    // Now c may mount it, under a higher epoch.
    c.admin(&["vol", "mount", "data"]);
    let vols = b.admin(&["vol", "list"]);
    assert_eq!(row(&vols, data_id)[4], "site-c", "{vols}");
    let epoch_c: u64 = row(&vols, data_id)[5].parse().expect("an epoch");
    assert!(epoch_c > epoch_a, "epoch {epoch_c} after {epoch_a}\n{vols}");

    // a restarts: it rejoins, remounts its default volume, and leaves `data` to c.
    a.restart();
    let vols = a.admin(&["vol", "list"]);
    assert_eq!(row(&vols, "0001")[4], "site-a", "{vols}");
    assert_eq!(row(&vols, data_id)[4], "site-c", "{vols}");
    // c unmounts; a mounts it again and reads what it committed before the SIGKILL.
    c.admin(&["vol", "unmount", "data"]);
    a.admin(&["vol", "mount", "data"]);
    let mut t = Tool::start(&a);
    t.ok(&format!("map {id}"));
    t.ok(&format!("check {id} 7"));
}

#[test]
fn a_site_cut_off_from_etcd_refuses_every_change_once_its_lease_is_over_then_joins_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let a = site(&mut lan, &dir.path().join("a"), &etcd);
    let mut t = Tool::start(&a);
    let id = id_of(&t.ok("create 8 protected 1"));
    t.ok(&format!("fill {id} 3"));
    t.ok(&format!("commit {id}"));
    t.ok(&format!("fill {id} 4"));

    lan.cut(a.ns().expect("a site in a namespace"));
    std::thread::sleep(Duration::from_secs(TTL) + Duration::from_millis(500));
    // The site can no longer know that nobody else mounted volume 1: the commit is refused
    // (the pages stay dirty), and so is a new cluster.
    let refused = t.cmd(&format!("commit {id}"));
    assert!(
        refused.contains("no longer mounted by this site"),
        "{refused}"
    );
    let refused = t.cmd("create 8 protected 1");
    assert!(
        refused.contains("no longer mounted by this site"),
        "{refused}"
    );
    let status = a.status();
    assert!(status.contains("lease LOST"), "{status}");
    // The catalog's own commands say what is wrong.
    let err = a.admin_fails(&["vol", "create", "late"]);
    assert!(err.contains("etcd"), "{err}");
    // Abort works, and what was committed before is intact.
    t.ok(&format!("abort {id}"));
    t.ok(&format!("check {id} 3"));

    // etcd answers again: the site joins the cell by itself under a new lease and mounts
    // volume 1 again (nobody else took it).
    lan.heal(a.ns().expect("a site in a namespace"));
    let t0 = Instant::now();
    while a.status().contains("lease LOST") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the site did not join the cell again: {}",
            a.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut t2 = Tool::start(&a);
    let t0 = Instant::now();
    let fresh = loop {
        let r = t2.cmd("create 8 protected 1");
        if r.starts_with("ok") || t0.elapsed() > Duration::from_secs(20) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let fresh = id_of(
        fresh
            .strip_prefix("ok")
            .unwrap_or_else(|| panic!("no cluster created after joining again: {fresh}")),
    );
    t2.ok(&format!("fill {fresh} 9"));
    t2.ok(&format!("commit {fresh}"));
    // The mapping made under the old lease stays fenced (its image was placed under it)...
    t.ok(&format!("fill {id} 5"));
    let refused = t.cmd(&format!("commit {id}"));
    assert!(
        refused.contains("no longer mounted by this site"),
        "{refused}"
    );
    t.ok(&format!("abort {id}"));
    t.ok(&format!("unmap {id}"));
    // ... mapped again, it finds the last commit and commits.
    t.ok(&format!("map {id}"));
    t.ok(&format!("check {id} 3"));
    t.ok(&format!("fill {id} 6"));
    t.ok(&format!("commit {id}"));
    t.ok(&format!("unmap {id}"));
    t.ok(&format!("map {id}"));
    t.ok(&format!("check {id} 6"));
}

#[test]
fn a_process_on_one_site_pages_a_volume_another_site_mounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let a = site(&mut lan, &dir.path().join("a"), &etcd);
    let mut b = site(&mut lan, &dir.path().join("b"), &etcd);

    // On a, a cluster of b's volume 2: created there, written here, committed there.
    let mut ta = Tool::start(&a);
    let id = id_of(&ta.ok("create 64 protected 2"));
    assert!(id.starts_with("0002:"), "{id}");
    ta.ok(&format!("fill {id} 5"));
    ta.ok(&format!("commit {id}"));
    ta.ok(&format!("unmap {id}"));

    // b reads what a committed, from its own storage; changes it and commits.
    let mut tb = Tool::start(&b);
    tb.ok(&format!("map {id}"));
    tb.ok(&format!("check {id} 5"));
    tb.ok(&format!("fill {id} 6"));
    tb.ok(&format!("commit {id}"));
    tb.ok(&format!("unmap {id}"));

    // a's last unmap kept no stale copy: a new map sees b's commit.
    ta.ok(&format!("map {id}"));
    ta.ok(&format!("check {id} 6"));
    let status = a.status();
    assert!(status.contains(&id), "{status}");
    // a's figures of its traffic with b: faults served from b's storage, commits validated
    // there, bytes both ways, round trips.
    let json = a.status_json();
    let peers = json["cell"]["remote_sites"]
        .as_array()
        .unwrap_or_else(|| panic!("no remote_sites in {json}"));
    let to_b = peers
        .iter()
        .find(|p| p["site"] == "site-b")
        .unwrap_or_else(|| panic!("no site-b in {json}"));
    assert!(to_b["reads"].as_u64() >= Some(1), "{to_b}");
    assert!(to_b["pages_read"].as_u64() >= Some(64), "{to_b}");
    assert!(to_b["commits"].as_u64() >= Some(1), "{to_b}");
    assert!(to_b["bytes_sent"].as_u64() > Some(64 * 4096), "{to_b}");
    assert!(to_b["mean_rtt_us"].as_u64() > Some(0), "{to_b}");
    assert!(status.contains("site site-b"), "{status}");

    // b dies: a commit on a fails, its pages stay dirty; a map fails too, within the
    // timeout, never hanging.
    b.kill();
    ta.ok(&format!("fill {id} 7"));
    let t0 = Instant::now();
    let refused = ta.cmd(&format!("commit {id}"));
    assert!(refused.starts_with("err"), "{refused}");
    assert!(
        t0.elapsed() < Duration::from_secs(REMOTE_TIMEOUT * 3),
        "the failed commit took {:?}",
        t0.elapsed()
    );
    let mut tc = Tool::start(&a);
    let refused = tc.cmd("create 8 protected 2");
    assert!(refused.starts_with("err"), "{refused}");

    // b comes back (once its old lease is gone): the same commit now succeeds, and b has it.
    std::thread::sleep(Duration::from_secs(TTL) + Duration::from_millis(500));
    b.restart();
    ta.ok(&format!("commit {id}"));
    ta.ok(&format!("check {id} 7"));
    ta.ok(&format!("unmap {id}"));
    let mut tb = Tool::start(&b);
    tb.ok(&format!("map {id}"));
    tb.ok(&format!("check {id} 7"));
}

#[test]
fn one_image_per_cluster_a_second_site_is_redirected_to_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let a = site(&mut lan, &dir.path().join("a"), &etcd);
    let b = site(&mut lan, &dir.path().join("b"), &etcd);
    let c = site(&mut lan, &dir.path().join("c"), &etcd);

    // a maps a cluster of b's volume: its image is a's now, everywhere in the cell.
    let mut ta = Tool::start(&a);
    let id = id_of(&ta.ok("create 16 protected 2"));
    ta.ok(&format!("fill {id} 1"));
    ta.ok(&format!("commit {id}"));
    for s in [&b, &c] {
        let mut t = Tool::start(s);
        let refused = t.cmd(&format!("map {id}"));
        assert!(refused.starts_with("err -66"), "{refused}");
        assert!(refused.contains("site-a"), "{refused}");
        assert_eq!(t.ok(&format!("where {id}")), "site-a");
    }
    let sites = b.admin(&["site", "list"]);
    assert_eq!(row(&sites, "site-a")[4], id, "{sites}");
    assert_eq!(row(&sites, "site-b")[4], "-", "{sites}");
    // A placement taken away (here deleted by hand, as its lease's expiry would): the site
    // that mounts the volume refuses a's commit and applies nothing of it.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint,
            "del",
            &format!("/clu/default/images/{id}"),
        ])
        .output()
        .expect("etcdctl (scripts/setup installs etcd-client)");
    assert!(out.status.success(), "{out:?}");
    ta.ok(&format!("fill {id} 4"));
    let refused = ta.cmd(&format!("commit {id}"));
    assert!(refused.contains("may not commit"), "{refused}");
    ta.ok(&format!("abort {id}"));
    ta.ok(&format!("check {id} 1"));

    // Once a unmaps, the next site to map holds it.
    ta.ok(&format!("unmap {id}"));
    let mut tc = Tool::start(&c);
    assert_eq!(tc.ok(&format!("where {id}")), "-");
    tc.ok(&format!("map {id}"));
    tc.ok(&format!("check {id} 1"));
    assert_eq!(tc.ok(&format!("where {id}")), "site-c");
    tc.ok(&format!("unmap {id}"));

    // A cached image is dropped when another site held the cluster since: a's own volume.
    let local = id_of(&ta.ok("create 16 protected 1"));
    ta.ok(&format!("fill {local} 2"));
    ta.ok(&format!("commit {local}"));
    ta.ok(&format!("unmap {local}")); // a keeps the clean image, as its site cache
    let mut tb = Tool::start(&b);
    tb.ok(&format!("map {local}"));
    tb.ok(&format!("check {local} 2"));
    tb.ok(&format!("fill {local} 3"));
    tb.ok(&format!("commit {local}"));
    tb.ok(&format!("unmap {local}"));
    ta.ok(&format!("map {local}"));
    ta.ok(&format!("check {local} 3"));
}

#[test]
fn resize_and_extend_work_across_sites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let a = site(&mut lan, &dir.path().join("a"), &etcd);
    let b = site(&mut lan, &dir.path().join("b"), &etcd);

    // On a, a cluster of b's volume 2, grown by one process and extended in another.
    let mut t1 = Tool::start(&a);
    let mut t2 = Tool::start(&a);
    let id = id_of(&t1.ok("create 4 protected 2"));
    t1.ok(&format!("fill {id} 8"));
    t2.ok(&format!("map {id}"));
    assert_eq!(t2.ok(&format!("extend {id}")), "0");
    assert_eq!(t1.ok(&format!("resize {id} 6")), "4 6");
    t1.ok(&format!("fill {id} 9 4 6"));
    assert_eq!(t2.ok(&format!("extend {id}")), "6");
    t2.ok(&format!("check {id} 9 4 6"));
    t1.ok(&format!("commit {id}"));
    t1.ok(&format!("unmap {id}"));
    t2.ok(&format!("unmap {id}"));
    // b, which mounts the volume, has the new size and the pages committed from a.
    let list = b.admin(&["clu", "list", "2"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.split_whitespace().any(|w| w == "10")),
        "{list}"
    );
    let mut tb = Tool::start(&b);
    assert_eq!(tb.ok(&format!("map {id}")), "10");
    tb.ok(&format!("check {id} 8 0 4"));
    tb.ok(&format!("check {id} 9 4 6"));
}

#[test]
fn read_copies_of_a_shareable_cluster_on_several_sites_and_no_writer_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let a = site(&mut lan, &dir.path().join("a"), &etcd);
    let b = site(&mut lan, &dir.path().join("b"), &etcd);
    let c = site(&mut lan, &dir.path().join("c"), &etcd);

    // A shareable cluster of b's volume 2, written there.
    let mut tb = Tool::start(&b);
    let id = id_of(&tb.ok("create 16 shareable 2"));
    tb.ok(&format!("fill {id} 3"));
    tb.ok(&format!("commit {id}"));
    tb.ok(&format!("unmap {id}"));

    // Read-only maps on a and c at once: a read copy on each.
    let mut ta = Tool::start(&a);
    let mut tc = Tool::start(&c);
    ta.ok(&format!("map {id} ro"));
    tc.ok(&format!("map {id} ro"));
    ta.ok(&format!("check {id} 3"));
    tc.ok(&format!("check {id} 3"));
    let sites = b.admin(&["site", "list"]);
    for s in ["site-a", "site-c"] {
        assert!(
            row(&sites, s).last() == Some(&format!("{id}(ro)").as_str()),
            "{sites}"
        );
    }
    let holder = tb.ok(&format!("where {id}"));
    assert!(holder == "site-a" || holder == "site-c", "{holder}");

    // While read copies exist, no site maps it read-write, not even the one that mounts it;
    // the refusal names the sites holding them.
    let refused = tb.cmd(&format!("map {id}"));
    assert!(refused.starts_with("err -66"), "{refused}");
    assert!(
        refused.contains("site-a") && refused.contains("site-c"),
        "{refused}"
    );
    let mut ta2 = Tool::start(&a);
    let refused = ta2.cmd(&format!("map {id}"));
    assert!(
        refused.starts_with("err -66") && refused.contains("site-c"),
        "{refused}"
    );

    // Once c's copy is gone, a (which holds the only read copy) may write: its copy becomes
    // the cluster's one writable image, and c's read-only map is refused meanwhile.
    tc.ok(&format!("unmap {id}"));
    ta2.ok(&format!("map {id}"));
    assert_eq!(tb.ok(&format!("where {id}")), "site-a");
    let refused = tc.cmd(&format!("map {id} ro"));
    assert!(
        refused.starts_with("err -66") && refused.contains("site-a"),
        "{refused}"
    );
    ta2.ok(&format!("fill {id} 4"));
    ta2.ok(&format!("commit {id}"));
    ta.ok(&format!("check {id} 4"));
    ta2.ok(&format!("unmap {id}"));
    ta.ok(&format!("unmap {id}"));

    // Read copies again, of the new version.
    tc.ok(&format!("map {id} ro"));
    tc.ok(&format!("check {id} 4"));
    tb.ok(&format!("map {id} ro"));
    tb.ok(&format!("check {id} 4"));
}

/// The live sites in `p`'s status (its watch of the cell), once `pred` holds of them.
fn until_alive(p: &Pager, within: Duration, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let json = p.status_json();
        let alive: Vec<String> = json["cell"]["sites_alive"]
            .as_array()
            .unwrap_or_else(|| panic!("no cell.sites_alive in {json}"))
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        if pred(&alive) {
            return alive;
        }
        assert!(
            t0.elapsed() < within,
            "sites alive never changed: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_manager_added_at_run_time_is_seen_by_the_others_and_pages_at_once_even_with_no_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let etcd = Etcd::start_on(dir.path(), &lan.host_ip);
    let a = site(&mut lan, &dir.path().join("a"), &etcd);
    let b = site(&mut lan, &dir.path().join("b"), &etcd);
    let both = until_alive(&a, Duration::from_secs(5), |s| s.len() == 2);
    assert_eq!(both, vec!["site-a", "site-b"]);
    let mut tb = Tool::start(&b);
    let id = id_of(&tb.ok("create 32 protected 2"));
    tb.ok(&format!("fill {id} 6"));
    tb.ok(&format!("commit {id}"));
    tb.ok(&format!("unmap {id}"));

    // c joins while a and b run: a's watch sees it (its status asks etcd nothing), and c
    // pages b's volume at once.
    let mut c = site(&mut lan, &dir.path().join("c"), &etcd);
    let t0 = Instant::now();
    until_alive(&a, Duration::from_secs(5), |s| {
        s.iter().any(|x| x == "site-c")
    });
    eprintln!("site-c seen by site-a's watch after {:?}", t0.elapsed());
    assert!(a
        .status()
        .contains("sites alive      3 (site-a, site-b, site-c)"));
    // A site with no storage of its own (K4): c unmounts its volume, and still pages b's.
    c.admin(&["vol", "unmount", "default"]);
    let sites = b.admin(&["site", "list"]);
    assert_eq!(row(&sites, "site-c")[3], "-", "{sites}");
    let mut tc = Tool::start(&c);
    tc.ok(&format!("map {id}"));
    tc.ok(&format!("check {id} 6"));
    tc.ok(&format!("unmap {id}"));
    drop(tc);

    // c dies: its departure is seen when its lease ends.
    c.kill();
    let t0 = Instant::now();
    until_alive(&a, Duration::from_secs(TTL * 5), |s| {
        !s.iter().any(|x| x == "site-c")
    });
    eprintln!("site-c's death seen after {:?}", t0.elapsed());
    until_alive(&b, Duration::from_secs(TTL * 5), |s| s.len() == 2);
}
