//! `clu-demo`: a client of a running pager that exercises every fault path of a cluster and
//! prints what each costs per page, beside the kernel's own first-touch and page-cache faults
//! measured in the same run.
//!
//! Each run creates a cluster and times, page by page: the first write of a new cluster (zero
//! fill), the commit, the first read after a remap (from storage), a read in a second process
//! while this one maps the page (minor fault), and the first write to a clean page
//! (write-protect fault). Prints a table (median, min, max over the runs of the per-page mean)
//! and `ratio NAME VALUE` lines.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;
use client::{api, ClusterId, ClusterKind, MapMode, PAGE_SIZE};
use clu_sys::mem::Mapping;

/// Exercises a running pager and prints per-page fault latencies.
#[derive(Parser)]
#[command(name = "clu-demo", version, about)]
struct Cli {
    /// Pages per cluster (each run times every page).
    #[arg(long, default_value_t = 512)]
    pages: u64,
    /// Runs; the table shows median, min and max over them.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The volume to create the clusters in.
    #[arg(long, default_value_t = 1)]
    vol: u16,
    /// Internal: map cluster ID and time a read of each page (the minor-fault child).
    #[arg(long, hide = true)]
    minor_child: Option<ClusterId>,
}

/// Mean nanoseconds per page of `f` applied to the offset of each of `pages` pages.
fn per_page(pages: u64, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for p in 0..pages {
        f(p as usize * PAGE_SIZE);
    }
    t.elapsed().as_nanos() as f64 / pages as f64
}

const PATHS: [&str; 7] = [
    "pager: first write, new cluster (zero fill)",
    "pager: commit, per page",
    "pager: first read after remap (from storage)",
    "pager: read in a 2nd process (minor fault)",
    "pager: first write to a clean page (wp fault)",
    "kernel: anonymous first-touch write",
    "kernel: read of a hot page-cache file mapping",
];

fn one_run(cli: &Cli) -> Result<[f64; 7], String> {
    let e = |e: client::CluError| e.to_string();
    let n = cli.pages;
    let (id, r) = api::create_map(cli.vol, n, ClusterKind::Shareable).map_err(e)?;
    let zero = per_page(n, |o| r.write_u8(o, 0xA5));
    let t = Instant::now();
    api::commit(id).map_err(e)?;
    let commit = t.elapsed().as_nanos() as f64 / n as f64;
    api::unmap(id).map_err(e)?;
    let r = api::map(id, MapMode::ReadWrite).map_err(e)?;
    let storage = per_page(n, |o| {
        std::hint::black_box(r.read_u8(o));
    });
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["--pages", &n.to_string(), "--minor-child", &id.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let minor: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            format!(
                "minor-fault child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let wp = per_page(n, |o| r.write_u8(o, 0xA5));
    api::abort(id).map_err(e)?;
    api::unmap(id).map_err(e)?;
    let _ = api::admin(vec!["clu".into(), "destroy".into(), id.to_string()]);
    Ok([zero, commit, storage, minor, wp, anon(n)?, file(n)?])
}

fn anon(n: u64) -> Result<f64, String> {
    let m = Mapping::anonymous(n as usize * PAGE_SIZE).map_err(|e| e.to_string())?;
    Ok(per_page(n, |o| m.write_u8(o, 0xA5)))
}

fn file(n: u64) -> Result<f64, String> {
    let f = tempfile::tempfile().map_err(|e| e.to_string())?;
    f.write_all_at(&vec![1u8; n as usize * PAGE_SIZE], 0)
        .map_err(|e| e.to_string())?;
    let m =
        Mapping::file(f.as_fd(), 0, n as usize * PAGE_SIZE, false).map_err(|e| e.to_string())?;
    Ok(per_page(n, |o| {
        std::hint::black_box(m.read_u8(o));
    }))
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(id) = cli.minor_child {
        return match api::map(id, MapMode::ReadOnly) {
            Ok(r) => {
                let ns = per_page(r.npages, |o| {
                    std::hint::black_box(r.read_u8(o));
                });
                println!("{ns}");
                let _ = api::unmap(id);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("clu-demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
    for run in 0..cli.runs {
        match one_run(&cli) {
            Ok(r) => r.iter().zip(&mut samples).for_each(|(v, s)| s.push(*v)),
            Err(e) => {
                eprintln!("clu-demo: run {run}: {e}");
                return ExitCode::FAILURE;
            }
        }
        eprint!(".");
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    println!(
        "fault latency per 4 KiB page, {} pages x {} runs (microseconds; median, min, max of the run means)\n",
        cli.pages, cli.runs
    );
    println!("{:<48} {:>8} {:>8} {:>8}", "path", "median", "min", "max");
    let mut med = Vec::new();
    for (name, s) in PATHS.iter().zip(&mut samples) {
        let (m, lo, hi) = stats(s);
        med.push(m);
        println!(
            "{:<48} {:>8.2} {:>8.2} {:>8.2}",
            name,
            m / 1e3,
            lo / 1e3,
            hi / 1e3
        );
    }
    println!();
    let ratio = |name: &str, a: f64, b: f64| println!("ratio {name} {:.2}", a / b);
    ratio("zero_fill_vs_kernel_anon", med[0], med[5]);
    ratio("storage_read_vs_kernel_anon", med[2], med[5]);
    ratio("minor_fault_vs_kernel_anon", med[3], med[5]);
    ratio("wp_fault_vs_kernel_anon", med[4], med[5]);
    ratio("storage_read_vs_kernel_page_cache", med[2], med[6]);
    ExitCode::SUCCESS
}
