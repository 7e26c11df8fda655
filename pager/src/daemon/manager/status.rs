//! `pager status [--json]`: the manager's state, its reliable volumes' replication, and its
//! mapped clusters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Image, Manager};
use crate::goofy::restore;
use crate::storage::{BackupStatus, Replication};
use crate::sync::lock;

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt_str(s: &Option<String>) -> String {
    s.as_deref().map_or("null".into(), json_str)
}

/// One backup, in words.
fn backup_line(b: &BackupStatus) -> String {
    let mut state = b.state.to_string();
    if let Some((done, total)) = b.copy {
        let _ = write!(state, " ({done} of {total} pages)");
    }
    if let Some(d) = &b.detail {
        let _ = write!(state, " ({d})");
    }
    let lag = b.lag_median_ms.map_or(String::new(), |(m, n)| {
        format!("; propagation lag median {m:.1} ms over the last {n} operations")
    });
    format!(
        "backup {}: {state}; acknowledged {}, {} bytes and {:.1} s behind{lag}",
        b.addr, b.acked, b.behind_bytes, b.behind_secs
    )
}

fn backup_json(b: &BackupStatus) -> String {
    let (median, count) = b
        .lag_median_ms
        .map_or(("null".to_string(), 0), |(m, n)| (format!("{m:.3}"), n));
    let copy = b.copy.map_or("null".to_string(), |(d, t)| {
        format!("{{\"pages_sent\":{d},\"pages_total\":{t}}}")
    });
    format!(
        "{{\"addr\":{},\"state\":{},\"detail\":{},\"acked_lsn\":\"{}\",\"behind_bytes\":{},\"behind_secs\":{:.3},\"lag_median_ms\":{median},\"lag_ops\":{count},\"copy\":{copy}}}",
        json_str(&b.addr),
        json_str(b.state),
        opt_str(&b.detail),
        b.acked,
        b.behind_bytes,
        b.behind_secs
    )
}

impl Manager {
    fn reliable_volumes(&self) -> Vec<(String, String, Replication)> {
        let mut out = Vec::new();
        for v in self.storage.volumes() {
            let Some(info) = &v.mounted else { continue };
            let Ok(volume) = self.storage.volume(info.vol) else {
                continue;
            };
            if let Some(r) = volume.replication() {
                out.push((v.entry.name.clone(), info.vol.to_string(), r));
            }
        }
        out
    }

    fn sorted_images(&self) -> Vec<Arc<Image>> {
        let mut imgs: Vec<Arc<Image>> = lock(&self.images).values().cloned().collect();
        imgs.sort_by_key(|i| i.id);
        imgs
    }

