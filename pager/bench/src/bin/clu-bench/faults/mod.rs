//! `clu-bench faults`: the pager's fault paths against the Linux kernel's own file pager (`mmap`
//! of the same file through the page cache), `msync`, and a bare userfaultfd resolver, measured
//! side by side in one run (thesis chapter V; digest section 3).
//!
//! The program starts its own pager on a scratch root and is its client. Each run goes through
//! every case, ours and the reference next to each other, once with the threads left to the
//! scheduler and once with the pager and this process pinned to CPU 0. It prints a table
//! (median, min, max over the runs), `ratio NAME VALUE` lines, and writes a CSV and an SVG plot.

mod floor;
mod report;
mod summary;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{api, ClusterId, ClusterKind, MapMode, Region, PAGE_SIZE};
use clu_sys::mem::Mapping;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use report::Samples;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Options of `clu-bench faults`.
#[derive(clap::Args)]
pub struct Args {
    /// Smaller sizes and 5 runs (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Runs of each case (default 7, 5 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Scratch directory for the pager's storage root (wiped first).
    #[arg(long, default_value = "target/bench-scratch/faults")]
    dir: PathBuf,
    /// Where the CSV and the SVG plot go.
    #[arg(long, default_value = "target/bench-results")]
    results: PathBuf,
    /// The pager's `--spin-us` (how long its fault threads poll before sleeping).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
}

/// Options of the hidden child of the concurrency row.
#[derive(clap::Args)]
pub struct ChildArgs {
    /// The cluster to read.
    #[arg(long)]
    id: ClusterId,
    /// Instead: load every page, then time a first write to each and a commit; print
    /// `US_PER_PAGE COMMIT_MS`.
    #[arg(long)]
    first_write: bool,
    /// Instead: map the cluster, read every page, say `ready`, and keep it mapped until
    /// stdin closes (the image stays resident, mapped by another process).
    #[arg(long)]
    hold: bool,
    /// Instead: write the first N pages and commit them, 300 times over, and print the median
    /// commit in ms (for profiling the commit path with `perf record`).
    #[arg(long, value_name = "N")]
    commit_loop: Option<u64>,
}

struct Sizes {
    /// Pages of the per-fault cases.
    fault: u64,
    /// Pages of the sequential and random traversals.
    scan: u64,
    /// Pages each client reads in the concurrency row.
    conc: u64,
}

const PINS: [(&str, Option<usize>); 2] = [("unpinned", None), ("pinned", Some(0))];

/// The CPUs this program may use, as found before it pins anything (afterwards
/// `available_parallelism` reports the pinned set).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the CPU affinity of every thread of `pid` (threads created later inherit it).
fn pin(pid: u32, cpu: Option<usize>) {
    let mut set = CpuSet::new();
    for c in 0..cpus() {
        if cpu.map_or(true, |x| x == c) {
            let _ = set.set(c);
        }
    }
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                let _ = sched_setaffinity(Pid::from_raw(tid), &set);
            }
        }
    }
}

/// Mean microseconds per page of touching each page of `r` in `order`.
fn touch(r: &Region, order: &[u64], write: u8) -> f64 {
    let t = Instant::now();
    for &p in order {
        let at = p as usize * PAGE_SIZE;
        if write == 0 {
            std::hint::black_box(r.read_u8(at));
        } else {
            r.write_u8(at, write);
        }
    }
    t.elapsed().as_secs_f64() * 1e6 / order.len().max(1) as f64
}

/// The same over a mapping of a plain file by the kernel.
fn touch_file(file: &File, order: &[u64], write: u8) -> Res<f64> {
    let len = file.metadata()?.len() as usize;
    let m = Mapping::file(file.as_fd(), 0, len, write != 0)?;
    let t = Instant::now();
    for &p in order {
        let at = p as usize * PAGE_SIZE;
        if write == 0 {
            std::hint::black_box(m.read_u8(at));
        } else {
            m.write_u8(at, write);
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / order.len().max(1) as f64)
}

/// A new, empty scratch file.
fn scratch_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Drops `file` from the page cache (after writing back what is dirty).
fn drop_cache(file: &File) -> Res<()> {
    file.sync_all()?;
    posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )?;
    Ok(())
}

