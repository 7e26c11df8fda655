//! What `pager top` shows, computed from two readings of `pager status --json` a moment apart:
//! plain data in, plain data out (rates per second, the latencies of the interval), so that the
//! drawing (`view`) and the polling (`mod`) hold no arithmetic of their own.

use serde::Deserialize;

use crate::render::status::{Commits, Faults as TotalFaults, LatencyView as Latency, ServedFaults};

/// The kinds of faults, in the order of every `[f64; 6]` below (the metrics' `kind` labels).
pub const KINDS: [&str; 6] = ["zero", "storage", "paging", "minor", "wp", "remote"];

/// One reading of `pager status --json`: only the fields `top` uses (others are ignored, and
/// missing ones, from an older pager, read as zero).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reading {
    pub pid: u32,
    pub uptime_secs: f64,
    pub root: String,
    pub resident_pages: u64,
    pub budget_pages: u64,
    pub paging_slots: u32,
    pub cell: Option<CellReading>,
    pub faults: TotalFaults,
    pub commits: Commits,
    pub fault_latency: Latency,
    pub volumes: Vec<VolumeReading>,
    pub reliable_volumes: Vec<ReliableReading>,
    pub clusters: Vec<ClusterReading>,
    pub cached: Vec<ClusterReading>,
}

/// The site's cell.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct CellReading {
    pub site: String,
    pub cell: String,
    pub lease_alive: bool,
}

/// A volume of the catalog.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct VolumeReading {
    pub vol: String,
    pub name: String,
    pub mounted: bool,
}

/// A reliable volume mounted here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReliableReading {
    pub vol: String,
    pub epoch: u64,
    pub fenced: Option<String>,
    pub backups: Vec<BackupReading>,
}

/// One of its backups.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct BackupReading {
    pub addr: String,
    pub state: String,
    pub behind_bytes: u64,
    pub behind_secs: f64,
}

/// A cluster image on the site.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ClusterReading {
    pub id: String,
    pub pages: u64,
    pub resident: u64,
    pub dirty: u64,
    pub mappers: usize,
    pub faults: ServedFaults,
    pub commits: u64,
}

/// A cluster's faults by kind, in the order of [`KINDS`].
fn by_kind(f: &ServedFaults) -> [u64; 6] {
    [
        f.zero,
        f.storage,
        f.paging,
        f.minor,
        f.write_protect,
        f.remote,
    ]
}

/// A row of the clusters' table.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterRow {
    pub id: String,
    /// Faults per second by kind ([`KINDS`]).
    pub rates: [f64; 6],
    pub resident: u64,
    pub dirty: u64,
    pub pages: u64,
    /// Kept as the site's cache (nobody maps it).
    pub cached: bool,
    pub mappers: usize,
}

impl ClusterRow {
    /// Faults per second, all kinds.
    pub fn total(&self) -> f64 {
        self.rates.iter().sum()
    }
}

/// A row of the volumes' table.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeRow {
    pub vol: String,
    pub name: String,
    /// Commits per second of its clusters on this site.
    pub commits_per_sec: f64,
    /// `epoch N`, fenced or not, for a reliable volume; empty otherwise.
    pub replication: String,
    /// Per backup: `addr state, N KiB / S s behind`.
    pub backups: Vec<String>,
}

/// One screen's worth.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The first line: the pager, its memory, its cell.
    pub summary: String,
    /// Faults and commits per second over the whole site.
    pub rates: String,
    pub clusters: Vec<ClusterRow>,
    pub volumes: Vec<VolumeRow>,
    /// The fault latency histogram of the interval (of everything since start on the first
    /// frame): (bucket's label, faults).
    pub latency: Vec<(String, u64)>,
    /// What `latency` covers, in words.
    pub latency_span: String,
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / secs
}

fn bucket_label(bounds: &[f64], i: usize) -> String {
    let us = |b: f64| {
        if b >= 1e6 {
            format!("{}s", b / 1e6)
        } else if b >= 1e3 {
            format!("{}ms", b / 1e3)
        } else {
            format!("{b}us")
        }
    };
    match bounds.get(i) {
        Some(&b) => format!("<={}", us(b)),
        None => format!(">{}", bounds.last().map_or("0".into(), |&b| us(b))),
    }
}

