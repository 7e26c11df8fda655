//! `pager serve --metrics-listen HOST:PORT`: `/metrics` in the Prometheus (OpenMetrics) text
//! format, built at each scrape from what `pager status` shows and from the site's
//! histograms (fault latencies by how the fault was served, commit latencies and sizes).
//! One thread (`metrics`) answers the scrapes; it takes no lock of the memory manager beyond
//! the short ones `pager status` takes.

use std::sync::Arc;

use clu_mm::histogram::Snapshot;
use clu_mm::site::Served;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

use super::Daemon;
use crate::render::status::{BackupView, ReliableView};

/// Starts the `metrics` thread on `listen`; an error if the address cannot be bound.
pub(crate) fn start(d: Arc<Daemon>, listen: &str) -> Result<(), String> {
    start_collector(Box::new(Scrape(d)), listen)
}

/// The same for `pager backup-server --metrics-listen`.
pub(crate) fn start_backup(
    b: Arc<clu_goofy::backup::BackupServer>,
    listen: &str,
) -> Result<(), String> {
    start_collector(Box::new(BackupScrape(b)), listen)
}

fn start_collector(collector: Box<dyn Collector>, listen: &str) -> Result<(), String> {
    let server = tiny_http::Server::http(listen).map_err(|e| {
        format!("cannot serve metrics on {listen}: {e}; pass a free HOST:PORT to --metrics-listen")
    })?;
    info!(listen, "metrics at http://{listen}/metrics");
    let mut registry = Registry::default();
    registry.register_collector(collector);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(&server, &registry))
        .map_err(|e| format!("starting the metrics thread: {e}"))?;
    Ok(())
}

fn serve(server: &tiny_http::Server, registry: &Registry) {
    for request in server.incoming_requests() {
        let response = if request.url() == "/metrics" || request.url().starts_with("/metrics?") {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => tiny_http::Response::from_string(text).with_header(content_type()),
                Err(e) => tiny_http::Response::from_string(format!("encoding failed: {e}\n"))
                    .with_status_code(500),
            }
        } else {
            tiny_http::Response::from_string("not found: the metrics are at /metrics\n")
                .with_status_code(404)
        };
        if let Err(e) = request.respond(response) {
            warn!("answering a metrics scrape: {e}");
        }
    }
}

fn content_type() -> tiny_http::Header {
    tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
    )
    .expect("a valid header")
}

