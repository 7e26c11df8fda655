//! Owners, rights and cluster kinds (thesis F2-F8, G1-G4), with clients running as another
//! user (`setpriv`), checked byte for byte.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use clu_tests::harness::{id_of, signal_of, Pager, Tool};

const NOBODY: u32 = 65534;
const SIGSEGV: i32 = 11;

/// A pager whose socket another user can reach.
fn pager(budget: u64) -> (tempfile::TempDir, Pager) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Pager::start(&dir.path().join("root"), budget);
    (dir, p)
}

#[test]
fn protected_clusters_map_for_their_owner_and_the_uids_granted() {
    let (_dir, pager) = pager(1024);
    let mut owner = Tool::start(&pager);
    let id = id_of(&owner.ok("create 4 protected"));
    owner.ok(&format!("fill {id} 5"));
    owner.ok(&format!("commit {id}"));

    let mut other = Tool::start_as(&pager, NOBODY);
    let refused = other.cmd(&format!("map {id}"));
    assert!(
        refused.starts_with("err -13") && refused.contains("uid 0"),
        "refused, naming the owner: {refused}"
    );
    assert_eq!(other.ok(&format!("owner {id}")), "0");
    // Only the owner grants.
    assert!(other
        .cmd(&format!("grant {id} {NOBODY}"))
        .starts_with("err -13"));

    owner.ok(&format!("grant {id} {NOBODY} ro"));
    assert!(
        other.cmd(&format!("map {id}")).starts_with("err -13"),
        "read-only grant"
    );
    assert_eq!(other.ok(&format!("map {id} ro")), "4");
    other.ok(&format!("check {id} 5"));
    other.ok(&format!("unmap {id}"));

    owner.ok(&format!("grant {id} {NOBODY}"));
    other.ok(&format!("map {id}"));
    other.ok(&format!("w {id} 10 99"));
    assert_eq!(owner.ok(&format!("r {id} 10")), "99", "one image, shared");
    other.ok(&format!("unmap {id}"));

    owner.ok(&format!("revoke {id} {NOBODY}"));
    assert!(other.cmd(&format!("map {id} ro")).starts_with("err -13"));
    assert!(owner
        .cmd(&format!("revoke {id} {NOBODY}"))
        .starts_with("err -2"));
}

#[test]
fn shareable_clusters_are_read_only_for_others_and_a_write_changes_nothing() {
    let (_dir, pager) = pager(1024);
    let mut owner = Tool::start(&pager);
    let id = id_of(&owner.ok("create 4 shareable"));
    owner.ok(&format!("fill {id} 6"));
    owner.ok(&format!("commit {id}"));
    let mut other = Tool::start_as(&pager, NOBODY);
    assert!(other.cmd(&format!("map {id}")).starts_with("err -13"));
    assert_eq!(other.ok(&format!("map {id} ro")), "4");
    other.ok(&format!("check {id} 6"));
    // Forcing the mapping writable gives this process a private copy; the cluster is unchanged.
    other.ok(&format!("force-w {id} 8208 3"));
    assert_eq!(other.ok(&format!("r {id} 8208")), "3");
    owner.ok(&format!("check {id} 6"));
    other.send(&format!("w {id} 8 1"));
    let st = other.wait(Duration::from_secs(10)).expect("no hang");
    assert_eq!(signal_of(st), Some(SIGSEGV), "{st:?}");
    owner.ok(&format!("check {id} 6"));
    // The owner maps it read-write.
    owner.ok(&format!("w {id} 8 1"));
    assert_eq!(owner.ok(&format!("r {id} 8")), "1");
}

#[test]
fn temporary_clusters_are_shared_never_stored_and_promotion_keeps_them() {
    let (_dir, mut pager) = pager(1024);
    let mut a = Tool::start(&pager);
    let mut b = Tool::start(&pager);
    let gone = id_of(&a.ok("create 8 temporary"));
    let kept = id_of(&a.ok("create 8 temporary"));
    a.ok(&format!("fill {gone} 7"));
    a.ok(&format!("fill {kept} 8"));
    a.ok(&format!("commit {gone}"));
    b.ok(&format!("map {gone}"));
    b.ok(&format!("check {gone} 7"));
    // Unmapped everywhere, a temporary cluster stays in the pager's memory.
    a.ok(&format!("unmap {gone}"));
    b.ok(&format!("unmap {gone}"));
    b.ok(&format!("map {gone}"));
    b.ok(&format!("check {gone} 7"));
    a.ok(&format!("promote {kept}"));
    a.ok(&format!("fill {kept} 9 0 2"));
    assert!(
        a.cmd(&format!("promote {kept}")).starts_with("err -22"),
        "not temporary any more"
    );
    drop((a, b));
    pager.restart();
    let mut c = Tool::start(&pager);
    assert!(
        c.cmd(&format!("map {gone}")).starts_with("err -2"),
        "gone at restart"
    );
    c.ok(&format!("map {kept}"));
    c.ok(&format!("check {kept} 8"));
}

#[test]
fn usage_statistics_follow_a_scripted_use_and_persist() {
    let (_dir, mut pager) = pager(1024);
    let info = |p: &Pager, id: &str| -> serde_json::Value {
        let text = p.admin(&["clu", "info", id, "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 16"));
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    for page in [0u64, 3, 5, 9, 12] {
        a.ok(&format!("w {id} {} 1", page * 4096));
    }
    a.ok(&format!("commit {id}"));
    b.ok(&format!("unmap {id}"));
    a.ok(&format!("unmap {id}"));
    let j = info(&pager, &id);
    assert_eq!(j["uses"], 1, "{j}");
    assert_eq!(j["modified_per_use"], 5.0, "{j}");
    // One zero fault brings in the new pages of its block (16 here), not one each.
    assert_eq!(j["faults"]["zero"], 1, "{j}");
    // Two processes mapped it for part of the use: the sharing rate is between 1 and 2.
    let rate = j["sharing_rate"].as_f64().expect("sharing_rate");
    assert!((1.0..=2.0).contains(&rate), "{j}");
    // A second use modifies five other pages; the statistics survive a restart.
    a.ok(&format!("map {id}"));
    for page in [1u64, 2, 4, 6, 7] {
        a.ok(&format!("w {id} {} 2", page * 4096));
    }
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    drop((a, b));
    pager.restart();
    let j = info(&pager, &id);
    assert_eq!(j["uses"], 2, "{j}");
    assert_eq!(j["modified_per_use"], 5.0, "{j}");
    let table = pager.admin(&["stats"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains(" 2 ")),
        "{table}"
    );
}

#[test]
fn the_socket_mode_decides_who_may_connect_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pager = Pager::start_with(&dir.path().join("root"), 256, &["--socket-mode", "600"]);
    let mode = std::fs::metadata(&pager.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut other = Tool::start_as(&pager, NOBODY);
    let refused = other.cmd("create 1");
    assert!(refused.starts_with("err -107"), "{refused}");
    let mut root = Tool::start(&pager);
    root.ok("create 1");
}
