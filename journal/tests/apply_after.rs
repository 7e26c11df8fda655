//! `Journal::commit_batch`: the commit returns once validated, the pages reach the cluster
//! files afterwards, readers that wait see them, a cluster's operations stay in order, a crash
//! before they are applied loses nothing, and a failed application stops the journal without
//! losing the operation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use clu_sys::buf::PageBuf;
use journal::{ApplyTarget, Batch, Journal, JournalConfig, JournalError, PAGE_SIZE};

const P: usize = PAGE_SIZE;

/// Cluster files `c<id>` of 16 pages; the journal's own apply thread waits while the gate is
/// closed (a commit that applies inline does not), and applications fail while `fail` is set.
struct Gated {
    dir: PathBuf,
    open: Mutex<bool>,
    opened: Condvar,
    fail: Mutex<bool>,
}

impl Gated {
    fn new(dir: &Path, open: bool) -> Arc<Gated> {
        std::fs::create_dir_all(dir).unwrap();
        Arc::new(Gated {
            dir: dir.to_owned(),
            open: Mutex::new(open),
            opened: Condvar::new(),
            fail: Mutex::new(false),
        })
    }
    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.opened.notify_all();
    }
    fn file(&self, cluster: u32) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(format!("c{cluster}")))?;
        f.set_len(16 * P as u64)?;
        Ok(f)
    }
    fn page(&self, cluster: u32, page: u64) -> u8 {
        let mut b = [0u8; 1];
        self.file(cluster)
            .unwrap()
            .read_at(&mut b, page * P as u64)
            .unwrap();
        b[0]
    }
}