/// The collector: reads the daemon at each scrape.
struct Scrape(Arc<Daemon>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Fmt = Result<(), std::fmt::Error>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Fmt {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Fmt {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Fmt {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in values {
        let labels = [(label, *l)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(m: &mut prometheus_client::encoding::MetricEncoder, s: &Snapshot) -> Fmt {
    m.encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)
}

/// A gauge family with one series per backup of each reliable volume.
fn per_backup<V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: &Unit,
    volumes: &[ReliableView],
    value: impl Fn(&BackupView) -> V,
) -> Fmt
where
    ConstGauge<V>: EncodeMetric,
{
    let mut m = e.encode_descriptor(name, help, Some(unit), MetricType::Gauge)?;
    for v in volumes {
        for b in &v.backups {
            let labels = [("volume", v.name.as_str()), ("backup", b.addr.as_str())];
            ConstGauge::new(value(b)).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn gauge_i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        let d = &self.0;
        let s = super::admin::status(d);
        let stats = &d.manager.site().stats;
        counters(
            &mut e,
            "clu_faults",
            "Faults the pager read from its clients' userfaultfds, by kind",
            "kind",
            &[
                ("missing", s.faults.missing),
                ("minor", s.faults.minor),
                ("write_protect", s.faults.write_protect),
            ],
        )?;
        counter(
            &mut e,
            "clu_faults_refused",
            "Faults refused (SIGBUS in the client)",
            s.faults.refused,
        )?;
        counters(
            &mut e,
            "clu_pages_supplied",
            "Pages supplied to images, by source",
            "source",
            &[
                ("zero", s.supplies.zero),
                ("storage", s.supplies.storage),
                ("paging", s.supplies.paging),
                ("prefetched", s.supplies.prefetched),
            ],
        )?;
        {
            let mut m = e.encode_descriptor(
                "clu_fault_latency",
                "Time to serve a fault, by how it was served",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for kind in Served::ALL {
                let labels = [("kind", kind.name())];
                let snap = stats.fault_latency[kind as usize].snapshot(1e-9);
                histogram(&mut m.encode_family(&labels)?, &snap)?;
            }
        }
        counter(&mut e, "clu_commits", "Commits", s.commits.count)?;
        counter(
            &mut e,
            "clu_committed_pages",
            "Pages written by commits",
            s.commits.pages,
        )?;
        counter(&mut e, "clu_aborts", "Aborts", s.commits.aborts)?;
        histogram(
            &mut e.encode_descriptor(
                "clu_commit_latency",
                "Time of a commit, from the call to the pages validated in the journal",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?,
            &stats.commit_latency.snapshot(1e-9),
        )?;
        histogram(
            &mut e.encode_descriptor(
                "clu_commit_pages",
                "Pages per commit",
                None,
                MetricType::Histogram,
            )?,
            &stats.commit_pages.0.snapshot(1.0),
        )?;
        counters(
            &mut e,
            "clu_evictions",
            "Pages evicted from images, clean (dropped) or dirty (to the paging partition)",
            "kind",
            &[("clean", s.evictions.clean), ("dirty", s.evictions.dirty)],
        )?;
        gauge(
            &mut e,
            "clu_resident_pages",
            "Pages of cluster memory held now, over all images",
            gauge_i(s.resident_pages),
        )?;
        gauge(
            &mut e,
            "clu_budget_pages",
            "The resident budget (--resident-pages)",
            gauge_i(s.budget_pages),
        )?;
        gauge(
            &mut e,
            "clu_mapped_images",
            "Images some process maps",
            s.clusters.len() as i64,
        )?;
        gauge(
            &mut e,
            "clu_cached_images",
            "Clean images no process maps, kept as the site's cache",
            s.cached.len() as i64,
        )?;
        gauge(
            &mut e,
            "clu_cached_pages",
            "Resident pages of cached images",
            gauge_i(s.cached.iter().map(|c| c.resident).sum()),
        )?;
        gauge(
            &mut e,
            "clu_dirty_pages",
            "Modified pages not committed yet, over all mapped images",
            gauge_i(s.clusters.iter().map(|c| c.dirty).sum()),
        )?;
        gauge(
            &mut e,
            "clu_paging_slots",
            "Slots of the paging partition in use",
            i64::from(s.paging_slots),
        )?;
        gauge(
            &mut e,
            "clu_connections",
            "Client processes connected now",
            gauge_i(s.connections.live),
        )?;
        counter(
            &mut e,
            "clu_connections_accepted",
            "Client connections since start",
            s.connections.total,
        )?;
        // Reliable volumes: one series per backup.
        per_backup(
            &mut e,
            "clu_backup_behind",
            "Bytes of a reliable volume's log a backup has not acknowledged",
            &Unit::Bytes,
            &s.reliable_volumes,
            |b| gauge_i(b.behind_bytes),
        )?;
        per_backup(
            &mut e,
            "clu_backup_lag",
            "Median propagation lag of a backup's latest operations (commit to acknowledgement)",
            &Unit::Seconds,
            &s.reliable_volumes,
            |b| b.lag_median_ms.unwrap_or(0.0) / 1e3,
        )?;
        {
            let mut m = e.encode_descriptor(
                "clu_backup_state",
                "1 for the state each backup of a reliable volume is in",
                None,
                MetricType::Gauge,
            )?;
            for v in &s.reliable_volumes {
                for b in &v.backups {
                    let labels = [
                        ("volume", v.name.as_str()),
                        ("backup", b.addr.as_str()),
                        ("state", b.state),
                    ];
                    ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(cell) = &s.cell {
            gauge(
                &mut e,
                "clu_lease_alive",
                "1 while this site holds its lease in the cell's catalog",
                i64::from(cell.lease_alive),
            )?;
            let mut m = e.encode_descriptor(
                "clu_site_rtt",
                "Mean round-trip time of this site's requests to another site",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for p in &cell.remote_sites {
                let labels = [("site", p.site.as_str())];
                ConstGauge::new(p.mean_rtt_us as f64 / 1e6).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The backup server's collector.
struct BackupScrape(Arc<clu_goofy::backup::BackupServer>);

impl std::fmt::Debug for BackupScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupScrape")
    }
}

impl Collector for BackupScrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.0.stats();
        gauge(
            &mut e,
            "clu_backup_server_images",
            "Reliable volumes whose images this backup server has opened",
            self.0.images_open() as i64,
        )?;
        gauge(
            &mut e,
            "clu_backup_server_sessions",
            "Primaries' sessions open now",
            gauge_i(s.sessions.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "clu_backup_server_operations",
            "Operations applied (each stored with its position in one journal sync)",
            s.operations.load(Relaxed),
        )?;
        counter(
            &mut e,
            "clu_backup_server_page_bytes",
            "Bytes of pages the operations applied carried",
            s.page_bytes.load(Relaxed),
        )?;
        counter(
            &mut e,
            "clu_backup_server_refused",
            "Requests refused (stale epochs, damaged messages, failures)",
            s.refused.load(Relaxed),
        )
    }
}
