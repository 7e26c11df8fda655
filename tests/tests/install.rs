//! `scripts/install` into a scratch prefix: the files a user of the system expects where they
//! expect them, the man pages and completions generated from the command line, the units
//! pointing at the installed binary, and the C example built with `pkg-config --cflags --libs
//! clu` and run against a real pager.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clu_tests::harness::{output_within, pager_bin, Pager};

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_puts_binary_library_header_pkg_config_man_pages_completions_and_units_in_place() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let profile = if pager_bin()
        .parent()
        .expect("target dir")
        .ends_with("release")
    {
        "release"
    } else {
        "debug"
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("prefix");
    let said = run_ok(
        Command::new(repo.join("scripts/install"))
            .arg("--prefix")
            .arg(&prefix)
            .args(["--profile", profile]),
    );
    assert!(said.contains("installed under"), "{said}");
    for f in [
        "bin/pager",
        "lib/libclu.so",
        "lib/libclu.a",
        "include/clu.h",
        "lib/pkgconfig/clu.pc",
        "lib/tmpfiles.d/clu-pager.conf",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    // Man pages: one per command, at every depth, in man(7) format.
    let man = prefix.join("share/man/man1");
    for page in [
        "pager.1",
        "pager-serve.1",
        "pager-backup-server.1",
        "pager-vol-create.1",
        "pager-keys-issue.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let serve = std::fs::read_to_string(man.join("pager-serve.1")).unwrap();
    assert!(
        serve.contains("resident"),
        "pager-serve.1 lacks its options"
    );
    // Completions for three shells, naming the subcommands.
    for (f, shell) in [
        ("share/bash-completion/completions/pager", "bash"),
        ("share/zsh/site-functions/_pager", "zsh"),
        ("share/fish/vendor_completions.d/pager.fish", "fish"),
    ] {
        let text = std::fs::read_to_string(prefix.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            text.contains("backup-server"),
            "{shell} completion lacks the subcommands"
        );
    }
    // The units run the installed binary.
    let bin = prefix.join("bin/pager");
    for unit in ["clu-pager.service", "clu-backup@.service"] {
        let text = std::fs::read_to_string(prefix.join("lib/systemd/system").join(unit)).unwrap();
        assert!(
            text.contains(&format!("ExecStart={}", bin.display())),
            "{unit} does not start {}:\n{text}",
            bin.display()
        );
        assert!(text.contains("ProtectSystem=strict"), "{unit}");
    }
    let socket_unit =
        std::fs::read_to_string(prefix.join("lib/systemd/system/clu-pager.socket")).unwrap();
    assert!(
        socket_unit.contains("ListenStream=/run/clu/pager.sock"),
        "the socket unit listens where the service's --socket says:\n{socket_unit}"
    );
    // systemd reads them without a complaint (their keys, their ExecStart, their
    // Documentation= pages, found in the installed man pages).
    let unit_dir = prefix.join("lib/systemd/system");
    let instance = dir.path().join("clu-backup@b1.service");
    std::fs::copy(unit_dir.join("clu-backup@.service"), &instance).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_dir.join("clu-pager.service"))
        .arg(unit_dir.join("clu-pager.socket"))
        .arg(&instance)
        .env("MANPATH", prefix.join("share/man"))
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // The installed binary answers.
    let help = run_ok(Command::new(&bin).arg("--help"));
    assert!(help.contains("completions"), "{help}");

    // The C example, built the way a programmer would: pkg-config, then run.
    let pc = prefix.join("lib/pkgconfig");
    let flags = run_ok(
        Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", &pc)
            .args(["--cflags", "--libs", "clu"]),
    );
    assert!(flags.contains("-lclu"), "{flags}");
    let exe = dir.path().join("clu_example");
    run_ok(
        Command::new("cc")
            .arg(repo.join("examples/c/clu_example.c"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace()),
    );
    let pager = Pager::start(&dir.path().join("root"), 1024);
    // Found through the rpath pkg-config gave, not the build tree cargo points at.
    let out = output_within(
        Command::new(&exe)
            .env("CLU_PAGER_SOCKET", &pager.socket)
            .env_remove("LD_LIBRARY_PATH"),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("clu_example: ok 0001:"),
        "the example built with pkg-config failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