/// The frame for reading `now`, taken `secs` after `before` (`None`: the first reading, rates
/// are not known yet).
pub fn frame(before: Option<&Reading>, now: &Reading, secs: f64) -> Frame {
    // A restarted pager (another pid) starts its counters again: treat as a first reading.
    let before = before.filter(|b| b.pid == now.pid);
    let secs = if before.is_some() { secs } else { 0.0 };
    let previous = |id: &str| {
        before.and_then(|b| {
            b.clusters
                .iter()
                .chain(&b.cached)
                .find(|c| c.id == id)
                .cloned()
        })
    };
    let mut clusters = Vec::new();
    let mut commits_by_vol: std::collections::BTreeMap<String, f64> = Default::default();
    for (c, cached) in now
        .clusters
        .iter()
        .map(|c| (c, false))
        .chain(now.cached.iter().map(|c| (c, true)))
    {
        let (rates, commits) = match previous(&c.id) {
            Some(p) => {
                let (n, b) = (by_kind(&c.faults), by_kind(&p.faults));
                (
                    std::array::from_fn(|i| per_sec(n[i], b[i], secs)),
                    per_sec(c.commits, p.commits, secs),
                )
            }
            None => ([0.0; 6], 0.0),
        };
        let vol = c.id.split(':').next().unwrap_or_default().to_owned();
        *commits_by_vol.entry(vol).or_default() += commits;
        clusters.push(ClusterRow {
            id: c.id.clone(),
            rates,
            resident: c.resident,
            dirty: c.dirty,
            pages: c.pages,
            cached,
            mappers: c.mappers,
        });
    }
    // The busiest first; then mapped before cached; then by id.
    clusters.sort_by(|a, b| {
        b.total()
            .total_cmp(&a.total())
            .then(a.cached.cmp(&b.cached))
            .then(a.id.cmp(&b.id))
    });
    let volumes = now
        .volumes
        .iter()
        .filter(|v| v.mounted)
        .map(|v| {
            let reliable = now.reliable_volumes.iter().find(|r| r.vol == v.vol);
            VolumeRow {
                vol: v.vol.clone(),
                name: v.name.clone(),
                commits_per_sec: commits_by_vol.get(&v.vol).copied().unwrap_or(0.0),
                replication: reliable.map_or(String::new(), |r| match &r.fenced {
                    Some(_) => format!("epoch {} FENCED", r.epoch),
                    None => format!("epoch {}", r.epoch),
                }),
                backups: reliable.map_or(Vec::new(), |r| {
                    r.backups
                        .iter()
                        .map(|b| {
                            format!(
                                "{} {}, {} KiB / {:.1} s behind",
                                b.addr,
                                b.state,
                                b.behind_bytes.div_ceil(1024),
                                b.behind_secs
                            )
                        })
                        .collect()
                }),
            }
        })
        .collect();
    let lat = &now.fault_latency;
    let latency = lat
        .counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let was = before
                .and_then(|b| b.fault_latency.counts.get(i).copied())
                .unwrap_or(0);
            (bucket_label(&lat.bounds_us, i), n.saturating_sub(was))
        })
        .collect();
    let faults = |r: &Reading| r.faults.missing + r.faults.minor + r.faults.write_protect;
    let rates = match before {
        Some(b) => format!(
            "faults {:.0}/s (refused {:.0}/s)   commits {:.1}/s, {:.0} pages/s, aborts {:.1}/s",
            per_sec(faults(now), faults(b), secs),
            per_sec(now.faults.refused, b.faults.refused, secs),
            per_sec(now.commits.count, b.commits.count, secs),
            per_sec(now.commits.pages, b.commits.pages, secs),
            per_sec(now.commits.aborts, b.commits.aborts, secs),
        ),
        None => format!(
            "faults {} since start (refused {})   commits {}, {} pages, aborts {}",
            faults(now),
            now.faults.refused,
            now.commits.count,
            now.commits.pages,
            now.commits.aborts
        ),
    };
    let cell = now.cell.as_ref().map_or(String::new(), |c| {
        format!(
            "   site {} of cell {} (lease {})",
            c.site,
            c.cell,
            if c.lease_alive { "held" } else { "LOST" }
        )
    });
    Frame {
        summary: format!(
            "pager {} up {:.0}s   root {}   resident {}/{} pages   paging slots {}{cell}",
            now.pid,
            now.uptime_secs,
            now.root,
            now.resident_pages,
            now.budget_pages,
            now.paging_slots
        ),
        rates,
        clusters,
        volumes,
        latency,
        latency_span: if before.is_some() {
            format!("fault latency over the last {secs:.1} s")
        } else {
            "fault latency since start".into()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str, zero: u64, minor: u64, commits: u64) -> ClusterReading {
        ClusterReading {
            id: id.into(),
            pages: 100,
            resident: 10,
            dirty: 2,
            mappers: 1,
            faults: ServedFaults {
                zero,
                minor,
                ..Default::default()
            },
            commits,
        }
    }

    fn reading(pid: u32, clusters: Vec<ClusterReading>, latency: Vec<u64>) -> Reading {
        Reading {
            pid,
            clusters,
            volumes: vec![VolumeReading {
                vol: "0001".into(),
                name: "default".into(),
                mounted: true,
            }],
            fault_latency: Latency {
                bounds_us: vec![5.0, 1000.0],
                counts: latency,
            },
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_interval_per_cluster() {
        let a = reading(
            7,
            vec![
                cluster("0001:0001", 10, 0, 1),
                cluster("0001:0002", 0, 0, 0),
            ],
            vec![1, 2, 3],
        );
        let b = reading(
            7,
            vec![
                cluster("0001:0001", 30, 4, 3),
                cluster("0001:0002", 0, 0, 0),
                cluster("0001:0003", 50, 0, 9),
            ],
            vec![5, 2, 4],
        );
        let f = frame(Some(&a), &b, 2.0);
        let c1 = f.clusters.iter().find(|c| c.id == "0001:0001").unwrap();
        assert_eq!(c1.rates, [10.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
        // A cluster new in the interval has no rate yet (its counts are not of the interval).
        let c3 = f.clusters.iter().find(|c| c.id == "0001:0003").unwrap();
        assert_eq!(c3.total(), 0.0);
        assert_eq!(f.clusters[0].id, "0001:0001", "the busiest first");
        assert_eq!(f.volumes.len(), 1);
        assert_eq!(f.volumes[0].commits_per_sec, 1.0, "(3 - 1) / 2 s");
        assert_eq!(
            f.latency,
            vec![("<=5us".into(), 4), ("<=1ms".into(), 0), (">1ms".into(), 1)]
        );
    }

    #[test]
    fn a_first_reading_or_a_restarted_pager_shows_counts_since_start_and_no_rates() {
        let a = reading(7, vec![cluster("0001:0001", 10, 0, 1)], vec![1, 2, 3]);
        let b = reading(8, vec![cluster("0001:0001", 3, 0, 0)], vec![0, 1, 0]);
        for f in [frame(None, &a, 1.0), frame(Some(&a), &b, 1.0)] {
            assert!(f.clusters.iter().all(|c| c.total() == 0.0));
            assert_eq!(f.latency_span, "fault latency since start");
            assert!(f.rates.contains("since start"), "{}", f.rates);
        }
        assert_eq!(frame(Some(&a), &b, 1.0).latency[1].1, 1);
    }

    #[test]
    fn counters_that_went_back_count_as_zero_and_cached_images_sort_after_mapped_ones() {
        let a = reading(7, vec![cluster("0001:0001", 10, 0, 5)], vec![9, 9, 9]);
        let mut b = reading(7, vec![], vec![1, 1, 1]);
        b.cached = vec![cluster("0001:0001", 2, 0, 0)];
        b.clusters = vec![cluster("0001:0009", 0, 0, 0)];
        let f = frame(Some(&a), &b, 1.0);
        assert!(f.clusters.iter().all(|c| c.total() == 0.0));
        assert_eq!(f.clusters[1].id, "0001:0001");
        assert!(f.clusters[1].cached);
        assert!(f.latency.iter().all(|(_, n)| *n == 0));
        assert_eq!(frame(Some(&a), &b, 0.0).volumes[0].commits_per_sec, 0.0);
    }

    #[test]
    fn an_older_pager_s_status_without_the_new_fields_still_reads() {
        let r: Reading = serde_json::from_str(
            r#"{"pid": 3, "clusters": [{"id": "0001:0001", "pages": 4}], "unknown": true}"#,
        )
        .unwrap();
        let f = frame(None, &r, 1.0);
        assert_eq!(f.clusters.len(), 1);
        assert!(f.latency.is_empty());
    }
}
