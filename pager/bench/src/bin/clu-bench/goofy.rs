//! `clu-bench goofy`: the thesis's Goofy experiment (fig. 7.5: one 200-page cluster stored on the
//! primary and two backups synchronously, 29.4 s, against the local service alone, 5.4 s) on
//! loopback, in one run: the commit of a 200-page cluster on a local volume, on a reliable volume
//! with two backups and asynchronous propagation, and on one that waits for both
//! acknowledgements; then the propagation lag under a steady commit load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{api, ClusterKind, PAGE_SIZE};

use crate::{machine_facts, median};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Kills its processes when dropped.
pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn free_addr() -> Res<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

fn admin(pager: &Path, socket: &Path, args: &[&str]) -> Res<String> {
    let out = Command::new(pager)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "pager {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `clu-bench goofy [--quick]`.
pub fn run(
    quick: bool,
    runs: Option<usize>,
    dir: &Path,
    backup_dir: Option<&Path>,
    plain: bool,
) -> Res<()> {
    let runs = runs.unwrap_or(if quick { 5 } else { 11 }).max(1);
    if plain {
        // SAFETY: single-threaded here. The backup servers and the pager inherit the
        // environment: no keys in plaintext mode.
        std::env::remove_var("CLU_KEYS");
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let pager_bin: PathBuf = exe.parent().ok_or("exe dir")?.join("pager");
    let mut procs = Procs(Vec::new());
    let mut backups = Vec::new();
    let bdir = backup_dir.unwrap_or(dir);
    // The cell's keys: every connection between the primary and its backups is TLS (or, for
    // the plaintext row, --insecure on loopback).
    let keys = dir.join("keys");
    let tls: &[&str] = if plain { &[] } else { &["--keys"] };
    for args in if plain {
        vec![]
    } else {
        vec![
            vec!["keys", "init"],
            vec!["keys", "issue", "", "primary", "--host", "127.0.0.1"],
            vec!["keys", "issue", "", "backup-a", "--host", "127.0.0.1"],
            vec!["keys", "issue", "", "backup-b", "--host", "127.0.0.1"],
        ]
    } {
        let mut c = Command::new(&pager_bin);
        c.args(&args[..2])
            .arg(&keys)
            .args(&args[args.len().min(3)..]);
        if !c.stdout(Stdio::null()).status()?.success() {
            return Err(format!("pager {args:?} failed").into());
        }
    }
    for name in ["backup-a", "backup-b"] {
        let addr = free_addr()?;
        let _ = std::fs::remove_dir_all(bdir.join(name));
        procs.0.push(
            Command::new(&pager_bin)
                .args(["backup-server", "--root"])
                .arg(bdir.join(name))
                .args(["--listen", &addr, "--site", name])
                .args(if plain { &["--insecure"][..] } else { tls })
                .args(if plain { None } else { Some(&keys) })
                .stderr(Stdio::null())
                .spawn()?,
        );
        let t = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                return Err("a backup server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        backups.push(addr);
    }
    // SAFETY: single-threaded here: no other thread reads the environment yet. The pager
    // reads its keys from CLU_KEYS and CLU_SITE.
    if plain {
        std::env::remove_var("CLU_KEYS");
        std::env::set_var("CLU_INSECURE", "true");
    } else {
        std::env::set_var("CLU_KEYS", &keys);
    }
    std::env::set_var("CLU_SITE", "primary");
    let (pager, _root, socket) = crate::faults::start_pager(&dir.join("primary"), 0)?;
    procs.0.push(pager);
    // SAFETY: single-threaded here: no other thread reads the environment yet.
    std::env::set_var(client::SOCKET_ENV, &socket);
    let (a, b) = (backups[0].as_str(), backups[1].as_str());
    admin(
        &pager_bin,
        &socket,
        &["vol", "create", "async", "--backup", a, "--backup", b],
    )?;
    admin(
        &pager_bin,
        &socket,
        &[
            "vol", "create", "sync", "--backup", a, "--backup", b, "--sync", "2",
        ],
    )?;

    const PAGES: u64 = 200;
    let cases = [
        ("local", 1u16),
        ("async, 2 backups", 2),
        ("sync, 2 backups", 3),
    ];
    let mut clusters = Vec::new();
    for (_, vol) in cases {
        let (id, region) = api::create_map(vol, PAGES, ClusterKind::Protected)
            .map_err(|e| format!("create on volume {vol}: {e}"))?;
        clusters.push((id, region));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for run in 0..runs {
        // The order rotates from run to run: no case always follows the same other one.
        for j in 0..clusters.len() {
            let k = (j + run) % clusters.len();
            let (id, region) = &clusters[k];
            let fill = (run as u8).wrapping_add(k as u8).wrapping_add(1);
            region.write(0, &vec![fill; region.len()]);
            let t = Instant::now();
            api::commit(*id).map_err(|e| format!("commit: {e}"))?;
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }

    if plain {
        // The plaintext row: what the TLS run compares its synchronous commits with.
        println!("value goofy_local_ms {:.3}", median(&mut times[0].clone()));
        println!("value goofy_sync_ms {:.3}", median(&mut times[2].clone()));
        for (id, _) in clusters {
            let _ = api::unmap(id);
        }
        return Ok(());
    }
    // The same cases in plaintext, in a process of their own (one pager per process).
    let out = Command::new(&exe)
        .args(["goofy-plain", "--runs", &runs.to_string(), "--dir"])
        .arg(dir.join("plain"))
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("value {name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    let plain_row = value("goofy_local_ms").zip(value("goofy_sync_ms"));

    // Steady load on the asynchronous volume: 16 pages every 10 ms.
    let (id, region) = clusters[1].clone();
    let load = Duration::from_secs(if quick { 2 } else { 5 });
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < load {
        n += 1;
        let first = (n * 16) % (PAGES - 16);
        region.write(first as usize * PAGE_SIZE, &[n as u8; 16 * PAGE_SIZE]);
        api::commit(id).map_err(|e| format!("commit: {e}"))?;
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the last operations arrive, then read the links' lags.
    std::thread::sleep(Duration::from_millis(500));
    let status = admin(&pager_bin, &socket, &["status"])?;
    let lags: Vec<f64> = status
        .lines()
        .skip_while(|l| !l.starts_with("reliable volume  async"))
        .skip(1)
        .take(2)
        .filter_map(|l| {
            l.split("propagation lag median ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();

    println!("{}", machine_facts());
    println!(
        "backup roots under {} ({})",
        bdir.display(),
        if backup_dir.is_some() {
            "their own file system"
        } else {
            "the primary's disk"
        }
    );
    println!(
        "commit of a {PAGES}-page cluster ({} KiB), every page modified; {runs} runs, milliseconds",
        PAGES * 4
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10}",
        "volume", "median", "min", "max"
    );
    let mut medians = Vec::new();
    for (k, (name, _)) in cases.iter().enumerate() {
        let v = &mut times[k];
        let (min, max) = (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        let m = median(v);
        medians.push(m);
        println!("{name:<24} {m:>10.2} {min:>10.2} {max:>10.2}");
    }
    println!(
        "thesis (1994, 200 pages): local 5.4 s, synchronous with 2 backups 29.4 s (x5.4); asynchronous projected x1.2 to x5"
    );
    println!(
        "propagation lag under {n} commits of 16 pages every 10 ms, median per backup: {}",
        lags.iter()
            .map(|l| format!("{l:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match plain_row {
        Some((local, sync)) => {
            println!(
                "{:<24} {sync:>10.2}   (plaintext, --insecure; its local volume: {local:.2})",
                "sync, 2 backups"
            );
            // Each compared with its own local commit: the two runs are minutes apart.
            println!(
                "ratio goofy_sync_tls_vs_plain {:.2}",
                (medians[2] / medians[0]) / (sync / local)
            );
        }
        None => println!("(the plaintext row failed: {})", text.trim()),
    }
    println!("ratio goofy_async_vs_local {:.2}", medians[1] / medians[0]);
    println!("ratio goofy_sync_vs_local {:.2}", medians[2] / medians[0]);
    if let Some(worst) = lags.iter().copied().reduce(f64::max) {
        println!("value goofy_propagation_lag_median_ms {worst:.1}");
    }
    for (id, _) in clusters {
        let _ = api::unmap(id);
    }
    Ok(())
}
