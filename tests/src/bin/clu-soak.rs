//! Load and soak: N client processes x M threads of random reads, writes, commits and aborts
//! against one pager for a bounded time, clients coming, going and being SIGKILLed, with a
//! verifier that knows every committed value. Prints the pager's memory and descriptors over
//! time and fails if a page is ever wrong or anything leaks.
//!
//! `clu-soak [--seconds S] [--clients N] [--threads M] [--pages P] [--budget B]` (defaults 20 s,
//! 4 x 4, 256 pages each, a 512-page budget: most clusters live partly in the paging partition).
//!
//! Each client owns a cluster; thread t owns the pages p with p % M == t. The committed version
//! of every page is kept in `<dir>/model-C`, written before a commit as an *intent* and after it
//! as the new committed state; a client starting on the cluster (its predecessor exited or was
//! killed) first checks every stored page against that model: equal to the committed state, or
//! to the intent if a commit was in flight. While it runs, every read checks the page against
//! the version last written to it, and after an abort against the committed one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use client::{api, ClusterId, ClusterKind, MapMode, Region, PAGE_SIZE};
use clu_tests::{check_pattern, fill_pattern, seed_of, splitmix};

/// Exit code of a client that found a wrong page.
const MISMATCH: i32 = 3;

struct Opts {
    seconds: u64,
    clients: usize,
    threads: usize,
    pages: u64,
    budget: u64,
}

fn opt(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{name}: not a number: {v}")))
        })
        .unwrap_or(default)
}

fn fail(msg: &str) -> ! {
    eprintln!("clu-soak: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "{}",
            include_str!("clu-soak.rs")
                .lines()
                .take(9)
                .map(|l| l.trim_start_matches("//!").trim())
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    if args.first().map(String::as_str) == Some("client") {
        client_main(&args[1..]);
        return;
    }
    let opts = Opts {
        seconds: opt(&args, "--seconds", 20),
        clients: opt(&args, "--clients", 4) as usize,
        threads: opt(&args, "--threads", 4) as usize,
        pages: opt(&args, "--pages", 256),
        budget: opt(&args, "--budget", 512),
    };
    std::process::exit(run(&opts));
}

// ---- the parent: pager, clients, samples ----

/// The `pager` binary next to this one (both are built into `target/<profile>`).
fn pager_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("pager")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            fail("no `pager` binary next to clu-soak; run `cargo build --release` first")
        })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Empties the pager's site cache (`pager cache drop`).
fn drop_cache() {
    if let Err(e) = api::admin(vec!["cache".into(), "drop".into()]) {
        fail(&format!("pager cache drop: {e}"));
    }
}

fn fds(pid: u32) -> usize {
    fd_list(pid).len()
}

/// What each of the pager's descriptors is.
fn fd_list(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    v.sort();
    v
}

fn status_line(socket: &Path, key: &str) -> String {
    let out = Command::new(pager_bin())
        .args(["status", "--socket"])
        .arg(socket)
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        })
        .unwrap_or_default()
}

