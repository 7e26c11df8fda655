//! Crash campaign: four client processes commit in loops to shared and separate clusters while
//! the pager (first test) or some of the clients (second test) are killed with SIGKILL at random
//! moments. After each kill, the storage image of every writer's pages must hold one whole
//! version, no older than the last one that writer saw acknowledged (else it is *lost*) and no
//! newer than the one it was committing (else, or if its pages mix versions, it is *torn*).
//!
//! The writers: A and B each own a 48-page cluster; S1 and S2 share a 96-page cluster, each
//! writing its own half, serialised by a file lock around fill + commit (the application's
//! synchronisation: without it a commit of S captures the other writer's half mid-fill). The
//! resident budget is 64 pages for 192 mapped: commits also take pages from the paging partition.
//!
//! Rounds: 20 per test by default; `CLU_CAMPAIGN_ROUNDS=1000` for the campaign of the docs
//! (`scripts/campaign`). Each test prints its torn and lost counts.

use std::path::Path;
use std::time::{Duration, Instant};

use clu_tests::harness::{Pager, Tool};
use clu_tests::splitmix;

/// One writer: its cluster, its pages, and what it saw acknowledged.
struct Writer {
    name: &'static str,
    cluster: usize,
    first: u64,
    pages: u64,
    /// Writers killed together (both writers of a shared cluster: see the module comment).
    unit: usize,
    acked: u64,
    tool: Option<Tool>,
}

#[derive(Default)]
struct Tally {
    rounds: u64,
    acked: u64,
    checks: u64,
    in_flight_found: u64,
    torn: u64,
    lost: u64,
}

