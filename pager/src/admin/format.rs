//! How clusters are shown: `pager clu info` in words and as JSON.

use crate::storage::ClusterDesc;

/// `pager clu info`: a cluster's descriptor and statistics, in words.
pub(super) fn describe(d: &ClusterDesc) -> String {
    let m = d.stats.means();
    let s = &d.stats;
    let grants: Vec<String> = d
        .grants
        .iter()
        .map(|g| format!("{}{}", g.uid, if g.read_only { " (ro)" } else { "" }))
        .collect();
    format!(
        "id                 {}\npages              {}\nowner              {}\nkind               {}\ncreated            {}\ngrants             {}\nuses               {}\nmean time mapped   {:.1} ms\nsharing rate       {:.2} processes\nmodified per use   {:.1} pages\npaged out per use  {:.1} pages\nfaults             {} zero, {} storage, {} paging, {} write-protect\n",
        d.id,
        d.npages,
        d.owner,
        d.kind.name(),
        d.created,
        if grants.is_empty() { "-".to_string() } else { grants.join(", ") },
        s.uses,
        m.mapped_ms,
        m.sharing,
        m.modified,
        m.paged_out,
        s.faults[0],
        s.faults[1],
        s.faults[2],
        s.faults[3]
    )
}

/// One cluster as a JSON object (numbers and fixed words only: nothing to escape).
pub(super) fn json(d: &ClusterDesc) -> String {
    let m = d.stats.means();
    let s = &d.stats;
    let grants: Vec<String> = d
        .grants
        .iter()
        .map(|g| format!("{{\"uid\":{},\"read_only\":{}}}", g.uid, g.read_only))
        .collect();
    format!(
        "{{\"id\":\"{}\",\"pages\":{},\"owner\":{},\"kind\":\"{}\",\"created\":{},\"grants\":[{}],\"uses\":{},\"mean_mapped_ms\":{:.3},\"sharing_rate\":{:.3},\"modified_per_use\":{:.3},\"paged_out_per_use\":{:.3},\"faults\":{{\"zero\":{},\"storage\":{},\"paging\":{},\"write_protect\":{}}}}}",
        d.id,
        d.npages,
        d.owner,
        d.kind.name(),
        d.created,
        grants.join(","),
        s.uses,
        m.mapped_ms,
        m.sharing,
        m.modified,
        m.paged_out,
        s.faults[0],
        s.faults[1],
        s.faults[2],
        s.faults[3]
    )
}
