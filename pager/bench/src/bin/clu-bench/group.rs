//! `clu-bench commit-group`: the commit of a group of two 100-page clusters against two single
//! commits one after the other, on one site (issue 18). Measured in one run, the order of the
//! cases rotating from run to run.
//!
//! Measured: a group on two volumes of the site (two-phase commit) against two single commits
//! on those volumes (`commit_group_2_vs_two_commits`, the case), and a group on one
//! volume (one journal group) against two single commits on it
//! (`commit_group_2_one_volume_vs_two_commits`). Groups across sites are not built yet: the
//! bench says so instead of printing a figure for `commit_group_2_sites_vs_remote_commit`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use client::{api, ClusterId, ClusterKind, Region};

use crate::{machine_facts, median};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PAGES: u64 = 100;

fn cluster(vol: u16) -> Res<(ClusterId, Region)> {
    Ok(api::create_map(vol, PAGES, ClusterKind::Protected)
        .map_err(|e| format!("create on volume {vol}: {e}"))?)
}

fn dirty(r: &Region, fill: u8) {
    r.write(0, &vec![fill; r.len()]);
}

/// `clu-bench commit-group [--quick]`.
pub fn run(quick: bool, runs: Option<usize>, dir: &Path) -> Res<()> {
    let runs = runs.unwrap_or(if quick { 7 } else { 21 }).max(1);
    let (pager, _root, socket) = crate::faults::start_pager(dir, 0)?;
    let _procs = crate::goofy::Procs(vec![pager]);
    // SAFETY: single-threaded here: no other thread reads the environment yet.
    std::env::set_var(client::SOCKET_ENV, &socket);
    let pager_bin = std::env::current_exe()?
        .parent()
        .ok_or("exe dir")?
        .join("pager");
    let made = Command::new(&pager_bin)
        .args(["vol", "create", "second", "--socket"])
        .arg(&socket)
        .output()?;
    if !made.status.success() {
        return Err(format!(
            "pager vol create: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        )
        .into());
    }
    let (a, ra) = cluster(1)?;
    let (b, rb) = cluster(1)?;
    let (c, rc) = cluster(2)?;
    let names = [
        "two commits, one volume",
        "group of two, one volume",
        "two commits, two volumes",
        "group of two, two volumes",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for run in 0..runs {
        for j in 0..names.len() {
            let k = (j + run) % names.len();
            let fill = (run as u8).wrapping_mul(3).wrapping_add(k as u8 + 1);
            let t = match k {
                0 => {
                    dirty(&ra, fill);
                    dirty(&rb, fill);
                    let t = Instant::now();
                    api::commit(a)?;
                    api::commit(b)?;
                    t.elapsed()
                }
                1 => {
                    dirty(&ra, fill);
                    dirty(&rb, fill);
                    let t = Instant::now();
                    api::commit_group(&[a, b])?;
                    t.elapsed()
                }
                2 => {
                    dirty(&ra, fill);
                    dirty(&rc, fill);
                    let t = Instant::now();
                    api::commit(a)?;
                    api::commit(c)?;
                    t.elapsed()
                }
                _ => {
                    dirty(&ra, fill);
                    dirty(&rc, fill);
                    let t = Instant::now();
                    api::commit_group(&[a, c])?;
                    t.elapsed()
                }
            };
            times[k].push(t.as_secs_f64() * 1e3);
        }
    }
    println!("{}", machine_facts());
    println!("commit of two {PAGES}-page clusters, every page modified; {runs} runs, milliseconds");
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "case", "median", "min", "max"
    );
    let mut medians = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let v = &mut times[k];
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        let m = median(v);
        medians.push(m);
        println!("{name:<28} {m:>10.2} {min:>10.2} {max:>10.2}");
    }
    println!(
        "not measured: a group across two sites (commit_group_2_sites_vs_remote_commit): \
         groups across sites are not built yet"
    );
    println!(
        "ratio commit_group_2_vs_two_commits {:.3}",
        medians[3] / medians[2]
    );
    println!(
        "ratio commit_group_2_one_volume_vs_two_commits {:.3}",
        medians[1] / medians[0]
    );
    for id in [a, b, c] {
        let _ = api::unmap(id);
    }
    Ok(())
}
