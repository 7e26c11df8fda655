//! Access history (thesis chapter VIII, requirement J8): each image records the order in which
//! its pages first came in from storage during a use; the last unmap saves it beside the
//! descriptor; the next map replays it in the background, reading the pages into the memfd and
//! mapping them (write-protected, clean) in the processes that map the cluster, ahead of their
//! faults: a page the history predicted costs no fault at all.
//!
//! The replay never evicts to make room (it stops at three quarters of the resident budget),
//! reads runs of consecutive pages at once, and reads storage without holding the image's lock.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Weak};

use clu_proto::PAGE_SIZE;
use clu_storage::history::MAX_HISTORY;
use clu_sys::sync::lock;
use tracing::debug;

use super::{Image, PAGE};
use crate::page_state::{step, Event, PageState};
use crate::runs::page_runs;

/// The order in which pages came in, each page once, bounded.
#[derive(Default)]
pub(crate) struct Recorder {
    order: Vec<u32>,
    seen: Vec<u64>,
}

impl Recorder {
    /// Records `page` if it is new and there is room.
    pub fn record(&mut self, page: u64) {
        let (Ok(p), word, bit) = (u32::try_from(page), (page / 64) as usize, page % 64) else {
            return;
        };
        if self.order.len() >= MAX_HISTORY {
            return;
        }
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) == 0 {
            self.seen[word] |= 1 << bit;
            self.order.push(p);
        }
    }

    /// The history so far, leaving the recorder empty.
    pub fn take(&mut self) -> Vec<u32> {
        self.seen.clear();
        std::mem::take(&mut self.order)
    }
}

/// Starts replaying `pages` into `img` in the background.
pub(crate) fn spawn_replay(img: &Arc<Image>, pages: Vec<u32>) {
    let weak = Arc::downgrade(img);
    let id = img.id;
    let spawned = std::thread::Builder::new()
        .name(format!("prefetch-{id}"))
        .spawn(move || replay(&weak, &pages));
    if let Err(e) = spawned {
        debug!(cluster = %id, "no prefetch thread: {e}");
    }
}

fn replay(img: &Weak<Image>, pages: &[u32]) {
    // First ask storage to start reading every 2 MiB block the history touches, in history
    // order: the reads below then mostly find the pages cached.
    if let Some(img) = img.upgrade() {
        let block = super::readahead::AROUND;
        let mut hinted = std::collections::HashSet::new();
        for &p in pages {
            let b = u64::from(p) / block;
            if hinted.insert(b) {
                img.vol.clu_prefetch(img.id.clu(), b * block, block);
            }
        }
    }
    let mut done = 0u64;
    let clean = step(PageState::MapNone, Event::ReadFault).map_or(PageState::MapNone, |(s, _)| s);
    // Runs of consecutive pages in history order (a sequential use replays in big reads).
    let pages: Vec<u64> = pages.iter().map(|&p| u64::from(p)).collect();
    for (first, n) in page_runs(&pages, super::readahead::MAX_WINDOW) {
        let Some(img) = img.upgrade() else { return };
        let commits = {
            let st = lock(&img.state);
            if st.closed || first + n > st.pages.len() as u64 {
                return;
            }
            if (first..first + n).all(|p| st.pages[p as usize] != PageState::MapNone) {
                continue;
            }
            st.commits
        };
        let budget = &img.site.budget;
        if budget.resident() + n > budget.limit() / 4 * 3 {
            break;
        }
        let mut buf = vec![0u8; n as usize * PAGE_SIZE];
        if img.vol.clu_read(img.id.clu(), first, &mut buf).is_err() {
            return;
        }
        let mut st = lock(&img.state);
        if st.closed {
            return;
        }
        if st.commits != commits {
            // A commit changed storage since the read: what was read may be older than what
            // storage holds now. Those pages come in by faults instead.
            continue;
        }
        let mut supplied = Vec::with_capacity(n as usize);
        for p in first..first + n {
            // A fault may have brought the page in meanwhile (or dirtied it).
            if st.pages[p as usize] != PageState::MapNone {
                continue;
            }
            let i = (p - first) as usize;
            if img
                .memfd
                .write_all_at(&buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], p * PAGE)
                .is_err()
            {
                return;
            }
            st.pages[p as usize] = clean;
            img.gained(&mut st, 1);
            img.site.stats.prefetched.inc();
            // Predicted pages will not fault: keep them in this use's history too.
            st.history.record(p);
            supplied.push(p);
            done += 1;
        }
        // Map them ahead of the faults in every process that maps the cluster.
        img.map_in_all(&supplied);
        drop(st);
        img.vol.clu_uncache(img.id.clu(), first, n);
    }
    debug!(pages = done, "history prefetch done");
}
