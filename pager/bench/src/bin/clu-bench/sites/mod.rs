//! `clu-bench sites`: remote paging against local paging and the link itself (thesis V.2.3:
//! local disk 13.6 ms, remote disk 18.5 ms, remote memory 15.8 ms per fault). Site B, a memory
//! server and a plain TCP peer run in a network namespace; site A and the client on the host.
//! Every connection from the host to the namespace goes through a relay that holds each chunk
//! for a delay, so that the pages and the references cross the same link and the same relay.
//! Two passes: the link as is (veth, relay without delay) and shaped like a LAN (`tbf rate
//! 1gbit` both ways, 100 us added each way). The ratios are the LAN's.

mod link;
mod peer;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use client::{api, ClusterId, ClusterKind, MapMode, Region, PAGE_SIZE};

use crate::goofy::Procs;
use crate::{machine_facts, median};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `clu-bench sites`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Fewer runs and a smaller traversal.
    #[arg(long)]
    quick: bool,
    /// Runs of each case (default 11, 5 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Microseconds the relay adds each way on the LAN pass.
    #[arg(long, default_value_t = 100)]
    delay_us: u64,
    /// Scratch directory (wiped first).
    #[arg(long, default_value = "target/bench-scratch/sites")]
    dir: PathBuf,
}

/// `clu-bench sites-paging`: one run of the paging case against one pager, in a process of
/// its own (a process talks to one pager).
#[derive(ClapArgs, Debug)]
pub struct PagingArgs {
    /// The pager's socket.
    #[arg(long)]
    socket: PathBuf,
    /// Pages of the cluster paged out and read back.
    #[arg(long)]
    pages: u64,
}

/// `clu-bench sites-peer`: the plain TCP peer, in B's namespace.
#[derive(ClapArgs, Debug)]
pub struct PeerArgs {
    /// Where to listen.
    #[arg(long)]
    listen: String,
}

