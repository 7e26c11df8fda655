//! `pager site list` and, in a cell, `pager vol list`.

use std::fmt::Write as _;

use clu_cell::{SiteStatus, VolumeStatus as CellVolume};
use clu_storage::VolumeStatus;

/// `pager site list`: one line per site.
pub fn site_list(sites: &[SiteStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<24} {:<6} {:<16} CLUSTERS",
        "SITE", "ADDRESS", "ALIVE", "VOLUMES"
    );
    for s in sites {
        let vols: Vec<String> = s
            .mounts
            .iter()
            .map(|v| clu_proto::VolId(*v).to_string())
            .collect();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:<6} {:<16} {}",
            s.record.name,
            s.record.address,
            if s.alive { "yes" } else { "no" },
            list(&vols),
            list(
                &s.clusters
                    .iter()
                    .cloned()
                    .chain(s.read_copies.iter().map(|c| format!("{c}(ro)")))
                    .collect::<Vec<_>>()
            )
        );
    }
    out
}

/// `pager vol list` in a cell: every volume of the cell, where it was made, which site mounts
/// it now and under which epoch; the figures of those mounted here.
pub fn cell_volume_list(cell: &[CellVolume], local: &[VolumeStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<20} {:<8} {:<16} {:<16} {:>8} {:>8} {:>12}",
        "ID", "NAME", "SERVICE", "SITE", "MOUNTED_BY", "EPOCH", "CLUSTERS", "USED_PAGES"
    );
    for v in cell {
        let here = local
            .iter()
            .find(|l| l.entry.vol.0 == v.record.id)
            .and_then(|l| l.mounted.as_ref());
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<8} {:<16} {:<16} {:>8} {:>8} {:>12}",
            clu_proto::VolId(v.record.id).to_string(),
            v.record.name,
            v.record.service,
            v.record.site,
            v.mounted_by.as_deref().unwrap_or("-"),
            v.epoch.map_or("-".to_owned(), |e| e.to_string()),
            here.map_or("-".to_owned(), |i| i.clusters.to_string()),
            here.map_or("-".to_owned(), |i| i.used_pages.to_string()),
        );
    }
    out
}
