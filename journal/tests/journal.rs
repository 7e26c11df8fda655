//! The journal on real files: commit, reopen, rotation and deletion, retention, group commit,
//! and on-disk damage to the anchor and the log.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use journal::{ApplyTarget, Journal, JournalConfig, JournalError, Lsn, PageRun, PAGE_SIZE};

const P: usize = PAGE_SIZE;

/// Cluster files `c<id>` in a directory, each 64 pages.
struct DirTarget {
    dir: PathBuf,
    files: Mutex<HashMap<u32, File>>,
}

impl DirTarget {
    fn new(dir: &Path) -> Arc<DirTarget> {
        fs::create_dir_all(dir).unwrap();
        Arc::new(DirTarget {
            dir: dir.to_owned(),
            files: Mutex::new(HashMap::new()),
        })
    }

    fn page(&self, cluster: u32, page: u64) -> Vec<u8> {
        let mut b = vec![0u8; P];
        if let Ok(f) = File::open(self.dir.join(format!("c{cluster}"))) {
            let _ = f.read_at(&mut b, page * P as u64);
        }
        b
    }
}

impl ApplyTarget for DirTarget {
    fn apply(&self, cluster: u32, first_page: u64, pages: &[u8]) -> io::Result<()> {
        let mut files = self.files.lock().unwrap();
        let f = match files.entry(cluster) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.dir.join(format!("c{cluster}")))?;
                f.set_len(64 * P as u64)?;
                e.insert(f)
            }
        };
        f.write_all_at(pages, first_page * P as u64)
    }

    fn sync(&self) -> io::Result<()> {
        for f in self.files.lock().unwrap().values() {
            f.sync_data()?;
        }
        Ok(())
    }
}

fn small() -> JournalConfig {
    JournalConfig {
        rotate_bytes: 64 * P as u64,
        sync: true,
        checkpoint_files: 1,
    }
}

fn fill(b: u8, pages: usize) -> Vec<u8> {
    vec![b; pages * P]
}

/// Commits one run of `npages` pages filled with `byte` at `first_page` of `cluster`.
fn commit_fill(j: &Journal, cluster: u32, first_page: u64, byte: u8, npages: usize) -> Lsn {
    j.commit(
        cluster,
        &[PageRun {
            first_page,
            pages: &fill(byte, npages),
        }],
    )
    .unwrap()
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("log-") && !n.starts_with("log-spare"))
        .collect();
    v.sort();
    v
}

struct Setup {
    _tmp: tempfile::TempDir,
    jdir: PathBuf,
    cdir: PathBuf,
}

fn setup(config: &JournalConfig) -> Setup {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let jdir = tmp.path().join("journal");
    let cdir = tmp.path().join("clusters");
    Journal::create(&jdir, config).unwrap();
    Setup {
        _tmp: tmp,
        jdir,
        cdir,
    }
}

#[test]
fn commits_are_applied_and_survive_reopen() {
    let s = setup(&small());
    let t = DirTarget::new(&s.cdir);
    let (j, report) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(report.replayed_ops, 0);
    let a = fill(1, 2);
    let b = fill(2, 1);
    j.commit(
        7,
        &[
            PageRun {
                first_page: 0,
                pages: &a,
            },
            PageRun {
                first_page: 5,
                pages: &b,
            },
        ],
    )
    .unwrap();
    assert_eq!(t.page(7, 1), fill(1, 1));
    assert_eq!(t.page(7, 5), fill(2, 1));
    assert!(j.log_lsn() > Lsn::new(1, P as u64));
    drop(j);
    let (j, report) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    assert_eq!(report.replayed_ops, 0, "a clean close checkpoints");
    assert_eq!(j.durable_lsn(), j.log_lsn());
    assert_eq!(t.page(7, 5), fill(2, 1));
}

#[test]
fn create_refuses_an_existing_journal_and_open_a_missing_one() {
    let s = setup(&small());
    assert!(matches!(
        Journal::create(&s.jdir, &small()),
        Err(JournalError::AlreadyExists(_))
    ));
    let missing = s.jdir.with_file_name("nope");
    let err = Journal::open(&missing, small(), DirTarget::new(&s.cdir))
        .err()
        .unwrap();
    assert!(matches!(err, JournalError::NotFound(_)), "{err}");
}

