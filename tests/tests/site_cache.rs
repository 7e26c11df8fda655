//! The site cache (issue 14): a cluster's clean image stays resident after its last unmap and
//! the next map finds it warm; it is reclaimed under pressure like any clean pages, and it is
//! never served stale when the stored image changes behind it (a cluster resized or destroyed
//! by the administrator, a volume unmounted and mounted again). Real pager, real clients,
//! data checked byte for byte.

use clu_tests::harness::{id_of, Pager, Tool};
use serde_json::Value;

fn status(p: &Pager) -> Value {
    p.status_json()
}

/// Pages of `id` resident in the site cache, if it is cached.
fn cached(p: &Pager, id: &str) -> Option<u64> {
    status(p)["cached"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["resident"].as_u64())
}

/// Pages read from storage, by faults or by the access history's prefetch.
fn storage_reads(p: &Pager) -> u64 {
    let s = status(p);
    let n = |k: &str| s["supplies"][k].as_u64().expect("a count");
    n("storage") + n("prefetched")
}

#[test]
fn an_unmapped_image_stays_warm_and_is_reclaimed_under_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let pager = Pager::start(&dir.path().join("root"), 256);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 128"));
    a.ok(&format!("fill {id} 3"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    assert_eq!(cached(&pager, &id), Some(128), "{}", status(&pager));

    // Another process maps it: every page comes from the cached image, none from storage.
    let reads = storage_reads(&pager);
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 3"));
    assert_eq!(storage_reads(&pager), reads, "served from the cache");
    // A change through the cached image, committed, is what the next use sees.
    b.ok(&format!("fill {id} 4 0 16"));
    b.ok(&format!("commit {id}"));
    b.ok(&format!("fill {id} 5 16 16"));
    b.ok(&format!("abort {id}"));
    b.ok(&format!("unmap {id}"));
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 4 0 16"));
    b.ok(&format!("check {id} 3 16 112"));
    b.ok(&format!("unmap {id}"));

    // Pressure from another cluster: the budget holds, the cached image gives way.
    let other = id_of(&a.ok("create 200"));
    a.ok(&format!("fill {other} 9"));
    let s = status(&pager);
    assert!(s["resident_pages"].as_u64().unwrap() <= 256, "{s}");
    let left = cached(&pager, &id).unwrap_or(0);
    assert!(left < 128, "the cached image was reclaimed first: {s}");
    a.ok(&format!("check {other} 9"));
    a.ok(&format!("commit {other}"));
    // What was reclaimed comes back from storage, right.
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 4 0 16"));
    b.ok(&format!("check {id} 3 16 112"));
    assert!(storage_reads(&pager) > reads, "read back from storage");

    // `pager cache drop` empties it; the data is still right.
    b.ok(&format!("unmap {id}"));
    a.ok(&format!("unmap {other}"));
    assert!(pager.admin(&["cache", "drop"]).starts_with("dropped 2 "));
    assert_eq!(status(&pager)["resident_pages"], 0);
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 4 0 16"));
}

#[test]
fn a_cached_image_is_dropped_when_its_stored_image_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    pager.admin(&["vol", "create", "data"]);
    let id = id_of(&a.ok("create 32 shareable 2"));
    a.ok(&format!("fill {id} 6"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    assert_eq!(cached(&pager, &id), Some(32));

    // Resized by the administrator: the cached image goes, the next map has the new size.
    pager.admin(&["clu", "resize", &id, "--add", "8"]);
    assert_eq!(cached(&pager, &id), None);
    assert_eq!(a.ok(&format!("map {id}")), "40");
    a.ok(&format!("check {id} 6 0 32"));
    a.ok(&format!("check {id} 0 32 8"));
    a.ok(&format!("fill {id} 7"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    assert_eq!(cached(&pager, &id), Some(40));

    // Its volume unmounted and mounted again: a cached image is not kept across.
    pager.admin(&["vol", "unmount", "data"]);
    assert_eq!(cached(&pager, &id), None);
    pager.admin(&["vol", "mount", "data"]);
    let reads = storage_reads(&pager);
    a.ok(&format!("map {id}"));
    a.ok(&format!("check {id} 7"));
    assert!(storage_reads(&pager) > reads, "read from storage again");
    a.ok(&format!("unmap {id}"));

    // Destroyed while cached: no error, nothing left, the id is gone.
    pager.admin(&["clu", "destroy", &id]);
    assert_eq!(cached(&pager, &id), None);
    let refused = a.cmd(&format!("map {id}"));
    assert!(refused.starts_with("err "), "{refused}");
    assert_eq!(status(&pager)["resident_pages"], 0);
}

#[test]
fn a_promoted_temporary_cluster_is_cached_like_any_other_and_a_restart_starts_cold() {
    let dir = tempfile::tempdir().unwrap();
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 24 temporary"));
    a.ok(&format!("fill {id} 8"));
    a.ok(&format!("promote {id}"));
    a.ok(&format!("unmap {id}"));
    assert_eq!(cached(&pager, &id), Some(24), "{}", status(&pager));
    drop(a);
    pager.restart();
    assert_eq!(cached(&pager, &id), None);
    assert_eq!(status(&pager)["resident_pages"], 0);
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 8"));
}