    /// The text of `pager status`, or its JSON form.
    pub(crate) fn status(&self, json: bool) -> String {
        if json {
            return self.status_json();
        }
        let s = &self.stats;
        let mut out = String::new();
        let _ = writeln!(out, "pid              {}", std::process::id());
        let _ = writeln!(out, "uptime           {:.0?}", self.started.elapsed());
        let _ = writeln!(out, "root             {}", self.storage.root().display());
        let _ = writeln!(out, "socket           {}", self.socket.display());
        let _ = writeln!(
            out,
            "connections      {} live, {} since start",
            self.live_connections.load(Ordering::Relaxed),
            s.connections.get()
        );
        let _ = writeln!(
            out,
            "resident pages   {} of a budget of {}",
            self.resident(),
            self.budget
        );
        let _ = writeln!(out, "paging slots     {} in use", self.paging.in_use());
        let _ = writeln!(
            out,
            "faults           {} missing, {} minor, {} write-protect, {} refused (SIGBUS)",
            s.missing_faults.get(),
            s.minor_faults.get(),
            s.wp_faults.get(),
            s.poisoned.get()
        );
        let _ = writeln!(
            out,
            "supplies         {} zero, {} from storage, {} from the paging partition, {} prefetched from access histories",
            s.zero_fills.get(),
            s.storage_reads.get(),
            s.paging_reads.get(),
            s.prefetched.get()
        );
        let _ = writeln!(
            out,
            "evictions        {} clean, {} dirty (to the paging partition)",
            s.evicted_clean.get(),
            s.evicted_dirty.get()
        );
        let _ = writeln!(
            out,
            "commits          {} ({} pages), {} aborts",
            s.commits.get(),
            s.committed_pages.get(),
            s.aborts.get()
        );
        for (name, vol, r) in self.reliable_volumes() {
            let fenced = r
                .fenced
                .as_ref()
                .map_or(String::new(), |why| format!("; FENCED: {why}"));
            let _ = writeln!(
                out,
                "reliable volume  {name} ({vol}): epoch {}, log at {}{fenced}",
                r.epoch, r.log_lsn
            );
            for b in &r.backups {
                let _ = writeln!(out, "  {}", backup_line(b));
            }
        }
        for r in restore::under_way() {
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
        for img in self.sorted_images() {
            let st = lock(&img.state);
            let (dirty, paged) = st.dirty();
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8}",
                img.id.to_string(),
                st.pages.len(),
                st.resident,
                dirty,
                paged,
                st.mappers.len()
            );
        }
        out
    }

    fn status_json(&self) -> String {
        let s = &self.stats;
        let volumes: Vec<String> = self
            .reliable_volumes()
            .into_iter()
            .map(|(name, vol, r)| {
                let backups: Vec<String> = r.backups.iter().map(backup_json).collect();
                format!(
                    "{{\"name\":{},\"vol\":\"{vol}\",\"epoch\":{},\"fenced\":{},\"log_lsn\":\"{}\",\"backups\":[{}]}}",
                    json_str(&name),
                    r.epoch,
                    opt_str(&r.fenced),
                    r.log_lsn,
                    backups.join(",")
                )
            })
            .collect();
        let restores: Vec<String> = restore::under_way()
            .iter()
            .map(|r| {
                format!(
                    "{{\"name\":{},\"source\":{},\"received_pages\":{},\"total_pages\":{}}}",
                    json_str(&r.name),
                    json_str(&r.source),
                    r.received_pages,
                    r.total_pages
                )
            })
            .collect();
        let clusters: Vec<String> = self
            .sorted_images()
            .iter()
            .map(|img| {
                let st = lock(&img.state);
                let (dirty, paged) = st.dirty();
                format!(
                    "{{\"id\":\"{}\",\"pages\":{},\"resident\":{},\"dirty\":{dirty},\"paged_out\":{paged},\"mappers\":{}}}",
                    img.id,
                    st.pages.len(),
                    st.resident,
                    st.mappers.len()
                )
            })
            .collect();
        format!(
            "{{\"pid\":{},\"uptime_secs\":{:.3},\"root\":{},\"socket\":{},\"connections\":{{\"live\":{},\"total\":{}}},\"resident_pages\":{},\"budget_pages\":{},\"paging_slots\":{},\"faults\":{{\"missing\":{},\"minor\":{},\"write_protect\":{},\"refused\":{}}},\"supplies\":{{\"zero\":{},\"storage\":{},\"paging\":{},\"prefetched\":{}}},\"evictions\":{{\"clean\":{},\"dirty\":{}}},\"commits\":{{\"count\":{},\"pages\":{},\"aborts\":{}}},\"reliable_volumes\":[{}],\"restoring\":[{}],\"clusters\":[{}]}}\n",
            std::process::id(),
            self.started.elapsed().as_secs_f64(),
            json_str(&self.storage.root().display().to_string()),
            json_str(&self.socket.display().to_string()),
            self.live_connections.load(Ordering::Relaxed),
            s.connections.get(),
            self.resident(),
            self.budget,
            self.paging.in_use(),
            s.missing_faults.get(),
            s.minor_faults.get(),
            s.wp_faults.get(),
            s.poisoned.get(),
            s.zero_fills.get(),
            s.storage_reads.get(),
            s.paging_reads.get(),
            s.prefetched.get(),
            s.evicted_clean.get(),
            s.evicted_dirty.get(),
            s.commits.get(),
            s.committed_pages.get(),
            s.aborts.get(),
            volumes.join(","),
            restores.join(","),
            clusters.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
