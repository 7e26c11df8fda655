//! The rows of the `clu-bench faults` table, its ratio lines and its output files.

use std::fs;
use std::path::Path;

use super::report::{self, Row, Samples};
use super::{cpus, Res, PINS};

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (pin, _) in PINS {
        let k = |who: &str, case: &str| format!("{pin}/{who}/{case}");
        let l = |s: &str| format!("{s} [{pin}]");
        rows.push(
            Row::new(
                l("fault served from memory"),
                k("pager", "fault"),
                "us/page",
            )
            .vs(k("floor", "fault"), "bare uffd"),
        );
        rows.push(
            Row::new(
                l("first write to a clean page"),
                k("pager", "first_write"),
                "us/page",
            )
            .vs(k("floor", "first_write"), "bare uffd"),
        );
        rows.push(
            Row::new(
                l("page_init: first touch, new page"),
                k("pager", "page_init"),
                "us/page",
            )
            .vs(k("kernel", "page_init"), "kernel mmap"),
        );
        for (case, label) in [
            ("evicted_warm", "100 pages after eviction, warm"),
            ("evicted_cold", "100 pages after eviction, cold"),
            ("seq_warm", "sequential read, warm"),
            ("seq_cold", "sequential read, cold"),
            ("rand_warm", "random read, warm"),
            ("rand_cold", "random read, cold"),
        ] {
            rows.push(
                Row::new(l(label), k("pager", case), "us/page")
                    .vs(k("kernel", case), "kernel mmap"),
            );
        }
        for (case, label) in [
            ("resident_seq", "map + sequential read, image resident"),
            ("resident_rand", "map + random read, image resident"),
        ] {
            rows.push(
                Row::new(l(label), k("pager", case), "us/page")
                    .vs(k("kernel", case), "kernel mmap, warm"),
            );
        }
        rows.push(
            Row::new(
                l("unmap, map again, sequential read (site cache)"),
                k("pager", "remap_after_unmap"),
                "us/page",
            )
            .vs(k("kernel", "resident_seq"), "kernel mmap, warm"),
        );
    }
    let k = |who: &str, case: &str| format!("unpinned/{who}/{case}");
    rows.push(
        Row::new(
            "cold traversal: page cache + shmem growth / data",
            k("pager", "footprint"),
            "x",
        )
        .vs(k("kernel", "footprint"), "kernel mmap"),
    );
    rows.push(
        Row::new(
            "write a byte in every page, then commit (msync)",
            k("pager", "write_persist"),
            "us/page",
        )
        .vs(k("kernel", "write_persist"), "mmap write + msync"),
    );
    rows.push(
        Row::new(
            "first write to a clean page, WP_ASYNC mode",
            k("pager", "first_write_async"),
            "us/page",
        )
        .vs(k("pager", "first_write_sync"), "default (sync) mode"),
    );
    rows.push(
        Row::new(
            "then commit of all those pages, WP_ASYNC mode",
            k("pager", "commit_after_async"),
            "ms",
        )
        .vs(k("pager", "commit_after_sync"), "default (sync) mode"),
    );
    rows.push(
        Row::new(
            "random read, cold, 2nd use, history prefetch",
            k("pager", "history_on"),
            "us/page",
        )
        .vs(k("pager", "history_off"), "without history"),
    );
    rows.push(Row::new(
        "clu_CreateMap, 20 pages (thesis 186 ms)",
        k("pager", "create_ms"),
        "ms",
    ));
    rows.push(Row::new(
        "clu_Map, 20 pages (thesis 8 ms)",
        k("pager", "map_ms"),
        "ms",
    ));
    rows.push(Row::new(
        "one fault from storage (thesis 3.8 ms)",
        k("pager", "fault_ms"),
        "ms",
    ));
    for n in [1, 100, 1000] {
        rows.push(
            Row::new(
                format!("commit of {n} dirty pages"),
                k("pager", &format!("commit_{n}")),
                "ms",
            )
            .vs(k("kernel", &format!("commit_{n}")), "msync(MS_SYNC)"),
        );
    }
    for c in [1, 2, 4] {
        rows.push(Row::new(
            format!("{c} client process(es) reading, aggregate"),
            k("pager", &format!("conc_{c}")),
            "pages/s",
        ));
    }
    rows
}

