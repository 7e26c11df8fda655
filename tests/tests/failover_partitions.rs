//! Partitions and crashes under automated failover (issue 17), with real processes in network
//! namespaces: a 3-member etcd, two backup servers, two sites that may each serve the volume
//! (`--sync 1 --failover restore --standby site-s1 --standby site-s2`) and a client site,
//! each in a namespace of its own. A writer on the client site commits version after version
//! of a cluster of the volume (remote commits to whichever site serves it, mapping again after
//! a failure). Each round injects one fault while it writes:
//!
//! 0. kill -9 of the primary;
//! 1. the primary cut off from everyone (its link down);
//! 2. the primary cut off from etcd only (it still reaches the backups and the client);
//! 3. a backup cut off for a while;
//! 4. an etcd member killed, then started again;
//!
//! and the old primary comes back (started again) after a failover. After each round: the
//! volume holds a whole version at least as new as the last acknowledged commit and no newer
//! than the last attempted (every acknowledged commit is present: `--sync 1`, and a takeover
//! fences both backups); exactly one site holds the volume's mount; the writer committed again
//! after the fault; both backups hold exactly that version (no operation of a fenced epoch was
//! applied after the new epoch's). `CLU_PARTITION_ROUNDS` sets the rounds (5: each fault
//! once); `scripts/partition [ROUNDS]` runs long campaigns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clu_tests::harness::{id_of, Pager, Tool};
use clu_tests::lan::{Lan, LanBackup};

/// Longer than the default 2 s: a site counts its lease lost at 7/8 of it, and the election
/// of a new etcd leader after the leader's death (round 4) takes 1-2 s here, during which no
/// lease is renewed (docs/failover.md).
const TTL: u64 = 4;
const REMOTE_TIMEOUT: u64 = 2;
const PAGES: u64 = 16;
const PAGE: usize = 4096;

/// The writer on the client site.
struct Writer {
    last: Arc<std::sync::Mutex<String>>,
    /// What it found missing when it mapped the cluster again.
    lost: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    attempted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(socket: PathBuf, id: String, from: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(from - 1));
        let attempted = Arc::new(AtomicU64::new(from - 1));
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a, t, l) = (stop.clone(), acked.clone(), attempted.clone(), last.clone());
        let lost_here = lost.clone();
        let thread = std::thread::spawn(move || {
            let lost = lost_here;
            let mut tool = Tool::start_at(&socket);
            let mut v = from;
            let mut mapped = false;
            let step = Duration::from_secs(60);
            while !s.load(Ordering::Acquire) {
                if !mapped {
                    let Some(r) = tool.try_cmd(&format!("map {id}"), step) else {
                        // The process died (a fault on a page no site could serve raises
                        // SIGBUS): start another, as a program would be restarted.
                        *l.lock().unwrap() = "the writer process died".into();
                        tool = Tool::start_at(&socket);
                        continue;
                    };
                    mapped = r.starts_with("ok");
                    if !mapped {
                        *l.lock().unwrap() = format!("map: {r}");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    // Mapped again (after a failure, on whichever site serves it now): it
                    // holds a whole version, at least the last acknowledged one.
                    let Some(w) = tool.try_cmd(&format!("which {id} 0 {PAGES}"), step) else {
                        *l.lock().unwrap() = "the writer process died reading".into();
                        tool = Tool::start_at(&socket);
                        mapped = false;
                        continue;
                    };
                    if w.starts_with("err") {
                        // Not served (yet): a read error is not a lost commit.
                        *l.lock().unwrap() = format!("which: {w}");
                        let _ = tool.try_cmd(&format!("unmap {id}"), step);
                        mapped = false;
                        continue;
                    }
                    let seen = w
                        .strip_prefix("ok ")
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let last = a.load(Ordering::Acquire);
                    if !seen.is_some_and(|seen| seen >= last) {
                        lost.lock()
                            .unwrap()
                            .push(format!("mapped again after acknowledging {last}: {w}"));
                    }
                }
                t.fetch_max(v, Ordering::AcqRel);
                let filled = tool.try_cmd(&format!("fill {id} {v} 0 {PAGES}"), step);
                let r = match filled {
                    Some(f) if f.starts_with("ok") => tool.try_cmd(&format!("commit {id}"), step),
                    other => other,
                };
                let Some(r) = r else {
                    *l.lock().unwrap() = "the writer process died writing".into();
                    tool = Tool::start_at(&socket);
                    mapped = false;
                    continue;
                };
                if r.starts_with("ok") {
                    a.store(v, Ordering::Release);
                    v += 1;
                } else {
                    *l.lock().unwrap() = format!("commit: {r}");
                    // Its pages are dirty: dropped (an unmap would write them back), then
                    // the mapping; a process that cannot even do that is started again.
                    let _ = tool.try_cmd(&format!("abort {id}"), step);
                    let u = tool
                        .try_cmd(&format!("unmap {id}"), step)
                        .unwrap_or_default();
                    if !u.starts_with("ok") {
                        *l.lock().unwrap() = format!("commit: {r}; unmap: {u}");
                        tool = Tool::start_at(&socket);
                    }
                    mapped = false;
                }
            }
            if mapped {
                let _ = tool.try_cmd(&format!("unmap {id}"), step);
            }
        });
        Writer {
            last,
            lost,
            stop,
            acked,
            attempted,
            thread: Some(thread),
        }
    }

    fn last_error(&self) -> String {
        self.last.lock().unwrap().clone()
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Stops it; returns (last acknowledged, last attempted, what it found missing).
    fn stop(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer thread");
        }
        let lost = self.lost.lock().unwrap().clone();
        (self.acked(), self.attempted.load(Ordering::Acquire), lost)
    }
}

