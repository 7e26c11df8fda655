//! The command line's errors say what to do next (ripgrep's standard): each case runs the real
//! `pager` binary, checks that it fails, and that its message names the fix.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use clu_tests::harness::{id_of, pager_bin, Pager, Tool};

/// Runs `pager ARGS` (as user `uid` if given) and returns its standard error; it must fail.
fn fails(args: &[&str], uid: Option<u32>) -> String {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={u}"))
                .arg(format!("--regid={u}"))
                .arg("--clear-groups")
                .arg(pager_bin());
            c
        }
        None => Command::new(pager_bin()),
    };
    let out = cmd.args(args).output().expect("run pager");
    assert!(!out.status.success(), "pager {args:?} succeeded: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.starts_with("pager: error: ") || err.starts_with("error: "),
        "{err}"
    );
    err
}

fn says(err: &str, hints: &[&str]) {
    for h in hints {
        assert!(err.contains(h), "no `{h}` in:\n{err}");
    }
    // A cause quoted in the message is not repeated under it.
    let lines: Vec<&str> = err.lines().collect();
    for w in lines.windows(2) {
        if let Some(cause) = w[1].strip_prefix("  caused by: ") {
            assert!(!w[0].contains(cause), "said twice:\n{err}");
        }
    }
}

#[test]
fn cli_errors_name_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let none = dir.path().join("none.sock");
    let none = none.to_str().unwrap();

    // No pager on the socket.
    says(
        &fails(&["--socket", none, "status"], None),
        &[
            "start one with `pager serve`",
            "--socket PATH or CLU_PAGER_SOCKET",
        ],
    );
    // Flags checked where they are parsed, naming the flag.
    says(
        &fails(
            &["backup-server", "--root", "x", "--listen", "nowhere"],
            None,
        ),
        &["--listen", "HOST:PORT"],
    );
    says(
        &fails(&["--socket", none, "top", "--interval", "0"], None),
        &["--interval", "between 0.05 and 3600"],
    );
    // Keys without a CA; a site name the cell would refuse later.
    let keys = dir.path().join("keys");
    let k = keys.to_str().unwrap();
    says(
        &fails(&["keys", "issue", k, "site-a"], None),
        &["pager keys init", "ca.crt"],
    );
    says(
        &fails(&["keys", "issue", k, "Site-A"], None),
        &["lowercase letters"],
    );
    // A storage root this user cannot write.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let root = locked.join("root");
    says(
        &fails(
            &["--socket", none, "serve", "--root", root.to_str().unwrap()],
            Some(65534),
        ),
        &["--root DIR", "CLU_STORAGE_ROOT", "Permission denied"],
    );

    // Against a running pager whose socket only root may use.
    let pager = Pager::start_with(&dir.path().join("root"), 1024, &["--socket-mode", "600"]);
    let socket = pager.socket.to_str().unwrap().to_owned();
    says(
        &fails(&["--socket", &socket, "status"], Some(65534)),
        &["permission denied", "--socket-group", "join its group"],
    );
    says(
        &fails(
            &[
                "--socket", &socket, "clu", "create", "default", "--pages", "0",
            ],
            None,
        ),
        &["--pages must be 1 to"],
    );
    says(
        &fails(&["--socket", &socket, "vol", "mount", "nosuch"], None),
        &["`pager vol list`"],
    );
    let mut t = Tool::start(&pager);
    let id = id_of(&t.ok("create 4 protected 1"));
    says(
        &fails(&["--socket", &socket, "vol", "unmount", "default"], None),
        &["`pager status` lists them"],
    );
    t.ok(&format!("unmap {id}"));
    says(
        &fails(
            &[
                "--socket",
                &socket,
                "clu",
                "resize",
                &id,
                "--add",
                "99999999999",
            ],
            None,
        ),
        &["would pass the limit"],
    );

    // A reader that goes away early is not an error (`pager status | head -0`).
    let mut child = Command::new(pager_bin())
        .args(["--socket", &socket, "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pager status");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "a closed pipe made `pager status` fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
