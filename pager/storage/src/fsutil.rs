//! Small filesystem helpers with the fsync discipline the storage service relies on.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags, Flock, FlockArg};

use crate::{Result, StorageError};

/// Creates `root` if needed and takes the exclusive lock on `<root>/lock`, held as long as the
/// returned guard lives: one process per root (one manager per volume, C8).
pub fn lock_root(root: &Path) -> Result<Flock<File>> {
    fs::create_dir_all(root).map_err(|e| StorageError::io(root, e))?;
    let path = root.join("lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io(&path, e))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| StorageError::RootBusy(root.to_owned()))
}

/// Makes `dir`'s entries durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary file, sync it, rename
/// it over `path`, sync the directory. A crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StorageError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StorageError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))?;
    sync_dir(dir)
}

/// Gives `file` real blocks up to `len` bytes (no holes, I11): `fallocate`, or zeroes written
/// where the filesystem cannot allocate. Syncs the file.
pub fn preallocate(file: &File, path: &Path, from: u64, len: u64) -> Result<()> {
    if len > from {
        let (off, n) = (
            i64::try_from(from).map_err(|_| StorageError::Invalid("size too large".into()))?,
            i64::try_from(len - from)
                .map_err(|_| StorageError::Invalid("size too large".into()))?,
        );
        match fallocate(file.as_raw_fd(), FallocateFlags::empty(), off, n) {
            Ok(()) => {}
            Err(nix::errno::Errno::EOPNOTSUPP) => write_zeros(file, path, from, len)?,
            Err(e) => return Err(StorageError::io(path, e.into())),
        }
    }
    file.sync_all().map_err(|e| StorageError::io(path, e))
}

fn write_zeros(file: &File, path: &Path, from: u64, len: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| StorageError::io(path, e))?;
        at += n as u64;
    }
    Ok(())
}
