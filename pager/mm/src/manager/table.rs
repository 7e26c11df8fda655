//! The table of the images on this site. Its lock is a short critical section: it is never
//! held across I/O (a commit, a journal sync, a wait for backups, a file read). An image whose
//! last mapper is leaving is marked *closing*: the table lock is dropped while the image is
//! written back and released, and a `map` that meets a closing image waits on that image,
//! not on the table.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use clu_proto::ClusterId;
use clu_sys::sync::{lock, wait};

use crate::image::Image;
use crate::site::Reclaim;

/// One image in the table, and whether it is closing.
pub(crate) struct Entry {
    pub image: Arc<Image>,
    closing: Mutex<bool>,
    changed: Condvar,
}

impl Entry {
    pub fn new(image: Arc<Image>) -> Arc<Entry> {
        Arc::new(Entry {
            image,
            closing: Mutex::new(false),
            changed: Condvar::new(),
        })
    }

    pub fn is_closing(&self) -> bool {
        *lock(&self.closing)
    }

    /// Marks the entry closing (`true`) or open again after a failed close (`false`), and
    /// wakes whoever waits on it.
    pub fn set_closing(&self, closing: bool) {
        *lock(&self.closing) = closing;
        self.changed.notify_all();
    }

    /// Waits until the entry is no longer closing (closed and removed, or reopened).
    pub fn wait_while_closing(&self) {
        let mut c = lock(&self.closing);
        while *c {
            c = wait(&self.changed, c);
        }
    }
}

/// The images of the site, by cluster.
#[derive(Default)]
pub(crate) struct ImageTable {
    map: Mutex<HashMap<ClusterId, Arc<Entry>>>,
}

impl ImageTable {
    /// The table, locked: keep it short, and do no I/O under it.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<ClusterId, Arc<Entry>>> {
        lock(&self.map)
    }

    /// The image of `id`, if the table has one (closing or not).
    pub fn image(&self, id: ClusterId) -> Option<Arc<Image>> {
        self.lock().get(&id).map(|e| e.image.clone())
    }

    /// Removes `entry` (if it is still the one for its cluster) and wakes its waiters.
    pub fn remove(&self, entry: &Arc<Entry>) {
        let id = entry.image.id();
        {
            let mut map = self.lock();
            if map.get(&id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                map.remove(&id);
            }
        }
        entry.set_closing(false);
    }

    /// Every image, by cluster.
    pub fn images(&self) -> Vec<Arc<Image>> {
        let mut v: Vec<Arc<Image>> = self.lock().values().map(|e| e.image.clone()).collect();
        v.sort_by_key(|i| i.id());
        v
    }
}

impl ImageTable {
    /// The images other than `except` that are open (not closing) and either cached (no
    /// process maps them, `cached`) or mapped, without waiting for the table: `None` if it
    /// is busy.
    fn others(&self, except: ClusterId, cached: bool) -> Option<Vec<Arc<Image>>> {
        let map = self.map.try_lock().ok()?;
        Some(
            map.values()
                .filter(|e| e.image.id() != except && !e.is_closing())
                .filter(|e| {
                    let idle = e.image.mappers() == 0 && !e.image.is_temporary();
                    idle == cached
                })
                .map(|e| e.image.clone())
                .collect(),
        )
    }

    /// Forgets the cached images the reclaim emptied (no page left in memory, no process maps
    /// them), if the table is free now; their memfds go with the last reference.
    fn sweep(&self) {
        if let Ok(mut map) = self.map.try_lock() {
            map.retain(|_, e| {
                e.is_closing()
                    || e.image.is_temporary()
                    || e.image.mappers() > 0
                    || e.image.resident_pages() > 0
            });
        }
    }
}

impl Reclaim for ImageTable {
    fn reclaim(&self, except: ClusterId, want: u64) -> u64 {
        // Called from a fault path that holds another image's lock: never wait, neither for
        // the table nor for an image.
        let Some(others) = self.others(except, false) else {
            return 0;
        };
        let mut left = want;
        for img in others {
            if left == 0 {
                break;
            }
            left -= img.try_evict(left).min(left);
        }
        want - left
    }

    fn reclaim_cached(&self, except: ClusterId, want: u64) -> u64 {
        let Some(mut cached) = self.others(except, true) else {
            return 0;
        };
        if cached.is_empty() {
            return 0;
        }
        cached.sort_by_key(|i| i.last_used());
        let mut left = want;
        for img in cached {
            if left == 0 {
                break;
            }
            left -= img.try_evict(left).min(left);
        }
        self.sweep();
        want - left
    }
}