/// How many processes the pager says map cluster `id`.
fn mappers(socket: &Path, id: ClusterId) -> Option<u64> {
    let out = Command::new(pager_bin())
        .args(["clu", "info", &id.to_string(), "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("mapped now by"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

struct Slot {
    id: ClusterId,
    child: Option<(Child, Instant)>,
}

fn run(o: &Opts) -> i32 {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("tempdir: {e}")));
    let socket = dir.path().join("pager.sock");
    let mut pager = Command::new(pager_bin())
        .args(["serve", "--root"])
        .arg(dir.path().join("root"))
        .arg("--socket")
        .arg(&socket)
        .args(["--resident-pages", &o.budget.to_string()])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap_or_else(|e| fail(&format!("starting the pager: {e}")));
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            fail("the pager did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::env::set_var("CLU_PAGER_SOCKET", &socket);
    let mut slots: Vec<Slot> = (0..o.clients)
        .map(|_| {
            let (id, _) = api::create_map(1, o.pages, ClusterKind::Shareable)
                .unwrap_or_else(|e| fail(&format!("create: {e}")));
            api::unmap(id).unwrap_or_else(|e| fail(&format!("unmap: {e}")));
            Slot { id, child: None }
        })
        .collect();
    let pid = pager.id();
    // The baseline: the pager with its clusters made and nobody connected but us, and its
    // cache empty (the images just made stay cached, one memfd each).
    drop_cache();
    let (rss0, fds0, list0) = (rss_kib(pid), fds(pid), fd_list(pid));
    let me = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
    let mut rng = splitmix(u64::from(std::process::id()));
    let (mut started, mut killed, mut exited, mut mismatches, mut failures) = (0, 0, 0, 0, 0);
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(o.seconds);
    let mut next_sample = Instant::now();
    println!(
        "{:>6} {:>10} {:>6} {:>9} {:>12}  status",
        "t (s)", "RSS (KiB)", "fds", "clients", "resident"
    );
    while Instant::now() < end {
        for (c, slot) in slots.iter_mut().enumerate() {
            if let Some((child, deadline)) = slot.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        match classify(st) {
                            Outcome::Ok => exited += 1,
                            Outcome::Mismatch => mismatches += 1,
                            Outcome::Failed(why) => {
                                eprintln!("client of cluster {} failed: {why}", slot.id);
                                failures += 1;
                            }
                        }
                        slot.child = None;
                    }
                    Ok(None) if Instant::now() > *deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        killed += 1;
                        slot.child = None;
                    }
                    _ => {}
                }
            }
            // A successor starts once the pager has seen its predecessor go (else it would
            // share the old image, uncommitted pages included, as any second mapper does).
            if slot.child.is_none() && mappers(&socket, slot.id) == Some(0) {
                rng = splitmix(rng);
                let secs = 1 + rng % 4;
                // One client in three is killed at a random moment of its life instead.
                let kill_at = if rng % 3 == 0 {
                    Instant::now() + Duration::from_millis(100 + (rng >> 8) % (secs * 1000))
                } else {
                    Instant::now() + Duration::from_secs(secs + 30)
                };
                let child = Command::new(&me)
                    .args(["client", &slot.id.to_string()])
                    .arg(dir.path().join(format!("model-{c}")))
                    .args([&o.threads.to_string(), &secs.to_string(), &rng.to_string()])
                    .spawn()
                    .unwrap_or_else(|e| fail(&format!("starting a client: {e}")));
                slot.child = Some((child, kill_at));
                started += 1;
            }
        }
        if Instant::now() >= next_sample {
            let t = t0.elapsed().as_secs();
            let (rss, n) = (rss_kib(pid), fds(pid));
            let resident = status_line(&socket, "resident pages");
            let live = status_line(&socket, "connections");
            println!(
                "{t:>6} {rss:>10} {n:>6} {:>9} {:>12}  {live}",
                slots.len(),
                resident.split_whitespace().next().unwrap_or("?")
            );
            samples.push(rss);
            next_sample += Duration::from_secs(2);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for slot in slots.iter_mut() {
        if let Some((mut child, _)) = slot.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    // Everyone is gone: the pager must be back to its baseline of descriptors.
    let t1 = Instant::now();
    while !status_line(&socket, "connections").starts_with("1 live")
        && t1.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A last verification of every cluster against its model.
    for (c, slot) in slots.iter().enumerate() {
        let t1 = Instant::now();
        while mappers(&socket, slot.id) != Some(0) && t1.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = Command::new(&me)
            .args(["client", &slot.id.to_string()])
            .arg(dir.path().join(format!("model-{c}")))
            .args([&o.threads.to_string(), "0", "1"])
            .status()
            .unwrap_or_else(|e| fail(&format!("starting a client: {e}")));
        match classify(st) {
            Outcome::Ok => {}
            Outcome::Mismatch => mismatches += 1,
            Outcome::Failed(why) => {
                eprintln!("final check of cluster {}: {why}", slot.id);
                failures += 1;
            }
        }
    }
    let t1 = Instant::now();
    while !status_line(&socket, "connections").starts_with("1 live")
        && t1.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The cached images hold a memfd each: the cache goes, then nothing else may stay.
    drop_cache();
    // The last `pager status` connection is closed by the pager a moment after it answers: a
    // leak stays, that one goes.
    let t1 = Instant::now();
    while fds(pid) != fds0 && t1.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss1, fds1, list1) = (rss_kib(pid), fds(pid), fd_list(pid));
    let max = samples.iter().copied().max().unwrap_or(rss1);
    let paging = status_line(&socket, "paging slots");
    let _ = pager.kill();
    let _ = pager.wait();
    println!();
    println!("clients started {started}, exited {exited}, killed {killed}; wrong pages {mismatches}; failed clients {failures}");
    println!("pager RSS: {rss0} KiB at start, {rss1} KiB at the end, {max} KiB at most; descriptors {fds0} at start, {fds1} at the end; paging slots {paging}");
    // Flat: after the first half of the run (buffers and caches warmed up), memory may move
    // within 25% + 2 MiB of the first half's peak, not grow beyond.
    let half = samples.len() / 2;
    let first = samples[..half].iter().copied().max().unwrap_or(rss0);
    let second = samples[half..].iter().copied().max().unwrap_or(rss1);
    let grows = half > 0 && second > first + first / 4 + 2048;
    println!(
        "pager RSS peak: {first} KiB in the first half of the run, {second} KiB in the second"
    );
    println!(
        "ratio soak_rss_end_vs_start {:.2}",
        rss1 as f64 / rss0.max(1) as f64
    );
    println!(
        "ratio soak_rss_second_half_vs_first {:.2}",
        second as f64 / first.max(1) as f64
    );
    let _ = std::io::stdout().flush();
    if grows {
        eprintln!("clu-soak: the pager's memory grows");
    }
    if fds1 != fds0 {
        eprintln!(
            "clu-soak: the pager holds {fds1} descriptors, {fds0} before the clients came:\n  before: {list0:?}\n  after:  {list1:?}"
        );
    }
    if mismatches > 0 || failures > 0 || grows || fds1 != fds0 || !paging.starts_with("0 ") {
        eprintln!("clu-soak: FAILED");
        return 1;
    }
    0
}

