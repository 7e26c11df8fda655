//! Histograms without locks (atomic buckets), for what `/metrics` exposes: fault latencies by
//! how the fault was served, commit latencies and sizes. Recording is two relaxed atomic adds;
//! a snapshot is read bucket by bucket (a scrape during a burst may see one observation in
//! the count and not yet in its bucket, which Prometheus tolerates).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in nanoseconds (5 us to 1 s; +Inf beyond).
pub const LATENCY_NS: &[u64] = &[
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
];

/// Upper bounds of the commit size buckets, in pages (1 to 64 Ki; +Inf beyond).
pub const PAGES: &[u64] = &[1, 4, 16, 64, 256, 1024, 4096, 16384, 65536];

/// A histogram of `u64` observations over fixed bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, then +Inf (not cumulative).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram read at one time, in the form `prometheus-client` takes: the observations of
/// each bucket alone (its encoder makes them cumulative, as the exposition format wants).
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// (upper bound, observations above the previous bound and at or below this one), in the
    /// unit asked for; +Inf last, as `f64::MAX` (what `prometheus-client` writes as `+Inf`).
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Their sum, in the unit asked for.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (increasing).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// An empty latency histogram ([`LATENCY_NS`]).
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_NS)
    }

    /// Records one observation.
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration (a latency histogram counts nanoseconds).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The histogram now, its values multiplied by `scale` (1e-9 turns nanoseconds into the
    /// seconds Prometheus expects).
    pub fn snapshot(&self, scale: f64) -> Snapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            let bound = self.bounds.get(i).map_or(f64::MAX, |&b| b as f64 * scale);
            buckets.push((bound, n));
        }
        Snapshot {
            buckets,
            count: total,
            sum: self.sum.load(Ordering::Relaxed) as f64 * scale,
        }
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::latency()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_add_up() {
        let h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot(1.0);
        assert_eq!(s.buckets, vec![(10.0, 2), (100.0, 2), (f64::MAX, 2)]);
        assert_eq!((s.count, s.sum), (6, 5222.0));
        let l = Histogram::latency();
        l.observe_duration(Duration::from_micros(7));
        let s = l.snapshot(1e-9);
        assert_eq!(s.buckets[0].1, 0);
        assert_eq!(s.buckets[1], (10e-6, 1));
        assert!((s.sum - 7e-6).abs() < 1e-12);
    }
}
