//! `pager status [--json]`: the manager's state, its reliable volumes' replication, and its
//! clusters, as one plain struct shown in words or serialized as JSON.

use std::fmt::Write as _;

use clu_goofy::{BackupStatus, Replication};
use serde::{Deserialize, Serialize};

use super::{json, milli};

/// The memory server a site pages to (`--paging-server`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PagingServerView {
    /// Its address.
    pub address: String,
    /// Its name, as it answered.
    pub server: String,
    /// Pages sent there.
    pub stored: u64,
    /// Pages read back.
    pub loaded: u64,
    /// Requests that failed.
    pub failures: u64,
}

/// Connections to the pager.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Connections {
    /// Open now.
    pub live: u64,
    /// Since start.
    pub total: u64,
}

/// Faults by kind.
// Read back by `pager top` (a field an older pager lacks reads as zero).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Pages absent from the image.
    pub missing: u64,
    /// Pages in the image, not mapped by the faulting process.
    pub minor: u64,
    /// First writes to clean pages.
    pub write_protect: u64,
    /// Refused (SIGBUS).
    pub refused: u64,
}

/// Pages supplied, by source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Supplies {
    /// Zero pages.
    pub zero: u64,
    /// From storage.
    pub storage: u64,
    /// From the paging partition.
    pub paging: u64,
    /// Ahead of faults, from access histories.
    pub prefetched: u64,
}

/// Pages evicted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evictions {
    /// Clean pages dropped.
    pub clean: u64,
    /// Dirty pages sent to the paging partition.
    pub dirty: u64,
}

/// Commits and aborts.
// Read back by `pager top` (a field an older pager lacks reads as zero).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Commits {
    /// Commits.
    pub count: u64,
    /// Pages committed.
    pub pages: u64,
    /// Aborts.
    pub aborts: u64,
}

/// A full copy's progress.
#[derive(Clone, Debug, Serialize)]
pub struct CopyView {
    /// Pages sent.
    pub pages_sent: u64,
    /// Pages in all.
    pub pages_total: u64,
}

/// One backup of a reliable volume.
#[derive(Clone, Debug, Serialize)]
pub struct BackupView {
    /// `HOST:PORT`.
    pub addr: String,
    /// In sync, catching up, copying, stale, unreachable, fenced.
    pub state: &'static str,
    /// Why unreachable or fenced.
    pub detail: Option<String>,
    /// Every operation before this LSN is acknowledged.
    pub acked_lsn: String,
    /// Bytes of log not acknowledged yet.
    pub behind_bytes: u64,
    /// Age of the oldest unacknowledged commit.
    pub behind_secs: f64,
    /// Median propagation lag of the latest operations.
    pub lag_median_ms: Option<f64>,
    /// How many operations that median covers.
    pub lag_ops: usize,
    /// A full copy under way.
    pub copy: Option<CopyView>,
}

impl From<&BackupStatus> for BackupView {
    fn from(b: &BackupStatus) -> BackupView {
        BackupView {
            addr: b.addr.clone(),
            state: b.state,
            detail: b.detail.clone(),
            acked_lsn: b.acked.to_string(),
            behind_bytes: b.behind_bytes,
            behind_secs: milli(b.behind_secs),
            lag_median_ms: b.lag_median_ms.map(|(m, _)| milli(m)),
            lag_ops: b.lag_median_ms.map_or(0, |(_, n)| n),
            copy: b.copy.map(|(d, t)| CopyView {
                pages_sent: d,
                pages_total: t,
            }),
        }
    }
}

/// A reliable volume.
#[derive(Clone, Debug, Serialize)]
pub struct ReliableView {
    /// Its name.
    pub name: String,
    /// Its id.
    pub vol: String,
    /// Its epoch.
    pub epoch: u64,
    /// Why it is fenced, if it is.
    pub fenced: Option<String>,
    /// The end of its log.
    pub log_lsn: String,
    /// Its backups.
    pub backups: Vec<BackupView>,
    /// For a restored volume, what its restoration lost (empty otherwise).
    pub restored: String,
}

impl ReliableView {
    /// The view of a volume's replication.
    pub fn new(vol: clu_proto::VolId, r: &Replication) -> ReliableView {
        ReliableView {
            name: r.name.clone(),
            vol: vol.to_string(),
            epoch: r.epoch,
            fenced: r.fenced.clone(),
            log_lsn: r.log_lsn.to_string(),
            backups: r.backups.iter().map(BackupView::from).collect(),
            restored: r.restored.clone(),
        }
    }
}

