//! A short soak (`clu-soak`, 20 s): random reads, writes, commits and aborts from clients that
//! come, go and are killed; every page checked against the committed model, the pager's
//! descriptors back to their baseline, its memory flat. `scripts/soak` runs it longer.

use std::process::Command;
use std::time::Duration;

use clu_tests::harness::{output_within, pager_bin};

#[test]
fn a_short_soak_loses_nothing_and_leaks_nothing() {
    pager_bin();
    let exe = std::env::current_exe().unwrap();
    let soak = exe.parent().unwrap().parent().unwrap().join("clu-soak");
    let out = output_within(
        Command::new(&soak).args(["--seconds", "20", "--clients", "3", "--threads", "3"]),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "clu-soak failed: {:?}", out.status);
    assert!(
        stdout.contains("wrong pages 0; failed clients 0"),
        "{stdout}"
    );
    let started: u64 = stdout
        .split("clients started ")
        .nth(1)
        .and_then(|s| s.split(',').next()?.parse().ok())
        .unwrap_or(0);
    assert!(started >= 6, "too few clients came and went: {stdout}");
}
