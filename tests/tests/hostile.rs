//! A misbehaving client gets errors and cannot disturb the pager or other clients.

use std::os::fd::AsFd;

use client::proto::{MapMode, Request, Response, VERSION};
use client::{ClusterId, ClusterKind, ErrorCode};
use clu_tests::harness::{Pager, Tool};
use clu_tests::raw::RawClient;

fn code(r: Option<Response>) -> i32 {
    match r {
        Some(Response::Error { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_and_foreign_requests_get_errors_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut pager = Pager::start(&dir.path().join("root"), 1024);
    let mut good = Tool::start(&pager);
    let id = good
        .ok("create 4")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    good.ok(&format!("fill {id} 4"));

    let c = RawClient::connect(&pager.socket);
    let frame = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let protocol = ErrorCode::Protocol as i32;
    assert_eq!(code(c.bytes(&frame(&[VERSION, 200, 1, 2]), &[])), protocol);
    assert_eq!(code(c.bytes(&frame(&[VERSION + 1, 1]), &[])), protocol);
    assert_eq!(code(c.bytes(&frame(&[]), &[])), protocol);
    let foreign = ClusterId(0x8001_0000);
    for req in [
        Request::Map {
            id: foreign,
            mode: MapMode::ReadWrite,
        },
        Request::Map {
            id: ClusterId(0x0001_7777),
            mode: MapMode::ReadWrite,
        },
        Request::Commit {
            id: ClusterId(0x0001_0000),
        },
        Request::Unmap {
            id: ClusterId(0x0001_0000),
        },
        Request::Resize {
            id: ClusterId(0x0001_0000),
            add: u64::MAX,
        },
    ] {
        let e = code(c.call(&req, &[]));
        assert!(
            e == ErrorCode::NotFound as i32 || e == ErrorCode::Invalid as i32,
            "{req:?}: {e}"
        );
    }
    let create = |npages| Request::CreateMap {
        vol: 1,
        npages,
        kind: ClusterKind::Shareable,
    };
    assert_eq!(code(c.call(&create(0), &[])), ErrorCode::Invalid as i32);
    assert_eq!(
        code(c.call(&create(u64::MAX), &[])),
        ErrorCode::Invalid as i32
    );
    assert_eq!(
        code(c.call(
            &Request::CreateMap {
                vol: 9,
                npages: 1,
                kind: ClusterKind::Shareable
            },
            &[]
        )),
        ErrorCode::NotFound as i32
    );
    // A real cluster, then attach requests that lie.
    let Some(Response::Mapped { id: mine, .. }) = c.call(&create(2), &[]) else {
        panic!("create")
    };
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let attach = |first_page, npages| Request::Attach {
        id: mine,
        first_page,
        base: 0x1000_0000,
        npages,
        flags: 0,
    };
    assert_eq!(
        code(c.call(&attach(0, 2), &[pipe_r.as_fd()])),
        ErrorCode::Invalid as i32
    );
    assert_eq!(code(c.call(&attach(0, 2), &[])), ErrorCode::Invalid as i32);
    let u = client::uffd::open(client::uffd::feature::CLUSTER, false).unwrap();
    assert_eq!(
        code(c.call(&attach(1, 5), &[u.as_fd()])),
        ErrorCode::Invalid as i32
    );
    assert_eq!(
        code(c.call(&Request::Commit { id: mine }, &[pipe_r.as_fd()])),
        protocol
    );
    // An admin command with garbage words, and one reserved to root from... root is allowed,
    // so only the grammar is checked here.
    assert_eq!(
        code(c.call(
            &Request::Admin {
                words: vec!["vol".into(), "explode".into()]
            },
            &[]
        )),
        ErrorCode::Invalid as i32
    );
    // An oversized frame: the pager answers and closes this connection only.
    let mut huge = (u32::MAX).to_le_bytes().to_vec();
    huge.extend_from_slice(&[VERSION, 1]);
    assert_eq!(code(c.bytes(&huge, &[])), protocol);
    assert!(
        c.call(&Request::Commit { id: mine }, &[]).is_none(),
        "closed"
    );

    // Everyone else carries on.
    good.ok(&format!("check {id} 4"));
    good.ok(&format!("commit {id}"));
    assert!(pager.alive());
    assert!(pager.status().contains("connections"));
}