/// This site in its cell.
#[derive(Clone, Debug, Serialize)]
pub struct CellView {
    /// The site's name.
    pub site: String,
    /// The cell's name.
    pub cell: String,
    /// The catalog's etcd endpoints.
    pub catalog: String,
    /// Whether the site's lease (and so its mounts) holds.
    pub lease_alive: bool,
    /// The cell's live sites, as this site's watch sees them.
    pub sites_alive: Vec<String>,
    /// What this site exchanged with each other site (remote paging).
    pub remote_sites: Vec<RemoteSiteView>,
}

/// This site's traffic with another site of the cell.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteSiteView {
    /// The other site.
    pub site: String,
    /// Requests answered.
    pub requests: u64,
    /// Requests that failed on the connection.
    pub failures: u64,
    /// The last round trip, in microseconds.
    pub last_rtt_us: u64,
    /// The mean round trip, in microseconds.
    pub mean_rtt_us: u64,
    /// Bytes sent to it.
    pub bytes_sent: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
    /// Faults (and read-ahead runs) it served from its storage.
    pub reads: u64,
    /// Pages those reads brought.
    pub pages_read: u64,
    /// Commits it validated for this site.
    pub commits: u64,
}

/// A restoration under way.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreView {
    /// The volume.
    pub name: String,
    /// The backup it comes from.
    pub source: String,
    /// Pages received.
    pub received_pages: u64,
    /// Pages in the image.
    pub total_pages: u64,
}

/// A cluster image on this site.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// `vvvv:cccc`.
    pub id: String,
    /// Its size.
    pub pages: u64,
    /// Pages in memory.
    pub resident: u64,
    /// Pages modified since the last commit.
    pub dirty: u64,
    /// Of which in the paging partition.
    pub paged_out: u64,
    /// Processes mapping it.
    pub mappers: usize,
    /// Faults served since the image came to this site, by how they were served.
    pub faults: ServedFaults,
    /// Commits validated since the image came to this site.
    pub commits: u64,
}

/// Faults by how they were served (`clu_mm::Served`): the kinds of the latency histograms.
// Read back by `pager top` (a field an older pager lacks reads as zero).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServedFaults {
    /// New pages handed out as zeros.
    pub zero: u64,
    /// Read from this site's storage.
    pub storage: u64,
    /// Read back from the paging partition.
    pub paging: u64,
    /// Resident already: mapped only.
    pub minor: u64,
    /// First writes to clean pages.
    pub write_protect: u64,
    /// Read from another site.
    pub remote: u64,
}

impl From<[u64; clu_mm::Served::ALL.len()]> for ServedFaults {
    fn from(f: [u64; clu_mm::Served::ALL.len()]) -> ServedFaults {
        use clu_mm::Served;
        ServedFaults {
            zero: f[Served::Zero as usize],
            storage: f[Served::Storage as usize],
            paging: f[Served::Paging as usize],
            minor: f[Served::Minor as usize],
            write_protect: f[Served::WriteProtect as usize],
            remote: f[Served::Remote as usize],
        }
    }
}

impl From<&clu_mm::ImageView> for ClusterView {
    fn from(v: &clu_mm::ImageView) -> ClusterView {
        ClusterView {
            id: v.id.to_string(),
            pages: v.pages,
            resident: v.resident,
            dirty: v.dirty,
            paged_out: v.paged_out,
            mappers: v.mappers,
            faults: v.faults.into(),
            commits: v.commits,
        }
    }
}

/// A volume of the site's catalog.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeView {
    /// Its id.
    pub vol: String,
    /// Its name.
    pub name: String,
    /// Its storage service.
    pub service: String,
    /// Whether it is mounted on this site.
    pub mounted: bool,
}

/// The latencies of every fault served since start, whatever their kind.
// Read back by `pager top` (a field an older pager lacks reads as zero).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyView {
    /// The buckets' upper bounds, in microseconds (one more bucket follows, unbounded).
    pub bounds_us: Vec<f64>,
    /// Faults in each bucket (above the previous bound, at or below this one): one more
    /// than the bounds.
    pub counts: Vec<u64>,
}

