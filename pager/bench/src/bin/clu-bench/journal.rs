//! `clu-bench journal`: journaled write-back vs plain pwrite+fdatasync (thesis figures 5.1 and
//! 5.2).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use client::{CluId, ClusterKind, PAGE_SIZE};
use clu_storage::{Storage, StorageConfig, Volume, VolumeParams};
use journal::{JournalConfig, PageRun};

use crate::{machine_facts, median};

const SIZES: [usize; 4] = [100, 200, 500, 1000];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
    LogSync,
    LogSyncCheckpoint,
    Plain,
    LogNoSync,
    NoLogNoSync,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::LogSync,
        Config::Plain,
        Config::LogSyncCheckpoint,
        Config::LogNoSync,
        Config::NoLogNoSync,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::LogSync => "Log+Sync",
            Config::LogSyncCheckpoint => "Log+Sync+checkpoint",
            Config::Plain => "plain write+fdatasync",
            Config::LogNoSync => "Log+noSync",
            Config::NoLogNoSync => "noLog+noSync",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    /// One page per commit (figure 5.1).
    Pagewise,
    /// All pages in one commit (figure 5.2).
    Whole,
}

type Key = (Mode, usize, Config);

struct Targets {
    _storages: Vec<Storage>,
    sync: Arc<dyn Volume>,
    nosync: Arc<dyn Volume>,
    clu: CluId,
    raw: File,
    plain: File,
}

fn zero_file(path: &Path, bytes: usize) -> Result<File, Box<dyn std::error::Error>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all_at(&vec![0u8; bytes], 0)?;
    f.sync_all()?;
    Ok(f)
}

fn setup(dir: &Path) -> Result<Targets, Box<dyn std::error::Error>> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let max = SIZES[SIZES.len() - 1];
    let mut storages = Vec::new();
    let mut volumes = Vec::new();
    for (name, sync) in [("sync", true), ("nosync", false)] {
        let storage = Storage::open(
            &dir.join(name),
            StorageConfig {
                journal: JournalConfig {
                    sync,
                    ..JournalConfig::default()
                },
            },
        )?;
        let vol = storage.vol_create("bench", &VolumeParams::default())?.vol;
        let v = storage.vol_mount(vol)?;
        v.clu_create(max as u64, 0, ClusterKind::Protected)?;
        volumes.push(v);
        storages.push(storage);
    }
    let nosync = volumes.pop().ok_or("no volume")?;
    let sync = volumes.pop().ok_or("no volume")?;
    // The cluster files are preallocated; write them once so that every configuration overwrites
    // allocated, written blocks, as the plain reference does.
    let zeros = vec![0u8; max * PAGE_SIZE];
    for v in [&sync, &nosync] {
        v.clu_write(
            CluId(0),
            &[PageRun {
                first_page: 0,
                pages: &zeros,
            }],
        )?;
    }
    Ok(Targets {
        _storages: storages,
        sync,
        nosync,
        clu: CluId(0),
        raw: zero_file(&dir.join("nolog.data"), max * PAGE_SIZE)?,
        plain: zero_file(&dir.join("plain.data"), max * PAGE_SIZE)?,
    })
}

