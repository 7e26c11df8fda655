//! Clusters: `pager clu list`, `clu info` (words and JSON), `pager stats` (table and JSON).

use std::fmt::Write as _;

use clu_storage::ClusterDesc;
use serde::Serialize;

use super::{json, milli};

/// `pager clu list`.
pub fn cluster_list(descs: &[ClusterDesc]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>8} {:<10}",
        "ID", "PAGES", "OWNER", "KIND"
    );
    for d in descs {
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>8} {:<10}",
            d.id.to_string(),
            d.npages,
            d.owner,
            d.kind.name()
        );
    }
    out
}

/// `pager clu info`: a cluster's descriptor and statistics, in words, with how many processes
/// map it now if that is known.
pub fn cluster_info(d: &ClusterDesc, mappers: Option<usize>) -> String {
    let m = d.stats.means();
    let s = &d.stats;
    let grants: Vec<String> = d
        .grants
        .iter()
        .map(|g| format!("{}{}", g.uid, if g.read_only { " (ro)" } else { "" }))
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "id                 {}", d.id);
    let _ = writeln!(out, "pages              {}", d.npages);
    let _ = writeln!(out, "owner              {}", d.owner);
    let _ = writeln!(out, "kind               {}", d.kind.name());
    let _ = writeln!(out, "created            {}", d.created);
    let _ = writeln!(
        out,
        "grants             {}",
        if grants.is_empty() {
            "-".to_string()
        } else {
            grants.join(", ")
        }
    );
    let _ = writeln!(out, "uses               {}", s.uses);
    let _ = writeln!(out, "mean time mapped   {:.1} ms", m.mapped_ms);
    let _ = writeln!(out, "sharing rate       {:.2} processes", m.sharing);
    let _ = writeln!(out, "modified per use   {:.1} pages", m.modified);
    let _ = writeln!(out, "paged out per use  {:.1} pages", m.paged_out);
    let _ = writeln!(
        out,
        "faults             {} zero, {} storage, {} paging, {} write-protect",
        s.faults[0], s.faults[1], s.faults[2], s.faults[3]
    );
    if let Some(n) = mappers {
        let _ = writeln!(out, "mapped now by      {n} processes");
    }
    out
}

#[derive(Serialize)]
struct GrantJson {
    uid: u32,
    read_only: bool,
}

#[derive(Serialize)]
struct FaultsJson {
    zero: u64,
    storage: u64,
    paging: u64,
    write_protect: u64,
}

/// One cluster as `clu info --json` and `stats --json` give it.
#[derive(Serialize)]
struct ClusterJson {
    id: String,
    pages: u64,
    owner: u32,
    kind: &'static str,
    created: u64,
    grants: Vec<GrantJson>,
    uses: u64,
    mean_mapped_ms: f64,
    sharing_rate: f64,
    modified_per_use: f64,
    paged_out_per_use: f64,
    faults: FaultsJson,
}

impl From<&ClusterDesc> for ClusterJson {
    fn from(d: &ClusterDesc) -> ClusterJson {
        let m = d.stats.means();
        let f = d.stats.faults;
        ClusterJson {
            id: d.id.to_string(),
            pages: d.npages,
            owner: d.owner,
            kind: d.kind.name(),
            created: d.created,
            grants: d
                .grants
                .iter()
                .map(|g| GrantJson {
                    uid: g.uid,
                    read_only: g.read_only,
                })
                .collect(),
            uses: d.stats.uses,
            mean_mapped_ms: milli(m.mapped_ms),
            sharing_rate: milli(m.sharing),
            modified_per_use: milli(m.modified),
            paged_out_per_use: milli(m.paged_out),
            faults: FaultsJson {
                zero: f[0],
                storage: f[1],
                paging: f[2],
                write_protect: f[3],
            },
        }
    }
}

/// `pager clu info --json`.
pub fn cluster_info_json(d: &ClusterDesc) -> String {
    json(&ClusterJson::from(d))
}

/// `pager stats --json`: one object per cluster, in an array.
pub fn stats_json(all: &[ClusterDesc]) -> String {
    json(&all.iter().map(ClusterJson::from).collect::<Vec<_>>())
}

/// `pager stats`.
pub fn stats_table(all: &[ClusterDesc]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<10} {:>6} {:>12} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "ID",
        "KIND",
        "USES",
        "MAPPED_MS",
        "SHARING",
        "MODIFIED",
        "PAGED_OUT",
        "F_ZERO",
        "F_STORE",
        "F_PAGING",
        "F_WP"
    );
    for d in all {
        let m = d.stats.means();
        let f = d.stats.faults;
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:>6} {:>12.1} {:>8.2} {:>10.1} {:>10.1} {:>9} {:>9} {:>9} {:>9}",
            d.id.to_string(),
            d.kind.name(),
            d.stats.uses,
            m.mapped_ms,
            m.sharing,
            m.modified,
            m.paged_out,
            f[0],
            f[1],
            f[2],
            f[3]
        );
    }
    let _ = writeln!(out, "(means per use; faults are totals)");
    out
}
