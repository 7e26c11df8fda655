//! The memory server's pages: a slot table over the server's RAM, each slot owned by the site
//! that stored it. Pure (no I/O), so that every rule is tested directly.

use std::collections::BTreeMap;

use clu_proto::PAGE_SIZE;

/// Why the store refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Every slot is taken.
    #[error("the memory server is full ({0} pages); start it with more --pages, or page to the local partition")]
    Full(u32),
    /// A slot this site does not hold (never stored, freed, or another site's).
    #[error("slot {0} is not one this site holds here")]
    NotYours(u32),
    /// A page that is not one page.
    #[error("a page of {0} bytes; a slot holds {PAGE_SIZE}")]
    BadLength(usize),
    /// A request before the site said who it is.
    #[error("no MemHello on this connection yet")]
    NoHello,
}

#[derive(Debug, Default)]
struct SiteRun {
    incarnation: u64,
    held: u32,
}

/// The pages a memory server holds, at most `capacity`.
#[derive(Debug)]
pub struct Store {
    capacity: u32,
    /// Per slot: the owning site's index in `names` and its page, or nothing.
    slots: Vec<Option<(u32, Box<[u8]>)>>,
    free: Vec<u32>,
    names: Vec<String>,
    sites: BTreeMap<u32, SiteRun>,
}

impl Store {
    /// An empty store of `capacity` pages (allocated as they are stored).
    pub fn new(capacity: u32) -> Store {
        Store {
            capacity,
            slots: Vec::new(),
            free: Vec::new(),
            names: Vec::new(),
            sites: BTreeMap::new(),
        }
    }

    fn index(&mut self, site: &str) -> u32 {
        match self.names.iter().position(|n| n == site) {
            Some(i) => i as u32,
            None => {
                self.names.push(site.to_owned());
                (self.names.len() - 1) as u32
            }
        }
    }

    /// A site's pager says which run it is. A new run of a site frees every slot an earlier
    /// run held (that pager is gone, and its pages with it); returns how many were freed.
    pub fn hello(&mut self, site: &str, incarnation: u64) -> u32 {
        let i = self.index(site);
        let run = self.sites.entry(i).or_default();
        if run.incarnation == incarnation {
            return 0;
        }
        run.incarnation = incarnation;
        let freed = std::mem::take(&mut run.held);
        if freed > 0 {
            for (n, s) in self.slots.iter_mut().enumerate() {
                if matches!(s, Some((owner, _)) if *owner == i) {
                    *s = None;
                    self.free.push(n as u32);
                }
            }
        }
        freed
    }

    fn owner(&self, site: &str) -> Result<u32, StoreError> {
        self.names
            .iter()
            .position(|n| n == site)
            .map(|i| i as u32)
            .filter(|i| self.sites.contains_key(i))
            .ok_or(StoreError::NoHello)
    }

    /// Keeps `page` for `site` in a new slot.
    pub fn put(&mut self, site: &str, page: &[u8]) -> Result<u32, StoreError> {
        if page.len() != PAGE_SIZE {
            return Err(StoreError::BadLength(page.len()));
        }
        let owner = self.owner(site)?;
        let slot = match self.free.pop() {
            Some(n) => n,
            None if (self.slots.len() as u64) < u64::from(self.capacity) => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
            None => return Err(StoreError::Full(self.capacity)),
        };
        self.slots[slot as usize] = Some((owner, page.into()));
        if let Some(run) = self.sites.get_mut(&owner) {
            run.held += 1;
        }
        Ok(slot)
    }

    /// The page `site` keeps in `slot`.
    pub fn get(&self, site: &str, slot: u32) -> Result<&[u8], StoreError> {
        let owner = self.owner(site)?;
        match self.slots.get(slot as usize) {
            Some(Some((o, page))) if *o == owner => Ok(page),
            _ => Err(StoreError::NotYours(slot)),
        }
    }

    /// Frees `site`'s `slot`.
    pub fn free(&mut self, site: &str, slot: u32) -> Result<(), StoreError> {
        let owner = self.owner(site)?;
        match self.slots.get_mut(slot as usize) {
            Some(s @ Some(_)) if s.as_ref().map(|(o, _)| *o) == Some(owner) => {
                *s = None;
                self.free.push(slot);
                if let Some(run) = self.sites.get_mut(&owner) {
                    run.held -= 1;
                }
                Ok(())
            }
            _ => Err(StoreError::NotYours(slot)),
        }
    }

