//! `pager top`, run for real in a tmux pane (its own tmux server) and read back with
//! `capture-pane`: the live view shows a cluster's write-protect faults per second and its
//! volume's commits per second while a client commits, keeps going (and says so) when the pager
//! dies, and quits on `q`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clu_tests::harness::{id_of, pager_bin, Pager, Tool};

/// A tmux server of the test's own (`tmux -L`), killed on drop.
struct Tmux {
    server: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux {
            server: format!("clu-top-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.server)
            .args(args)
            .output()
            .expect("tmux runs (scripts/setup installs it)")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok`; returns it.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {what} on the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The numbers of the screen's row that starts with `first`, from column `from` on (`-` is 0).
fn row(screen: &str, first: &str, from: usize) -> Option<Vec<f64>> {
    let line = screen.lines().find(|l| l.trim_start().starts_with(first))?;
    Some(
        line.split_whitespace()
            .skip(from)
            .map(|w| {
                if w == "-" {
                    0.0
                } else {
                    w.parse().unwrap_or(f64::NAN)
                }
            })
            .collect(),
    )
}

fn start_top(tmux: &Tmux, socket: &Path, done: &Path) {
    let cmd = format!(
        "{} --socket {} top --interval 0.5; echo exited=$? > {}",
        pager_bin().display(),
        socket.display(),
        done.display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "45",
        &cmd,
    ]);
    assert!(out.status.success(), "tmux new-session: {out:?}");
}

#[test]
fn top_shows_faults_and_commits_per_second_then_the_pager_s_death_then_quits_on_q() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pager = Pager::start(&dir.path().join("root"), 4096);
    let mut t = Tool::start(&pager);
    let id = id_of(&t.ok("create 8 protected 1"));
    // Fills the 8 pages and commits, over and over: each round write-protect faults then a
    // commit.
    t.send(&format!("loop {id}"));

    let tmux = Tmux::new();
    let done = dir.path().join("done");
    start_top(&tmux, &pager.socket, &done);
    let screen = tmux.wait_for("write-protect faults and commits per second", |s| {
        // CLUSTER zero storage paging minor wp remote RESIDENT DIRTY PAGES CACHED MAPPERS
        let wp = row(s, &id, 5).map_or(0.0, |r| r[0]);
        let commits = row(s, "0001 ", 2).map_or(0.0, |r| r[0]);
        wp > 0.0 && commits > 0.0
    });
    assert!(screen.contains("CLUSTER"), "{screen}");
    let cluster = row(&screen, &id, 7).expect("the cluster's row");
    assert_eq!(cluster[2], 8.0, "8 pages: {screen}");
    assert_eq!(cluster[4], 1.0, "one mapper: {screen}");
    assert!(
        screen.contains("fault latency over the last 0.5 s"),
        "{screen}"
    );
    assert!(!screen.contains("(0 faults"), "faults were timed: {screen}");
    assert!(screen.contains("default"), "the volume's name: {screen}");

    // The pager dies: the view stays, says so, and keeps trying.
    t.kill();
    pager.kill();
    tmux.wait_for("the failed reading", |s| s.contains("last reading failed"));
    assert!(tmux.alive());

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(
            Instant::now() < deadline,
            "q did not quit:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = std::fs::read_to_string(&done).expect("the exit status was written");
    assert_eq!(exit.trim(), "exited=0");
}

#[test]
fn top_without_a_pager_says_how_to_start_one_and_leaves_the_terminal_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(pager_bin())
        .args(["--socket"])
        .arg(dir.path().join("none.sock"))
        .arg("top")
        .output()
        .expect("run pager top");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start one with `pager serve`"), "{err}");
    assert!(out.stdout.is_empty(), "no screen drawn: {:?}", out.stdout);
}
