//! What the images of one site share: the resident budget, the paging partition, the
//! statistics, and the way to reclaim memory from other images. Images hold the site; the
//! manager builds it and tells it how to reclaim (a narrow trait, so that an image never needs
//! the manager).

use crate::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};

use clu_proto::ClusterId;

use crate::paging::PagingPartition;

/// A counter for `pager status`.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// One more.
    pub fn inc(&self) {
        self.add(1);
    }
    /// `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the manager has done since it started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Faults on pages absent from the image.
    pub missing_faults: Counter,
    /// Faults on pages in the image but not mapped by the faulting process.
    pub minor_faults: Counter,
    /// First writes to clean pages.
    pub wp_faults: Counter,
    /// Pages supplied as zeros.
    pub zero_fills: Counter,
    /// Pages read from storage.
    pub storage_reads: Counter,
    /// Pages read back from the paging partition.
    pub paging_reads: Counter,
    /// Clean pages evicted.
    pub evicted_clean: Counter,
    /// Dirty pages evicted to the paging partition.
    pub evicted_dirty: Counter,
    /// Faults refused (SIGBUS).
    pub poisoned: Counter,
    /// Commits.
    pub commits: Counter,
    /// Pages they wrote.
    pub committed_pages: Counter,
    /// Aborts.
    pub aborts: Counter,
    /// Pages read ahead of faults from access histories.
    pub prefetched: Counter,
    /// How long faults took to serve (from the pager's reading them to the page's mapping),
    /// by how they were served (the order of [`Served::ALL`]).
    pub fault_latency: [Histogram; Served::ALL.len()],
    /// How long commits took (from the call to the image validated in the journal).
    pub commit_latency: Histogram,
    /// Pages per commit.
    pub commit_pages: CommitPages,
}

/// How a fault was served, for the latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// A new page handed out as zeros.
    Zero = 0,
    /// Read from the volume's storage on this site.
    Storage = 1,
    /// Read back from the paging partition (local or a memory server).
    Paging = 2,
    /// The page was resident: mapped only (another process brought it in).
    Minor = 3,
    /// A first write to a clean page.
    WriteProtect = 4,
    /// Read from another site (a volume mounted there).
    Remote = 5,
}

impl Served {
    /// Every kind, in the order of [`Stats::fault_latency`].
    pub const ALL: [Served; 6] = [
        Served::Zero,
        Served::Storage,
        Served::Paging,
        Served::Minor,
        Served::WriteProtect,
        Served::Remote,
    ];

    /// Its name in the metrics' `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            Served::Zero => "zero",
            Served::Storage => "storage",
            Served::Paging => "paging",
            Served::Minor => "minor",
            Served::WriteProtect => "write_protect",
            Served::Remote => "remote",
        }
    }
}

/// The commit size histogram (pages per commit, [`crate::histogram::PAGES`]).
#[derive(Debug)]
pub struct CommitPages(pub Histogram);

impl Default for CommitPages {
    fn default() -> CommitPages {
        CommitPages(Histogram::new(crate::histogram::PAGES))
    }
}

/// The resident budget: how many pages of cluster memory the site holds at most, over all
/// images, and how many it holds now.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    resident: AtomicU64,
}

impl Budget {
    /// A budget of `limit` pages (at least one).
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit: limit.max(1),
            resident: AtomicU64::new(0),
        }
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Pages held now.
    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// `n` more pages are held.
    pub fn add(&self, n: u64) {
        self.resident.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` pages fewer are held.
    pub fn sub(&self, n: u64) {
        let _ = self
            .resident
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            });
    }

    /// How many pages must go before `need` more fit, if any must.
    pub fn excess(&self, need: u64) -> Option<u64> {
        let resident = self.resident();
        (resident + need > self.limit).then(|| resident + need - self.limit)
    }
}

/// Reclaims memory from images other than one (the manager's table implements it).
pub trait Reclaim: Send + Sync {
    /// Evicts up to `want` pages from images other than `except`, without waiting for any
    /// lock; returns how many.
    fn reclaim(&self, except: ClusterId, want: u64) -> u64;
    /// The same from cached images only (no process maps them), least recently used first.
    fn reclaim_cached(&self, except: ClusterId, want: u64) -> u64;
}

/// The shared resources of a site's memory manager.
pub struct Site {
    /// The resident budget.
    pub budget: Budget,
    /// The paging partition.
    pub paging: PagingPartition,
    /// The statistics.
    pub stats: Stats,
    reclaim: OnceLock<Weak<dyn Reclaim>>,
    /// The site's clock: a count of uses, for the reclaim's least-recently-used order.
    clock: AtomicU64,
    /// Whether an image stays resident after its last unmap, as the site's cache.
    cache_images: bool,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("budget", &self.budget)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Site {
    /// A site with a budget of `budget` pages and `paging` as its paging partition.
    pub fn new(budget: u64, paging: PagingPartition) -> Site {
        Site {
            budget: Budget::new(budget),
            paging,
            stats: Stats::default(),
            reclaim: OnceLock::new(),
            clock: AtomicU64::new(0),
            cache_images: true,
        }
    }

    /// The same, with images freed at their last unmap instead of kept as the site's cache
    /// (`pager serve --no-image-cache`).
    pub fn without_cache(mut self) -> Site {
        self.cache_images = false;
        self
    }

    /// Whether images stay resident after their last unmap.
    pub fn caches_images(&self) -> bool {
        self.cache_images
    }

    /// The next tick of the site's clock.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Tells the site how to reclaim from other images (once).
    pub fn set_reclaim(&self, reclaim: Weak<dyn Reclaim>) {
        let _ = self.reclaim.set(reclaim);
    }

    /// Evicts up to `want` pages from images other than `except`; returns how many.
    pub fn reclaim_elsewhere(&self, except: ClusterId, want: u64) -> u64 {
        self.reclaim
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |r| r.reclaim(except, want))
    }

    /// Evicts up to `want` pages from cached images other than `except`, least recently used
    /// first; returns how many.
    pub fn reclaim_cached(&self, except: ClusterId, want: u64) -> u64 {
        self.reclaim
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |r| r.reclaim_cached(except, want))
    }

    /// The longest read-ahead run the budget allows (an eighth of it).
    pub fn readahead_cap(&self) -> u64 {
        (self.budget.limit() / 8).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_and_says_how_much_must_go() {
        let b = Budget::new(10);
        b.add(8);
        assert_eq!(b.excess(2), None);
        assert_eq!(b.excess(5), Some(3));
        b.sub(100);
        assert_eq!(b.resident(), 0, "never below zero");
        assert_eq!(Budget::new(0).limit(), 1);
    }
}