impl ApplyTarget for Gated {
    fn apply(&self, cluster: u32, first_page: u64, pages: &[u8]) -> io::Result<()> {
        let mut open = self.open.lock().unwrap();
        while !*open && std::thread::current().name() == Some("journal-apply") {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        if *self.fail.lock().unwrap() {
            return Err(io::Error::other("the disk said no"));
        }
        self.file(cluster)?
            .write_all_at(pages, first_page * P as u64)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

fn config() -> JournalConfig {
    JournalConfig {
        rotate_bytes: 64 * P as u64,
        sync: true,
        checkpoint_files: 1,
    }
}

/// A batch of one run of `npages` pages filled with `byte` at `first_page`.
fn batch(first_page: u64, byte: u8, npages: usize) -> Batch {
    let mut buf = PageBuf::zeroed(npages * P);
    buf.fill(byte);
    let mut b = Batch::new(buf);
    b.push(first_page, 0, npages).unwrap();
    b
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let jdir = tmp.path().join("journal");
    let cdir = tmp.path().join("clusters");
    Journal::create(&jdir, &config()).unwrap();
    (tmp, jdir, cdir)
}

/// Runs `f` on a thread; whether it finished within `ms`.
fn finishes_within<T: Send + 'static>(
    ms: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> (bool, std::thread::JoinHandle<T>) {
    let h = std::thread::spawn(f);
    let t = std::time::Instant::now();
    while !h.is_finished() && t.elapsed() < Duration::from_millis(ms) {
        std::thread::sleep(Duration::from_millis(5));
    }
    (h.is_finished(), h)
}

#[test]
fn a_batch_returns_validated_before_it_is_applied_and_readers_wait_for_it() {
    let (_tmp, jdir, cdir) = setup();
    let t = Gated::new(&cdir, false);
    let (j, _) = Journal::open(&jdir, config(), t.clone()).unwrap();
    let j = Arc::new(j);
    let lsn = j.commit_batch(7, batch(2, 0xa5, 3)).unwrap();
    assert!(j.log_lsn() > lsn, "validated");
    assert!(j.applied_lsn() <= lsn, "not applied yet: held back");
    assert_eq!(t.page(7, 2), 0, "not in the cluster file yet");
    let jj = j.clone();
    let (done, waiter) = finishes_within(200, move || jj.wait_applied(7));
    let other = j.wait_applied(8); // another cluster does not wait
    t.set_open(true); // before any assertion, so that a failure does not hang the close
    assert!(
        !done,
        "a reader of cluster 7 waits while its operation is queued"
    );
    other.unwrap();
    waiter.join().unwrap().unwrap();
    for p in 2..5 {
        assert_eq!(t.page(7, p), 0xa5);
    }
    j.drain().unwrap();
    assert_eq!(j.applied_lsn(), j.log_lsn());
}

#[test]
fn an_inline_commit_of_a_cluster_waits_for_its_queued_operations() {
    let (_tmp, jdir, cdir) = setup();
    let t = Gated::new(&cdir, false);
    let (j, _) = Journal::open(&jdir, config(), t.clone()).unwrap();
    let j = Arc::new(j);
    j.commit_batch(7, batch(0, 1, 1)).unwrap();
    let jj = j.clone();
    let (done, inline) = finishes_within(200, move || {
        jj.commit(
            7,
            &[journal::PageRun {
                first_page: 0,
                pages: &[2u8; P],
            }],
        )
    });
    t.set_open(true); // before any assertion, so that a failure does not hang the close
    assert!(!done, "the inline commit waits for the earlier queued one");
    inline.join().unwrap().unwrap();
    assert_eq!(t.page(7, 0), 2, "the later commit is what the file holds");
}

#[test]
fn operations_queued_at_a_crash_are_replayed_and_a_close_applies_them() {
    let (_tmp, jdir, cdir) = setup();
    let t = Gated::new(&cdir, false);
    let (j, _) = Journal::open(&jdir, config(), t.clone()).unwrap();
    for c in 0..4u32 {
        j.commit_batch(c, batch(1, 10 + c as u8, 2)).unwrap();
    }
    // A crash: nothing was applied (the gate never opens for this instance).
    std::mem::forget(j);
    let fresh = cdir.with_file_name("clusters-after");
    let t2 = Gated::new(&fresh, true);
    let (j, report) = Journal::open(&jdir, config(), t2.clone()).unwrap();
    assert_eq!(
        report.replayed_ops, 4,
        "every validated operation is replayed"
    );
    for c in 0..4u32 {
        assert_eq!(t2.page(c, 1), 10 + c as u8);
        assert_eq!(t2.page(c, 2), 10 + c as u8);
    }
    // A clean close applies what is queued before its checkpoint: nothing left to replay.
    for c in 0..4u32 {
        j.commit_batch(c, batch(5, 20 + c as u8, 1)).unwrap();
    }
    j.close().unwrap();
    let (_j, report) = Journal::open(&jdir, config(), t2.clone()).unwrap();
    assert_eq!(report.replayed_ops, 0);
    for c in 0..4u32 {
        assert_eq!(t2.page(c, 5), 20 + c as u8);
    }
}

#[test]
fn a_failed_application_stops_the_journal_and_the_operation_survives() {
    let (_tmp, jdir, cdir) = setup();
    let t = Gated::new(&cdir, true);
    *t.fail.lock().unwrap() = true;
    let (j, _) = Journal::open(&jdir, config(), t.clone()).unwrap();
    j.commit_batch(3, batch(0, 0x77, 1)).unwrap();
    let err = j.wait_applied(3).unwrap_err();
    assert!(matches!(err, JournalError::Stopped(_)), "{err}");
    assert!(err.to_string().contains("the disk said no"), "{err}");
    let err = j.commit_batch(4, batch(0, 1, 1)).unwrap_err();
    assert!(matches!(err, JournalError::Stopped(_)), "{err}");
    drop(j);
    *t.fail.lock().unwrap() = false;
    let (_j, report) = Journal::open(&jdir, config(), t.clone()).unwrap();
    assert_eq!(report.replayed_ops, 1);
    assert_eq!(t.page(3, 0), 0x77);
}

#[test]
fn a_batch_refuses_runs_outside_its_buffer() {
    let mut b = Batch::new(PageBuf::zeroed(2 * P));
    assert!(b.push(0, 0, 3).is_err());
    assert!(b.push(0, 1, 1).is_err());
    assert!(b.push(0, P, 0).is_err());
    assert!(b.push(0, usize::MAX - 1, 1).is_err());
    b.push(9, P, 1).unwrap();
    assert_eq!(b.bytes(), P);
}
