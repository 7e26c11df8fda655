//! A misbehaving client gets errors and cannot disturb the pager or other clients.

use std::os::fd::AsFd;

use client::{ClusterId, ClusterKind, ErrorCode};
use clu_proto::protocol::{MapMode, Request, Response, VERSION};
use clu_tests::harness::{Pager, Tool};
use clu_tests::raw::RawClient;

fn code(r: Option<Response>) -> i32 {
    match r {
        Some(Response::Error { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_and_foreign_requests_get_errors_and_others_carry_on() {
    // Not heavy, but its pager and clients would share the CPUs with the latency measurement.
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut pager = Pager::start(&dir.path().join("root"), 1024);
    let mut good = Tool::start(&pager);
    let id = good
        .ok("create 4")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    good.ok(&format!("fill {id} 4"));

    let c = RawClient::connect(&pager.socket);
    let frame = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let protocol = ErrorCode::Protocol as i32;
    assert_eq!(code(c.bytes(&frame(&[VERSION, 200, 1, 2]), &[])), protocol);
    assert_eq!(code(c.bytes(&frame(&[VERSION + 1, 1]), &[])), protocol);
    assert_eq!(code(c.bytes(&frame(&[]), &[])), protocol);
    let foreign = ClusterId(0x8001_0000);
    for req in [
        Request::Map {
            id: foreign,
            mode: MapMode::ReadWrite,
        },
        Request::Map {
            id: ClusterId(0x0001_7777),
            mode: MapMode::ReadWrite,
        },
        Request::Commit {
            id: ClusterId(0x0001_0000),
        },
        Request::Unmap {
            id: ClusterId(0x0001_0000),
        },
        Request::Resize {
            id: ClusterId(0x0001_0000),
            add: u64::MAX,
        },
    ] {
        let e = code(c.call(&req, &[]));
        assert!(
            e == ErrorCode::NotFound as i32 || e == ErrorCode::Invalid as i32,
            "{req:?}: {e}"
        );
    }
    let create = |npages| Request::CreateMap {
        vol: 1,
        npages,
        kind: ClusterKind::Shareable,
    };
    assert_eq!(code(c.call(&create(0), &[])), ErrorCode::Invalid as i32);
    assert_eq!(
        code(c.call(&create(u64::MAX), &[])),
        ErrorCode::Invalid as i32
    );
    assert_eq!(
        code(c.call(
            &Request::CreateMap {
                vol: 9,
                npages: 1,
                kind: ClusterKind::Shareable
            },
            &[]
        )),
        ErrorCode::NotFound as i32
    );
    // A real cluster, then attach requests that lie.
    let Some(Response::Mapped { id: mine, .. }) = c.call(&create(2), &[]) else {
        panic!("create")
    };
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let attach = |first_page, npages| Request::Attach {
        id: mine,
        first_page,
        base: 0x1000_0000,
        npages,
        flags: 0,
    };
    assert_eq!(
        code(c.call(&attach(0, 2), &[pipe_r.as_fd()])),
        ErrorCode::Invalid as i32
    );
    assert_eq!(code(c.call(&attach(0, 2), &[])), ErrorCode::Invalid as i32);
    let u = clu_sys::uffd::open(clu_sys::uffd::feature::CLUSTER, false).unwrap();
    assert_eq!(
        code(c.call(&attach(1, 5), &[u.as_fd()])),
        ErrorCode::Invalid as i32
    );
    assert_eq!(
        code(c.call(&Request::Commit { id: mine }, &[pipe_r.as_fd()])),
        protocol
    );
    // Requests after its own unmap: the cluster is no longer this process's to commit,
    // abort, extend or unmap.
    assert!(matches!(
        c.call(&Request::Unmap { id: mine }, &[]),
        Some(Response::Ok)
    ));
    for req in [
        Request::Commit { id: mine },
        Request::Abort { id: mine },
        Request::Unmap { id: mine },
        Request::Extend { id: mine, known: 2 },
    ] {
        let e = code(c.call(&req, &[]));
        assert_eq!(e, ErrorCode::NotFound as i32, "{req:?} after unmap");
    }
    // An admin command with garbage words, and one reserved to root from... root is allowed,
    // so only the grammar is checked here.
    assert_eq!(
        code(c.call(
            &Request::Admin {
                words: vec!["vol".into(), "explode".into()]
            },
            &[]
        )),
        ErrorCode::Invalid as i32
    );
    // An oversized frame: the pager answers and closes this connection only.
    let mut huge = (u32::MAX).to_le_bytes().to_vec();
    huge.extend_from_slice(&[VERSION, 1]);
    assert_eq!(code(c.bytes(&huge, &[])), protocol);
    assert!(
        c.call(&Request::Commit { id: mine }, &[]).is_none(),
        "closed"
    );

    // Everyone else carries on.
    good.ok(&format!("check {id} 4"));
    good.ok(&format!("commit {id}"));
    assert!(pager.alive());
    assert!(pager.status().contains("connections"));
}

#[test]
fn clients_that_come_and_go_leave_no_descriptor_or_memory_behind() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let pager = Pager::start(&dir.path().join("root"), 256);
    let first = |answer: String| answer.split_whitespace().next().unwrap().to_string();
    // Warm up: what the pager keeps for good (journal files, and a descriptor on each cluster
    // file, opened when the cluster is created).
    let mut t = Tool::start(&pager);
    let shared = first(t.ok("create 64"));
    t.ok(&format!("commit {shared}"));
    t.ok(&format!("unmap {shared}"));
    let own: Vec<String> = (0..20)
        .map(|_| {
            let c = first(t.ok("create 8"));
            t.ok(&format!("unmap {c}"));
            c
        })
        .collect();
    drop(t);
    // The status request itself is the one live connection once the others are gone.
    let settle = |p: &Pager| {
        let t0 = std::time::Instant::now();
        while !p.status().contains("connections      1 live") {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "{}",
                p.status()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The status connection closes just after its answer: let it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        p.open_fds()
    };
    // Creating and unmapping left 21 cached images: start from an empty cache.
    pager.admin(&["cache", "drop"]);
    let before = settle(&pager);
    for (round, own) in own.iter().enumerate() {
        let mut t = Tool::start(&pager);
        t.ok(&format!("map {shared}"));
        t.ok(&format!("fill {shared} {}", round + 1));
        t.ok(&format!("map {own}"));
        t.ok(&format!("fill {own} 3"));
        if round % 2 == 0 {
            t.ok(&format!("commit {shared}"));
            t.ok(&format!("unmap {shared}"));
            t.ok(&format!("unmap {own}"));
        } else {
            t.kill(); // dies with both clusters mapped
        }
    }
    // The images stay as the site cache (one memfd each, clean pages within the budget);
    // dropping the cache gives everything back.
    let status = pager.status();
    assert!(status.contains("cached (unmapped, clean"), "{status}");
    let dropped = pager.admin(&["cache", "drop"]);
    assert!(dropped.starts_with("dropped "), "{dropped}");
    let after = settle(&pager);
    let listing: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", pager.pid()))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        before, after,
        "open descriptors before and after 20 clients: {listing:?}"
    );
    let status = pager.status();
    assert!(status.contains("resident pages   0 of"), "{status}");
    assert!(status.contains("paging slots     0 in use"), "{status}");
}

/// The tests of this file run one at a time (each starts a pager and clients), so that the
/// latency test measures the pager, not its neighbours.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Pins every thread of process `pid` (and so the threads they start) to CPU `cpu`.
fn pin(pid: u32, cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = task.unwrap().file_name().to_string_lossy().parse().unwrap();
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
    }
}

/// The median latency of `n` runs of `cmd`, in milliseconds.
fn median_ms(t: &mut Tool, cmd: &str, n: usize) -> f64 {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = std::time::Instant::now();
            t.ok(cmd);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[n / 2]
}

#[test]
fn a_flooding_client_and_a_client_that_never_reads_do_not_slow_the_others() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut pager = Pager::start(&dir.path().join("root"), 1024);
    let mut good = Tool::start(&pager);
    // The pager and the measured client share one CPU: on this VM a request whose two ends sit
    // on different vCPUs costs 2-10x more, by where the scheduler puts them, not by the load
    // (README). The flooders run wherever they like, and the pager serves them on that CPU.
    pin(pager.pid(), 0);
    pin(good.pid(), 0);
    let id = good
        .ok("create 16")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    good.ok(&format!("fill {id} 1"));
    let cmd = format!("commit {id}");
    let normal = median_ms(&mut good, &cmd, 200);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A client that floods the pager with malformed and foreign requests, reading the errors.
    let flood = {
        let (socket, stop) = (pager.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = RawClient::connect(&socket);
            let bad = Request::Commit {
                id: ClusterId(0x0001_7777),
            };
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = if n % 2 == 0 {
                    c.call(&bad, &[])
                } else {
                    c.bytes(&[3, 0, 0, 0, VERSION, 250, 0], &[])
                };
                assert!(matches!(r, Some(Response::Error { .. })), "{r:?}");
                n += 1;
            }
            n
        })
    };
    // A client that sends requests and never reads the answers.
    let deaf = RawClient::connect(&pager.socket);
    let req = Request::Owner {
        id: ClusterId(0x0001_0000),
    }
    .encode();
    let mut sent = 0;
    let _ = deaf.chan.stream().set_nonblocking(true);
    while sent < 100_000 {
        if deaf.chan.send(&req, &[]).is_err() {
            break;
        }
        sent += 1;
    }
    let t0 = std::time::Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < std::time::Duration::from_millis(1500) {
        let t = std::time::Instant::now();
        good.ok(&cmd);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let loaded = samples[samples.len() / 2];
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flood.join().expect("flood thread");
    eprintln!(
        "median request latency {normal:.3} ms alone, {loaded:.3} ms beside a client flooding bad requests ({flooded} answered in {secs:.2} s) and one that stopped reading after {sent} requests"
    );
    // The pager slows the flooder down to a few dozen requests a second after its first 200.
    assert!(flooded > 200, "the flood was a flood: {flooded}");
    assert!(
        flooded as f64 / secs < 1000.0,
        "the flooder was slowed down: {flooded} in {secs:.2} s"
    );
    assert!(
        loaded <= 2.0 * normal,
        "{loaded:.3} ms against {normal:.3} ms"
    );
    good.ok(&format!("check {id} 1"));
    assert!(pager.alive());
}