fn cerr(e: client::CluError) -> Box<dyn std::error::Error> {
    e.to_string().into()
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Res<()> {
    let t = Instant::now();
    while !ready() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!("{what} did not start").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn socket_ready(p: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(p).is_ok()
}

pub(crate) fn run_ok(c: &mut Command) -> Res<String> {
    let out = c.output()?;
    if !out.status.success() {
        return Err(format!("{c:?}: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The mean microseconds per page of touching `pages` of `r`.
fn touch(r: &Region, pages: &[u64]) -> f64 {
    let t = Instant::now();
    for &p in pages {
        std::hint::black_box(r.read_u8(p as usize * PAGE_SIZE));
    }
    t.elapsed().as_secs_f64() * 1e6 / pages.len().max(1) as f64
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `n` pages of a cluster of `npages`, each in a read-around window of its own (16 pages),
/// in random order: every touch is a fault that starts over.
fn scattered(npages: u64, n: usize, seed: u64) -> Vec<u64> {
    let mut windows: Vec<u64> = (0..npages / 16).collect();
    let mut x = seed | 1;
    for i in (1..windows.len()).rev() {
        windows.swap(i, (xorshift(&mut x) % (i as u64 + 1)) as usize);
    }
    windows
        .into_iter()
        .take(n)
        .map(|w| w * 16 + xorshift(&mut x) % 16)
        .collect()
}

/// A committed cluster of `npages` on `vol`, unmapped, its image not cached.
fn prepared(vol: u16, npages: u64) -> Res<ClusterId> {
    let (id, r) = api::create_map(vol, npages, ClusterKind::Shareable).map_err(cerr)?;
    r.write(0, &vec![7u8; r.len()]);
    api::commit(id).map_err(cerr)?;
    api::unmap(id).map_err(cerr)?;
    Ok(id)
}

/// Maps `id` with no history and no cached image: every page comes from storage.
fn cold_map(id: ClusterId) -> Res<Region> {
    let s = id.to_string();
    api::admin(vec![
        "clu".into(),
        "history".into(),
        s.clone(),
        "--clear".into(),
    ])
    .map_err(cerr)?;
    api::admin(vec!["cache".into(), "drop".into(), s]).map_err(cerr)?;
    api::map(id, MapMode::ReadOnly).map_err(cerr)
}

/// Samples by case, in the order of the table.
#[derive(Default)]
struct Samples(Vec<(&'static str, &'static str, Vec<f64>)>);

impl Samples {
    fn add(&mut self, case: &'static str, unit: &'static str, v: f64) {
        match self.0.iter_mut().find(|c| c.0 == case) {
            Some(c) => c.2.push(v),
            None => self.0.push((case, unit, vec![v])),
        }
    }

    fn median(&self, case: &str) -> f64 {
        self.0
            .iter()
            .find(|c| c.0 == case)
            .map_or(f64::NAN, |c| median(&mut c.2.clone()))
    }

    fn print(&self, title: &str) {
        println!("{title}");
        println!(
            "{:<34} {:>10} {:>10} {:>10}  unit",
            "case", "median", "min", "max"
        );
        for (case, unit, v) in &self.0 {
            let (min, max) = (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
            );
            let m = median(&mut v.clone());
            println!("{case:<34} {m:>10.1} {min:>10.1} {max:>10.1}  {unit}");
        }
    }
}

/// `clu-bench sites-paging`: a committed cluster three times `pages`; its first `pages` pages
/// are written (they fit the pager's budget), the rest read (clean pages, which push the
/// written ones out to the paging partition), then the written pages are read back, timed:
/// each fault drops a clean page and brings one back from the paging partition. Prints the
/// mean microseconds per page.
pub fn paging_child(a: &PagingArgs) -> Res<()> {
    // SAFETY: single-threaded here: no other thread reads the environment yet.
    std::env::set_var(client::SOCKET_ENV, &a.socket);
    let n = a.pages;
    let (x, r) = api::create_map(1, 3 * n, ClusterKind::Protected).map_err(cerr)?;
    r.write(0, &vec![1u8; r.len()]);
    api::commit(x).map_err(cerr)?;
    r.write(0, &vec![3u8; n as usize * PAGE_SIZE]);
    touch(&r, &(n..3 * n).collect::<Vec<_>>());
    let status = api::admin(vec!["status".into()]).map_err(cerr)?;
    let slots: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("paging slots"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if slots < n / 2 {
        return Err(format!("only {slots} of {n} written pages were paged out").into());
    }
    // One page per read-around window first (each fault starts over), then the rest.
    let order = scattered(n, (n / 16) as usize, 0xfeed);
    let us = touch(&r, &order);
    for p in (0..n).step_by(7) {
        if r.read_u8(p as usize * PAGE_SIZE) != 3 {
            return Err(format!("page {p} came back wrong").into());
        }
    }
    api::abort(x).map_err(cerr)?;
    api::unmap(x).map_err(cerr)?;
    api::admin(vec!["clu".into(), "destroy".into(), x.to_string()]).map_err(cerr)?;
    println!("value paging_fault_us {us:.2} slots {slots}");
    Ok(())
}

fn paging_once(exe: &Path, socket: &Path, pages: u64) -> Res<f64> {
    let out = run_ok(
        Command::new(exe)
            .args(["sites-paging", "--pages", &pages.to_string(), "--socket"])
            .arg(socket),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("value paging_fault_us "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("sites-paging said: {out}").into())
}

/// `clu-bench sites`.
/// A one-member etcd with its data in `data`, serving clients on `client_url`; returns once it
/// answers `etcdctl endpoint health`.
pub(crate) fn start_etcd(data: &Path, client_url: &str, peer_url: &str) -> Res<Child> {
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", client_url])
        .args(["--advertise-client-urls", client_url])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("etcd (scripts/setup installs etcd-server): {e}"))?;
    wait_for("etcd", || {
        Command::new("etcdctl")
            .args(["--endpoints", client_url, "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Ok(child)
}

pub fn run(a: &Args) -> Res<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("clu-bench sites makes a network namespace: run it as root".into());
    }
    let runs = a.runs.unwrap_or(if a.quick { 5 } else { 11 }).max(1);
    let seq_pages: u64 = if a.quick { 4096 } else { 16384 };
    let dir = &a.dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let bin = exe.parent().ok_or("exe dir")?.to_owned();
    let pager = bin.join("pager");
    let link = link::Link::new()?;
    let (h, n) = (link.host_ip.clone(), link.ns_ip.clone());
    let mut procs = Procs(Vec::new());

    // The cell's keys.
    let keys = dir.join("keys");
    run_ok(Command::new(&pager).args(["keys", "init"]).arg(&keys))?;
    for (site, hosts) in [
        ("site-a", vec!["127.0.0.1", h.as_str()]),
        ("site-b", vec![n.as_str(), h.as_str()]),
        ("memory", vec![n.as_str(), h.as_str()]),
        ("site-pm", vec!["127.0.0.1", h.as_str()]),
    ] {
        let mut c = Command::new(&pager);
        c.args(["keys", "issue"]).arg(&keys).arg(site);
        for host in hosts {
            c.args(["--host", host]);
        }
        run_ok(&mut c)?;
    }

    // etcd on the host's end of the link.
    let (cp, pp) = (free_port()?, free_port()?);
    let client_url = format!("http://{h}:{cp}");
    let peer_url = format!("http://127.0.0.1:{pp}");
    procs
        .0
        .push(start_etcd(&dir.join("etcd"), &client_url, &peer_url)?);
    let catalog = format!("etcd://{h}:{cp}");

    // The relays, then what they lead to in the namespace.
    let delay = Arc::new(AtomicU64::new(0));
    let relay = |port: u16| link::relay(&h, format!("{n}:{port}"), delay.clone());
    let (b_port, m_port, p_port) = (7300, 7400, 7500);
    let (b_relay, m_relay, p_relay) = (relay(b_port)?, relay(m_port)?, relay(p_port)?);
    let quiet = || Stdio::null();
    let b_sock = dir.join("b.sock");
    procs.0.push(
        link.command(&pager)
            .args(["serve", "--root"])
            .arg(dir.join("b"))
            .arg("--socket")
            .arg(&b_sock)
            .args(["--resident-pages", "262144", "--catalog", &catalog])
            .args(["--site", "site-b", "--listen", &format!("{n}:{b_port}")])
            .args(["--advertise", &b_relay, "--keys"])
            .arg(&keys)
            .stderr(quiet())
            .spawn()?,
    );
    wait_for("site B", || socket_ready(&b_sock))?;
    procs.0.push(
        link.command(&pager)
            .args(["memory-server", "--listen", &format!("{n}:{m_port}")])
            .args(["--pages", "1048576", "--site", "memory", "--keys"])
            .arg(&keys)
            .stderr(quiet())
            .spawn()?,
    );
    procs.0.push(
        link.command(&exe)
            .args(["sites-peer", "--listen", &format!("{n}:{p_port}")])
            .spawn()?,
    );
    let a_sock = dir.join("a.sock");
    procs.0.push(
        Command::new(&pager)
            .args(["serve", "--root"])
            .arg(dir.join("a"))
            .arg("--socket")
            .arg(&a_sock)
            .args(["--resident-pages", "262144", "--catalog", &catalog])
            .args(["--site", "site-a", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()?))
            .arg("--keys")
            .arg(&keys)
            .stderr(quiet())
            .spawn()?,
    );
    wait_for("site A", || socket_ready(&a_sock))?;
    // The two pagers of the paging case: local paging file, and the memory server.
    let paging_pages: u64 = if a.quick { 1024 } else { 4096 };
    let budget = (paging_pages + 64).to_string();
    let pl_sock = dir.join("pl.sock");
    let pm_sock = dir.join("pm.sock");
    wait_for("the memory server", || {
        std::net::TcpStream::connect(format!("{n}:{m_port}")).is_ok()
    })?;
    for (name, sock, extra) in [
        ("pl", &pl_sock, vec![]),
        (
            "pm",
            &pm_sock,
            vec![
                "--paging-server".to_owned(),
                m_relay.clone(),
                "--site".into(),
                "site-pm".into(),
                "--keys".into(),
                keys.display().to_string(),
            ],
        ),
    ] {
        procs.0.push(
            Command::new(&pager)
                .args(["serve", "--root"])
                .arg(dir.join(name))
                .arg("--socket")
                .arg(sock)
                .args(["--resident-pages", &budget])
                .args(&extra)
                .stderr(quiet())
                .spawn()?,
        );
        wait_for(name, || socket_ready(sock))?;
    }

    // SAFETY: single-threaded here but for the relays, which read no environment.
    std::env::set_var(client::SOCKET_ENV, &a_sock);
    let vols = run_ok(
        Command::new(&pager)
            .args(["vol", "list", "--socket"])
            .arg(&a_sock),
    )?;
    let vol_of = |site: &str| -> Res<u16> {
        let row = vols
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(site))
            .ok_or_else(|| format!("no volume mounted by {site} in\n{vols}"))?;
        let id = row.split_whitespace().next().unwrap_or_default();
        Ok(u16::from_str_radix(id, 16)?)
    };
    let (local, remote) = (vol_of("site-a")?, vol_of("site-b")?);

    const FAULT_PAGES: u64 = 4096;
    const TOUCHES: usize = 64;
    let fault = [
        prepared(local, FAULT_PAGES)?,
        prepared(remote, FAULT_PAGES)?,
    ];
    let seq = [prepared(local, seq_pages)?, prepared(remote, seq_pages)?];
    let mut commit = Vec::new();
    for vol in [local, remote] {
        commit.push(api::create_map(vol, 100, ClusterKind::Shareable).map_err(cerr)?);
    }
    let mut peer = peer::Peer::connect(&p_relay)?;
    let seq_bytes = seq_pages as usize * PAGE_SIZE;

    println!("{}", machine_facts());
    println!(
        "site B, a memory server and a TCP peer in a network namespace behind a veth pair; site A and the client on the host; every connection through a relay on the host"
    );
    let mut results = Vec::new();
    for (pass, shaped) in [("link as is", false), ("LAN", true)] {
        link.shape(shaped)?;
        delay.store(if shaped { a.delay_us } else { 0 }, Ordering::Relaxed);
        let mut s = Samples::default();
        for run in 0..runs {
            let order = scattered(FAULT_PAGES, TOUCHES, 0x1234 + run as u64);
            for (k, id) in fault.iter().enumerate() {
                let r = cold_map(*id)?;
                let us = touch(&r, &order);
                api::unmap(*id).map_err(cerr)?;
                s.add(["fault, local storage", "fault, B's storage"][k], "us", us);
            }
            let mut ping = 0.0;
            for _ in 0..TOUCHES {
                ping += peer.download(PAGE_SIZE)?;
            }
            s.add("4 KiB ping-pong", "us", ping / TOUCHES as f64);
            let all: Vec<u64> = (0..seq_pages).collect();
            for (k, id) in seq.iter().enumerate() {
                let t = Instant::now();
                let r = cold_map(*id)?;
                touch(&r, &all);
                s.add(
                    ["sequential, local", "sequential, remote"][k],
                    "ms",
                    t.elapsed().as_secs_f64() * 1e3,
                );
                api::unmap(*id).map_err(cerr)?;
            }
            s.add(
                "TCP stream, same bytes",
                "ms",
                peer.download(seq_bytes)? / 1e3,
            );
            for (k, (id, r)) in commit.iter().enumerate() {
                r.write(0, &vec![run as u8 + 1; r.len()]);
                let t = Instant::now();
                api::commit(*id).map_err(cerr)?;
                s.add(
                    ["commit 100 pages, local", "commit 100 pages, remote"][k],
                    "ms",
                    t.elapsed().as_secs_f64() * 1e3,
                );
            }
            s.add(
                "TCP transfer of 100 pages",
                "ms",
                peer.upload(100 * PAGE_SIZE)? / 1e3,
            );
            s.add(
                "fault, local paging file",
                "us",
                paging_once(&exe, &pl_sock, paging_pages)?,
            );
            s.add(
                "fault, memory server",
                "us",
                paging_once(&exe, &pm_sock, paging_pages)?,
            );
        }
        s.print(&format!(
            "\n{pass}{}: {runs} runs; faults {TOUCHES} one-page faults each starting over (storage files in the page cache), sequential {} MiB cold",
            if shaped {
                format!(" (tbf rate 1gbit both ways, {} us added each way)", a.delay_us)
            } else {
                String::new()
            },
            seq_bytes >> 20
        ));
        results.push(s);
    }
    println!("\nthesis V.2.3 (1994, per fault): local disk 13.6 ms, remote disk 18.5 ms (x1.36), remote memory 15.8 ms");
    for (s, suffix) in results.iter().zip(["_as_is", ""]) {
        let m = |c: &str| s.median(c);
        let line = |name: &str, v: f64| {
            if suffix.is_empty() {
                println!("ratio {name} {v:.2}");
            } else {
                println!("value {name}{suffix} {v:.2}");
            }
        };
        line(
            "remote_fault_vs_local_plus_rtt",
            m("fault, B's storage") / (m("fault, local storage") + m("4 KiB ping-pong")),
        );
        line(
            "remote_seq_vs_stream",
            m("sequential, remote") / m("TCP stream, same bytes"),
        );
        line(
            "remote_commit_100_vs_local_plus_transfer",
            m("commit 100 pages, remote")
                / (m("commit 100 pages, local") + m("TCP transfer of 100 pages")),
        );
        line(
            "remote_paging_vs_local_paging_plus_rtt",
            m("fault, memory server") / (m("fault, local paging file") + m("4 KiB ping-pong")),
        );
    }
    for (id, _) in commit {
        let _ = api::unmap(id);
    }
    link.shape(false)?;
    Ok(())
}

/// `clu-bench sites-peer`.
pub fn peer_main(a: &PeerArgs) -> Res<()> {
    peer::serve(&a.listen)
}
