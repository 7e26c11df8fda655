//! `clu-bench failover`: automated failover (issue 17), from the primary's death to the first
//! commit accepted on the new primary. etcd, two backup servers and two sites on loopback, a
//! reliable volume (`--sync 2 --failover restore`) with both sites as standbys. Each round
//! SIGKILLs the site that serves the volume and starts, at once, a new client process on the
//! other one that maps the cluster and commits, retrying until a commit is accepted; the
//! killed site is started again and is the standby of the next round. Reported beside the
//! lease TTL, which bounds how soon anyone may take over.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client::{api, ClusterId, MapMode};

use crate::goofy::{free_addr, Procs};
use crate::median;
use crate::sites::{run_ok, start_etcd, wait_for};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `clu-bench failover` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rounds (default 10, 3 with --quick).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Fewer rounds.
    #[arg(long)]
    pub quick: bool,
    /// The sites' lease TTL in seconds (`pager serve --lease-ttl`).
    #[arg(long, default_value_t = 2)]
    pub lease_ttl: u64,
    /// Scratch directory (wiped first).
    #[arg(long, default_value = "target/bench-scratch/failover")]
    pub dir: PathBuf,
}

/// The client process of a round.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The pager's socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The cluster.
    #[arg(long)]
    pub id: ClusterId,
    /// The byte every page gets.
    #[arg(long)]
    pub fill: u8,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Maps the cluster and commits, retrying until a commit is accepted.
pub fn client(a: &ClientArgs) -> Res<()> {
    // SAFETY: single-threaded here: no other thread reads the environment yet.
    std::env::set_var(client::SOCKET_ENV, &a.socket);
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(a.timeout) {
        match api::map(a.id, MapMode::ReadWrite) {
            Ok(r) => {
                r.write(0, &vec![a.fill; r.len()]);
                match api::commit(a.id) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
                let _ = api::unmap(a.id);
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("no commit accepted within {} s: {last}", a.timeout).into())
}

struct Site {
    name: &'static str,
    root: PathBuf,
    socket: PathBuf,
    listen: String,
}

fn serve(pager: &Path, s: &Site, catalog: &str, keys: &Path, ttl: u64) -> Res<std::process::Child> {
    let _ = std::fs::remove_file(&s.socket);
    let child = Command::new(pager)
        .args(["serve", "--root"])
        .arg(&s.root)
        .arg("--socket")
        .arg(&s.socket)
        .args([
            "--catalog",
            catalog,
            "--site",
            s.name,
            "--listen",
            &s.listen,
        ])
        .args(["--lease-ttl", &ttl.to_string(), "--keys"])
        .arg(keys)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()?;
    wait_for(s.name, || {
        std::os::unix::net::UnixStream::connect(&s.socket).is_ok()
    })?;
    Ok(child)
}

/// `clu-bench failover`.
pub fn run(a: &Args) -> Res<()> {
    let runs = a.runs.unwrap_or(if a.quick { 3 } else { 10 }).max(1);
    let dir = &a.dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let pager = exe.parent().ok_or("exe dir")?.join("pager");
    let mut procs = Procs(Vec::new());
    let keys = dir.join("keys");
    run_ok(Command::new(&pager).args(["keys", "init"]).arg(&keys))?;
    for name in ["site-a", "site-b", "backup-1", "backup-2"] {
        run_ok(
            Command::new(&pager)
                .args(["keys", "issue"])
                .arg(&keys)
                .args([name, "--host", "127.0.0.1"]),
        )?;
    }
    let (cp, pp) = (free_addr()?, free_addr()?);
    procs.0.push(start_etcd(
        &dir.join("etcd"),
        &format!("http://{cp}"),
        &format!("http://{pp}"),
    )?);
    let catalog = format!("etcd://{cp}");
    let mut backups = Vec::new();
    for name in ["backup-1", "backup-2"] {
        let addr = free_addr()?;
        procs.0.push(
            Command::new(&pager)
                .args(["backup-server", "--root"])
                .arg(dir.join(name))
                .args(["--listen", &addr, "--site", name, "--keys"])
                .arg(&keys)
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_for(name, || std::net::TcpStream::connect(&addr).is_ok())?;
        backups.push(addr);
    }
    let sites = [
        Site {
            name: "site-a",
            root: dir.join("a"),
            socket: dir.join("a.sock"),
            listen: free_addr()?,
        },
        Site {
            name: "site-b",
            root: dir.join("b"),
            socket: dir.join("b.sock"),
            listen: free_addr()?,
        },
    ];
    let mut running = [
        Some(serve(&pager, &sites[0], &catalog, &keys, a.lease_ttl)?),
        Some(serve(&pager, &sites[1], &catalog, &keys, a.lease_ttl)?),
    ];
    let admin = |s: &Site, args: &[&str]| {
        run_ok(
            Command::new(&pager)
                .args(args)
                .arg("--socket")
                .arg(&s.socket),
        )
    };
    let made = admin(
        &sites[0],
        &[
            "vol",
            "create",
            "rel",
            "--backup",
            &backups[0],
            "--backup",
            &backups[1],
            "--sync",
            "2",
            "--failover",
            "restore",
            "--standby",
            "site-a",
            "--standby",
            "site-b",
        ],
    )?;
    let vol = made
        .split(['(', ')'])
        .nth(1)
        .ok_or_else(|| format!("no volume id in {made:?}"))?
        .to_owned();
    let out = admin(&sites[0], &["clu", "create", &vol, "--pages", "64"])?;
    let id = out
        .split_whitespace()
        .find(|w| w.contains(':'))
        .ok_or_else(|| format!("no cluster id in {out:?}"))?
        .to_owned();
    let commit_on = |s: &Site, fill: u8| -> Res<()> {
        let st = Command::new(&exe)
            .args(["failover-client", "--socket"])
            .arg(&s.socket)
            .args(["--id", &id, "--fill", &fill.to_string()])
            .status()?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("the client on {} failed", s.name).into())
        }
    };
    commit_on(&sites[0], 1)?;
    let mut times = Vec::new();
    let mut primary = 0;
    for round in 0..runs {
        let standby = 1 - primary;
        // The standby must have seen the primary hold the volume (it looks every 100 ms).
        std::thread::sleep(Duration::from_millis(500));
        if let Some(mut c) = running[primary].take() {
            c.kill()?;
            let t0 = Instant::now();
            commit_on(&sites[standby], round as u8 + 2)?;
            let s = t0.elapsed().as_secs_f64();
            c.wait()?;
            println!(
                "round {:>2}: {} -> {}: {s:.3} s",
                round + 1,
                sites[primary].name,
                sites[standby].name
            );
            times.push(s);
        }
        running[primary] = Some(serve(
            &pager,
            &sites[primary],
            &catalog,
            &keys,
            a.lease_ttl,
        )?);
        primary = standby;
    }
    for c in running.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut sorted = times.clone();
    let med = median(&mut sorted);
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "primary's death (SIGKILL) to the first commit accepted on the new primary; {runs} rounds, seconds"
    );
    println!("{:<28} {:>10} {:>10} {:>10}", "", "median", "min", "max");
    println!(
        "{:<28} {med:>10.3} {min:>10.3} {max:>10.3}",
        "failover (sync 2, 2 backups)"
    );
    println!("{:<28} {:>10.3}", "lease TTL", a.lease_ttl as f64);
    println!("ratio failover_seconds {med:.3}");
    Ok(())
}
