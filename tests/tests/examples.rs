//! The Rust examples (`examples/rust/`) a programmer would copy: each run against a real
//! pager and SIGKILLed while it commits; what it printed as committed is there afterwards,
//! byte for byte, and nothing half-done.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use clu_tests::harness::{pager_bin, Pager};

/// `target/<profile>/examples/NAME`, built once.
fn example(name: &str) -> PathBuf {
    static BUILT: Once = Once::new();
    let target = pager_bin().parent().expect("target dir").to_owned();
    BUILT.call_once(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "-q",
            "-p",
            "client",
            "--example",
            "counter",
            "--example",
            "kv",
        ]);
        if target.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().expect("cargo").success(),
            "building the examples failed"
        );
    });
    target.join("examples").join(name)
}

fn run(pager: &Pager, exe: &Path, args: &[&str]) -> String {
    let out = Command::new(exe)
        .args(args)
        .env("CLU_PAGER_SOCKET", &pager.socket)
        .output()
        .expect("run the example");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `exe args`, reads its output until `enough` lines, SIGKILLs it, and returns every
/// line it printed.
fn kill_after(pager: &Pager, exe: &Path, args: &[&str], enough: usize) -> Vec<String> {
    let mut child = Command::new(exe)
        .args(args)
        .env("CLU_PAGER_SOCKET", &pager.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while seen.len() < enough {
        match lines.next() {
            Some(Ok(l)) => seen.push(l),
            _ => panic!("the example stopped after {seen:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "too slow");
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // What it printed before it died is in the pipe still.
    seen.extend(lines.map_while(Result::ok));
    seen
}

#[test]
fn the_persistent_counter_survives_kill_9_with_every_count_it_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pager = Pager::start(&dir.path().join("root"), 1024);
    let counter = example("counter");
    let created = run(&pager, &counter, &[]);
    let id = created
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cluster "))
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let printed = kill_after(&pager, &counter, &[&id, "1000000"], 200);
    let last: u64 = printed
        .last()
        .and_then(|l| l.strip_prefix("count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed:?}"));
    // Every count printed was committed; the one in flight may be too.
    let now = run(&pager, &counter, &[&id]);
    let stored: u64 = now.trim().strip_prefix("count ").unwrap().parse().unwrap();
    assert!(
        stored == last || stored == last + 1,
        "printed {last}, stored {stored}"
    );
    let more = run(&pager, &counter, &[&id, "3"]);
    assert_eq!(
        more.lines().last(),
        Some(format!("count {}", stored + 3).as_str())
    );
}

#[test]
fn the_key_value_store_survives_kill_9_with_every_put_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pager = Pager::start(&dir.path().join("root"), 4096);
    let kv = example("kv");
    let created = run(&pager, &kv, &["create"]);
    let id = created.trim().strip_prefix("store ").unwrap().to_owned();
    assert_eq!(
        run(&pager, &kv, &[&id, "put", "colour", "blue"]).trim(),
        "ok"
    );
    assert_eq!(run(&pager, &kv, &[&id, "get", "colour"]).trim(), "blue");
    let printed = kill_after(&pager, &kv, &[&id, "fill", "1500"], 100);
    let last: usize = printed
        .last()
        .and_then(|l| l.strip_prefix("put "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed:?}"));
    let list = run(&pager, &kv, &[&id, "list"]);
    let entries: std::collections::HashMap<&str, &str> =
        list.lines().filter_map(|l| l.split_once(' ')).collect();
    for i in 0..=last {
        assert_eq!(
            entries.get(format!("key-{i}").as_str()),
            Some(&format!("value-{i}").as_str()),
            "put {i} was acknowledged"
        );
    }
    // At most the put in flight beyond the last acknowledged one, whole or not at all.
    assert!(
        !entries.contains_key(format!("key-{}", last + 2).as_str()),
        "{list}"
    );
    assert!(
        entries.len() == last + 2 || entries.len() == last + 3,
        "{}",
        entries.len()
    );
    assert_eq!(entries.get("colour"), Some(&"blue"));
    // Bad input: a clear error, nothing stored.
    let out = Command::new(&kv)
        .args([&id, "put", &"k".repeat(40), "v"])
        .env("CLU_PAGER_SOCKET", &pager.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 32 bytes"));
}