enum Outcome {
    Ok,
    Mismatch,
    Failed(String),
}

fn classify(st: ExitStatus) -> Outcome {
    match st.code() {
        Some(0) => Outcome::Ok,
        Some(MISMATCH) => Outcome::Mismatch,
        _ => Outcome::Failed(format!("{st}")),
    }
}

// ---- a client: threads of random operations over a model ----

/// The committed versions of a cluster's pages, and a commit's intent.
#[derive(Clone, Default)]
struct Model {
    committed: Vec<u64>,
    intent: Option<Vec<u64>>,
}

impl Model {
    fn load(path: &Path, pages: usize) -> Model {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Model {
                committed: vec![0; pages],
                intent: None,
            };
        };
        let parse = |l: &str| -> Vec<u64> {
            l.split_whitespace()
                .map(|v| v.parse().unwrap_or_else(|_| fail("a damaged model")))
                .collect()
        };
        let mut lines = text.lines();
        let committed = lines.next().map(parse).unwrap_or_else(|| vec![0; pages]);
        let intent = lines.next().map(parse);
        Model { committed, intent }
    }

    fn store(&self, path: &Path) {
        let line = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        let mut text = line(&self.committed);
        if let Some(i) = &self.intent {
            text.push('\n');
            text.push_str(&line(i));
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .unwrap_or_else(|e| fail(&format!("writing the model: {e}")));
    }
}

struct Shared {
    region: Region,
    /// The version each page holds in memory.
    current: Vec<AtomicU64>,
    /// Reads and writes take it shared; commit and abort exclusive.
    gate: RwLock<Model>,
    next: AtomicU64,
    path: PathBuf,
    id: ClusterId,
}

/// Writes version `v`'s pattern into page `p` of the cluster.
fn write_page(s: &Shared, p: usize, v: u64) {
    let mut page = [0u8; PAGE_SIZE];
    fill_pattern(&mut page, v, p as u64);
    s.region.write(p * PAGE_SIZE, &page);
}

/// Whether page `p` of the cluster holds version `v`'s pattern.
fn page_holds(s: &Shared, p: usize, v: u64) -> bool {
    let mut page = [0u8; PAGE_SIZE];
    s.region.read(p * PAGE_SIZE, &mut page);
    check_pattern(&page, v, p as u64)
}