fn rounds() -> u64 {
    std::env::var("CLU_CAMPAIGN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn setup(root: &Path) -> (Pager, Vec<String>, Vec<Writer>) {
    let pager = Pager::start(root, 64);
    let mut t = Tool::start(&pager);
    let ids: Vec<String> = [48, 48, 96]
        .iter()
        .map(|n| {
            let id = t
                .ok(&format!("create {n}"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            t.ok(&format!("unmap {id}"));
            id
        })
        .collect();
    let w = |name, cluster, first, pages, unit| Writer {
        name,
        cluster,
        first,
        pages,
        unit,
        acked: 0,
        tool: None,
    };
    let writers = vec![
        w("A", 0, 0, 48, 0),
        w("B", 1, 0, 48, 1),
        w("S1", 2, 0, 48, 2),
        w("S2", 2, 48, 48, 2),
    ];
    (pager, ids, writers)
}

fn start_writer(pager: &Pager, ids: &[String], lock: &Path, w: &mut Writer) {
    let mut t = Tool::start(pager);
    let id = &ids[w.cluster];
    t.ok(&format!("map {id}"));
    let lock = if w.cluster == 2 {
        lock.to_str().unwrap()
    } else {
        ""
    };
    t.send(&format!(
        "loop {id} {} {} {} {lock}",
        w.acked + 1,
        w.first,
        w.pages
    ));
    w.tool = Some(t);
}

fn note_acks(line: &str, name: &str, acked: &mut u64, tally: &mut Tally) {
    if let Some(v) = line.strip_prefix("acked ") {
        let v: u64 = v.parse().expect("a version");
        assert_eq!(v, *acked + 1, "writer {name} acknowledged out of order");
        *acked = v;
        tally.acked += 1;
    }
}

/// Reads what a writer printed until it ends its loop (the pager died) or its output closes.
fn drain(w: &mut Writer, tally: &mut Tally, timeout: Duration) {
    let Some(t) = w.tool.as_mut() else { return };
    let t0 = Instant::now();
    // A writer ends with an error answer to its loop, or dies of SIGBUS in the middle of a
    // fill (its output closes); it must not hang.
    while let Some(line) = t.line(timeout) {
        if line.starts_with("err") {
            break;
        }
        note_acks(&line, w.name, &mut w.acked, tally);
    }
    assert!(
        t0.elapsed() < timeout,
        "writer {} hangs after its pager or itself was killed",
        w.name
    );
}

/// Reads what writers printed so far, for `d`.
fn run_for(writers: &mut [Writer], tally: &mut Tally, d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        for w in writers.iter_mut() {
            if let Some(t) = w.tool.as_mut() {
                while let Some(line) = t.line(Duration::ZERO) {
                    note_acks(&line, w.name, &mut w.acked, tally);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks the stored pages of the writers of `units` (whose tools are gone) and moves their
/// acknowledged version to what storage holds.
fn verify(
    pager: &Pager,
    ids: &[String],
    writers: &mut [Writer],
    units: &[usize],
    tally: &mut Tally,
) {
    let mut r = Tool::start(pager);
    for w in writers.iter_mut().filter(|w| units.contains(&w.unit)) {
        let id = &ids[w.cluster];
        r.ok(&format!("map {id}"));
        let answer = r.cmd(&format!("which {id} {} {}", w.first, w.pages));
        tally.checks += 1;
        match answer.strip_prefix("ok ").map(|v| v.parse::<u64>()) {
            Some(Ok(seen)) if seen == w.acked => {}
            Some(Ok(seen)) if seen == w.acked + 1 => {
                tally.in_flight_found += 1;
                w.acked = seen;
            }
            Some(Ok(seen)) if seen < w.acked => {
                eprintln!(
                    "LOST: writer {} acknowledged {}, storage holds {seen}",
                    w.name, w.acked
                );
                tally.lost += 1;
                w.acked = seen;
            }
            other => {
                eprintln!(
                    "TORN: writer {} acknowledged {}, storage: {answer} ({other:?})",
                    w.name, w.acked
                );
                tally.torn += 1;
                if let Some(Ok(seen)) = other {
                    w.acked = seen;
                }
            }
        }
        r.ok(&format!("unmap {id}"));
    }
}

/// Connections the pager serves, not counting the one asking.
fn live_connections(pager: &Pager) -> u64 {
    let status = pager.status();
    status
        .lines()
        .find_map(|l| l.strip_prefix("connections"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(u64::MAX, |n| n - 1)
}

fn report(what: &str, t: &Tally) {
    eprintln!(
        "campaign ({what}): {} rounds, {} commits acknowledged, {} checks, {} in-flight commits found validated; torn {}, lost {}",
        t.rounds, t.acked, t.checks, t.in_flight_found, t.torn, t.lost
    );
    assert_eq!((t.torn, t.lost), (0, 0), "torn or lost commits");
    assert!(t.acked > 0, "nothing was committed");
}

#[test]
fn pager_killed_at_random_moments_under_four_writers() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("s.lock");
    let (mut pager, ids, mut writers) = setup(&dir.path().join("root"));
    let mut tally = Tally::default();
    let mut rng = splitmix(u64::from(std::process::id()));
    for _ in 0..rounds() {
        for w in writers.iter_mut() {
            start_writer(&pager, &ids, &lock, w);
        }
        rng = splitmix(rng);
        run_for(
            &mut writers,
            &mut tally,
            Duration::from_millis(20 + rng % 230),
        );
        pager.restart();
        for w in writers.iter_mut() {
            drain(w, &mut tally, Duration::from_secs(10));
            w.tool = None;
        }
        verify(&pager, &ids, &mut writers, &[0, 1, 2], &mut tally);
        tally.rounds += 1;
    }
    report("pager killed", &tally);
}

#[test]
fn clients_killed_at_random_moments_while_others_commit() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("s.lock");
    let (pager, ids, mut writers) = setup(&dir.path().join("root"));
    let mut tally = Tally::default();
    let mut rng = splitmix(u64::from(std::process::id()) ^ 0xc1);
    for w in writers.iter_mut() {
        start_writer(&pager, &ids, &lock, w);
    }
    for _ in 0..rounds() {
        rng = splitmix(rng);
        run_for(
            &mut writers,
            &mut tally,
            Duration::from_millis(20 + rng % 230),
        );
        // A random non-empty set of units (A, B, the pair on S) dies; the others go on.
        let units: Vec<usize> = (0..3)
            .filter(|u| (((rng >> 8) % 7 + 1) & (1 << u)) != 0)
            .collect();
        // Every writer of a unit gets SIGKILL before any is reaped: a survivor on S would
        // otherwise take the lock and commit the dead one's half-written pages, which is what
        // a shared image holds (the application's business, not a storage fault).
        for w in writers.iter_mut().filter(|w| units.contains(&w.unit)) {
            if let Some(t) = w.tool.as_ref() {
                t.signal_kill();
            }
        }
        for w in writers.iter_mut().filter(|w| units.contains(&w.unit)) {
            drain(w, &mut tally, Duration::from_secs(10));
            w.tool = None;
        }
        // The pager has seen them go (their images released) before storage is read.
        let alive = writers.iter().filter(|w| w.tool.is_some()).count() as u64;
        let t0 = Instant::now();
        while live_connections(&pager) != alive {
            assert!(t0.elapsed() < Duration::from_secs(10), "{}", pager.status());
            std::thread::sleep(Duration::from_millis(5));
        }
        verify(&pager, &ids, &mut writers, &units, &mut tally);
        for w in writers.iter_mut().filter(|w| units.contains(&w.unit)) {
            start_writer(&pager, &ids, &lock, w);
        }
        tally.rounds += 1;
    }
    for w in writers.iter() {
        if let Some(t) = w.tool.as_ref() {
            t.signal_kill();
        }
    }
    for w in writers.iter_mut() {
        drain(w, &mut tally, Duration::from_secs(10));
        w.tool = None;
    }
    let t0 = Instant::now();
    while live_connections(&pager) != 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", pager.status());
        std::thread::sleep(Duration::from_millis(5));
    }
    verify(&pager, &ids, &mut writers, &[0, 1, 2], &mut tally);
    report("clients killed", &tally);
    assert!(
        pager.status().contains("paging slots     0 in use"),
        "{}",
        pager.status()
    );
}
