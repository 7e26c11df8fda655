//! `Journal::commit_group` on real files: a group of operations of several clusters is replayed
//! whole after a crash, is dropped whole when any page of it is missing, is read back with its
//! group marks, and a group larger than a log file gets a file of its own.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clu_sys::buf::PageBuf;
use journal::{ApplyTarget, Batch, Journal, JournalConfig, Lsn, PAGE_SIZE};

const P: usize = PAGE_SIZE;

/// Cluster files `c<id>` of 64 pages in a directory.
struct Files(PathBuf);

impl Files {
    fn new(dir: &Path) -> Arc<Files> {
        fs::create_dir_all(dir).unwrap();
        Arc::new(Files(dir.to_owned()))
    }
    fn file(&self, cluster: u32) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.0.join(format!("c{cluster}")))?;
        f.set_len(64 * P as u64)?;
        Ok(f)
    }
    fn byte(&self, cluster: u32, page: u64) -> u8 {
        let mut b = [0u8; 1];
        self.file(cluster)
            .unwrap()
            .read_at(&mut b, page * P as u64)
            .unwrap();
        b[0]
    }
}

impl ApplyTarget for Files {
    fn apply(&self, cluster: u32, first_page: u64, pages: &[u8]) -> io::Result<()> {
        self.file(cluster)?
            .write_all_at(pages, first_page * P as u64)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

fn config(rotate_pages: u64) -> JournalConfig {
    JournalConfig {
        rotate_bytes: rotate_pages * P as u64,
        sync: true,
        checkpoint_files: 1,
    }
}

/// `npages` pages filled with `byte`, at page `first` of the cluster.
fn batch(first: u64, npages: usize, byte: u8) -> Batch {
    let mut buf = PageBuf::zeroed(npages * P);
    buf.fill(byte);
    let mut b = Batch::new(buf);
    b.push(first, 0, npages).unwrap();
    b
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // The background thread may be building or recycling a spare log file meanwhile: a
        // file gone since the listing was not one the log needs.
        match fs::copy(e.path(), to.join(e.file_name())) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => panic!("copying {}: {err}", e.path().display()),
        }
    }
}

#[test]
fn a_group_is_replayed_whole_and_read_back_with_its_marks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    Journal::create(&dir, &config(64)).unwrap();
    let (j, _) = Journal::open(&dir, config(64), Files::new(&tmp.path().join("a"))).unwrap();
    j.commit_batch(1, batch(0, 1, 1)).unwrap();
    let lsns = j
        .commit_group(vec![
            (2, batch(0, 2, 2)),
            (3, batch(5, 1, 3)),
            (9, Batch::new(PageBuf::zeroed(0))),
            (2, batch(4, 1, 4)),
        ])
        .unwrap();
    assert_eq!(lsns.len(), 3, "the empty operation is left out");
    // The log as a reader sees it: the group's operations, each marked but the last.
    let mut r = j.reader();
    let mut pos = Lsn::new(1, P as u64);
    let mut seen = Vec::new();
    while let Some(op) = r.next(pos).unwrap() {
        seen.push((op.lsn, op.cluster, op.group_open));
        pos = op.end;
    }
    assert_eq!(
        seen.iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
        vec![(1, false), (2, true), (3, true), (2, false)]
    );
    assert_eq!(seen[1..].iter().map(|s| s.0).collect::<Vec<_>>(), lsns);
    // A crash right after the commit (the files as they are, replayed onto empty clusters).
    let crashed = tmp.path().join("crashed");
    copy_dir(&dir, &crashed);
    j.close().unwrap();
    let replayed = Files::new(&tmp.path().join("b"));
    let (j2, report) = Journal::open(&crashed, config(64), replayed.clone()).unwrap();
    assert_eq!(report.replayed_ops, 4);
    assert_eq!(
        [
            replayed.byte(1, 0),
            replayed.byte(2, 1),
            replayed.byte(3, 5),
            replayed.byte(2, 4)
        ],
        [1, 2, 3, 4]
    );
    j2.close().unwrap();
}

#[test]
fn a_group_missing_any_page_is_dropped_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    Journal::create(&dir, &config(64)).unwrap();
    let (j, _) = Journal::open(&dir, config(64), Files::new(&tmp.path().join("a"))).unwrap();
    j.commit_batch(1, batch(0, 1, 1)).unwrap();
    let lsns = j
        .commit_group(vec![(2, batch(0, 2, 2)), (3, batch(0, 2, 3))])
        .unwrap();
    let log = lsns[0].file;
    let crashed = tmp.path().join("crashed");
    copy_dir(&dir, &crashed);
    j.close().unwrap();
    // Every page of the group (2 headers, 4 images) lost in turn, as a crash during its
    // write may leave it: none of the group is replayed, the operation before it is.
    for lost in 0..6u64 {
        let copy = tmp.path().join(format!("lost{lost}"));
        copy_dir(&crashed, &copy);
        let f = OpenOptions::new()
            .write(true)
            .open(copy.join(format!("log-{log:016x}")))
            .unwrap();
        f.write_all_at(&vec![0u8; P], lsns[0].offset + lost * P as u64)
            .unwrap();
        let target = Files::new(&tmp.path().join(format!("t{lost}")));
        let (j, report) = Journal::open(&copy, config(64), target.clone()).unwrap();
        assert_eq!(report.replayed_ops, 1, "page {lost} lost");
        assert_eq!(target.byte(1, 0), 1);
        assert_eq!(
            (
                target.byte(2, 0),
                target.byte(2, 1),
                target.byte(3, 0),
                target.byte(3, 1)
            ),
            (0, 0, 0, 0),
            "page {lost} lost: part of the group was replayed"
        );
        assert!(report.truncated_bytes >= P as u64);
        // The log goes on where the group was.
        assert_eq!(report.log_end, lsns[0]);
        j.commit_batch(4, batch(0, 1, 7)).unwrap();
        j.close().unwrap();
        // No debris of the lost group is left behind the new operation.
        let (j, report) = Journal::open(&copy, config(64), target.clone())
            .unwrap_or_else(|e| panic!("page {lost} lost, reopened: {e}"));
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(target.byte(4, 0), 7);
        j.close().unwrap();
    }
}