    /// Slots held, by site.
    pub fn held(&self) -> Vec<(String, u32)> {
        self.sites
            .iter()
            .map(|(i, r)| (self.names[*i as usize].clone(), r.held))
            .collect()
    }

    /// Slots in use, over all sites.
    pub fn in_use(&self) -> u32 {
        self.sites.values().map(|r| r.held).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page(b: u8) -> Vec<u8> {
        vec![b; PAGE_SIZE]
    }

    #[test]
    fn pages_belong_to_the_site_that_stored_them() {
        let mut s = Store::new(3);
        assert_eq!(s.put("a", &page(1)), Err(StoreError::NoHello));
        s.hello("a", 7);
        s.hello("b", 9);
        let x = s.put("a", &page(1)).unwrap();
        let y = s.put("b", &page(2)).unwrap();
        assert_eq!(s.get("a", x).unwrap(), &page(1)[..]);
        assert_eq!(
            s.get("b", x),
            Err(StoreError::NotYours(x)),
            "a foreign slot"
        );
        assert_eq!(s.free("b", x), Err(StoreError::NotYours(x)));
        assert_eq!(s.get("a", 99), Err(StoreError::NotYours(99)));
        assert_eq!(s.put("a", &[0; 3]), Err(StoreError::BadLength(3)));
        s.put("a", &page(3)).unwrap();
        assert_eq!(s.put("a", &page(4)), Err(StoreError::Full(3)));
        s.free("a", x).unwrap();
        assert_eq!(s.free("a", x), Err(StoreError::NotYours(x)), "twice");
        assert_eq!(s.put("b", &page(5)).unwrap(), x, "a freed slot is reused");
        assert_eq!(s.get("b", y).unwrap(), &page(2)[..]);
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn a_new_run_of_a_site_frees_what_the_old_one_held() {
        let mut s = Store::new(4);
        s.hello("a", 1);
        s.hello("b", 1);
        let a1 = s.put("a", &page(1)).unwrap();
        s.put("a", &page(2)).unwrap();
        let b1 = s.put("b", &page(3)).unwrap();
        assert_eq!(
            s.hello("a", 1),
            0,
            "the same run reconnecting keeps its pages"
        );
        assert_eq!(s.get("a", a1).unwrap(), &page(1)[..]);
        assert_eq!(s.hello("a", 2), 2, "a restarted pager");
        assert_eq!(s.get("a", a1), Err(StoreError::NotYours(a1)));
        assert_eq!(s.get("b", b1).unwrap(), &page(3)[..], "b is not touched");
        assert_eq!(s.held(), vec![("a".into(), 0), ("b".into(), 1)]);
    }

    proptest! {
        #[test]
        fn no_slot_is_ever_two_pages(ops in proptest::collection::vec(any::<(u8, bool, u8)>(), 1..300)) {
            let mut s = Store::new(8);
            let mut held: Vec<(u8, u32, u8)> = Vec::new();
            for site in 0..3u8 {
                s.hello(&site.to_string(), 1);
            }
            for (n, (site, put, pick)) in ops.into_iter().enumerate() {
                let site = site % 3;
                let name = site.to_string();
                if put {
                    match s.put(&name, &page(n as u8)) {
                        Ok(slot) => {
                            prop_assert!(!held.iter().any(|h| h.1 == slot));
                            held.push((site, slot, n as u8));
                        }
                        Err(StoreError::Full(_)) => prop_assert_eq!(held.len(), 8),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                } else if !held.is_empty() {
                    let (owner, slot, _) = held.swap_remove(pick as usize % held.len());
                    s.free(&owner.to_string(), slot).unwrap();
                }
                for (owner, slot, b) in &held {
                    prop_assert_eq!(s.get(&owner.to_string(), *slot).unwrap(), &page(*b)[..]);
                }
                prop_assert_eq!(s.in_use() as usize, held.len());
            }
        }
    }
}