fn client_main(args: &[String]) {
    let [id, model, threads, secs, seed] = args else {
        fail("client ID MODEL THREADS SECONDS SEED");
    };
    let id: ClusterId = id.parse().unwrap_or_else(|e| fail(&format!("{e}")));
    let threads: usize = threads.parse().unwrap_or(1).max(1);
    let secs: u64 = secs.parse().unwrap_or(1);
    let seed: u64 = seed.parse().unwrap_or(1);
    let region = api::map(id, MapMode::ReadWrite).unwrap_or_else(|e| fail(&format!("map: {e}")));
    let pages = region.npages as usize;
    let path = PathBuf::from(model);
    let mut m = Model::load(&path, pages);
    // What storage holds must be the committed state, or the intent of a commit in flight.
    let stored: Vec<u64> = (0..pages)
        .map(|p| {
            let mut page = [0u8; PAGE_SIZE];
            region.read(p * PAGE_SIZE, &mut page);
            let v = seed_of(u64::from_le_bytes(page[..8].try_into().unwrap_or([0; 8])));
            if check_pattern(&page, v, p as u64) {
                v
            } else {
                u64::MAX
            }
        })
        .collect();
    if stored == m.committed {
    } else if m.intent.as_ref() == Some(&stored) {
        m.committed = stored.clone();
    } else {
        let bad = (0..pages)
            .find(|&p| stored[p] != m.committed[p])
            .unwrap_or(0);
        eprintln!(
            "clu-soak: cluster {id} page {bad} holds version {} (u64::MAX: no whole version), the model says {}{}",
            stored[bad],
            m.committed[bad],
            m.intent.as_ref().map_or(String::new(), |i| format!(" or {} (in flight)", i[bad]))
        );
        std::process::exit(MISMATCH);
    }
    m.intent = None;
    m.store(&path);
    if secs == 0 {
        let _ = api::unmap(id);
        return;
    }
    let start = m.committed.iter().copied().max().unwrap_or(0) + 1;
    let shared = Arc::new(Shared {
        region: region.clone(),
        current: m.committed.iter().map(|&v| AtomicU64::new(v)).collect(),
        gate: RwLock::new(m),
        next: AtomicU64::new(start),
        path,
        id,
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let s = shared.clone();
            std::thread::spawn(move || {
                worker(&s, t, threads, pages, deadline, splitmix(seed ^ t as u64))
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            std::process::exit(MISMATCH);
        }
    }
    // Leave in one of three ways: commit then unmap; unmap alone (the last unmap writes
    // back, like a commit); or exit without unmapping, which the pager takes as a death: the
    // uncommitted pages are discarded.
    match seed % 3 {
        0 => {
            commit(&shared);
            let _ = api::unmap(id);
        }
        1 => write_back(&shared, || api::unmap(id)),
        _ => std::process::exit(0),
    }
}

fn commit(s: &Shared) {
    write_back(s, || api::commit(s.id));
}

/// Runs `op` (a commit, or the last unmap) with the model's intent recorded first.
fn write_back(s: &Shared, op: impl FnOnce() -> Result<(), client::CluError>) {
    let mut m = s.gate.write().unwrap_or_else(|e| e.into_inner());
    let now: Vec<u64> = s
        .current
        .iter()
        .map(|v| v.load(Ordering::Relaxed))
        .collect();
    m.intent = Some(now.clone());
    m.store(&s.path);
    match op() {
        Ok(()) => {
            m.committed = now;
            m.intent = None;
            m.store(&s.path);
        }
        Err(e) => fail(&format!("commit: {e}")),
    }
}

fn worker(s: &Shared, t: usize, threads: usize, pages: usize, deadline: Instant, mut rng: u64) {
    let mine: Vec<usize> = (t..pages).step_by(threads).collect();
    while Instant::now() < deadline {
        rng = splitmix(rng);
        let p = mine[(rng >> 16) as usize % mine.len()];
        match rng % 100 {
            0..=54 => {
                let _g = s.gate.read().unwrap_or_else(|e| e.into_inner());
                let v = s.next.fetch_add(1, Ordering::Relaxed);
                write_page(s, p, v);
                s.current[p].store(v, Ordering::Relaxed);
            }
            55..=94 => {
                let _g = s.gate.read().unwrap_or_else(|e| e.into_inner());
                let v = s.current[p].load(Ordering::Relaxed);
                if !page_holds(s, p, v) {
                    eprintln!(
                        "clu-soak: cluster {} page {p} does not hold version {v}",
                        s.id
                    );
                    std::process::exit(MISMATCH);
                }
            }
            95..=97 => commit(s),
            _ => {
                let m = s.gate.write().unwrap_or_else(|e| e.into_inner());
                api::abort(s.id).unwrap_or_else(|e| fail(&format!("abort: {e}")));
                for (cur, &v) in s.current.iter().zip(&m.committed) {
                    cur.store(v, Ordering::Relaxed);
                }
            }
        }
    }
}