#[test]
fn a_group_larger_than_a_log_file_gets_a_file_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    Journal::create(&dir, &config(16)).unwrap();
    let target = Files::new(&tmp.path().join("a"));
    let (j, _) = Journal::open(&dir, config(16), target.clone()).unwrap();
    j.commit_batch(1, batch(0, 2, 1)).unwrap();
    // 3 x 9 pages: far more than a 16-page file.
    let lsns = j
        .commit_group(vec![
            (2, batch(0, 8, 2)),
            (3, batch(0, 8, 3)),
            (4, batch(0, 8, 4)),
        ])
        .unwrap();
    assert!(lsns.iter().all(|l| l.file == lsns[0].file));
    assert!(lsns[0].file > 1, "the group went to a new file");
    j.drain().unwrap();
    assert_eq!(
        (target.byte(2, 7), target.byte(3, 7), target.byte(4, 7)),
        (2, 3, 4)
    );
    let crashed = tmp.path().join("crashed");
    copy_dir(&dir, &crashed);
    j.close().unwrap();
    let replayed = Files::new(&tmp.path().join("b"));
    let (j2, _) = Journal::open(&crashed, config(16), replayed.clone()).unwrap();
    assert_eq!(
        (
            replayed.byte(2, 7),
            replayed.byte(3, 7),
            replayed.byte(4, 7)
        ),
        (2, 3, 4)
    );
    j2.close().unwrap();
}

/// A prepared group (two-phase commit): applied only when decided to commit; after a crash
/// before the decision it is held again, in doubt, until decided; an abort drops it; the
/// decisions file keeps what a coordinator decided.
#[test]
fn a_prepared_group_is_held_until_decided_even_across_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    Journal::create(&dir, &config(64)).unwrap();
    let target = Files::new(&tmp.path().join("a"));
    let (j, _) = Journal::open(&dir, config(64), target.clone()).unwrap();
    j.commit_batch(1, batch(0, 1, 1)).unwrap();
    j.prepare_group(vec![(2, batch(0, 1, 2)), (3, batch(1, 1, 3))], 0xabc, 7)
        .unwrap();
    j.drain().unwrap();
    assert_eq!(
        (target.byte(2, 0), target.byte(3, 1)),
        (0, 0),
        "applied before the decision"
    );
    assert_eq!(j.in_doubt(), vec![(0xabc, 7)]);
    assert_eq!(j.in_doubt_clusters(), vec![2, 3]);
    // A checkpoint keeps the group: durableLSN stays before it.
    j.checkpoint().unwrap();
    let crashed = tmp.path().join("crashed");
    copy_dir(&dir, &crashed);
    // Decided here: applied.
    j.decide(0xabc, true).unwrap();
    j.drain().unwrap();
    assert_eq!((target.byte(2, 0), target.byte(3, 1)), (2, 3));
    assert!(j.in_doubt().is_empty());
    j.close().unwrap();
    // The crash before the decision: reopened, the group is in doubt again, not applied.
    for commit in [true, false] {
        let copy = tmp.path().join(format!("copy-{commit}"));
        copy_dir(&crashed, &copy);
        let t = Files::new(&tmp.path().join(format!("t-{commit}")));
        let (j, report) = Journal::open(&copy, config(64), t.clone()).unwrap();
        // The checkpoint took the first operation; the held group is not replayed.
        assert_eq!(report.replayed_ops, 0);
        assert_eq!(j.in_doubt(), vec![(0xabc, 7)]);
        assert_eq!((t.byte(2, 0), t.byte(3, 1)), (0, 0));
        // Reopened again without a decision (closing checkpoints): still in doubt.
        j.close().unwrap();
        let (j, _) = Journal::open(&copy, config(64), t.clone()).unwrap();
        assert_eq!(j.in_doubt(), vec![(0xabc, 7)]);
        j.decide(0xabc, commit).unwrap();
        j.commit_batch(4, batch(0, 1, 4)).unwrap();
        j.close().unwrap();
        let (j, _) = Journal::open(&copy, config(64), t.clone()).unwrap();
        assert!(j.in_doubt().is_empty());
        let expect = if commit { (2, 3) } else { (0, 0) };
        assert_eq!((t.byte(2, 0), t.byte(3, 1)), expect, "decided {commit}");
        assert_eq!(t.byte(4, 0), 4);
        j.close().unwrap();
    }
    // The coordinator's side: decisions recorded, forgotten, read by another volume.
    let (j, _) = Journal::open(&dir, config(64), target).unwrap();
    j.record_decision(5).unwrap();
    j.record_decision(6).unwrap();
    j.forget_decision(5).unwrap();
    assert_eq!(
        journal::decisions::committed(&dir).unwrap(),
        std::collections::HashSet::from([6])
    );
    j.close().unwrap();
}
