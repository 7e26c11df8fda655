//! How the administration commands show things: every text table and every JSON document of
//! `pager status`, `vol list`, `clu list`, `clu info` and `stats`, from plain data. JSON is
//! written by `serde_json` from the structs below, whose fields are the documented keys.

mod cell;
mod cluster;
pub mod status;

pub use cell::{cell_volume_list, site_list};
pub use cluster::{cluster_info, cluster_info_json, cluster_list, stats_json, stats_table};
pub use status::{ReliableView, RestoreView, Status};

use clu_storage::VolumeStatus;
use std::fmt::Write as _;

/// A float rounded to three decimals, as the JSON documents give them.
pub fn milli(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `pager vol list`.
pub fn volume_list(volumes: &[VolumeStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<20} {:<8} {:<8} {:>8} {:>12} {:>12}",
        "ID", "NAME", "SERVICE", "STATE", "CLUSTERS", "USED_PAGES", "CAPACITY"
    );
    for v in volumes {
        let (state, clusters, used, cap) = match &v.mounted {
            Some(i) => (
                "mounted",
                i.clusters.to_string(),
                i.used_pages.to_string(),
                i.capacity_pages.to_string(),
            ),
            None => ("-", "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<8} {:<8} {:>8} {:>12} {:>12}",
            v.entry.vol.to_string(),
            v.entry.name,
            v.entry.service,
            state,
            clusters,
            used,
            cap
        );
    }
    out
}

/// A JSON document, compact, ending with a newline.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain structs of numbers and strings cannot fail.
    let mut s = serde_json::to_string(value)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    s.push('\n');
    s
}
