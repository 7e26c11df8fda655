//! The cluster files of one local volume, and the journal's apply target.
//!
//! `clusters/<clu as 4 hex digits>.data` holds the pages, preallocated (no holes);
//! `clusters/<clu>.sums` the pages' checksums ([`PageSums`]);
//! `clusters/<clu>.desc` the descriptor, replaced atomically. The descriptor is the commit point
//! of creation: a data or sums file without one is debris from a crash and is removed at mount.
//! `clusters/note` is the volume's note ([`NOTE`]): one page written through the journal like a
//! cluster's, for what a user of the volume must keep in step with its pages (a backup's
//! position in its primary's history).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use clu_proto::{CluId, ClusterId, VolId, PAGE_SIZE};
use journal::ApplyTarget;

use super::sums::PageSums;
use crate::descriptor::ClusterDesc;
use crate::fsutil::{sync_dir, write_atomic};
use crate::{Result, StorageError};
use clu_sys::sync::{lock, read, write};

const PAGE: u64 = PAGE_SIZE as u64;

/// One cluster: its open data file, its pages' checksums and its descriptor.
pub(crate) struct Cluster {
    pub(crate) file: File,
    /// Written with the pages they check (held for writing across both), read-locked across a
    /// read and its check, so a read never sees a page and a sum of different generations.
    pub(crate) sums: RwLock<PageSums>,
    pub(crate) desc: Mutex<ClusterDesc>,
    /// Serialises write-back of this cluster (commits of one cluster go through the journal in
    /// order; different clusters commit concurrently and share syncs).
    pub(crate) commit: Mutex<()>,
}

/// All clusters of a volume.
pub(crate) struct ClusterTable {
    vol: VolId,
    dir: PathBuf,
    map: RwLock<BTreeMap<u16, Arc<Cluster>>>,
    /// Clusters written since the last sync.
    dirty: Mutex<HashSet<u16>>,
    /// The note's file, once written, and whether it was written since the last sync.
    note: Mutex<(Option<File>, bool)>,
}

/// The journal's cluster id of a volume's note: volume `ffff`, which no volume has (a cell
/// hands out 1 to `fffe`, a root fewer), so it is no cluster's.
pub const NOTE: u32 = u32::MAX;

impl ClusterTable {
    pub(crate) fn data_path(dir: &Path, clu: CluId) -> PathBuf {
        dir.join(format!("{:04x}.data", clu.0))
    }

    pub(crate) fn history_path(dir: &Path, clu: CluId) -> PathBuf {
        dir.join(format!("{:04x}.hist", clu.0))
    }

    pub(crate) fn sums_path(dir: &Path, clu: CluId) -> PathBuf {
        dir.join(format!("{:04x}.sums", clu.0))
    }

    pub(crate) fn desc_path(dir: &Path, clu: CluId) -> PathBuf {
        dir.join(format!("{:04x}.desc", clu.0))
    }

