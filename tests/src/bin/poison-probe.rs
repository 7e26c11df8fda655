//! Maps a registered memfd page and touches it after resolving it one way or another.
//!   poison-probe poison   the page is poisoned (UFFDIO_POISON): the read must raise SIGBUS
//!   poison-probe zero     the page is resolved with a zero page: the read returns 0, exit 0

use std::fs::File;
use std::os::fd::AsFd;

use clu_sys::mem::Mapping;
use clu_sys::uffd::{self, feature, mode, Range};

fn main() {
    let how = std::env::args().nth(1).unwrap_or_default();
    let memfd: File = nix::sys::memfd::memfd_create(
        c"poison-probe",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .expect("memfd_create")
    .into();
    memfd.set_len(4096).expect("size the memfd");
    let view = Mapping::file(memfd.as_fd(), 0, 4096, true).expect("mmap");
    let range = Range {
        start: view.addr() as u64,
        len: 4096,
    };
    let u = uffd::open(feature::CLUSTER, false).expect("userfaultfd");
    uffd::register(&u, range, mode::MISSING | mode::WP | mode::MINOR).expect("register");
    match how.as_str() {
        "poison" => uffd::poison(&u, range).expect("poison"),
        "zero" => {
            // Serve it the way the pager does: fill the memfd page (zeros here), then map it.
            use std::os::unix::fs::FileExt;
            memfd.write_all_at(&[0u8; 4096], 0).expect("fill");
            uffd::continue_range(&u, range, true).expect("continue");
        }
        _ => panic!("usage: poison-probe poison|zero"),
    }
    let v = view.read_u8(0);
    println!("read {v}");
}
