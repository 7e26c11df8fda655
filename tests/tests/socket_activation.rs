//! Socket activation, the way `clu-pager.socket` starts the pager: `systemd-socket-activate`
//! (systemd's own tool) holds the socket, starts `pager serve` at the first connection and
//! passes the listening socket (LISTEN_FDS); the pager serves on it, and at SIGTERM leaves the
//! socket's file to its owner.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clu_tests::harness::{id_of, pager_bin, Tool};

/// `systemd-socket-activate -l SOCKET pager serve --root ROOT` (it becomes the pager at the
/// first connection: the same pid).
fn activator(socket: &Path, root: &Path) -> Child {
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(socket)
        .arg(pager_bin())
        .arg("--socket")
        .arg(socket)
        .arg("serve")
        .arg("--root")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate runs (scripts/setup installs systemd)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket made by the activator");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "the pager did not stop at SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_socket_activated_pager_starts_at_the_first_connection_and_keeps_its_data_across_activations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, root) = (dir.path().join("pager.sock"), dir.path().join("root"));

    let first = activator(&socket, &root);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !root.exists(),
        "the pager must not have started before anyone connected"
    );
    let mut t = Tool::start_at(&socket);
    let id = id_of(&t.ok("create 16 protected 1"));
    t.ok(&format!("fill {id} 41"));
    t.ok(&format!("commit {id}"));
    let status = Command::new(pager_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["status", "--json"])
        .output()
        .expect("pager status");
    assert!(status.status.success(), "{status:?}");
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(
        s["pid"].as_u64(),
        Some(first.id() as u64),
        "the activator became the pager"
    );
    assert_eq!(s["socket"].as_str(), Some(socket.to_str().unwrap()));
    t.kill();
    assert!(stop(first).success(), "SIGTERM stops the pager cleanly");
    assert!(
        socket.exists(),
        "the socket belongs to whoever passed it: the pager leaves it"
    );

    // Activated again on the same path (systemd keeps its socket across the service's
    // restarts; this tool binds anew, so the old file goes first): the committed pages are
    // there.
    std::fs::remove_file(&socket).expect("remove the old socket");
    let second = activator(&socket, &root);
    let mut t = Tool::start_at(&socket);
    t.ok(&format!("map {id}"));
    t.ok(&format!("check {id} 41"));
    t.kill();
    assert!(stop(second).success());
}
