//! Storage faults under a running pager: a full disk during commit, a disk that returns EIO,
//! a bit flipped in a stored page. Real file systems (a small tmpfs, ext4 on a loop device whose
//! capacity is cut under it), a real pager and real client processes.
//!
//! These tests mount file systems, so they need root (as `scripts/test` runs on CI).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clu_tests::harness::{signal_of, Pager, Tool};

const SIGBUS: i32 = 7;
const PAGE: u64 = 4096;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (these tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A file system mounted for one test; unmounted (and its loop device freed) on drop.
struct Mounted {
    dir: PathBuf,
    loop_dev: Option<String>,
}

impl Mounted {
    fn tmpfs(dir: &Path, size: &str) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        Mounted {
            dir: dir.to_owned(),
            loop_dev: None,
        }
    }

    /// ext4 without a journal, mounted `noatime`, on a loop device over `image`.
    fn ext4_on_loop(image: &Path, dir: &Path, size: &str) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        run("truncate", &["-s", size, image.to_str().unwrap()]);
        run(
            "mkfs.ext4",
            &["-q", "-F", "-O", "^has_journal", image.to_str().unwrap()],
        );
        let dev = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
        let mounted = Mounted {
            dir: dir.to_owned(),
            loop_dev: Some(dev.clone()),
        };
        run("mount", &["-o", "noatime", &dev, dir.to_str().unwrap()]);
        mounted
    }

    /// Tells the loop device its backing file changed size.
    fn capacity_changed(&self) {
        run("losetup", &["-c", self.loop_dev.as_deref().unwrap()]);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

fn id_of(created: &str) -> String {
    created.split_whitespace().next().unwrap().to_string()
}

/// Fills the file system holding `path` until it is full; returns the bytes written.
fn fill_disk(path: &Path) -> u64 {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    written
}

#[test]
fn a_full_disk_fails_the_commit_keeps_the_old_image_and_the_dirty_pages() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Mounted::tmpfs(&dir.path().join("small"), "96m");
    // 5000 pages (19.5 MiB): every commit of the whole cluster needs a new log file larger
    // than the journal's 16 MiB spare, so the disk's free space decides.
    let mut pager = Pager::start(&disk.dir.join("root"), 16384);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 5000"));
    a.ok(&format!("fill {id} 1"));
    a.ok(&format!("commit {id}"));

    let filler = disk.dir.join("filler");
    assert!(fill_disk(&filler) > 0);
    a.ok(&format!("fill {id} 2"));
    let err = a.cmd(&format!("commit {id}"));
    assert!(
        err.starts_with("err -28") && err.contains("No space left"),
        "commit on a full disk: {err}"
    );
    a.ok(&format!("check {id} 2"));

    // The stored image is still version 1: a pager killed now comes back with it, even on a
    // disk that is still full.
    pager.restart();
    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    b.ok(&format!("check {id} 1"));
    b.ok(&format!("fill {id} 3"));
    let err = b.cmd(&format!("commit {id}"));
    assert!(err.starts_with("err -28"), "{err}");
    b.ok(&format!("check {id} 3"));

    // Space is freed: the same dirty pages commit.
    fs::remove_file(&filler).unwrap();
    b.ok(&format!("commit {id}"));
    pager.restart();
    let mut c = Tool::start(&pager);
    c.ok(&format!("map {id}"));
    c.ok(&format!("check {id} 3"));
    drop(c);
    drop(b);
    drop(a);
    drop(pager);
}

/// Drops the clean page-cache pages of `path`, so the next read goes to the device.
fn drop_cached(path: &Path) {
    let f = File::open(path).unwrap();
    nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

#[test]
fn an_io_error_reading_a_page_raises_sigbus_and_the_pager_survives() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let disk = Mounted::ext4_on_loop(&image, &dir.path().join("ext4"), "64M");
    let mut pager = Pager::start(&disk.dir.join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 64"));
    a.ok(&format!("fill {id} 4"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    // The next map must read storage, not the site cache.
    pager.admin(&["cache", "drop", &id]);
    run("sync", &["-f", disk.dir.to_str().unwrap()]);

    // The disk fails: its capacity drops to nothing under the mounted file system.
    let saved = dir.path().join("disk.saved");
    fs::copy(&image, &saved).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(0)
        .unwrap();
    disk.capacity_changed();
    drop_cached(&disk.dir.join("root/vol-0001/clusters/0000.data"));

    let mut b = Tool::start(&pager);
    assert_eq!(b.ok(&format!("map {id}")), "64");
    b.send(&format!("r {id} {}", 10 * PAGE + 7));
    let st = b.wait(Duration::from_secs(20)).expect("the reader ends");
    assert_eq!(
        signal_of(st),
        Some(SIGBUS),
        "the access ends in SIGBUS: {st}"
    );
    assert!(pager.alive(), "the pager survives an I/O error");
    let status = pager.status();
    assert!(
        status.contains(" 1 refused (SIGBUS)"),
        "and still answers: {status}"
    );

    // The disk comes back: the same page is served (the error was not remembered).
    let bytes = fs::read(&saved).unwrap();
    let f = OpenOptions::new().write(true).open(&image).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    drop(f);
    disk.capacity_changed();
    let mut c = Tool::start(&pager);
    c.ok(&format!("map {id}"));
    c.ok(&format!("check {id} 4"));
    drop(c);
    drop(a);
    pager.kill();
}

#[test]
fn a_flipped_bit_in_a_stored_page_raises_sigbus_on_that_page_only() {
    let dir = tempfile::tempdir().unwrap();
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let mut a = Tool::start(&pager);
    let id = id_of(&a.ok("create 16"));
    a.ok(&format!("fill {id} 5"));
    a.ok(&format!("commit {id}"));
    a.ok(&format!("unmap {id}"));
    // The next map must read storage, not the site cache.
    pager.admin(&["cache", "drop", &id]);

    // One bit of page 9 flips on the disk (the pager's reads go through the same page cache).
    let data = dir.path().join("root/vol-0001/clusters/0000.data");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 9 * PAGE + 333).unwrap();
    f.write_all_at(&[byte[0] ^ 0x20], 9 * PAGE + 333).unwrap();

    let mut b = Tool::start(&pager);
    b.ok(&format!("map {id}"));
    // Its neighbours in the same read-ahead run are still served.
    b.ok(&format!("check {id} 5 0 9"));
    b.ok(&format!("check {id} 5 10 6"));
    b.send(&format!("r {id} {}", 9 * PAGE));
    let st = b.wait(Duration::from_secs(20)).expect("the reader ends");
    assert_eq!(
        signal_of(st),
        Some(SIGBUS),
        "the damaged page is not served: {st}"
    );
    let status = pager.status();
    assert!(status.contains(" 1 refused (SIGBUS)"), "{status}");
    // The damage is reported to every reader, not cached as good data.
    let mut c = Tool::start(&pager);
    c.ok(&format!("map {id}"));
    c.send(&format!("r {id} {}", 9 * PAGE + 1));
    let st = c.wait(Duration::from_secs(20)).expect("the reader ends");
    assert_eq!(signal_of(st), Some(SIGBUS), "{st}");
    assert!(a.ok(&format!("map {id}")) == "16");
    a.ok(&format!("check {id} 5 15 1"));
}