#[test]
fn unapplied_operations_are_replayed_at_open() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    for i in 0..5u8 {
        commit_fill(&j, u32::from(i), 3, i + 10, 1);
    }
    // Simulate a crash after validation: the cluster files are lost, no checkpoint happened.
    std::mem::forget(j);
    fs::remove_dir_all(&s.cdir).unwrap();
    let t = DirTarget::new(&s.cdir);
    let (_j, report) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(report.replayed_ops, 5);
    for i in 0..5u8 {
        assert_eq!(t.page(u32::from(i), 3), fill(i + 10, 1));
    }
}

#[test]
fn log_files_rotate_and_old_ones_are_deleted_once_applied() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    // 64-page files; each commit takes 8 pages: a file holds 7.
    for i in 0..40u8 {
        commit_fill(&j, 1, 0, i, 7);
    }
    // The background thread retires old files and keeps a spare ready on its own, without an
    // explicit checkpoint.
    let has_spare = || {
        fs::read_dir(&s.jdir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("log-spare-")
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (log_files(&s.jdir).len() > 2 || !has_spare()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stats = j.stats();
    assert!(stats.checkpoints >= 1, "{stats:?}");
    let files = log_files(&s.jdir);
    assert!(files.len() <= 2, "old files were kept: {files:?}");
    assert!(
        files.last().unwrap() >= &"log-0000000000000006".to_string(),
        "{files:?}"
    );
    assert!(has_spare(), "no spare log file is kept ready");
    drop(j);
    let t = DirTarget::new(&s.cdir);
    let (j, _) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(t.page(1, 6), fill(39, 1));
    commit_fill(&j, 1, 0, 99, 1);
}

#[test]
fn a_retention_keeps_files_until_released() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    let hold = j.retain_from(j.log_lsn()).unwrap();
    for i in 0..30u8 {
        commit_fill(&j, 1, 0, i, 7);
    }
    assert!(log_files(&s.jdir).contains(&"log-0000000000000001".to_string()));
    let n = log_files(&s.jdir).len();
    assert!(n >= 4, "{n}");
    hold.advance(Lsn::new(3, 0));
    j.checkpoint().unwrap();
    let files = log_files(&s.jdir);
    assert_eq!(files.first().unwrap(), "log-0000000000000003", "{files:?}");
    drop(hold);
    j.checkpoint().unwrap();
    assert!(log_files(&s.jdir).len() <= 2);
    let err = j.retain_from(Lsn::new(1, P as u64)).err().unwrap();
    assert!(matches!(err, JournalError::AlreadyDeleted { .. }), "{err}");
}

#[test]
fn concurrent_commits_of_different_clusters_share_syncs() {
    let config = JournalConfig::default();
    let s = setup(&config);
    let (j, _) = Journal::open(&s.jdir, config, DirTarget::new(&s.cdir)).unwrap();
    let j = Arc::new(j);
    let threads: Vec<_> = (0..8u32)
        .map(|c| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    commit_fill(&j, c, u64::from(i % 8), i, 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = j.stats();
    assert_eq!(stats.commits, 400);
    assert!(
        stats.log_syncs < stats.commits * 3 / 4,
        "group commit did not share syncs: {stats:?}"
    );
}

fn damage(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn one_corrupt_anchor_slot_is_survived_two_are_reported() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    commit_fill(&j, 1, 0, 5, 1);
    j.checkpoint().unwrap();
    drop(j);
    let anchor = s.jdir.join("anchor");
    damage(&anchor, 20); // slot 0
    let t = DirTarget::new(&s.cdir);
    let (j, _) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(t.page(1, 0), fill(5, 1));
    drop(j);
    damage(&anchor, 20);
    damage(&anchor, P as u64 + 20);
    let err = Journal::open(&s.jdir, small(), t).err().unwrap();
    assert!(
        matches!(err, JournalError::AnchorUnreadable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
}

#[test]
fn a_torn_tail_on_disk_is_truncated_and_the_journal_goes_on() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    commit_fill(&j, 1, 0, 1, 1);
    commit_fill(&j, 2, 0, 2, 3);
    let end = j.log_lsn();
    std::mem::forget(j); // crash: no checkpoint
                         // Tear the second op: flip a byte of its last page image.
    let log = s.jdir.join("log-0000000000000001");
    damage(&log, end.offset - 10);
    let t = DirTarget::new(&s.cdir);
    let (j, report) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(report.replayed_ops, 1);
    assert_eq!(report.truncated_bytes, 4 * P as u64);
    assert_eq!(t.page(1, 0), fill(1, 1));
    commit_fill(&j, 3, 0, 3, 1);
    drop(j);
    let (_j, report) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
}

#[test]
fn unknown_versions_and_missing_files_are_clear_errors() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    commit_fill(&j, 1, 0, 1, 1);
    drop(j);
    let log = s.jdir.join("log-0000000000000001");
    let saved = fs::read(&log).unwrap();
    fs::remove_file(&log).unwrap();
    let err = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir))
        .err()
        .unwrap();
    assert!(err.to_string().contains("log file 1 is missing"), "{err}");
    fs::write(&log, &saved).unwrap();
    // A newer format: rewrite slot versions with a valid checksum.
    let anchor = s.jdir.join("anchor");
    let mut a = fs::read(&anchor).unwrap();
    for slot in 0..2 {
        let at = slot * P;
        a[at + 8..at + 12].copy_from_slice(&9u32.to_le_bytes());
        let c = crc32c::crc32c(&a[at..at + 56]);
        a[at + 56..at + 60].copy_from_slice(&c.to_le_bytes());
    }
    fs::write(&anchor, &a).unwrap();
    let err = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir))
        .err()
        .unwrap();
    assert!(
        matches!(err, JournalError::UnsupportedVersion { found: 9, .. }),
        "{err}"
    );
}

