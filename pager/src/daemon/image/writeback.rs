//! Commit, abort and release of an image: the write-back side of the page state machine
//! (`Clean`), and the end of an image when its last mapper goes.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use client::PAGE_SIZE;
use journal::PageRun;
use nix::fcntl::{fallocate, FallocateFlags};

use super::{io, Image, ImageState, PAGE};
use crate::daemon::error::Refusal;
use crate::daemon::manager::Manager;
use crate::page_state::{step, Action, Event, PageState, Residence};
use crate::sync::lock;

impl Image {
    /// `clu_Commit`: writes the dirty pages back atomically through the volume's journal.
    /// Returns the number of pages written.
    pub fn commit(&self, m: &Manager) -> Result<u64, Refusal> {
        let _serial = lock(&self.commit_lock);
        if self.is_temporary() {
            // Never written to storage unless promoted (thesis G4): the pages stay dirty.
            return Ok(0);
        }
        let (dirty, buf) = {
            let mut st = lock(&self.state);
            self.harvest(&mut st);
            let dirty: Vec<u64> = (0..st.pages.len() as u64)
                .filter(|&p| matches!(st.pages[p as usize], PageState::KWrite | PageState::SWrite))
                .collect();
            if dirty.is_empty() {
                return Ok(0);
            }
            // One write-protect per region makes the snapshot point-in-time: from here on, a
            // write to any page of the cluster faults and waits for the commit.
            let npages = st.pages.len() as u64;
            self.protect(&st, 0, npages);
            let mut buf = vec![0u8; dirty.len() * PAGE_SIZE];
            for (i, &p) in dirty.iter().enumerate() {
                let chunk = &mut buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                let copied = match step(st.pages[p as usize], Event::Commit) {
                    Ok((next, actions)) => {
                        st.pages[p as usize] = next;
                        match actions.last() {
                            Some(Action::CopyToJournal(Residence::Memory)) => self
                                .memfd
                                .read_exact_at(chunk, p * PAGE)
                                .map_err(|e| io("reading the cluster's memory object", e)),
                            Some(Action::CopyToJournal(Residence::Paging)) => {
                                match st.slots.get(&p) {
                                    Some(&slot) => {
                                        m.paging.load(slot, chunk).map_err(Refusal::from)
                                    }
                                    None => Err(io("paging partition", "a dirty page has no slot")),
                                }
                            }
                            _ => Ok(()),
                        }
                    }
                    Err(e) => Err(io("commit", e)),
                };
                if let Err(e) = copied {
                    self.finish_commit(m, &mut st, &dirty[..=i], Event::CommitFailed);
                    return Err(e);
                }
            }
            (dirty, buf)
        };
        let mut runs = Vec::new();
        let mut i = 0;
        while i < dirty.len() {
            let mut j = i + 1;
            while j < dirty.len() && dirty[j] == dirty[j - 1] + 1 {
                j += 1;
            }
            runs.push(PageRun {
                first_page: dirty[i],
                pages: &buf[i * PAGE_SIZE..j * PAGE_SIZE],
            });
            i = j;
        }
        let written = self.vol.clu_write(self.id.clu(), &runs);
        let mut st = lock(&self.state);
        let ev = if written.is_ok() {
            Event::CommitDone
        } else {
            Event::CommitFailed
        };
        self.finish_commit(m, &mut st, &dirty, ev);
        written?;
        m.stats.commits.inc();
        m.stats.committed_pages.add(dirty.len() as u64);
        Ok(dirty.len() as u64)
    }

    fn finish_commit(&self, m: &Manager, st: &mut ImageState, pages: &[u64], ev: Event) {
        for &p in pages {
            if let Ok((next, actions)) = step(st.pages[p as usize], ev) {
                if actions.contains(&Action::FreeSlot) {
                    self.free_slot(m, st, p);
                }
                st.pages[p as usize] = next;
            }
        }
        self.replay(m, st);
    }

    fn replay(&self, m: &Manager, st: &mut ImageState) {
        for f in std::mem::take(&mut st.deferred) {
            self.serve(m, st, f);
        }
    }

    /// `clu_Abort`: discards every modification since the last commit, in memory and in the
    /// paging partition. The next access reloads the page from storage.
    pub fn abort(&self, m: &Manager) -> u64 {
        let _serial = lock(&self.commit_lock);
        let mut st = lock(&self.state);
        self.harvest(&mut st);
        let mut drop = Vec::new();
        let mut discarded = 0;
        for p in 0..st.pages.len() as u64 {
            let state = st.pages[p as usize];
            if !state.dirty() {
                continue;
            }
            let Ok((next, actions)) = step(state, Event::Abort) else {
                continue;
            };
            for a in actions {
                match a {
                    Action::Drop => drop.push(p),
                    Action::FreeSlot => self.free_slot(m, &mut st, p),
                    _ => {}
                }
            }
            st.pages[p as usize] = next;
            discarded += 1;
        }
        self.punch_pages(m, &mut st, &drop);
        self.replay(m, &mut st);
        m.stats.aborts.inc();
        discarded
    }

    /// The last mapper is gone: frees the image's memory and paging slots.
    pub fn release(&self, m: &Manager) {
        let mut st = lock(&self.state);
        let n = st.pages.len() as u64;
        let resident = st.resident;
        if n > 0 {
            let _ = fallocate(
                self.memfd.as_raw_fd(),
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                0,
                (n * PAGE) as i64,
            );
        }
        st.resident = 0;
        m.sub_resident(resident);
        for (_, slot) in std::mem::take(&mut st.slots) {
            let _ = m.paging.free(slot);
        }
        st.deferred.clear();
        st.hinted.clear();
        st.closed = true;
        let history = st.history.take();
        if !history.is_empty() {
            if let Err(e) = self.vol.clu_set_history(self.id.clu(), &history) {
                tracing::warn!(cluster = %self.id, "saving the access history: {e}");
            }
        }
        st.pages.iter_mut().for_each(|p| *p = PageState::MapNone);
    }
}
