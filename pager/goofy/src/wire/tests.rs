//! The wire format: round trips, damage, arbitrary bytes.

use super::*;
use proptest::prelude::*;

fn samples() -> Vec<Msg> {
    let clu = CluInfo {
        clu: 5,
        npages: 10,
        owner: 1000,
        kind: ClusterKind::Shareable,
    };
    let runs = vec![Run {
        first_page: 8,
        pages: vec![9u8; 2 * PAGE_SIZE],
    }];
    let position = Position {
        epoch: 2,
        lsn: Lsn::new(3, 8192),
        complete: true,
    };
    vec![
        Msg::Hello {
            site: "site-a".into(),
            uid: 7,
            epoch: 2,
            name: "rel".into(),
            backups: vec!["127.0.0.1:1".into(), "[::1]:2".into()],
            sync: 1,
        },
        Msg::Welcome { position },
        Msg::Op {
            epoch: 2,
            lsn: Lsn::new(1, 4096),
            end: Lsn::new(1, 16384),
            seq: 3,
            written: Written {
                run: Lsn::new(1, 4096),
                end: Lsn::new(1, 32768),
                ops: 5,
            },
            clu,
            runs: runs.clone(),
            group_open: false,
        },
        Msg::Op {
            epoch: 2,
            lsn: Lsn::new(1, 16384),
            end: Lsn::new(1, 24576),
            seq: 4,
            written: Written::default(),
            clu,
            runs: runs.clone(),
            group_open: true,
        },
        Msg::Ack {
            lsn: Lsn::new(1, 4096),
        },
        Msg::Refused {
            why: "stale".into(),
        },
        Msg::CopyBegin {
            epoch: 3,
            clusters: vec![clu, clu],
        },
        Msg::CopyPages {
            epoch: 3,
            clu: 5,
            runs,
        },
        Msg::CopyEnd { epoch: 3, position },
        Msg::Inquire {
            site: "site-a".into(),
            name: "rel".into(),
        },
        Msg::Image(State {
            uid: 7,
            name: "rel".into(),
            epoch: 4,
            position,
            heard: Heard {
                seq: 2,
                written: Written {
                    run: Lsn::new(1, 4096),
                    end: Lsn::new(1, 65536),
                    ops: 9,
                },
            },
            backups: vec!["b:1".into()],
            sync: 0,
            creator: "site-a".into(),
            writer: "site-b".into(),
        }),
        Msg::Fence {
            site: "site-a".into(),
            uid: 7,
            epoch: 5,
        },
        Msg::Fetch {
            site: "site-b".into(),
            uid: 7,
            epoch: 5,
        },
        Msg::Fenced {
            why: "epoch 3 here".into(),
        },
        Msg::Destroy {
            epoch: 5,
            clu: 65535,
        },
        Msg::Written {
            epoch: 5,
            written: Written {
                run: Lsn::new(2, 4096),
                end: Lsn::new(3, 8192),
                ops: 17,
            },
        },
    ]
}

#[test]
fn messages_round_trip_through_frames_and_damage_is_refused() {
    for m in samples() {
        let mut buf = Vec::new();
        send(&mut buf, &m).unwrap();
        assert_eq!(recv(&mut buf.as_slice()).unwrap(), m);
        let mut bad = buf.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        assert!(matches!(
            recv(&mut bad.as_slice()),
            Err(WireError::Checksum)
        ));
        let payload = &buf[8..];
        for cut in 0..payload.len() {
            assert!(Msg::decode(&payload[..cut]).is_err(), "{m:?} cut at {cut}");
        }
    }
    let op = Msg::Op {
        epoch: 1,
        lsn: Lsn::default(),
        end: Lsn::new(0, 1),
        seq: 0,
        written: Written::default(),
        clu: CluInfo {
            clu: 0,
            npages: 1,
            owner: 0,
            kind: ClusterKind::Protected,
        },
        runs: vec![Run {
            first_page: 1,
            pages: vec![0; PAGE_SIZE],
        }],
        group_open: false,
    };
    assert!(
        Msg::decode(&op.encode()).is_err(),
        "a run past the cluster's end"
    );
    let mut huge = Vec::new();
    huge.extend(u32::MAX.to_le_bytes());
    huge.extend([0u8; 4]);
    assert!(matches!(
        recv(&mut huge.as_slice()),
        Err(WireError::Oversized(_))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(m) = Msg::decode(&bytes) {
            prop_assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
    }
}
