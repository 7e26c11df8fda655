//! A page the pager cannot serve raises SIGBUS in the client (UFFDIO_POISON, the Mach
//! `data_error`), instead of a silent zero page or a hang.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

#[test]
fn a_poisoned_page_raises_sigbus_and_a_served_one_does_not() {
    let run = |how| {
        Command::new(env!("CARGO_BIN_EXE_poison-probe"))
            .arg(how)
            .output()
            .expect("run poison-probe")
    };
    let served = run("zero");
    assert!(served.status.success(), "{served:?}");
    assert_eq!(String::from_utf8_lossy(&served.stdout).trim(), "read 0");
    let poisoned = run("poison");
    assert_eq!(
        poisoned.status.signal(),
        Some(libc_sigbus()),
        "{poisoned:?}"
    );
    assert!(
        poisoned.stdout.is_empty(),
        "the read returned data: {poisoned:?}"
    );
}

fn libc_sigbus() -> i32 {
    nix::sys::signal::Signal::SIGBUS as i32
}