fn measure(t: &Targets, key: Key, data: &[u8]) -> Result<f64, Box<dyn std::error::Error>> {
    let (mode, n, config) = key;
    // One n-page commit is well under a millisecond: time several back to back and report the
    // mean per commit, so that a sample is not one timer tick of noise.
    let reps = if mode == Mode::Whole {
        (2000 / n).max(1)
    } else {
        1
    };
    // Every sample, ours or the reference, starts from a quiesced machine: the volume is
    // checkpointed and no dirty page of an earlier sample (the no-sync configurations leave
    // megabytes) is left for the kernel to write back in the middle of this one.
    t.sync.checkpoint()?;
    nix::unistd::sync();
    let start = Instant::now();
    for _ in 0..reps {
        write_once(t, key, data)?;
    }
    if config == Config::LogSyncCheckpoint {
        // The whole cost: the cluster files are durable too, as after the thesis's operation.
        t.sync.checkpoint()?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

fn write_once(t: &Targets, key: Key, data: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let (mode, n, config) = key;
    let page = |i: usize| &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
    match (config, mode) {
        (Config::LogSync | Config::LogSyncCheckpoint | Config::LogNoSync, Mode::Pagewise) => {
            let v = if config == Config::LogNoSync {
                &t.nosync
            } else {
                &t.sync
            };
            for i in 0..n {
                v.clu_write(
                    t.clu,
                    &[PageRun {
                        first_page: i as u64,
                        pages: page(i),
                    }],
                )?;
            }
        }
        (Config::LogSync | Config::LogSyncCheckpoint | Config::LogNoSync, Mode::Whole) => {
            let v = if config == Config::LogNoSync {
                &t.nosync
            } else {
                &t.sync
            };
            v.clu_write(
                t.clu,
                &[PageRun {
                    first_page: 0,
                    pages: &data[..n * PAGE_SIZE],
                }],
            )?;
        }
        (Config::Plain, Mode::Pagewise) => {
            for i in 0..n {
                t.plain.write_all_at(page(i), (i * PAGE_SIZE) as u64)?;
                t.plain.sync_data()?;
            }
        }
        (Config::Plain, Mode::Whole) => {
            t.plain.write_all_at(&data[..n * PAGE_SIZE], 0)?;
            t.plain.sync_data()?;
        }
        (Config::NoLogNoSync, Mode::Pagewise) => {
            for i in 0..n {
                t.raw.write_all_at(page(i), (i * PAGE_SIZE) as u64)?;
            }
        }
        (Config::NoLogNoSync, Mode::Whole) => t.raw.write_all_at(&data[..n * PAGE_SIZE], 0)?,
    }
    Ok(())
}

pub fn run(quick: bool, runs: Option<usize>, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let runs = runs.unwrap_or(if quick { 5 } else { 11 }).max(1);
    let t = setup(dir)?;
    println!("{}", machine_facts());
    println!(
        "scratch: {} ({} runs of each case, configurations interleaved)",
        dir.display(),
        runs
    );
    println!("pagewise: time to write N pages one per commit; whole: time of one N-page commit (mean of back-to-back commits)");
    println!(
        "Log+Sync: commit latency (validated in the log, applied, cluster files not yet synced);"
    );
    println!("Log+Sync+checkpoint: the same plus the checkpoint that syncs the cluster files (total cost)");
    let max = SIZES[SIZES.len() - 1];
    let mut times: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        // Fresh page images every run, so that nothing is a no-op rewrite.
        let data: Vec<u8> = (0..max * PAGE_SIZE)
            .map(|i| (i / 7 + run * 31) as u8)
            .collect();
        for mode in [Mode::Pagewise, Mode::Whole] {
            for n in SIZES {
                for config in Config::ALL {
                    let ms = measure(&t, (mode, n, config), &data)?;
                    times.entry((mode, n, config)).or_default().push(ms);
                }
            }
        }
    }
    println!();
    println!(
        "{:<9} {:>5}  {:<22} {:>10} {:>10} {:>10} {:>11}",
        "mode", "pages", "configuration", "median ms", "min ms", "max ms", "vs plain"
    );
    let mut ratios = Vec::new();
    for ((mode, n, config), v) in &times {
        let plain = &times[&(*mode, *n, Config::Plain)];
        // Ratio per run (the two were measured next to each other), then the median.
        let mut per_run: Vec<f64> = v.iter().zip(plain).map(|(a, b)| a / b).collect();
        let ratio = median(&mut per_run);
        let (min, max) = v
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let mut s = v.clone();
        println!(
            "{:<9} {:>5}  {:<22} {:>10.2} {:>10.2} {:>10.2} {:>11.2}",
            format!("{mode:?}").to_lowercase(),
            n,
            config.name(),
            median(&mut s),
            min,
            max,
            ratio
        );
        let m = if *mode == Mode::Whole {
            "commit"
        } else {
            "pagewise"
        };
        match config {
            Config::LogSync => ratios.push((format!("journal_{m}_{n}_vs_plain"), ratio)),
            Config::LogSyncCheckpoint => {
                ratios.push((format!("journal_checkpointed_{m}_{n}_vs_plain"), ratio))
            }
            Config::LogNoSync => ratios.push((format!("journal_nosync_{m}_{n}_vs_plain"), ratio)),
            _ => {}
        }
    }
    // The thesis's factors: Log+Sync against noLog+noSync (x7 pagewise, x2 whole).
    for mode in [Mode::Pagewise, Mode::Whole] {
        let a = &times[&(mode, 100, Config::LogSync)];
        let b = &times[&(mode, 100, Config::NoLogNoSync)];
        let mut per_run: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        let m = if mode == Mode::Whole {
            "commit"
        } else {
            "pagewise"
        };
        ratios.push((
            format!("journal_{m}_100_log_vs_nolog"),
            median(&mut per_run),
        ));
    }
    println!();
    for (name, value) in &ratios {
        println!("ratio {name} {value:.3}");
    }
    drop(t);
    let _ = fs::remove_dir_all(dir);
    Ok(())
}
