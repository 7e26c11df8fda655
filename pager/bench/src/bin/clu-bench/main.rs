//! Benchmarks of the cluster machine. A program, not a test: it prints a table (median, min, max
//! of repeated runs) and machine-readable `ratio NAME VALUE` lines, measuring ours and the
//! reference side by side in the same run so that the machine's drift hits both alike.
//!
//! - `clu-bench journal [--quick]` reproduces thesis figures 5.1 and 5.2.
//! - `clu-bench goofy [--quick]` measures reliable volumes against local ones (thesis fig. 7.5).
//! - `clu-bench faults [--quick]` measures the pager's fault paths against the kernel's own file
//!   pager and a bare userfaultfd resolver (thesis chapter V, section 3 of the digest).
//! - `clu-bench commit-group [--quick]` measures commit groups against single commits.
//! - `clu-bench sites [--quick]` measures remote paging against local paging and the link
//!   (thesis V.2.3), over a network namespace's link as is and shaped like a LAN.

mod failover;
mod faults;
mod goofy;
mod group;
mod journal;
mod sites;

use std::fs;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Benchmarks of the cluster machine (thesis chapter V), as ratios against a reference.
#[derive(Parser)]
#[command(name = "clu-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Journaled write-back vs plain pwrite+fdatasync (thesis figures 5.1 and 5.2).
    Journal {
        /// Fewer runs (finishes within a minute).
        #[arg(long)]
        quick: bool,
        /// Runs of each case (default 11, 5 with --quick).
        #[arg(long)]
        runs: Option<usize>,
        /// Scratch directory on the disk to measure (wiped first).
        #[arg(long, default_value = "target/bench-scratch")]
        dir: PathBuf,
    },
    /// Fault latencies: the pager vs the kernel's file pager and a bare userfaultfd resolver.
    Faults(faults::Args),
    /// Goofy (thesis fig. 7.5): a 200-page commit on a local volume, a reliable one with two
    /// backups (asynchronous) and one waiting for both; the propagation lag under load.
    Goofy {
        /// Fewer runs (finishes within half a minute).
        #[arg(long)]
        quick: bool,
        /// Runs of each case (default 11, 5 with --quick).
        #[arg(long)]
        runs: Option<usize>,
        /// Scratch directory (wiped first).
        #[arg(long, default_value = "target/bench-scratch/goofy")]
        dir: PathBuf,
        /// Where the backup servers keep their images (default: under --dir, on the same disk
        /// as the primary; another file system stands in for the backups' own machines).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
    /// Commit groups (issue 18): a group of two 100-page clusters against two single commits
    /// one after the other, on one site.
    CommitGroup {
        /// Fewer runs (finishes within seconds).
        #[arg(long)]
        quick: bool,
        /// Runs of each case (default 21, 7 with --quick).
        #[arg(long)]
        runs: Option<usize>,
        /// Scratch directory (wiped first).
        #[arg(long, default_value = "target/bench-scratch/commit-group")]
        dir: PathBuf,
    },
    /// Remote paging (thesis V.2.3): faults, a sequential traversal, a commit and paging
    /// served by another site or a memory server, beside the same link's ping-pong, stream and
    /// transfer (as root: it makes a network namespace).
    Sites(sites::Args),
    /// Internal: one run of the paging case of `sites`.
    #[command(hide = true)]
    SitesPaging(sites::PagingArgs),
    /// Internal: the TCP peer of `sites`.
    #[command(hide = true)]
    SitesPeer(sites::PeerArgs),
    /// Internal: the plaintext row of `goofy`.
    #[command(hide = true)]
    GoofyPlain {
        #[arg(long)]
        runs: usize,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Automated failover: from the primary's SIGKILL to the first commit accepted on the
    /// standby that takes the volume over (etcd, two backups and two sites on loopback).
    Failover(failover::Args),
    /// Internal: the client process of a failover round.
    #[command(hide = true)]
    FailoverClient(failover::ClientArgs),
    /// Internal: a client process of the concurrency row.
    #[command(hide = true)]
    FaultsChild(faults::ChildArgs),
}

/// The median (mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.is_empty() {
        return f64::NAN;
    }
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Cores, kernel and memory of this machine, in one line.
pub fn machine_facts() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {cores} cores, kernel {}, {mem} kB memory",
        kernel.trim()
    )
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Bench::Journal { quick, runs, dir } => journal::run(quick, runs, &dir),
        Bench::Faults(args) => faults::run(&args),
        Bench::Goofy {
            quick,
            runs,
            dir,
            backup_dir,
        } => goofy::run(quick, runs, &dir, backup_dir.as_deref(), false),
        Bench::CommitGroup { quick, runs, dir } => group::run(quick, runs, &dir),
        Bench::GoofyPlain { runs, dir } => goofy::run(false, Some(runs), &dir, None, true),
        Bench::FaultsChild(args) => faults::child(&args),
        Bench::Sites(args) => sites::run(&args),
        Bench::Failover(args) => failover::run(&args),
        Bench::FailoverClient(args) => failover::client(&args),
        Bench::SitesPaging(args) => sites::paging_child(&args),
        Bench::SitesPeer(args) => sites::peer_main(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clu-bench: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