impl LatencyView {
    /// The sum of `histograms` (of the same bounds), in microseconds.
    pub fn sum(histograms: &[clu_mm::histogram::Histogram]) -> LatencyView {
        let mut v = LatencyView::default();
        for h in histograms {
            let snap = h.snapshot(1e-3);
            if v.counts.is_empty() {
                v.bounds_us = snap
                    .buckets
                    .iter()
                    .map(|b| b.0)
                    .filter(|b| *b < f64::MAX)
                    .collect();
                v.counts = vec![0; snap.buckets.len()];
            }
            for (c, (_, n)) in v.counts.iter_mut().zip(snap.buckets) {
                *c += n;
            }
        }
        v
    }
}

/// Everything `pager status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The pager's process.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// Its storage root.
    pub root: String,
    /// Its socket.
    pub socket: String,
    /// Its cell, if it is a site of one (`--catalog`).
    pub cell: Option<CellView>,
    /// Its connections.
    pub connections: Connections,
    /// Pages of cluster memory held.
    pub resident_pages: u64,
    /// The resident budget.
    pub budget_pages: u64,
    /// Paging slots in use.
    pub paging_slots: u32,
    /// The memory server the site pages to, if it does (`--paging-server`).
    pub paging_server: Option<PagingServerView>,
    /// Faults by kind.
    pub faults: Faults,
    /// Pages supplied.
    pub supplies: Supplies,
    /// Pages evicted.
    pub evictions: Evictions,
    /// Commits and aborts.
    pub commits: Commits,
    /// How long faults took to serve.
    pub fault_latency: LatencyView,
    /// The volumes of the site's catalog.
    pub volumes: Vec<VolumeView>,
    /// The reliable volumes mounted here.
    pub reliable_volumes: Vec<ReliableView>,
    /// Restorations under way.
    pub restoring: Vec<RestoreView>,
    /// The cluster images in use (mapped, or temporary clusters in memory).
    pub clusters: Vec<ClusterView>,
    /// The site cache: clean images kept resident after their last unmap.
    pub cached: Vec<ClusterView>,
}

fn backup_line(b: &BackupView) -> String {
    let mut state = b.state.to_string();
    if let Some(c) = &b.copy {
        let _ = write!(state, " ({} of {} pages)", c.pages_sent, c.pages_total);
    }
    if let Some(d) = &b.detail {
        let _ = write!(state, " ({d})");
    }
    let lag = b.lag_median_ms.map_or(String::new(), |m| {
        format!(
            "; propagation lag median {m:.1} ms over the last {} operations",
            b.lag_ops
        )
    });
    format!(
        "backup {}: {state}; acknowledged {}, {} bytes and {:.1} s behind{lag}",
        b.addr, b.acked_lsn, b.behind_bytes, b.behind_secs
    )
}

impl Status {
    /// As JSON.
    pub fn json(&self) -> String {
        json(self)
    }

