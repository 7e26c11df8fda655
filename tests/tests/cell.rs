//! The cell's catalog on a real etcd: volume ids allocated concurrently are never handed out
//! twice; mount = lock, with the holder named and a fencing epoch that only grows; a site whose
//! pager stops renewing its lease loses its mounts after the TTL; damaged records are named.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clu_cell::{parse_catalog, Cell, CellError};
use clu_proto::VolId;
use clu_tests::etcd::Etcd;

fn cell(e: &Etcd, name: &str) -> Cell {
    Cell::connect(&parse_catalog(&e.url()).unwrap(), name).unwrap()
}

#[test]
fn volume_ids_allocated_concurrently_are_unique_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let e = Etcd::start(dir.path());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = cell(&e, "ids");
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        c.create_volume(&format!("v{t}-{i}"), "ssr", &format!("s{t}"), "/srv")
                            .unwrap()
                            .id
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let ids: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: BTreeSet<u16> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 40, "an id was handed out twice: {ids:?}");
    assert_eq!(unique, (1..=40).collect(), "ids are dense from 1");
    let listed = cell(&e, "ids").volumes().unwrap();
    assert_eq!(listed.len(), 40);
    let v = cell(&e, "ids").volume(VolId(ids[0])).unwrap();
    assert_eq!(v.id, ids[0]);
    // Another cell on the same etcd has its own ids.
    assert_eq!(
        cell(&e, "other")
            .create_volume("x", "ssr", "a", "/")
            .unwrap()
            .id,
        1
    );
}

#[test]
fn mount_is_a_lock_with_a_growing_epoch_and_an_expired_lease_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = Etcd::start(dir.path());
    let c = cell(&e, "locks");
    let v = VolId(c.create_volume("data", "ssr", "a", "/srv/a").unwrap().id);
    let a = c.join("a", "127.0.0.1:7001", 2).unwrap();
    let b = c.join("b", "127.0.0.1:7002", 2).unwrap();
    assert!(matches!(c.join("a", "x:1", 2), Err(CellError::SiteAlive(n)) if n == "a"));
    let e1 = a.mount(v).unwrap();
    assert_eq!(a.mount(v).unwrap(), e1, "mounting again is the same mount");
    match b.mount(v) {
        Err(err @ CellError::MountedElsewhere { .. }) => {
            assert!(err.to_string().contains("mounted by site a"), "{err}")
        }
        other => panic!("a second site mounted a locked volume: {other:?}"),
    }
    let vols = c.volumes().unwrap();
    assert_eq!(vols[0].mounted_by.as_deref(), Some("a"));
    assert_eq!(vols[0].epoch, Some(e1));
    let sites = c.sites().unwrap();
    let sa = sites.iter().find(|s| s.record.name == "a").unwrap();
    assert!(sa.alive);
    assert_eq!(sa.mounts, vec![v.0]);

    // A clean unmount frees it at once.
    a.unmount(v).unwrap();
    let e2 = b.mount(v).unwrap();
    assert!(e2 > e1, "the epoch grows: {e1} then {e2}");

    // b dies without a word (no revoke): the lock holds until b's lease runs out, then a
    // takes it with a higher epoch still. Leases renewed in the background meanwhile keep a.
    b.abandon();
    assert!(matches!(
        a.mount(v),
        Err(CellError::MountedElsewhere { .. })
    ));
    let t = Instant::now();
    let e3 = loop {
        match a.mount(v) {
            Ok(e) => break e,
            Err(CellError::MountedElsewhere { .. }) => {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "b's lease never expired"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "freed too early: {:?}",
        t.elapsed()
    );
    assert!(e3 > e2);
    let sites = c.sites().unwrap();
    assert!(!sites.iter().find(|s| s.record.name == "b").unwrap().alive);
    assert!(!a.is_lost(), "a's lease is renewed in the background");
    // a leaves: its lock goes with its lease.
    drop(a);
    assert_eq!(c.volumes().unwrap()[0].mounted_by, None);
}

#[test]
fn a_lost_etcd_loses_the_lease_and_damaged_records_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = Etcd::start(dir.path());
    let c = cell(&e, "damage");
    c.create_volume("data", "ssr", "a", "/srv").unwrap();
    // A record written by someone else, not ours: a clear error naming the key, no panic.
    let mut raw = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &e.endpoint,
            "put",
            "/clu/damage/volumes/0002",
            "{not json",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(raw.wait().unwrap().success());
    let err = c.volumes().unwrap_err();
    assert!(
        err.to_string().contains("/clu/damage/volumes/0002"),
        "{err}"
    );
    assert!(matches!(
        parse_catalog("http://x:1"),
        Err(CellError::BadAddress(_))
    ));
    assert!(matches!(
        parse_catalog("etcd://x"),
        Err(CellError::BadAddress(_))
    ));
    assert!(matches!(
        c.join("Bad Name", "x:1", 1),
        Err(CellError::BadName(_))
    ));

    // etcd killed: the session notices within its TTL and refuses to mount.
    let s = c.join("a", "127.0.0.1:7001", 1).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(e.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while !s.is_lost() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the lost lease went unnoticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(s.mount(VolId(1)), Err(CellError::LeaseLost(_))));
    let unreachable = Cell::connect(std::slice::from_ref(&e.endpoint), "damage")
        .err()
        .unwrap();
    assert!(
        unreachable.to_string().contains("cannot reach the catalog"),
        "{unreachable}"
    );
    drop(s);
}
