//! The C example (`examples/c/clu_example.c`), compiled against `libclu.a` and the header the
//! way the README shows, and run against a real pager.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use clu_tests::harness::{output_within, Pager};

#[test]
fn the_c_example_compiles_links_and_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let target = clu_tests::harness::pager_bin()
        .parent()
        .expect("target/<profile>")
        .to_owned();
    let release = target.ends_with("release");
    // The static library is a build product of its own crate: make sure it is current.
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(repo)
        .args(["build", "-q", "-p", "clu-capi"]);
    if release {
        cargo.arg("--release");
    }
    let st = cargo.status().expect("cargo build -p clu-capi");
    assert!(st.success(), "building libclu.a failed");

    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("clu_example");
    let out = Command::new("cc")
        .arg(repo.join("examples/c/clu_example.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-I{}", repo.join("client/include").display()))
        .arg(format!("-L{}", target.display()))
        .args(["-l:libclu.a", "-lpthread", "-ldl", "-lm"])
        .output()
        .expect("run cc (install a C compiler: apt-get install gcc)");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pager = Pager::start(&dir.path().join("root"), 1024);
    let out = output_within(
        Command::new(&exe).env("CLU_PAGER_SOCKET", &pager.socket),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("clu_example: ok 0001:"),
        "the example failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
