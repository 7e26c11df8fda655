//! What one use of a cluster on this site did (thesis V.2.1, J1-J6): from its first mapper to
//! its last, how long it lasted, how many processes mapped it on average, how many pages it
//! modified and paged out, and its faults by kind. At the end of a use the figures are added
//! to the statistics in the cluster's descriptor (J5).

use std::time::Instant;

use clu_storage::ClusterStats;

/// Kinds of faults counted (the order of `ClusterStats::faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// A new page handed out as zeros.
    Zero = 0,
    /// Served from storage.
    Storage = 1,
    /// Served from the paging partition.
    Paging = 2,
    /// A first write to a clean page.
    WriteProtect = 3,
}

/// Who mapped the cluster during the use in progress, and for how long: kept with the image's
/// mappers (under their lock).
#[derive(Debug, Default)]
pub struct Sharing {
    started: Option<Instant>,
    changed: Option<Instant>,
    mappers: u64,
    /// Integral of the number of mappers over time, in mapper-milliseconds.
    mapper_ms: f64,
}

impl Sharing {
    fn integrate(&mut self, now: Instant) {
        if let Some(t) = self.changed {
            self.mapper_ms += self.mappers as f64 * now.duration_since(t).as_secs_f64() * 1e3;
        }
        self.changed = Some(now);
    }

    /// The number of processes mapping the cluster is now `n`.
    pub fn mappers(&mut self, n: u64) {
        let now = Instant::now();
        self.integrate(now);
        if self.started.is_none() && n > 0 {
            self.started = Some(now);
        }
        self.mappers = n;
    }
}

/// What the use in progress did to the pages: kept with the image's page states.
#[derive(Debug, Default)]
pub struct Usage {
    modified: Vec<u64>,
    modified_count: u64,
    paged_out: u64,
    faults: [u64; 4],
    /// How the fault being served was served, if it was (read and cleared by `Image::fault`).
    pub(crate) last: Option<FaultClass>,
}

impl Usage {
    /// Page `page` was modified (it became dirty).
    pub fn modified(&mut self, page: u64) {
        let (w, b) = ((page / 64) as usize, page % 64);
        if self.modified.len() <= w {
            self.modified.resize(w + 1, 0);
        }
        if self.modified[w] & (1 << b) == 0 {
            self.modified[w] |= 1 << b;
            self.modified_count += 1;
        }
    }

    /// A dirty page went to the paging partition.
    pub fn paged_out(&mut self) {
        self.paged_out += 1;
    }

    /// A fault of `kind` was served.
    pub fn fault(&mut self, kind: FaultClass) {
        self.faults[kind as usize] += 1;
        self.last = Some(kind);
    }
}

/// Ends a use: adds its figures to `stats`. `None` if there was no use.
pub fn end(mut sharing: Sharing, usage: Usage, stats: &ClusterStats) -> Option<ClusterStats> {
    let started = sharing.started?;
    let now = Instant::now();
    sharing.integrate(now);
    let mut s = *stats;
    s.uses += 1;
    s.mapped_ms += now.duration_since(started).as_millis() as u64;
    s.sharers_sum += sharing.mapper_ms.round() as u64;
    s.modified_pages += usage.modified_count;
    s.paged_out += usage.paged_out;
    for (t, f) in s.faults.iter_mut().zip(usage.faults) {
        *t += f;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_adds_its_figures_and_means_divide_by_uses() {
        let mut u = Usage::default();
        let mut sh = Sharing::default();
        assert_eq!(
            end(
                Sharing::default(),
                Usage::default(),
                &ClusterStats::default()
            ),
            None,
            "no use yet"
        );
        sh.mappers(1);
        for p in [1, 2, 2, 3, 64, 1000] {
            u.modified(p);
        }
        u.paged_out();
        u.fault(FaultClass::Zero);
        u.fault(FaultClass::WriteProtect);
        sh.mappers(2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        sh.mappers(0);
        let s = end(sh, u, &ClusterStats::default()).expect("a use");
        assert_eq!((s.uses, s.modified_pages, s.paged_out), (1, 5, 1));
        assert_eq!(s.faults, [1, 0, 0, 1]);
        assert!(
            s.sharers_sum >= 2 * 19,
            "two mappers for 20 ms: {}",
            s.sharers_sum
        );
        let s2 = ClusterStats {
            uses: 2,
            modified_pages: 10,
            ..s
        };
        let m = s2.means();
        assert_eq!(m.modified, 5.0);
        assert!(m.sharing > 1.0);
        assert_eq!(ClusterStats::default().means().modified, 0.0);
    }
}
