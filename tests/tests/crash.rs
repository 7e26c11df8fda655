//! Crash test of the journal and the storage service: a real process commits in a loop, is
//! killed with SIGKILL at random moments (during commits, rotations, checkpoints, even its own
//! recovery), and after each kill every cluster file must equal exactly one committed version,
//! no older than the last acknowledged one.
//!
//! Rounds: 200 by default, `CLU_CRASH_ROUNDS` to change.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{CluId, ClusterId, ClusterKind, VolId, PAGE_SIZE};
use clu_storage::{Storage, StorageConfig, VolumeParams};
use clu_tests::{image_after, splitmix, CLUSTER_PAGES};
use journal::JournalConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CLUSTERS: usize = 4;

fn config() -> StorageConfig {
    StorageConfig {
        journal: JournalConfig {
            rotate_bytes: 256 << 10,
            sync: true,
            checkpoint_files: 2,
        },
    }
}

#[test]
fn sigkill_at_random_moments_never_tears_or_loses_a_commit() {
    let rounds: usize = std::env::var("CLU_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path();
    {
        let s = Storage::open(root, config()).unwrap();
        let v = s.vol_create("crash", &VolumeParams::default()).unwrap().vol;
        s.vol_mount(v).unwrap();
        for _ in 0..CLUSTERS {
            s.clu_create(v, CLUSTER_PAGES as u64, 0, ClusterKind::Protected)
                .unwrap();
        }
        s.close().unwrap();
    }
    let mut versions = [0u64; CLUSTERS];
    let mut seed = splitmix(std::process::id() as u64 ^ 0x5eed);
    let (mut acked_total, mut in_flight_survived) = (0u64, 0u64);
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_commit-loop"))
            .arg(root)
            .args(versions.iter().map(u64::to_string))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let acked = Arc::new(Mutex::new(versions));
        let reader = {
            let acked = acked.clone();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let line = line.unwrap();
                    let f: Vec<&str> = line.split_whitespace().collect();
                    assert_eq!(f[0], "ACK", "unexpected output: {line}");
                    let (c, v): (usize, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                    let mut a = acked.lock().unwrap();
                    assert_eq!(v, a[c] + 1, "cluster {c}: versions must be acked in order");
                    a[c] = v;
                }
            })
        };
        seed = splitmix(seed);
        // From 0 (kill during start-up and recovery) to 60 ms (many commits, rotations).
        std::thread::sleep(Duration::from_micros(seed % 60_000));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = *acked.lock().unwrap();

        let s = Storage::open(root, config())
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        for c in 0..CLUSTERS {
            let id = ClusterId::new(VolId(1), CluId(c as u16));
            let mut img = vec![0u8; CLUSTER_PAGES * PAGE_SIZE];
            s.clu_read(id, 0, &mut img).unwrap();
            // Exactly one committed version: the last acked, or the one in flight at the kill.
            let found = [acked[c], acked[c] + 1]
                .into_iter()
                .find(|&v| img == image_after(id.0, v));
            let Some(v) = found else {
                let older = (0..acked[c]).rev().find(|&v| img == image_after(id.0, v));
                panic!(
                    "round {round}, cluster {c}: image is no committed version in [{}, {}] (matches older version {older:?}: {})",
                    acked[c],
                    acked[c] + 1,
                    if older.is_some() { "an acknowledged commit was lost" } else { "torn" }
                );
            };
            if v > acked[c] {
                in_flight_survived += 1;
            }
            acked_total += acked[c] - versions[c];
            versions[c] = v;
        }
        s.close().unwrap();
    }
    eprintln!(
        "crash test: {rounds} rounds, {acked_total} acknowledged commits verified, \
         {in_flight_survived} unacknowledged in-flight commits found validated, 0 torn, 0 lost"
    );
    assert!(
        acked_total > rounds as u64,
        "the child committed too little to test anything: {acked_total}"
    );
}