pub(super) fn report(s: &Samples, results: &Path) -> Res<()> {
    let rows = rows();
    println!();
    print!("{}", report::table(s, &rows));
    println!();
    // Throughput of the traversals (4 KiB per page; us per page to MB/s).
    println!("traversal throughput, MB/s (median):");
    for (pin, _) in PINS {
        let k = |who: &str, case: &str| format!("{pin}/{who}/{case}");
        let mbs = |key: String| s.stats(&key).map_or(0.0, |x| 4.096 / x.0 * 1e3);
        for case in ["seq_warm", "seq_cold", "rand_warm", "rand_cold"] {
            println!(
                "  [{pin}] {case:<9} ours {:>7.0}  kernel {:>7.0}",
                mbs(k("pager", case)),
                mbs(k("kernel", case))
            );
        }
    }
    println!();
    let mut ratios: Vec<(String, Option<f64>)> = Vec::new();
    for (pin, _) in PINS {
        let suffix = if pin == "pinned" { "_pinned" } else { "" };
        let k = |who: &str, case: &str| format!("{pin}/{who}/{case}");
        ratios.push((
            format!("fault_vs_uffd_floor{suffix}"),
            s.ratio(&k("pager", "fault"), &k("floor", "fault")),
        ));
        ratios.push((
            format!("first_write_vs_uffd_floor{suffix}"),
            s.ratio(&k("pager", "first_write"), &k("floor", "first_write")),
        ));
        ratios.push((
            format!("page_init_vs_kernel{suffix}"),
            s.ratio(&k("pager", "page_init"), &k("kernel", "page_init")),
        ));
        for case in [
            "evicted_warm",
            "evicted_cold",
            "seq_cold",
            "rand_cold",
            "seq_warm",
            "rand_warm",
        ] {
            ratios.push((
                format!("{case}_vs_kernel{suffix}"),
                s.ratio(&k("pager", case), &k("kernel", case)),
            ));
        }
        for case in ["resident_seq", "resident_rand"] {
            ratios.push((
                format!("{case}_vs_kernel_warm{suffix}"),
                s.ratio(&k("pager", case), &k("kernel", case)),
            ));
        }
        ratios.push((
            format!("remap_after_unmap_vs_kernel_warm{suffix}"),
            s.ratio(
                &k("pager", "remap_after_unmap"),
                &k("kernel", "resident_seq"),
            ),
        ));
    }
    let k = |who: &str, case: &str| format!("unpinned/{who}/{case}");
    for n in [1, 100, 1000] {
        ratios.push((
            format!("commit_{n}_vs_msync"),
            s.ratio(
                &k("pager", &format!("commit_{n}")),
                &k("kernel", &format!("commit_{n}")),
            ),
        ));
    }
    ratios.push((
        "cache_footprint_vs_data".into(),
        s.stats(&k("pager", "footprint")).map(|x| x.0),
    ));
    ratios.push((
        "write_persist_vs_kernel".into(),
        s.ratio(&k("pager", "write_persist"), &k("kernel", "write_persist")),
    ));
    ratios.push((
        "first_write_async_vs_sync".into(),
        s.ratio(
            &k("pager", "first_write_async"),
            &k("pager", "first_write_sync"),
        ),
    ));
    ratios.push((
        "commit_after_async_vs_sync".into(),
        s.ratio(
            &k("pager", "commit_after_async"),
            &k("pager", "commit_after_sync"),
        ),
    ));
    ratios.push((
        "history_prefetch_vs_none".into(),
        s.ratio(&k("pager", "history_on"), &k("pager", "history_off")),
    ));
    ratios.push((
        "concurrency_2_vs_1".into(),
        s.ratio(&k("pager", "conc_2"), &k("pager", "conc_1")),
    ));
    ratios.push((
        "concurrency_4_vs_1".into(),
        s.ratio(&k("pager", "conc_4"), &k("pager", "conc_1")),
    ));
    for (name, v) in &ratios {
        match v {
            Some(v) => println!("ratio {name} {v:.3}"),
            None => println!("ratio {name} nan"),
        }
    }
    fs::create_dir_all(results)?;
    let csv = results.join("faults.csv");
    let svg = results.join("faults.svg");
    report::csv(s, &rows, &csv)?;
    report::svg(
        s,
        &rows,
        &format!(
            "clu-bench faults: the pager vs the kernel ({} cores, kernel {})",
            cpus(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        ),
        &svg,
    )?;
    println!("\nwrote {} and {}", csv.display(), svg.display());
    Ok(())
}
