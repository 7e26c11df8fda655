//! [`Members`]: the live sites of the cell as this site sees them, kept by a watch on
//! `alive/` (thesis A6: a manager added or removed at run time is seen by the others), so that
//! `pager status` names them without asking etcd, and every arrival and departure is logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::keys::Keys;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live sites (name, address), as the watch saw them last.
#[derive(Debug, Default)]
pub struct Members {
    sites: Mutex<BTreeMap<String, String>>,
}

/// What happened to the membership (pure: [`Members::apply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A site's live key appeared (it joined, or restarted).
    Joined {
        /// The site.
        site: String,
        /// Where it listens.
        address: String,
    },
    /// A site's live key went (it left, or its lease expired).
    Left {
        /// The site.
        site: String,
    },
}

impl Members {
    /// The live sites, by name, with their addresses.
    pub fn alive(&self) -> Vec<(String, String)> {
        lock(&self.sites)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Replaces the whole view (after a listing).
    fn reset(&self, sites: BTreeMap<String, String>) {
        *lock(&self.sites) = sites;
    }

    /// Applies one change; returns whether it changed the view.
    pub fn apply(&self, c: &Change) -> bool {
        let mut s = lock(&self.sites);
        match c {
            Change::Joined { site, address } => {
                s.insert(site.clone(), address.clone()) != Some(address.clone())
            }
            Change::Left { site } => s.remove(site).is_some(),
        }
    }
}

/// Lists `alive/`, then watches it from the next revision, for as long as the runtime runs;
/// after any failure (etcd unreachable, a compacted revision) it lists again.
pub(crate) async fn watch(client: Client, keys: Keys, members: Arc<Members>, me: String) {
    let prefix = keys.alives();
    loop {
        let mut c = client.clone();
        let listed = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await;
        let Ok(listed) = listed else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let view: BTreeMap<String, String> = listed
            .kvs()
            .iter()
            .filter_map(|kv| {
                let site = Keys::tail(kv.key_str().ok()?, &prefix)?.to_owned();
                Some((site, String::from_utf8_lossy(kv.value()).into_owned()))
            })
            .collect();
        members.reset(view);
        let from = listed.header().map_or(0, |h| h.revision()) + 1;
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let Ok(mut stream) = c.watch(prefix.clone(), Some(opts)).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled() {
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(site) = kv.key_str().ok().and_then(|k| Keys::tail(k, &prefix)) else {
                    continue;
                };
                let change = match ev.event_type() {
                    EventType::Put => Change::Joined {
                        site: site.to_owned(),
                        address: String::from_utf8_lossy(kv.value()).into_owned(),
                    },
                    EventType::Delete => Change::Left {
                        site: site.to_owned(),
                    },
                };
                if members.apply(&change) && site != me {
                    match &change {
                        Change::Joined { site, address } => {
                            tracing::info!(site, address, "a site joined the cell")
                        }
                        Change::Left { site } => {
                            tracing::info!(site, "a site left the cell (its lease ended)")
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_departures_change_the_view_once() {
        let m = Members::default();
        let join = |s: &str, a: &str| Change::Joined {
            site: s.into(),
            address: a.into(),
        };
        assert!(m.apply(&join("a", "1.1.1.1:1")));
        assert!(!m.apply(&join("a", "1.1.1.1:1")), "the same key again");
        assert!(m.apply(&join("a", "1.1.1.1:2")), "a new address");
        assert!(m.apply(&join("b", "2.2.2.2:1")));
        assert!(m.apply(&Change::Left { site: "a".into() }));
        assert!(!m.apply(&Change::Left { site: "a".into() }));
        assert_eq!(m.alive(), vec![("b".to_owned(), "2.2.2.2:1".to_owned())]);
    }
}
