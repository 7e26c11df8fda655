//! Runs of pages per fault (issue 14): a fault on a new page brings in the new pages of its
//! block, and a commit writes only those somebody wrote; sequential first writes to clean
//! pages lift the protection of a run at once, and what a commit stores is still exactly what
//! was written. Checked byte for byte after a restart (storage, not memory).

use clu_tests::harness::{id_of, Pager, Tool};
use serde_json::Value;

fn status(p: &Pager) -> Value {
    p.status_json()
}

fn committed_pages(p: &Pager) -> u64 {
    status(p)["commits"]["pages"].as_u64().expect("a count")
}

#[test]
fn new_pages_come_in_by_runs_and_only_written_ones_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 256"));
    a.ok(&format!("w {id} {} 7", 5 * 4096 + 9));
    let s = status(&pager);
    assert!(s["supplies"]["zero"].as_u64().unwrap() > 1, "a run: {s}");
    let before = committed_pages(&pager);
    a.ok(&format!("commit {id}"));
    assert_eq!(
        committed_pages(&pager) - before,
        1,
        "the zero pages nobody wrote are not written"
    );
    // Writing zeros over a zero page stores nothing either; a real write does.
    a.ok(&format!("w {id} {} 0", 6 * 4096));
    a.ok(&format!("w {id} {} 3", 200 * 4096 + 1));
    let before = committed_pages(&pager);
    a.ok(&format!("commit {id}"));
    assert_eq!(committed_pages(&pager) - before, 1);
    drop(a);
    pager.restart();
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    assert_eq!(b.ok(&format!("r {id} {}", 5 * 4096 + 9)), "7");
    assert_eq!(b.ok(&format!("r {id} {}", 200 * 4096 + 1)), "3");
    assert_eq!(b.ok(&format!("r {id} {}", 6 * 4096)), "0");
    assert_eq!(b.ok(&format!("r {id} {}", 100 * 4096)), "0");
}

#[test]
fn sequential_first_writes_take_runs_and_commits_store_exactly_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 512"));
    a.ok(&format!("fill {id} 1"));
    a.ok(&format!("commit {id}"));
    let wp0 = status(&pager)["faults"]["write_protect"].as_u64().unwrap();
    // Every page written again in order: far fewer write-protect faults than pages.
    a.ok(&format!("fill {id} 2 0 300"));
    let wp = status(&pager)["faults"]["write_protect"].as_u64().unwrap() - wp0;
    assert!(
        wp < 100,
        "{wp} write-protect faults for 300 sequential first writes"
    );
    a.ok(&format!("commit {id}"));
    // Pages after the written ones, possibly made writable ahead, keep their committed data;
    // a write after the commit (to a page made writable ahead, then protected again by the
    // commit) is not in it.
    a.ok(&format!("w {id} {} 9", 300 * 4096));
    drop(a);
    pager.restart();
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 2 0 300"));
    b.ok(&format!("check {id} 1 300 212"));
}
