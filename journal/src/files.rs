//! The journal directory: log files, the spare, and fsync of directory entries.
//!
//! A log file is `log-<seq as 16 hex digits>`. It is created at its full size and zero-filled
//! before it is linked under that name (built as `log-tmp`, then renamed), so appending a record
//! never changes the file's size or block map and `fdatasync` flushes data only. A file that is no
//! longer needed becomes a spare, `log-spare-<k>` (a few are kept), and is reused, with a new
//! header and salt, as a next file: steady state writes no zero-fill.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{encode_file_header, FileId, PAGE_SIZE};
use crate::JournalError;

const TMP: &str = "log-tmp";
const SPARE_PREFIX: &str = "log-spare-";
const SPARE_TMP: &str = "spare-tmp";

/// The spare files in `dir`, with their sizes.
fn spares(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, u64)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(SPARE_PREFIX))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    out.sort();
    out
}

/// A spare name not in use.
fn free_spare_name(dir: &Path) -> PathBuf {
    (0u32..)
        .map(|k| dir.join(format!("{SPARE_PREFIX}{k}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{SPARE_PREFIX}x")))
}

/// Path of log file `seq` in `dir`.
pub(crate) fn log_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("log-{seq:016x}"))
}

fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("log-")?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Sequence numbers of the log files in `dir`, sorted. Removes a leftover `log-tmp`.
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == TMP || name == SPARE_TMP {
            fs::remove_file(entry.path()).map_err(|e| JournalError::io(entry.path(), e))?;
        } else if let Some(seq) = parse_name(name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Makes the directory entries of `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

/// A fresh random salt for a log file.
pub(crate) fn random_salt() -> Result<u64, JournalError> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| JournalError::io("/dev/urandom", e))?;
    Ok(u64::from_le_bytes(b))
}

fn header_page(id: FileId) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    encode_file_header(id, &mut page);
    page
}

/// Creates log file `seq` of at least `size` bytes and links it, reusing the spare when it is large
/// enough. Returns the open file, its identity and its size. `sync` makes everything durable
/// before the file is linked (and the link itself).
pub(crate) fn create(
    dir: &Path,
    seq: u64,
    size: u64,
    sync: bool,
) -> Result<(File, FileId, u64), JournalError> {
    let id = FileId {
        seq,
        salt: random_salt()?,
    };
    let path = log_path(dir, seq);
    let tmp = dir.join(TMP);
    let reuse = spares(dir).into_iter().find(|(_, len)| *len >= size);
    let staged = if let Some((spare, _)) = reuse {
        // Rewrite the header first: if we crash before the rename, the spare stays a spare.
        let f = OpenOptions::new()
            .write(true)
            .open(&spare)
            .map_err(|e| JournalError::io(&spare, e))?;
        f.write_all_at(&header_page(id), 0)
            .map_err(|e| JournalError::io(&spare, e))?;
        if sync {
            f.sync_data().map_err(|e| JournalError::io(&spare, e))?;
        }
        spare
    } else {
        zero_filled(&tmp, &header_page(id), size, sync)?;
        tmp
    };
    fs::rename(&staged, &path).map_err(|e| JournalError::io(&path, e))?;
    if sync {
        sync_dir(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    let len = file
        .metadata()
        .map_err(|e| JournalError::io(&path, e))?
        .len();
    Ok((file, id, len))
}

/// A second descriptor of log file `path` opened for direct I/O (`O_DIRECT`), through which the
/// writer puts page-aligned operations on disk without copying them into the page cache; `None`
/// where the file system refuses direct I/O (tmpfs before Linux 6.6, some FUSE), and the
/// buffered descriptor is used instead.
pub(crate) fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .ok()
}

/// Bytes of a new log file written with zeros at most; the rest of a larger file (one built
/// for an operation that does not fit in a normal one) is allocated with `fallocate`: it reads
/// as zeros all the same, without writing its size twice on the commit's path. Only its first
/// `fdatasync` costs more (it also writes the extent map).
pub(crate) const ZERO_WRITTEN_MAX: u64 = 64 << 20;

/// Writes a file of `size` bytes: `first` then zeroes (written up to [`ZERO_WRITTEN_MAX`],
/// allocated beyond); synced if `sync`. Removed on failure.
fn zero_filled(path: &Path, first: &[u8], size: u64, sync: bool) -> Result<(), JournalError> {
    let fill = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all(first)?;
        let zeros = vec![0u8; 1 << 20];
        let written = size.min(ZERO_WRITTEN_MAX.max(first.len() as u64));
        let mut left = written - first.len() as u64;
        if size > written {
            nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                nix::fcntl::FallocateFlags::empty(),
                written as i64,
                (size - written) as i64,
            )
            .map_err(std::io::Error::from)?;
        }
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        if sync {
            f.sync_all()?;
        }
        Ok(())
    };
    fill().map_err(|e| {
        let _ = fs::remove_file(path);
        JournalError::io(path, e)
    })
}

/// Makes sure a spare of at least `size` bytes is ready, so that the next rotation only rewrites
/// a header. The spare's stale header names no live file, so it is never mistaken for one.
pub(crate) fn prepare_spare(dir: &Path, size: u64, sync: bool) -> Result<(), JournalError> {
    if spares(dir).iter().any(|(_, len)| *len >= size) {
        return Ok(());
    }
    let spare = free_spare_name(dir);
    let tmp = dir.join(SPARE_TMP);
    zero_filled(&tmp, &[0u8; PAGE_SIZE], size, sync)?;
    fs::rename(&tmp, &spare).map_err(|e| JournalError::io(&spare, e))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Retires log files that nothing needs any more: they become spares while fewer than
/// `max_spares` exist, and are deleted after that.
pub(crate) fn retire(
    dir: &Path,
    seqs: &[u64],
    max_spares: usize,
    sync: bool,
) -> Result<(), JournalError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut kept = spares(dir).len();
    for &seq in seqs {
        let path = log_path(dir, seq);
        if kept < max_spares {
            let spare = free_spare_name(dir);
            fs::rename(&path, &spare).map_err(|e| JournalError::io(&path, e))?;
            kept += 1;
        } else {
            fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
        }
    }
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_name("log-0000000000000001"), Some(1));
        assert_eq!(parse_name("log-00000000000000ff"), Some(255));
        assert_eq!(parse_name("log-1"), None);
        assert_eq!(parse_name("log-spare"), None);
        assert_eq!(parse_name("log-000000000000000g"), None);
        assert_eq!(
            log_path(Path::new("/j"), 10),
            PathBuf::from("/j/log-000000000000000a")
        );
    }
}