    /// In words.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let uptime = std::time::Duration::from_secs_f64(self.uptime_secs.max(0.0));
        let _ = writeln!(out, "pid              {}", self.pid);
        let _ = writeln!(out, "uptime           {uptime:.0?}");
        let _ = writeln!(out, "root             {}", self.root);
        let _ = writeln!(out, "socket           {}", self.socket);
        if let Some(c) = &self.cell {
            let _ = writeln!(
                out,
                "cell             site {} of cell {}, catalog etcd://{}, lease {}",
                c.site,
                c.cell,
                c.catalog,
                if c.lease_alive {
                    "alive"
                } else {
                    "LOST (no change to its volumes is accepted; restart once etcd answers)"
                }
            );
            let _ = writeln!(
                out,
                "sites alive      {} ({})",
                c.sites_alive.len(),
                c.sites_alive.join(", ")
            );
            for r in &c.remote_sites {
                let _ = writeln!(
                    out,
                    "  site {:<14} rtt {} us (mean {} us), {} requests ({} failed), {} B sent, {} B received, {} reads ({} pages), {} commits",
                    r.site,
                    r.last_rtt_us,
                    r.mean_rtt_us,
                    r.requests,
                    r.failures,
                    r.bytes_sent,
                    r.bytes_received,
                    r.reads,
                    r.pages_read,
                    r.commits
                );
            }
        }
        let _ = writeln!(
            out,
            "connections      {} live, {} since start",
            self.connections.live, self.connections.total
        );
        let _ = writeln!(
            out,
            "resident pages   {} of a budget of {}",
            self.resident_pages, self.budget_pages
        );
        match &self.paging_server {
            None => {
                let _ = writeln!(out, "paging slots     {} in use", self.paging_slots);
            }
            Some(m) => {
                let _ = writeln!(
                    out,
                    "paging slots     {} in use on memory server {} ({}): {} pages sent, {} read back, {} requests failed",
                    self.paging_slots, m.server, m.address, m.stored, m.loaded, m.failures
                );
            }
        }
        let f = &self.faults;
        let _ = writeln!(
            out,
            "faults           {} missing, {} minor, {} write-protect, {} refused (SIGBUS)",
            f.missing, f.minor, f.write_protect, f.refused
        );
        let s = &self.supplies;
        let _ = writeln!(
            out,
            "supplies         {} zero, {} from storage, {} from the paging partition, {} prefetched from access histories",
            s.zero, s.storage, s.paging, s.prefetched
        );
        let _ = writeln!(
            out,
            "evictions        {} clean, {} dirty (to the paging partition)",
            self.evictions.clean, self.evictions.dirty
        );
        let c = &self.commits;
        let _ = writeln!(
            out,
            "commits          {} ({} pages), {} aborts",
            c.count, c.pages, c.aborts
        );
        for r in &self.reliable_volumes {
            let fenced = r
                .fenced
                .as_ref()
                .map_or(String::new(), |why| format!("; FENCED: {why}"));
            let _ = writeln!(
                out,
                "reliable volume  {} ({}): epoch {}, log at {}{fenced}",
                r.name, r.vol, r.epoch, r.log_lsn
            );
            if !r.restored.is_empty() {
                let _ = writeln!(out, "  restored {}", r.restored);
            }
            for b in &r.backups {
                let _ = writeln!(out, "  {}", backup_line(b));
            }
        }
        for r in &self.restoring {
            let _ = writeln!(
                out,
                "restoring        {} from {}: {} of {} pages received",
                r.name, r.source, r.received_pages, r.total_pages
            );
        }
        let _ = writeln!(
            out,
            "\n{:<10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "CLUSTER", "PAGES", "RESIDENT", "DIRTY", "PAGED-OUT", "MAPPERS"
        );
        for c in &self.clusters {
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8}",
                c.id, c.pages, c.resident, c.dirty, c.paged_out, c.mappers
            );
        }
        if !self.cached.is_empty() {
            let total: u64 = self.cached.iter().map(|c| c.resident).sum();
            let _ = writeln!(
                out,
                "\ncached (unmapped, clean; reclaimed first, least recently used first): {total} pages"
            );
            let _ = writeln!(out, "{:<10} {:>10} {:>10}", "CLUSTER", "PAGES", "RESIDENT");
            for c in &self.cached {
                let _ = writeln!(out, "{:<10} {:>10} {:>10}", c.id, c.pages, c.resident);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_words_show_the_same_backup() {
        let b = BackupView::from(&BackupStatus {
            addr: "127.0.0.1:7701".into(),
            state: "in sync",
            detail: Some("a \"quoted\" reason\n".into()),
            acked: journal::Lsn::new(2, 4096),
            behind_bytes: 0,
            behind_secs: 0.0,
            lag_median_ms: Some((1.23456, 9)),
            copy: None,
        });
        let j: serde_json::Value = serde_json::from_str(&json(&b)).expect("valid JSON");
        assert_eq!(j["state"], "in sync");
        assert_eq!(j["detail"], "a \"quoted\" reason\n");
        assert_eq!(j["acked_lsn"], "2:0x1000");
        assert_eq!(j["lag_median_ms"], 1.235);
        assert_eq!(j["lag_ops"], 9);
        assert!(j["copy"].is_null());
        let line = backup_line(&b);
        assert!(
            line.contains(": in sync (a \"quoted\" reason\n);"),
            "{line}"
        );
        let quiet = backup_line(&BackupView { detail: None, ..b });
        // What the tests' wait for a backup in sync looks for.
        assert!(
            quiet.contains(": in sync;") && quiet.contains(", 0 bytes and"),
            "{quiet}"
        );
    }
}