/// The site that mounts `rel` now, as the catalog says (asked on `c`).
fn holder(c: &Pager) -> Option<String> {
    let list = c.admin(&["vol", "list"]);
    let line = list
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("rel"))?;
    let m = line.split_whitespace().nth(4)?;
    (m != "-").then(|| m.to_owned())
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The version every page of `id` holds, read by a fresh process on `c`.
fn version_on(c: &Pager, id: &str) -> u64 {
    let t0 = Instant::now();
    loop {
        let mut t = Tool::start(c);
        if t.cmd(&format!("map {id} ro")).starts_with("ok") {
            let v = t.ok(&format!("which {id} 0 {PAGES}"));
            t.ok(&format!("unmap {id}"));
            return v.trim().parse().expect("a version");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "cluster {id} unreadable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether backup `b`'s image of the volume `uid` holds version `v` in every page of cluster 0.
fn backup_holds(b: &LanBackup, uid: u64, v: u64) -> bool {
    let path = b.root.join(format!("v-{uid:016x}/clusters/0000.data"));
    let Ok(bytes) = std::fs::read(&path) else {
        return false;
    };
    (0..PAGES as usize).all(|p| {
        bytes
            .get(p * PAGE..(p + 1) * PAGE)
            .is_some_and(|page| clu_tests::check_pattern(page, v, p as u64))
    })
}

fn uid_of(vol_dir: &Path) -> u64 {
    let conf = std::fs::read_to_string(vol_dir.join("goofy.conf")).expect("goofy.conf");
    let line = conf.lines().find(|l| l.starts_with("uid ")).expect("uid");
    u64::from_str_radix(&line[4..], 16).expect("hex uid")
}

#[test]
fn partitions_and_crashes_lose_no_acknowledged_commit_and_never_make_two_primaries() {
    let rounds: usize = std::env::var("CLU_PARTITION_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new(dir.path());
    let (mut etcd, catalog) = lan.etcd3(dir.path());
    let etcd_ips: Vec<String> = etcd.iter().map(|m| m.ip.clone()).collect();
    let mut backups = [
        lan.backup(&dir.path().join("bk1"), "backup-1"),
        lan.backup(&dir.path().join("bk2"), "backup-2"),
    ];
    let mut sites = [
        lan.pager(&dir.path().join("s1"), &catalog, TTL, REMOTE_TIMEOUT),
        lan.pager(&dir.path().join("s2"), &catalog, TTL, REMOTE_TIMEOUT),
    ];
    let c = lan.pager(&dir.path().join("c"), &catalog, TTL, REMOTE_TIMEOUT);
    let made = sites[0].admin(&[
        "vol",
        "create",
        "rel",
        "--backup",
        &backups[0].addr,
        "--backup",
        &backups[1].addr,
        "--sync",
        "1",
        "--failover",
        "restore",
        "--standby",
        "site-s1",
        "--standby",
        "site-s2",
    ]);
    let vol = made
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();
    let uid = uid_of(&dir.path().join(format!("s1/vol-{vol}")));
    let id = {
        let mut t = Tool::start(&c);
        let id = id_of(&t.ok(&format!(
            "create {PAGES} protected {}",
            u16::from_str_radix(&vol, 16).unwrap()
        )));
        t.ok(&format!("fill {id} 1 0 {PAGES}"));
        t.ok(&format!("commit {id}"));
        t.ok(&format!("unmap {id}"));
        id
    };
    let index = |name: &str| match name {
        "site-s1" => 0,
        "site-s2" => 1,
        other => panic!("rel held by {other}"),
    };
    let mut next = 2u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut failovers, mut total_acked) = (0, 0);
    for round in 0..rounds {
        let fault = round % 5;
        let primary = index(&holder(&c).expect("rel is served"));
        let writer = Writer::start(c.socket.clone(), id.clone(), next);
        wait_for("the writer commits", Duration::from_secs(30), || {
            writer.acked() >= next
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(200 + seed % 500));
        let before = writer.acked();
        let ns = sites[primary].ns().expect("a namespace").to_owned();
        let what = match fault {
            0 => {
                sites[primary].kill();
                "kill -9 of the primary"
            }
            1 => {
                lan.cut(&ns);
                "the primary cut off from everyone"
            }
            2 => {
                lan.cut_from(&ns, &etcd_ips, true);
                "the primary cut off from etcd only"
            }
            3 => {
                let b = &backups[round / 5 % 2];
                lan.cut(b.ns());
                std::thread::sleep(Duration::from_secs(3));
                lan.heal(b.ns());
                "a backup cut off for 3 s"
            }
            _ => {
                let m = &mut etcd[round / 5 % 3];
                m.kill();
                std::thread::sleep(Duration::from_secs(3));
                m.restart();
                "an etcd member killed for 3 s"
            }
        };
        let fails_over = fault <= 2;
        if fails_over {
            let other = format!("site-s{}", 2 - primary);
            wait_for(
                &format!("round {round} ({what}): a takeover"),
                Duration::from_secs(30),
                || holder(&c).as_deref() == Some(other.as_str()),
            );
            failovers += 1;
            // The old primary comes back (its lease is gone: started again, it rejoins).
            match fault {
                1 => lan.heal(&ns),
                2 => lan.cut_from(&ns, &etcd_ips, false),
                _ => {}
            }
            // Retried: a link just set up again may not carry the first connection to etcd.
            sites[primary].restart_when_lease_ends(Duration::from_secs(20));
        }
        // The writer is served again, after the fault.
        let after = writer.acked();
        let t0 = Instant::now();
        while writer.acked() <= after {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round} ({what}): the writer did not commit again within 30 s: {}",
                writer.last_error()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (acked, attempted, lost) = writer.stop();
        assert!(
            lost.is_empty(),
            "round {round} ({what}): acknowledged commits missing: {lost:?}"
        );
        total_acked += acked + 1 - next;
        let holder_now = holder(&c).expect("rel is served");
        let v = version_on(&c, &id);
        assert!(
            acked <= v && v <= attempted,
            "round {round} ({what}): the volume holds version {v}; acknowledged {acked}, attempted {attempted}"
        );
        // One primary: the other site does not mount it.
        let other = &sites[1 - index(&holder_now)];
        let st = other.status();
        assert!(
            !st.lines()
                .any(|l| l.starts_with("reliable volume  rel ") && !l.contains("FENCED")),
            "round {round} ({what}): {holder_now} serves rel and so does the other site: {st}"
        );
        // The backups hold exactly the committed version (after catching up).
        for b in &backups {
            wait_for(
                &format!(
                    "round {round} ({what}): backup {} holds version {v}",
                    b.addr
                ),
                Duration::from_secs(30),
                || backup_holds(b, uid, v),
            );
        }
        eprintln!(
            "round {round}: {what}: ok (version {v}; {} acknowledged this round, {} after the fault)",
            acked + 1 - next,
            acked - before
        );
        next = attempted.max(v) + 1;
        // Without a failover, the standby is started again all the same (its lease may have
        // ended while etcd lost a member): the next round starts with a fresh standby.
        if !fails_over {
            sites[1 - index(&holder_now)].restart_when_lease_ends(Duration::from_secs(20));
        }
    }
    eprintln!(
        "{rounds} rounds, {failovers} failovers, {total_acked} acknowledged commits, none lost"
    );
    backups.iter_mut().for_each(LanBackup::kill);
}