    /// Loads every cluster of the directory, removing debris of interrupted creations.
    pub(crate) fn load(vol: VolId, dir: &Path) -> Result<ClusterTable> {
        let mut map = BTreeMap::new();
        let mut data = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
            let entry = entry.map_err(|e| StorageError::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
                continue;
            }
            let Some((stem, ext)) = name.split_once('.') else {
                continue;
            };
            let Ok(num) = u16::from_str_radix(stem, 16) else {
                continue;
            };
            if stem.len() != 4 {
                continue;
            }
            match ext {
                "data" | "sums" => data.push(num),
                "desc" => {
                    let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
                    let desc = ClusterDesc::decode(&bytes)
                        .map_err(|r| StorageError::corrupt(&path, r.to_string()))?;
                    if desc.id != ClusterId::new(vol, CluId(num)) {
                        return Err(StorageError::corrupt(
                            &path,
                            format!("holds the descriptor of cluster {}", desc.id),
                        ));
                    }
                    let dpath = Self::data_path(dir, CluId(num));
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dpath)
                        .map_err(|e| StorageError::io(&dpath, e))?;
                    let len = file
                        .metadata()
                        .map_err(|e| StorageError::io(&dpath, e))?
                        .len();
                    if len < desc.npages * PAGE {
                        return Err(StorageError::corrupt(
                            &dpath,
                            format!("{len} bytes for {} pages", desc.npages),
                        ));
                    }
                    let spath = Self::sums_path(dir, CluId(num));
                    let sums = PageSums::load(&spath, desc.npages, &file)
                        .map_err(|e| StorageError::io(&spath, e))?;
                    map.insert(
                        num,
                        Arc::new(Cluster {
                            file,
                            sums: RwLock::new(sums),
                            desc: Mutex::new(desc),
                            commit: Mutex::new(()),
                        }),
                    );
                }
                _ => {}
            }
        }
        let mut removed = false;
        for num in data.into_iter().filter(|n| !map.contains_key(n)) {
            for path in [
                Self::data_path(dir, CluId(num)),
                Self::sums_path(dir, CluId(num)),
            ] {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a file of an interrupted cluster creation");
                        removed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(&path, e)),
                }
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(ClusterTable {
            vol,
            dir: dir.to_owned(),
            map: RwLock::new(map),
            dirty: Mutex::new(HashSet::new()),
            note: Mutex::new((None, false)),
        })
    }

    fn note_path(&self) -> PathBuf {
        self.dir.join("note")
    }

    /// The volume's note: its page as last written, `None` if it never was.
    pub(crate) fn note(&self) -> Result<Option<Vec<u8>>> {
        let path = self.note_path();
        match fs::read(&path) {
            Ok(b) if b.len() == PAGE_SIZE => Ok(Some(b)),
            Ok(b) => Err(StorageError::corrupt(
                &path,
                format!("{} bytes, not one page", b.len()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }

    /// Writes the note's page (the journal applying an operation of [`NOTE`]).
    fn apply_note(&self, first_page: u64, pages: &[u8]) -> io::Result<()> {
        if first_page != 0 || pages.len() != PAGE_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a note of {} bytes at page {first_page}: a note is page 0 only",
                    pages.len()
                ),
            ));
        }
        let mut note = lock(&self.note);
        if note.0.is_none() {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.note_path())?;
            // The name must survive a crash before the next checkpoint's sync.
            sync_dir(&self.dir).map_err(|e| io::Error::other(e.to_string()))?;
            note.0 = Some(f);
        }
        if let Some(f) = &note.0 {
            f.write_all_at(pages, 0)?;
        }
        note.1 = true;
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn get(&self, clu: CluId) -> Result<Arc<Cluster>> {
        read(&self.map)
            .get(&clu.0)
            .cloned()
            .ok_or(StorageError::NoSuchCluster(ClusterId::new(self.vol, clu)))
    }

    pub(crate) fn insert(&self, clu: CluId, cluster: Cluster) {
        write(&self.map).insert(clu.0, Arc::new(cluster));
    }

    pub(crate) fn remove(&self, clu: CluId) {
        write(&self.map).remove(&clu.0);
        lock(&self.dirty).remove(&clu.0);
    }

    pub(crate) fn contains(&self, clu: u16) -> bool {
        read(&self.map).contains_key(&clu)
    }

    pub(crate) fn descs(&self) -> Vec<ClusterDesc> {
        let map = read(&self.map);
        map.values().map(|c| *lock(&c.desc)).collect()
    }

    /// Writes a cluster's descriptor durably and updates the in-memory copy.
    pub(crate) fn store_desc(&self, cluster: &Cluster, desc: ClusterDesc) -> Result<()> {
        write_atomic(&Self::desc_path(&self.dir, desc.id.clu()), &desc.encode())?;
        *lock(&cluster.desc) = desc;
        Ok(())
    }
}

impl ApplyTarget for ClusterTable {
    fn apply(&self, cluster: u32, first_page: u64, pages: &[u8]) -> io::Result<()> {
        if cluster == NOTE {
            return self.apply_note(first_page, pages);
        }
        let id = ClusterId(cluster);
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        if id.vol() != self.vol {
            return Err(invalid(format!(
                "operation for cluster {id} in the journal of volume {}",
                self.vol
            )));
        }
        let c = self
            .get(id.clu())
            .map_err(|_| invalid(format!("cluster {id} has no descriptor")))?;
        let npages = lock(&c.desc).npages;
        let end = first_page + (pages.len() / PAGE_SIZE) as u64;
        if end > npages {
            return Err(invalid(format!(
                "pages {first_page}..{end} beyond the {npages} pages of cluster {id}"
            )));
        }
        let mut sums = write(&c.sums);
        c.file.write_all_at(pages, first_page * PAGE)?;
        sums.update(first_page, pages)?;
        lock(&self.dirty).insert(id.clu().0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        {
            let mut note = lock(&self.note);
            if let (Some(f), true) = (&note.0, note.1) {
                f.sync_data()?;
                note.1 = false;
            }
        }
        let dirty: Vec<u16> = lock(&self.dirty).drain().collect();
        for clu in &dirty {
            if let Ok(c) = self.get(CluId(*clu)) {
                if let Err(e) = c.file.sync_data().and_then(|()| read(&c.sums).sync()) {
                    lock(&self.dirty).extend(dirty.iter().copied());
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