/// Reads `file` whole, so that the page cache holds it (the `warm` cases).
fn warm(file: &File) -> Res<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    Ok(())
}

/// Drops the pager's cached image of `id` (`pager cache drop ID`): the next map starts from
/// storage.
fn uncache(id: ClusterId) -> Res<()> {
    api::admin(vec!["cache".into(), "drop".into(), id.to_string()]).map_err(cerr)?;
    Ok(())
}

/// The page cache and shmem in use (`Cached` in /proc/meminfo counts both), in bytes.
fn cached_bytes() -> Res<u64> {
    let info = fs::read_to_string("/proc/meminfo")?;
    let kb = info
        .lines()
        .find_map(|l| l.strip_prefix("Cached:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or("no Cached: line in /proc/meminfo")?;
    Ok(kb * 1024)
}

/// Microseconds per page of mapping `id` and touching its pages in `order` (the map counted).
fn map_touch(id: ClusterId, mode: MapMode, order: &[u64]) -> Res<(f64, Region)> {
    let t = Instant::now();
    let r = api::map(id, mode).map_err(cerr)?;
    touch(&r, order, 0);
    Ok((
        t.elapsed().as_secs_f64() * 1e6 / order.len().max(1) as f64,
        r,
    ))
}

/// The same with the kernel: `mmap` of `file` and a traversal (the mmap counted).
fn mmap_touch(file: &File, order: &[u64]) -> Res<f64> {
    let t = Instant::now();
    let len = file.metadata()?.len() as usize;
    let m = Mapping::file(file.as_fd(), 0, len, false)?;
    for &p in order {
        std::hint::black_box(m.read_u8(p as usize * PAGE_SIZE));
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / order.len().max(1) as f64)
}

fn permutation(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn cerr(e: client::CluError) -> Box<dyn std::error::Error> {
    e.to_string().into()
}

struct Bench {
    pager: Child,
    root: PathBuf,
    sizes: Sizes,
    s: Samples,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.pager.kill();
        let _ = self.pager.wait();
    }
}

/// A committed cluster of `npages` pages, not mapped, and its storage file.
fn prepared(root: &Path, npages: u64) -> Res<(ClusterId, File)> {
    let (id, r) = api::create_map(1, npages, ClusterKind::Shareable).map_err(cerr)?;
    touch(&r, &(0..npages).collect::<Vec<_>>(), 7);
    api::commit(id).map_err(cerr)?;
    api::unmap(id).map_err(cerr)?;
    let path = root.join(format!("vol-{}/clusters/{:04x}.data", id.vol(), id.clu().0));
    Ok((id, OpenOptions::new().read(true).write(true).open(path)?))
}

impl Bench {
    fn key(pin: &str, who: &str, case: &str) -> String {
        format!("{pin}/{who}/{case}")
    }

    fn fault_cases(
        &mut self,
        pin: &str,
        a: ClusterId,
        scan: &(ClusterId, File),
        evict: &(ClusterId, File),
        scratch: &Path,
    ) -> Res<()> {
        let n = self.sizes.fault;
        let all: Vec<u64> = (0..n).collect();
        let k = |who: &str, case: &str| Self::key(pin, who, case);

        // The floor, then ours: a fault served from memory (one fault per read-around block:
        // the touched pages are 16 apart, so each touch is one fault), a first write to a
        // clean page.
        let (floor_read, floor_write) = floor::measure(n)?;
        self.s.add(&k("floor", "fault"), floor_read);
        self.s.add(&k("floor", "first_write"), floor_write);
        // Only the touched pages are unmapped (their neighbours stay mapped), so that each
        // touch is one fault even though a fault on a resident page maps the resident block
        // around it.
        uncache(a)?;
        let r = api::map(a, MapMode::ReadWrite).map_err(cerr)?;
        touch(&r, &all, 0);
        let strided: Vec<u64> = (0..n).step_by(16).collect();
        for &p in &strided {
            r.drop_pte(p as usize * PAGE_SIZE)?;
        }
        self.s.add(&k("pager", "fault"), touch(&r, &strided, 0));
        touch(&r, &all, 0);
        self.s.add(&k("pager", "first_write"), touch(&r, &all, 9));
        api::abort(a).map_err(cerr)?;
        api::unmap(a).map_err(cerr)?;

        // page_init: first touch of a page of a new cluster vs of a new page of a file mapping.
        let (id, r) = api::create_map(1, n, ClusterKind::Shareable).map_err(cerr)?;
        self.s.add(&k("pager", "page_init"), touch(&r, &all, 1));
        api::abort(id).map_err(cerr)?;
        api::unmap(id).map_err(cerr)?;
        let _ = api::admin(vec!["clu".into(), "destroy".into(), id.to_string()]);
        let path = scratch.join("page_init");
        let f = scratch_file(&path)?;
        f.set_len(n * PAGE_SIZE as u64)?;
        self.s
            .add(&k("kernel", "page_init"), touch_file(&f, &all, 1)?);
        drop(f);
        fs::remove_file(&path)?;

        // Traversals of a cluster whose image is not resident (its cached image dropped), with
        // the storage file in the page cache (warm) or dropped from it (cold).
        let cases: [(&str, &(ClusterId, File), bool, bool); 6] = [
            ("evicted_warm", evict, false, false),
            ("evicted_cold", evict, false, true),
            ("seq_warm", scan, false, false),
            ("seq_cold", scan, false, true),
            ("rand_warm", scan, true, false),
            ("rand_cold", scan, true, true),
        ];
        for (case, (id, file), random, cold) in cases {
            let npages = file.metadata()?.len() / PAGE_SIZE as u64;
            let order = if random {
                permutation(npages, 0x9e37_79b9)
            } else {
                (0..npages).collect()
            };
            // The image not resident (the site cache dropped); the file in the page cache
            // (warm) or not (cold), the same for both.
            uncache(*id)?;
            if cold {
                drop_cache(file)?;
            } else {
                warm(file)?;
            }
            let r = api::map(*id, MapMode::ReadOnly).map_err(cerr)?;
            self.s.add(&k("pager", case), touch(&r, &order, 0));
            api::unmap(*id).map_err(cerr)?;
            if cold {
                drop_cache(file)?;
            } else {
                warm(file)?;
            }
            self.s.add(&k("kernel", case), touch_file(file, &order, 0)?);
        }

        // The image resident: mapped by another process (resident_*), or cached after this
        // process unmapped it (remap_after_unmap); against mmap of the file in the page cache.
        // The map (mmap) is counted on both sides.
        let (id, file) = scan;
        let npages = file.metadata()?.len() / PAGE_SIZE as u64;
        let seq: Vec<u64> = (0..npages).collect();
        let rand = permutation(npages, 0x1234_5678);
        let exe = std::env::current_exe()?;
        let mut holder = Command::new(&exe)
            .args(["faults-child", "--hold", "--id", &id.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().ok_or("holder stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("holder: {line}").into());
        }
        for (case, order) in [("resident_seq", &seq), ("resident_rand", &rand)] {
            let (us, _r) = map_touch(*id, MapMode::ReadOnly, order)?;
            api::unmap(*id).map_err(cerr)?;
            self.s.add(&k("pager", case), us);
            warm(file)?;
            self.s.add(&k("kernel", case), mmap_touch(file, order)?);
        }
        drop(holder.stdin.take());
        holder.wait()?;
        // Now cached only (the holder unmapped last): map again, traverse.
        let (us, _r) = map_touch(*id, MapMode::ReadOnly, &seq)?;
        api::unmap(*id).map_err(cerr)?;
        self.s.add(&k("pager", "remap_after_unmap"), us);
        Ok(())
    }

    fn once_cases(
        &mut self,
        run: usize,
        commit: ClusterId,
        scratch: &Path,
        conc: &[(ClusterId, File)],
        hist: &[(ClusterId, File); 2],
        fw: ClusterId,
    ) -> Res<()> {
        let k = |who: &str, case: &str| Self::key("unpinned", who, case);
        // What a cold traversal costs in memory: page cache and shmem growth over the data.
        let (id, file) = &hist[1];
        let npages = file.metadata()?.len() / PAGE_SIZE as u64;
        let all: Vec<u64> = (0..npages).collect();
        let data = (npages * PAGE_SIZE as u64) as f64;
        uncache(*id)?;
        drop_cache(file)?;
        let before = cached_bytes()?;
        let r = api::map(*id, MapMode::ReadOnly).map_err(cerr)?;
        touch(&r, &all, 0);
        let grown = cached_bytes()?.saturating_sub(before) as f64;
        api::unmap(*id).map_err(cerr)?;
        drop(r);
        self.s.add(&k("pager", "footprint"), grown / data);
        uncache(*id)?;
        drop_cache(file)?;
        let before = cached_bytes()?;
        touch_file(file, &all, 0)?;
        let grown = cached_bytes()?.saturating_sub(before) as f64;
        self.s.add(&k("kernel", "footprint"), grown / data);
        // Write one byte in every page of a cluster loaded from storage (file in the page
        // cache, image not resident), then make it durable: commit vs mmap write + msync.
        warm(file)?;
        let t = Instant::now();
        let r = api::map(*id, MapMode::ReadWrite).map_err(cerr)?;
        touch(&r, &all, (run as u8) | 1);
        api::commit(*id).map_err(cerr)?;
        self.s.add(
            &k("pager", "write_persist"),
            t.elapsed().as_secs_f64() * 1e6 / npages as f64,
        );
        api::unmap(*id).map_err(cerr)?;
        drop(r);
        uncache(*id)?;
        warm(file)?;
        let t = Instant::now();
        let len = file.metadata()?.len() as usize;
        let m = Mapping::file(file.as_fd(), 0, len, true)?;
        for &p in &all {
            m.write_u8(p as usize * PAGE_SIZE, (run as u8) | 1);
        }
        m.sync_range(0, len)?;
        self.s.add(
            &k("kernel", "write_persist"),
            t.elapsed().as_secs_f64() * 1e6 / npages as f64,
        );
        drop(m);
        // Thesis chapter VIII: a repeated random-order traversal, storage cold, with the access
        // history of the previous use replayed as prefetch, and with it forgotten.
        for (i, (id, file)) in hist.iter().enumerate() {
            let npages = file.metadata()?.len() / PAGE_SIZE as u64;
            let order = permutation(npages, 0x5eed_1234);
            let case = if i == 0 { "history_on" } else { "history_off" };
            if i == 1 {
                api::admin(vec![
                    "clu".into(),
                    "history".into(),
                    id.to_string(),
                    "--clear".into(),
                ])
                .map_err(cerr)?;
            }
            uncache(*id)?;
            drop_cache(file)?;
            let r = api::map(*id, MapMode::ReadOnly).map_err(cerr)?;
            self.s.add(&k("pager", case), touch(&r, &order, 0));
            api::unmap(*id).map_err(cerr)?;
        }
        // Thesis row 1: create, map, one fault from storage, of a 20-page cluster.
        let t = Instant::now();
        let (id, r) = api::create_map(1, 20, ClusterKind::Shareable).map_err(cerr)?;
        self.s
            .add(&k("pager", "create_ms"), t.elapsed().as_secs_f64() * 1e3);
        touch(&r, &(0..20).collect::<Vec<_>>(), 3);
        api::commit(id).map_err(cerr)?;
        api::unmap(id).map_err(cerr)?;
        let t = Instant::now();
        let r = api::map(id, MapMode::ReadWrite).map_err(cerr)?;
        self.s
            .add(&k("pager", "map_ms"), t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        touch(&r, &[0], 0);
        self.s
            .add(&k("pager", "fault_ms"), t.elapsed().as_secs_f64() * 1e3);
        api::unmap(id).map_err(cerr)?;
        let _ = api::admin(vec!["clu".into(), "destroy".into(), id.to_string()]);

        // Commit of 1, 100 and 1000 dirty pages vs msync(MS_SYNC) of the same pages.
        let r = api::map(commit, MapMode::ReadWrite).map_err(cerr)?;
        let path = scratch.join("msync");
        let f = scratch_file(&path)?;
        f.set_len(1000 * PAGE_SIZE as u64)?;
        f.write_all_at_zero()?;
        let m = Mapping::file(f.as_fd(), 0, 1000 * PAGE_SIZE, true)?;
        for (i, n) in [1u64, 100, 1000].into_iter().enumerate() {
            let v = (run * 3 + i) as u8 | 1;
            touch(&r, &(0..n).collect::<Vec<_>>(), v);
            let t = Instant::now();
            api::commit(commit).map_err(cerr)?;
            self.s.add(
                &k("pager", &format!("commit_{n}")),
                t.elapsed().as_secs_f64() * 1e3,
            );
            for p in 0..n as usize {
                m.write_u8(p * PAGE_SIZE, v);
            }
            let t = Instant::now();
            m.sync_range(0, n as usize * PAGE_SIZE)?;
            self.s.add(
                &k("kernel", &format!("commit_{n}")),
                t.elapsed().as_secs_f64() * 1e3,
            );
        }
        drop(m);
        drop(f);
        fs::remove_file(&path)?;
        api::unmap(commit).map_err(cerr)?;

        // First writes to clean pages in write-protect-async mode, beside the default mode, in
        // client processes of their own (the mode is chosen when a process's uffd is made).
        let exe = std::env::current_exe()?;
        for (case, env) in [("sync", "0"), ("async", "1")] {
            let out = Command::new(&exe)
                .args(["faults-child", "--first-write", "--id", &fw.to_string()])
                .env(client::WP_ASYNC_ENV, env)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut v = text
                .split_whitespace()
                .filter_map(|x| x.parse::<f64>().ok());
            match (v.next(), v.next()) {
                (Some(us), Some(ms)) => {
                    self.s.add(&k("pager", &format!("first_write_{case}")), us);
                    self.s.add(&k("pager", &format!("commit_after_{case}")), ms);
                }
                _ => {
                    return Err(format!(
                        "first-write child ({case}): {text}{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                    .into())
                }
            }
        }

        // Concurrency: 1, 2 and 4 client processes, each reading its own cluster.
        for c in [1usize, 2, 4] {
            // Each client's cluster from storage (the file in the page cache), not cached:
            // the row measures the fault path, not reads of memory already mapped.
            for (id, file) in &conc[..c] {
                uncache(*id)?;
                warm(file)?;
            }
            let mut kids: Vec<Child> = conc[..c]
                .iter()
                .map(|(id, _)| {
                    Command::new(&exe)
                        .args(["faults-child", "--id", &id.to_string()])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                })
                .collect::<Result<_, _>>()?;
            let mut outs: Vec<BufReader<std::process::ChildStdout>> = Vec::new();
            for kid in &mut kids {
                let mut out = BufReader::new(kid.stdout.take().ok_or("child stdout")?);
                let mut line = String::new();
                out.read_line(&mut line)?;
                if line.trim() != "ready" {
                    return Err(format!("concurrency child: {line}").into());
                }
                outs.push(out);
            }
            let t = Instant::now();
            for kid in &mut kids {
                kid.stdin.take().ok_or("child stdin")?.write_all(b"go\n")?;
            }
            for out in &mut outs {
                let mut line = String::new();
                out.read_line(&mut line)?;
            }
            let secs = t.elapsed().as_secs_f64();
            for mut kid in kids {
                kid.wait()?;
            }
            self.s.add(
                &k("pager", &format!("conc_{c}")),
                (c as u64 * self.sizes.conc) as f64 / secs,
            );
        }
        Ok(())
    }
}

trait ZeroFill {
    fn write_all_at_zero(&self) -> std::io::Result<()>;
}
impl ZeroFill for File {
    fn write_all_at_zero(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = self.metadata()?.len() as usize;
        self.write_all_at(&vec![0u8; len], 0)?;
        self.sync_all()
    }
}

/// The hidden child of the concurrency row: maps, says `ready`, waits for a line, reads every
/// page, says `done`.
pub fn child(args: &ChildArgs) -> Res<()> {
    if let Some(n) = args.commit_loop {
        let r = api::map(args.id, MapMode::ReadWrite).map_err(cerr)?;
        let pages: Vec<u64> = (0..n.min(r.npages)).collect();
        let mut ms = Vec::new();
        let rounds = if n >= 10000 { 3 } else { 300 };
        for i in 0..rounds {
            let t = Instant::now();
            touch(&r, &pages, (i as u8) | 1);
            let touched = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            api::commit(args.id).map_err(cerr)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            if rounds < 10 {
                println!("writes {touched:.1} ms, commit {:.1} ms", ms[ms.len() - 1]);
            }
        }
        println!(
            "commit of {} pages: median {:.3} ms",
            pages.len(),
            crate::median(&mut ms)
        );
        api::unmap(args.id).map_err(cerr)?;
        return Ok(());
    }
    if args.hold {
        let r = api::map(args.id, MapMode::ReadOnly).map_err(cerr)?;
        touch(&r, &(0..r.npages).collect::<Vec<_>>(), 0);
        println!("ready");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        api::unmap(args.id).map_err(cerr)?;
        return Ok(());
    }
    if args.first_write {
        let r = api::map(args.id, MapMode::ReadWrite).map_err(cerr)?;
        let all: Vec<u64> = (0..r.npages).collect();
        touch(&r, &all, 0);
        let us = touch(&r, &all, 0x33);
        let t = Instant::now();
        api::commit(args.id).map_err(cerr)?;
        println!("{us} {}", t.elapsed().as_secs_f64() * 1e3);
        api::unmap(args.id).map_err(cerr)?;
        return Ok(());
    }
    let r = api::map(args.id, MapMode::ReadOnly).map_err(cerr)?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    touch(&r, &(0..r.npages).collect::<Vec<_>>(), 0);
    println!("done");
    std::io::stdout().flush()?;
    api::unmap(args.id).map_err(cerr)?;
    Ok(())
}

pub(crate) fn start_pager(dir: &Path, spin_us: u64) -> Res<(Child, PathBuf, PathBuf)> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let root = dir.join("root");
    let socket = dir.join("pager.sock");
    let exe = std::env::current_exe()?;
    let pager_bin = exe.parent().ok_or("exe dir")?.join("pager");
    let mut child = Command::new(&pager_bin)
        .args(["serve", "--resident-pages", "262144", "--spin-us"])
        .arg(spin_us.to_string())
        .arg("--root")
        .arg(&root)
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", pager_bin.display()))?;
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(st) = child.try_wait()? {
            return Err(format!("the pager exited: {st}").into());
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err("the pager did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((child, root, socket))
}

/// `clu-bench faults`.
pub fn run(args: &Args) -> Res<()> {
    let runs = args.runs.unwrap_or(if args.quick { 5 } else { 7 }).max(1);
    let sizes = if args.quick {
        Sizes {
            fault: 512,
            scan: 8192,
            conc: 4096,
        }
    } else {
        Sizes {
            fault: 2048,
            scan: 65536,
            conc: 16384,
        }
    };
    let _ = cpus();
    let (pager, root, socket) = start_pager(&args.dir, args.spin_us)?;
    // SAFETY: single-threaded here: no other thread reads the environment yet.
    std::env::set_var(client::SOCKET_ENV, &socket);
    let scratch = args.dir.join("scratch");
    fs::create_dir_all(&scratch)?;
    let mut b = Bench {
        pager,
        root,
        sizes,
        s: Samples::default(),
    };
    println!("{}", crate::machine_facts());
    println!(
        "{} runs; per-fault cases {} pages, traversals {} MiB, concurrency {} pages per client",
        runs,
        b.sizes.fault,
        (b.sizes.scan * PAGE_SIZE as u64) >> 20,
        b.sizes.conc
    );
    let a = prepared(&b.root, b.sizes.fault)?.0;
    let scan = prepared(&b.root, b.sizes.scan)?;
    let evict = prepared(&b.root, 100)?;
    let commit = prepared(&b.root, 1000)?.0;
    let hist = [
        prepared(&b.root, b.sizes.scan)?,
        prepared(&b.root, b.sizes.scan)?,
    ];
    let fw = prepared(&b.root, b.sizes.fault)?.0;
    let conc: Vec<(ClusterId, File)> = (0..4)
        .map(|_| prepared(&b.root, b.sizes.conc))
        .collect::<Res<_>>()?;
    for run in 0..runs {
        for (name, cpu) in PINS {
            pin(b.pager.id(), cpu);
            pin(std::process::id(), cpu);
            b.fault_cases(name, a, &scan, &evict, &scratch)?;
        }
        pin(b.pager.id(), None);
        pin(std::process::id(), None);
        b.once_cases(run, commit, &scratch, &conc, &hist, fw)?;
        eprint!("run {}/{runs}\r", run + 1);
    }
    eprintln!();
    summary::report(&b.s, &args.results)
}
