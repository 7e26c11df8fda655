//! Commits versions of the crash test's clusters in a loop, one thread per cluster, and prints
//! `ACK <cluster> <version>` after each commit returns. Killed by the test at a random moment.
//! Even clusters commit with `clu_write` (applied before it returns), odd ones with
//! `clu_commit` (applied by the journal's thread afterwards).
//!
//! Usage: commit-loop ROOT VERSION... (the last verified version of each cluster, in order)

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use client::{CluId, ClusterId, VolId};
use clu_storage::{Storage, StorageConfig};
use clu_tests::{as_batch, as_page_runs, version_runs};
use journal::JournalConfig;

fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().expect("usage: commit-loop ROOT VERSION..."));
    let starts: Vec<u64> = args
        .map(|a| a.parse().expect("versions are numbers"))
        .collect();
    let config = StorageConfig {
        journal: JournalConfig {
            rotate_bytes: 256 << 10,
            sync: true,
            checkpoint_files: 2,
        },
    };
    let storage = Arc::new(Storage::open(&root, config).expect("open the storage root"));
    let threads: Vec<_> = starts
        .into_iter()
        .enumerate()
        .map(|(i, start)| {
            let storage = storage.clone();
            std::thread::spawn(move || {
                let id = ClusterId::new(VolId(1), CluId(i as u16));
                for v in start + 1.. {
                    let runs = version_runs(id.0, v);
                    // Odd clusters take the path that applies after returning.
                    if i % 2 == 1 {
                        storage.clu_commit(id, as_batch(&runs)).expect("commit");
                    } else {
                        storage.clu_write(id, &as_page_runs(&runs)).expect("commit");
                    }
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {i} {v}")
                        .and_then(|()| out.flush())
                        .expect("stdout");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("committer thread");
    }
}