#[test]
fn malformed_runs_are_refused_without_a_trace() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    let before = j.log_lsn();
    let err = j
        .commit(
            1,
            &[PageRun {
                first_page: 0,
                pages: &[1u8; 100],
            }],
        )
        .unwrap_err();
    assert!(matches!(err, JournalError::InvalidRun(_)));
    let err = j
        .commit(
            1,
            &[PageRun {
                first_page: u64::MAX,
                pages: &fill(1, 1),
            }],
        )
        .unwrap_err();
    assert!(matches!(err, JournalError::InvalidRun(_)));
    assert_eq!(j.log_lsn(), before);
    assert_eq!(j.commit(1, &[]).unwrap(), before);
}

#[test]
fn an_operation_larger_than_a_log_file_gets_a_file_of_its_own() {
    let s = setup(&small());
    let t = DirTarget::new(&s.cdir);
    let (j, _) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    commit_fill(&j, 1, 0, 8, 64);
    assert_eq!(t.page(1, 63), fill(8, 1));
    commit_fill(&j, 1, 0, 9, 1);
    drop(j);
    let t = DirTarget::new(&s.cdir);
    let _ = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(t.page(1, 0), fill(9, 1));
    assert_eq!(t.page(1, 1), fill(8, 1));
}

#[test]
fn the_log_reads_back_in_order_across_rotations_and_reopen() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    let start = j.log_lsn();
    let hold = j.retain_from(start).unwrap();
    let mut committed = Vec::new();
    for i in 0..40u8 {
        let (cluster, first, n) = (u32::from(i % 3), u64::from(i % 5), 1 + usize::from(i % 6));
        let lsn = j
            .commit(
                cluster,
                &[
                    PageRun {
                        first_page: first,
                        pages: &fill(i, n),
                    },
                    PageRun {
                        first_page: 40,
                        pages: &fill(!i, 1),
                    },
                ],
            )
            .unwrap();
        committed.push((lsn, cluster, first, i, n));
    }
    assert!(
        j.log_lsn().file >= 4,
        "the test must cross rotations: {}",
        j.log_lsn()
    );
    let check = |j: &Journal, mut pos: Lsn, from: usize| {
        let mut reader = j.reader();
        for &(lsn, cluster, first, byte, n) in &committed[from..] {
            let op = reader.next(pos).unwrap().expect("an operation");
            assert_eq!((op.lsn, op.cluster), (lsn, cluster));
            assert_eq!(
                op.runs,
                vec![(first, fill(byte, n)), (40, fill(!byte, 1))],
                "{lsn}"
            );
            pos = op.end;
        }
        assert_eq!(reader.next(pos).unwrap(), None, "nothing past the end");
    };
    check(&j, start, 0);
    // From the end of an operation in the middle.
    let mut r = j.reader();
    let tenth = r.next(committed[9].0).unwrap().unwrap();
    check(&j, tenth.end, 10);
    // The retained files survive a checkpoint and a reopen (recovery keeps what follows the
    // anchor's durableLSN; the retention is registered again by the consumer after open).
    j.checkpoint().unwrap();
    check(&j, start, 0);
    drop(hold);
    j.checkpoint().unwrap();
    let err = j.reader().next(start).unwrap_err();
    assert!(matches!(err, JournalError::AlreadyDeleted { .. }), "{err}");
    drop(j);
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    assert_eq!(j.reader().next(j.log_lsn()).unwrap(), None);
    assert_eq!(j.applied_lsn(), j.log_lsn());
}

