//! Remote memory paging (issue 16, thesis K2): a site pages its evicted dirty pages to a
//! memory server in a network namespace of its own. Pages come back byte for byte; a server
//! SIGKILLed with pages in it makes a fault on one of them raise SIGBUS (never a zero page,
//! never a hang), abort still discards, and a server started again is used again.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clu_tests::etcd::free_port;
use clu_tests::harness::{cell_keys_for, id_of, pager_bin, signal_of, wait_listening, Pager, Tool};
use clu_tests::netns::Netns;

/// Seconds a request to the memory server may wait.
const TIMEOUT: u64 = 2;

struct MemoryServer(Child);

impl MemoryServer {
    fn start(ns: &Netns, addr: &str, pages: u32) -> MemoryServer {
        let keys = cell_keys_for("memory-1", &[&ns.ns_ip]);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(pager_bin())
            .args(["memory-server", "--listen", addr, "--pages"])
            .arg(pages.to_string())
            .arg("--keys")
            .arg(keys)
            .args(["--site", "memory-1"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start pager memory-server");
        wait_listening(addr);
        MemoryServer(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for MemoryServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn figures(p: &Pager) -> (u64, u64, u64) {
    let s = p.status_json();
    let m = &s["paging_server"];
    let n = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("no {k} in {m}"));
    (
        n("stored"),
        n("loaded"),
        s["paging_slots"].as_u64().unwrap_or(0),
    )
}

#[test]
fn a_site_pages_to_another_machines_memory_and_survives_its_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = Netns::new(0);
    let addr = format!("{}:{}", ns.ns_ip, free_port());
    let mut server = MemoryServer::start(&ns, &addr, 4096);

    // A budget of 64 pages for a cluster of 512: most dirty pages go to the memory server.
    let a = Pager::start_with(
        &dir.path().join("a"),
        64,
        &[
            "--paging-server",
            &addr,
            "--remote-timeout",
            &TIMEOUT.to_string(),
        ],
    );
    let mut t = Tool::start(&a);
    let id = id_of(&t.ok("create 512 protected"));
    t.ok(&format!("fill {id} 1"));
    t.ok(&format!("commit {id}"));
    t.ok(&format!("fill {id} 2"));
    let (stored, _, held) = figures(&a);
    assert!(
        stored > 300,
        "only {stored} pages went to the memory server"
    );
    assert!(held > 300, "{held} slots held there");
    let text = a.status();
    assert!(text.contains("on memory server memory-1"), "{text}");

    // Every page comes back as written (from the server, for the evicted ones); the commit
    // reads them from there too.
    t.ok(&format!("check {id} 2"));
    let (_, loaded, _) = figures(&a);
    assert!(loaded > 300, "only {loaded} pages read back");
    t.ok(&format!("commit {id}"));
    t.ok(&format!("check {id} 2"));

    // Dirty pages out there again, then the server dies with them.
    t.ok(&format!("fill {id} 3"));
    let (_, _, held) = figures(&a);
    assert!(held > 300, "{held} slots held there before the kill");
    server.kill();

    // Another process of the site maps the cluster and reads it: a page only the dead server
    // had raises SIGBUS after the bounded wait.
    let mut reader = Tool::start(&a);
    reader.ok(&format!("map {id}"));
    reader.send(&format!("check {id} 3"));
    let st = reader
        .wait(Duration::from_secs(TIMEOUT * 10 + 10))
        .expect("the faulting process ended");
    assert_eq!(signal_of(st), Some(nix::libc::SIGBUS), "{st:?}");

    // Abort discards what was lost; the committed version is served from storage.
    t.ok(&format!("abort {id}"));
    t.ok(&format!("check {id} 2"));
    assert_eq!(figures(&a).2, 0, "no slot is held after the abort");

    // The server comes back (empty): the site pages to it again (evictions try it again a
    // second after the last failure to reach it).
    let _server = MemoryServer::start(&ns, &addr, 4096);
    std::thread::sleep(Duration::from_millis(1500));
    let (stored_before, _, _) = figures(&a);
    t.ok(&format!("fill {id} 4"));
    let (stored, _, _) = figures(&a);
    assert!(stored > stored_before + 300, "{stored_before} -> {stored}");
    t.ok(&format!("check {id} 4"));
    t.ok(&format!("commit {id}"));
    t.ok(&format!("unmap {id}"));
    t.ok(&format!("map {id}"));
    t.ok(&format!("check {id} 4"));
}

#[test]
fn a_pager_refuses_to_start_without_its_memory_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = cell_keys_for("site-lonely", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let out = Command::new(pager_bin())
        .args(["serve", "--root"])
        .arg(dir.path().join("r"))
        .arg("--socket")
        .arg(dir.path().join("s"))
        .arg("--keys")
        .arg(keys)
        .args(["--site", "site-lonely", "--remote-timeout", "1"])
        .args(["--paging-server", &addr])
        .output()
        .expect("run pager serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("pager memory-server"),
        "{err}"
    );
}
