//! What this site exchanged with each other site of the cell, for `pager status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clu_sys::sync::lock;

/// The figures of one other site, as this site's requests to it saw them.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests that failed on the connection (not answered).
    pub failures: AtomicU64,
    /// Bytes sent and received (frames).
    pub bytes_sent: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Read requests answered: faults (and read-ahead runs) served from that site's storage.
    pub reads: AtomicU64,
    /// Pages those reads brought.
    pub pages_read: AtomicU64,
    /// Commits that site validated for this one.
    pub commits: AtomicU64,
    /// The last request's round trip, in microseconds.
    pub last_rtt_us: AtomicU64,
    /// Sum of the round trips, in microseconds (with `requests`, the mean).
    pub total_rtt_us: AtomicU64,
}

/// A copy of a site's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    /// The site.
    pub site: String,
    /// See [`PeerStats`].
    pub requests: u64,
    /// See [`PeerStats`].
    pub failures: u64,
    /// See [`PeerStats`].
    pub bytes_sent: u64,
    /// See [`PeerStats`].
    pub bytes_received: u64,
    /// See [`PeerStats`].
    pub reads: u64,
    /// See [`PeerStats`].
    pub pages_read: u64,
    /// See [`PeerStats`].
    pub commits: u64,
    /// See [`PeerStats`].
    pub last_rtt_us: u64,
    /// The mean round trip, in microseconds.
    pub mean_rtt_us: u64,
}

/// Every other site this one talked to (short lock: finds or adds a site's figures).
#[derive(Debug, Default)]
pub struct Peers {
    sites: Mutex<BTreeMap<String, Arc<PeerStats>>>,
}

impl Peers {
    /// The figures of `site`, made on first use.
    pub fn of(&self, site: &str) -> Arc<PeerStats> {
        lock(&self.sites)
            .entry(site.to_owned())
            .or_default()
            .clone()
    }

    /// A copy of every site's figures, by name.
    pub fn views(&self) -> Vec<PeerView> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        lock(&self.sites)
            .iter()
            .map(|(site, s)| {
                let requests = get(&s.requests);
                PeerView {
                    site: site.clone(),
                    requests,
                    failures: get(&s.failures),
                    bytes_sent: get(&s.bytes_sent),
                    bytes_received: get(&s.bytes_received),
                    reads: get(&s.reads),
                    pages_read: get(&s.pages_read),
                    commits: get(&s.commits),
                    last_rtt_us: get(&s.last_rtt_us),
                    mean_rtt_us: get(&s.total_rtt_us).checked_div(requests).unwrap_or(0),
                }
            })
            .collect()
    }
}