#[test]
fn a_journal_can_start_after_another_ones_lsns() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let jdir = tmp.path().join("journal");
    Journal::create_at(&jdir, &small(), 17).unwrap();
    let (j, _) = Journal::open(&jdir, small(), DirTarget::new(&tmp.path().join("c"))).unwrap();
    assert_eq!(j.log_lsn(), Lsn::new(17, P as u64));
    let lsn = commit_fill(&j, 1, 0, 7, 2);
    assert_eq!(lsn, Lsn::new(17, P as u64));
    let op = j.reader().next(Lsn::new(17, 0)).unwrap().unwrap();
    assert_eq!(op.runs, vec![(0, fill(7, 2))]);
}

#[test]
fn several_operations_share_one_sync_and_a_crash_keeps_a_prefix_of_them() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    let before = j.stats();
    let (a, b) = (fill(7, 2), fill(8, 1));
    let lsns = j
        .commit_many(&[
            (
                1,
                &[PageRun {
                    first_page: 3,
                    pages: &a,
                }][..],
            ),
            (2, &[][..]),
            (
                9,
                &[PageRun {
                    first_page: 0,
                    pages: &b,
                }][..],
            ),
        ])
        .unwrap();
    let after = j.stats();
    assert_eq!(lsns.len(), 2, "the operation without a run is left out");
    assert!(lsns[0] < lsns[1]);
    assert_eq!(after.commits - before.commits, 2);
    assert_eq!(
        after.log_syncs - before.log_syncs,
        1,
        "one fdatasync for both"
    );
    let end = j.log_lsn();
    std::mem::forget(j); // crash: no checkpoint
                         // Tear the second operation: its first operation is kept, it is not.
    let log = s.jdir.join("log-0000000000000001");
    damage(&log, end.offset - 10);
    // Replayed into fresh cluster files (the old ones got both when they were committed).
    let t = DirTarget::new(&s.cdir.with_file_name("replayed"));
    let (j, report) = Journal::open(&s.jdir, small(), t.clone()).unwrap();
    assert_eq!(report.replayed_ops, 1);
    assert_eq!(report.truncated_bytes, 2 * P as u64);
    assert!(t.page(1, 3) == fill(7, 1) && t.page(1, 4) == fill(7, 1));
    assert!(
        t.page(9, 0) == fill(0, 1),
        "the torn second operation was replayed"
    );
    // Operations that do not fit together in one log file (64 pages here) are committed one
    // after the other, in order.
    let (big, small_op) = (fill(3, 40), fill(4, 30));
    let lsns = j
        .commit_many(&[
            (
                5,
                &[PageRun {
                    first_page: 0,
                    pages: &big,
                }][..],
            ),
            (
                6,
                &[PageRun {
                    first_page: 0,
                    pages: &small_op,
                }][..],
            ),
        ])
        .unwrap();
    assert_eq!(lsns.len(), 2);
    assert!(lsns[0] < lsns[1]);
    assert!(t.page(5, 39) == fill(3, 1) && t.page(6, 29) == fill(4, 1));
}

#[test]
fn operations_kept_in_the_tail_carry_their_ordinal_and_the_written_end_counts_them() {
    let s = setup(&small());
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    let start = j.log_lsn();
    let w = j.written();
    assert_eq!((w.run, w.end, w.ops), (start, start, 0));
    // Before the tail is kept: read back from the log file, ordinal unknown.
    commit_fill(&j, 1, 0, 1, 1);
    j.keep_tail(1 << 20);
    let mut ends = Vec::new();
    for i in 0..5u8 {
        commit_fill(&j, 2, u64::from(i), i, 2);
        ends.push(j.log_lsn());
    }
    let w = j.written();
    assert_eq!((w.run, w.end, w.ops), (start, j.log_lsn(), 6));
    let mut r = j.reader();
    let first = r.next_written(start).unwrap().expect("the first operation");
    assert_eq!(first.seq, 0, "read back from the file: not known");
    let mut pos = first.end;
    for (k, end) in ends.iter().enumerate() {
        let op = r.next_written(pos).unwrap().expect("an operation");
        assert_eq!((op.seq, op.end), (k as u64 + 2, *end));
        pos = op.end;
    }
    assert_eq!(r.written(), j.written());
    // Counted from the journal's opening: a reopened journal starts again at 0.
    drop(j);
    let (j, _) = Journal::open(&s.jdir, small(), DirTarget::new(&s.cdir)).unwrap();
    let w = j.written();
    assert_eq!((w.run, w.ops), (j.log_lsn(), 0), "a new run");
}
