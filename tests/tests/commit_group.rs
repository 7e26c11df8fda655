//! `clu_CommitGroup` end to end (issue 18, one site): several clusters committed as one
//! atomic group through a real pager, on one volume (one journal group) or on two (two-phase
//! commit).
//! - bad input (no id, an id twice, one not mapped, a read-only mapping, a temporary
//!   cluster, too many ids, a reliable volume beside another): a clear error and nothing
//!   committed;
//! - the pager SIGKILLed at random moments while a client commits groups of two clusters
//!   in a loop, on one volume and on two: after each restart both clusters hold the same
//!   version, byte for byte, and it is the last acknowledged one or the one in flight
//!   (`CLU_GROUP_ROUNDS`, 12 by default for each);
//! - on a reliable volume, the primary killed during synchronous group commits and the
//!   volume restored from a backup: the group shipped as a unit, both clusters at the same
//!   acknowledged version.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clu_tests::harness::{cell_keys, pager_bin, wait_listening, Pager, Tool};
use clu_tests::splitmix;

fn create(t: &mut Tool, pages: u64, kind: &str, vol: u16) -> String {
    t.ok(&format!("create {pages} {kind} {vol}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The version both clusters hold (each checked page by page); fails on a torn cluster or
/// two versions.
fn versions(t: &mut Tool, a: &str, b: &str) -> (u64, u64) {
    let va: u64 = t.ok(&format!("which {a}")).parse().unwrap();
    let vb: u64 = t.ok(&format!("which {b}")).parse().unwrap();
    (va, vb)
}

/// Waits until no process maps cluster `id` (a killed process's mappings end when the pager
/// has read the end of its connection).
fn wait_unmapped(p: &Pager, id: &str) {
    let t0 = Instant::now();
    loop {
        let status = p.status_json();
        let mapped = status["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["id"] == id && c["mappers"].as_u64().unwrap_or(0) > 0);
        if !mapped {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{id} stays mapped");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_groups_are_refused_clearly_and_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pager::start(&dir.path().join("root"), 4096);
    p.admin(&["vol", "create", "other"]);
    let mut t = Tool::start(&p);
    let a = create(&mut t, 8, "protected", 1);
    let b = create(&mut t, 8, "protected", 1);
    let c = create(&mut t, 8, "protected", 2);
    let tmp = create(&mut t, 8, "temporary", 1);
    // Version 1 committed in both: the reference every refusal must leave in place.
    t.ok(&format!("fill {a} 1"));
    t.ok(&format!("fill {b} 1"));
    t.ok(&format!("commit-group {a} {b}"));
    t.ok(&format!("fill {a} 2"));
    t.ok(&format!("fill {b} 2"));
    let refusals = [
        (String::new(), "-22", "names 1 to 256"),
        (format!("{a} {b} {a}"), "-22", "named twice"),
        (format!("{a} {tmp}"), "-22", "temporary"),
        (format!("{a} 0001:0fff"), "-2", "not mapped"),
        (vec![a.as_str(); 257].join(" "), "-22", "names 1 to 256"),
    ];
    for (ids, code, why) in &refusals {
        let got = t.cmd(&format!("commit-group {ids}"));
        assert!(
            got.starts_with(&format!("err {code} ")) && got.contains(why),
            "commit-group {}: {got}",
            &ids[..ids.len().min(40)]
        );
    }
    // A cluster mapped read-only by the caller.
    let mut ro = Tool::start(&p);
    ro.ok(&format!("map {a} ro"));
    ro.ok(&format!("map {b}"));
    let got = ro.cmd(&format!("commit-group {b} {a}"));
    assert!(
        got.starts_with("err -13 ") && got.contains("read-only"),
        "{got}"
    );
    drop(ro);
    // Nothing was committed: the writer dies (its pages are discarded), version 1 remains.
    t.kill();
    wait_unmapped(&p, &a);
    wait_unmapped(&p, &b);
    let mut t = Tool::start(&p);
    t.ok(&format!("map {a}"));
    t.ok(&format!("map {b}"));
    assert_eq!(versions(&mut t, &a, &b), (1, 1));
    // And a good group after all that commits both, with a cluster of the other volume.
    t.ok(&format!("map {c}"));
    t.ok(&format!("fill {a} 3"));
    t.ok(&format!("fill {b} 3"));
    t.ok(&format!("fill {c} 3"));
    t.ok(&format!("commit-group {b} {c} {a}"));
    t.kill();
    for id in [&a, &b, &c] {
        wait_unmapped(&p, id);
    }
    let mut t = Tool::start(&p);
    for id in [&a, &b, &c] {
        t.ok(&format!("map {id}"));
    }
    assert_eq!(versions(&mut t, &a, &b), (3, 3));
    assert_eq!(versions(&mut t, &a, &c), (3, 3));
}

/// Reads the writer's `acked V` lines until it has been quiet for `quiet`; returns the last.
fn drain_acks(t: &mut Tool, mut acked: u64, quiet: Duration) -> u64 {
    while let Some(line) = t.line(quiet) {
        if let Some(v) = line.strip_prefix("acked ") {
            acked = v.parse().unwrap();
        }
    }
    acked
}

#[test]
fn sigkill_of_the_pager_never_splits_a_group() {
    sigkill_rounds(1);
}

#[test]
fn sigkill_of_the_pager_never_splits_a_group_across_volumes() {
    sigkill_rounds(2);
}

/// Groups of a cluster of volume 1 and one of volume `vol_b`, the pager SIGKILLed at random
/// moments.
fn sigkill_rounds(vol_b: u16) {
    let rounds: u64 = std::env::var("CLU_GROUP_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pager::start(&dir.path().join("root"), 4096);
    if vol_b != 1 {
        p.admin(&["vol", "create", "other"]);
    }
    let mut t = Tool::start(&p);
    // Of different sizes, so that the group's operations differ in length.
    let a = create(&mut t, 96, "protected", 1);
    let b = create(&mut t, 24, "protected", vol_b);
    t.ok(&format!("commit-group {a} {b}"));
    drop(t);
    let mut seed = splitmix(u64::from(std::process::id()) ^ 0x6770);
    let mut next = 1u64;
    let mut in_flight_kept = 0;
    for round in 0..rounds {
        let mut t = Tool::start(&p);
        t.ok(&format!("map {a}"));
        t.ok(&format!("map {b}"));
        t.send(&format!("group-loop {next} {a} {b}"));
        seed = splitmix(seed);
        // From the first group's commit to many groups later.
        let wait = Duration::from_micros(2_000 + seed % 150_000);
        let t0 = Instant::now();
        let mut acked = next - 1;
        while t0.elapsed() < wait {
            if let Some(line) = t.line(Duration::from_millis(1)) {
                if let Some(v) = line.strip_prefix("acked ") {
                    acked = v.parse().unwrap();
                }
            }
        }
        p.kill();
        acked = drain_acks(&mut t, acked, Duration::from_millis(300));
        t.kill();
        p.restart();
        let mut c = Tool::start(&p);
        c.ok(&format!("map {a}"));
        c.ok(&format!("map {b}"));
        let (va, vb) = versions(&mut c, &a, &b);
        assert_eq!(
            va, vb,
            "round {round}: the group was split: {a} holds version {va}, {b} version {vb}"
        );
        assert!(
            va == acked || va == acked + 1,
            "round {round}: version {va} after the last acknowledged {acked}"
        );
        if va == acked + 1 {
            in_flight_kept += 1;
        }
        next = va + 1;
        c.kill();
    }
    eprintln!(
        "{rounds} rounds (volumes 1 and {vol_b}): the group in flight was kept {in_flight_kept} times"
    );
}

struct Backup(Child);

impl Drop for Backup {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backup(root: &Path) -> (Backup, String) {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let site = format!("backup-{}", addr.rsplit(':').next().unwrap_or("0"));
    let child = Command::new(pager_bin())
        .args(["backup-server", "--root"])
        .arg(root)
        .args(["--listen", &addr])
        .arg("--keys")
        .arg(cell_keys(&site))
        .args(["--site", &site])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start a backup server");
    wait_listening(&addr);
    (Backup(child), addr)
}

#[test]
fn a_group_reaches_the_backups_as_a_unit_and_is_restored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, a_addr) = backup(&dir.path().join("backup-a"));
    let mut old = Pager::start(&dir.path().join("root-1"), 4096);
    old.admin(&["vol", "create", "rel", "--backup", &a_addr, "--sync", "1"]);
    let mut t = Tool::start(&old);
    let x = create(&mut t, 40, "protected", 2);
    let y = create(&mut t, 8, "protected", 2);
    // A reliable volume takes part only in groups of its own volume: refused, and the local
    // volume's prepared part aborted.
    let local = create(&mut t, 4, "protected", 1);
    t.ok(&format!("fill {local} 5"));
    t.ok(&format!("fill {x} 5"));
    let refused = t.cmd(&format!("commit-group {local} {x}"));
    assert!(
        refused.starts_with("err -22 ") && refused.contains("cannot take part"),
        "{refused}"
    );
    t.ok(&format!("abort {local}"));
    assert_eq!(t.ok(&format!("which {local}")), "0");
    t.send(&format!("group-loop 1 {x} {y}"));
    let mut acked = 0;
    let t0 = Instant::now();
    while acked < 25 {
        let line = t.line(Duration::from_secs(10)).expect("the writer commits");
        acked = line.strip_prefix("acked ").unwrap().parse().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    old.kill();
    acked = drain_acks(&mut t, acked, Duration::from_secs(1));
    t.kill();
    let new = Pager::start(&dir.path().join("root-2"), 4096);
    let report = new.admin(&["vol", "restore", "rel", "--from", &a_addr]);
    assert!(report.contains("restored volume rel"), "{report}");
    let mut c = Tool::start(&new);
    c.ok(&format!("map {x}"));
    c.ok(&format!("map {y}"));
    let (vx, vy) = versions(&mut c, &x, &y);
    assert_eq!(vx, vy, "the backup holds a split group: {vx} and {vy}");
    assert!(
        vx == acked || vx == acked + 1,
        "restored version {vx}, last acknowledged {acked}"
    );
}

/// A backup server spoken to directly as a primary would: the operations of a group that does
/// not end (the primary died in the middle of sending it) are not stored; the whole group is,
/// when its last operation comes; and a group interrupted by another message, or an operation
/// that does not follow the group, is refused.
#[test]
fn a_backup_stores_a_group_only_whole() {
    use clu_goofy::position::Position;
    use clu_goofy::wire::{self, CluInfo, Msg, Run};
    use clu_transport::{KeyFiles, Transport};
    use journal::{Lsn, Written};
    use std::io::BufReader;

    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = backup(&dir.path().join("backup"));
    let site = "site-raw";
    let t = Transport::tls(KeyFiles::in_dir(&cell_keys(site), site), site).unwrap();
    let uid = splitmix(u64::from(std::process::id()) ^ 0x6b7);
    let connect = || {
        let mut c = BufReader::new(t.connect(&addr, Duration::from_secs(3)).unwrap());
        let hello = Msg::Hello {
            site: site.into(),
            uid,
            epoch: 1,
            name: "grp".into(),
            backups: vec![],
            sync: 0,
        };
        wire::send(c.get_mut(), &hello).unwrap();
        match wire::recv(&mut c) {
            Ok(Msg::Welcome { position }) => (c, position),
            other => panic!("no welcome: {other:?}"),
        }
    };
    let at = |offset: u64| Lsn::new(1, offset * 4096);
    let clu = |n: u16| CluInfo {
        clu: n,
        npages: 4,
        owner: 0,
        kind: client::ClusterKind::Protected,
    };
    let op = |n: u16, from: u64, to: u64, byte: u8, open: bool| Msg::Op {
        epoch: 1,
        lsn: at(from),
        end: at(to),
        seq: 0,
        written: Written::default(),
        clu: clu(n),
        runs: vec![Run {
            first_page: 0,
            pages: vec![byte; 4096],
        }],
        group_open: open,
    };
    let call = |c: &mut BufReader<_>, m: &Msg| {
        wire::send(c.get_mut(), m).unwrap();
        wire::recv(c)
    };
    let position = |t: &Transport| {
        let mut c = BufReader::new(t.connect(&addr, Duration::from_secs(3)).unwrap());
        let inquire = Msg::Inquire {
            site: site.into(),
            name: "grp".into(),
        };
        match call(&mut c, &inquire) {
            Ok(Msg::Image(i)) => i.position,
            other => panic!("no image: {other:?}"),
        }
    };
    // A complete, empty image of two clusters at LSN 1.
    let (mut c, _) = connect();
    let begin = Msg::CopyBegin {
        epoch: 1,
        clusters: vec![clu(0), clu(1)],
    };
    assert!(matches!(call(&mut c, &begin), Ok(Msg::Ack { .. })));
    let start = Position {
        epoch: 1,
        lsn: at(1),
        complete: true,
    };
    let end = Msg::CopyEnd {
        epoch: 1,
        position: start,
    };
    assert!(matches!(call(&mut c, &end), Ok(Msg::Ack { .. })));
    // The group's first operation, then the primary is gone.
    wire::send(c.get_mut(), &op(0, 1, 3, 7, true)).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(position(&t), start, "a part of a group was stored");
    // Sent again, whole: stored, and answered once, for its last operation.
    let (mut c, welcome) = connect();
    assert_eq!(welcome, start);
    wire::send(c.get_mut(), &op(0, 1, 3, 7, true)).unwrap();
    match call(&mut c, &op(1, 3, 5, 8, false)) {
        Ok(Msg::Ack { lsn }) => assert_eq!(lsn, at(5)),
        other => panic!("the group's end was not acknowledged: {other:?}"),
    }
    assert_eq!(position(&t).lsn, at(5));
    // A destruction in the middle of a group is refused, and nothing of the group stored.
    wire::send(c.get_mut(), &op(0, 5, 7, 9, true)).unwrap();
    let destroy = Msg::Destroy { epoch: 1, clu: 1 };
    assert!(
        matches!(call(&mut c, &destroy), Ok(Msg::Refused { ref why }) if why.contains("middle of a group")),
        "a destroy inside a group was taken"
    );
    assert_eq!(position(&t).lsn, at(5));
    // An operation that does not follow the group's last is refused.
    let (mut c, _) = connect();
    wire::send(c.get_mut(), &op(0, 5, 7, 9, true)).unwrap();
    assert!(
        matches!(call(&mut c, &op(1, 9, 11, 9, false)), Ok(Msg::Refused { ref why }) if why.contains("does not follow")),
        "a gap inside a group was taken"
    );
    assert_eq!(position(&t).lsn, at(5));
    // The pages of the group stored, those of the refused ones not: the image as a restorer
    // fetches it.
    let mut c = BufReader::new(t.connect(&addr, Duration::from_secs(3)).unwrap());
    let fetch = Msg::Fetch {
        site: site.into(),
        uid,
        epoch: 1,
    };
    wire::send(c.get_mut(), &fetch).unwrap();
    let mut first_bytes = std::collections::BTreeMap::new();
    loop {
        match wire::recv(&mut c) {
            Ok(Msg::CopyPages { clu, runs, .. }) => {
                for r in runs {
                    if r.first_page == 0 {
                        first_bytes.insert(clu, r.pages[0]);
                    }
                }
            }
            Ok(Msg::CopyEnd { .. }) => break,
            Ok(Msg::CopyBegin { .. }) => {}
            other => panic!("fetching the image: {other:?}"),
        }
    }
    assert_eq!(first_bytes.get(&0), Some(&7), "{first_bytes:?}");
    assert_eq!(first_bytes.get(&1), Some(&8), "{first_bytes:?}");
}

/// The crash that matters for two-phase commit, placed exactly: the decision recorded and
/// one participant decided, the other not. At the next mount the other learns the decision
/// from the coordinator's decisions file and applies its part; a transaction never decided
/// is aborted at every participant (presumed abort).
#[test]
fn a_participant_in_doubt_learns_the_coordinators_decision_at_mount() {
    use clu_storage::{Storage, StorageConfig, VolumeParams};
    use clu_sys::buf::PageBuf;
    use journal::Batch;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let page = |byte: u8| {
        let mut buf = PageBuf::zeroed(4096);
        buf.fill(byte);
        let mut b = Batch::new(buf);
        b.push(0, 0, 1).unwrap();
        b
    };
    let (va, vb, ca, cb) = {
        let s = Storage::open(&root, StorageConfig::default()).unwrap();
        let va = s.vol_create("a", &VolumeParams::default()).unwrap().vol;
        let vb = s.vol_create("b", &VolumeParams::default()).unwrap().vol;
        s.vol_mount(va).unwrap();
        s.vol_mount(vb).unwrap();
        let ca = s
            .clu_create(va, 4, 0, client::ClusterKind::Protected)
            .unwrap()
            .id;
        let cb = s
            .clu_create(vb, 4, 0, client::ClusterKind::Protected)
            .unwrap()
            .id;
        let (a, b) = (s.volume(va).unwrap(), s.volume(vb).unwrap());
        // Transaction 1: decided, applied on a only. Transaction 2: prepared, never decided.
        a.clu_prepare_group(vec![(ca.clu(), page(1))], 1, va)
            .unwrap();
        b.clu_prepare_group(vec![(cb.clu(), page(1))], 1, va)
            .unwrap();
        a.record_decision(1).unwrap();
        a.clu_decide_group(1, true).unwrap();
        // The crash: b never hears the decision (b's unmount is refused meanwhile). Dropped
        // without an unmount, b's journal keeps the group in doubt, as a SIGKILL leaves it.
        assert!(b.unmount().is_err());
        drop((a, b));
        drop(s);
        (va, vb, ca, cb)
    };
    let s = Storage::open(&root, StorageConfig::default()).unwrap();
    for v in [va, vb] {
        let _ = s.vol_mount(v);
    }
    let mut buf = vec![0u8; 4096];
    s.clu_read(cb, 0, &mut buf).unwrap();
    assert_eq!(
        buf[0], 1,
        "b did not apply the part the coordinator decided"
    );
    s.clu_read(ca, 0, &mut buf).unwrap();
    assert_eq!(buf[0], 1);
    // A transaction prepared and never decided is aborted at every participant.
    let (a, b) = (s.volume(va).unwrap(), s.volume(vb).unwrap());
    a.clu_prepare_group(vec![(ca.clu(), page(2))], 2, va)
        .unwrap();
    b.clu_prepare_group(vec![(cb.clu(), page(2))], 2, va)
        .unwrap();
    drop((a, b));
    drop(s);
    let s = Storage::open(&root, StorageConfig::default()).unwrap();
    for v in [va, vb] {
        let _ = s.vol_mount(v);
    }
    for c in [ca, cb] {
        s.clu_read(c, 0, &mut buf).unwrap();
        assert_eq!(buf[0], 1, "{c}: a group never decided was applied");
    }
}
