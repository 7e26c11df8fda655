use super::*;
use crate::encode::{decide_bytes, group_bytes, op_bytes, prepared_bytes, seal_page, PageRun};
use crate::format::{encode_file_header, AnchorSlot, FileId, PAGE_SIZE};
use proptest::prelude::*;

const P: usize = PAGE_SIZE;

/// The runs of an op: `(first_page, npages, fill byte)`.
type Runs<'a> = &'a [(u64, usize, u8)];

/// An in-memory log file being built.
struct File {
    id: FileId,
    bytes: Vec<u8>,
    at: usize,
    ops: Vec<(u64, u64)>, // (offset, end) of each op
}

impl File {
    fn new(seq: u64, pages: usize) -> File {
        let id = FileId {
            seq,
            salt: 0xabcd_0000 + seq,
        };
        let mut bytes = vec![0u8; pages * P];
        encode_file_header(id, &mut bytes[..P]);
        File {
            id,
            bytes,
            at: P,
            ops: Vec::new(),
        }
    }

    /// Appends an op writing `runs` = [(first_page, npages, fill byte)].
    fn op(&mut self, cluster: u32, runs: &[(u64, usize, u8)]) -> &mut Self {
        self.group(&[(cluster, runs)])
    }

    /// Appends a group of ops (one op: a lone op), each `(cluster, runs)` as for [`File::op`].
    fn group(&mut self, ops: &[(u32, Runs<'_>)]) -> &mut Self {
        let datas: Vec<Vec<Vec<u8>>> = ops
            .iter()
            .map(|(_, runs)| runs.iter().map(|&(_, n, b)| vec![b; n * P]).collect())
            .collect();
        let prs: Vec<Vec<PageRun<'_>>> = ops
            .iter()
            .zip(&datas)
            .map(|((_, runs), d)| {
                runs.iter()
                    .zip(d)
                    .map(|(&(first, _, _), d)| PageRun {
                        first_page: first,
                        pages: d,
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<(u32, &[PageRun<'_>])> = ops
            .iter()
            .zip(&prs)
            .map(|((c, _), r)| (*c, r.as_slice()))
            .collect();
        let b = if refs.len() == 1 {
            op_bytes(self.id, self.at as u64, refs[0].0, refs[0].1)
        } else {
            group_bytes(self.id, self.at as u64, &refs)
        };
        self.bytes[self.at..self.at + b.len()].copy_from_slice(&b);
        let mut at = self.at;
        for (_, runs) in ops {
            let len: usize = runs.iter().map(|&(_, n, _)| (1 + n) * P).sum();
            self.ops.push((at as u64, (at + len) as u64));
            at += len;
        }
        self.at += b.len();
        self
    }

    /// Appends a prepared group of transaction `txid` (coordinator 9): its ops, then the
    /// prepare record (one page, pushed to `ops` as an op of its own).
    fn prepared(&mut self, txid: u64, ops: &[(u32, Runs<'_>)]) -> &mut Self {
        let datas: Vec<Vec<Vec<u8>>> = ops
            .iter()
            .map(|(_, runs)| runs.iter().map(|&(_, n, b)| vec![b; n * P]).collect())
            .collect();
        let prs: Vec<Vec<PageRun<'_>>> = ops
            .iter()
            .zip(&datas)
            .map(|((_, runs), d)| {
                runs.iter()
                    .zip(d)
                    .map(|(&(first, _, _), d)| PageRun {
                        first_page: first,
                        pages: d,
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<(u32, &[PageRun<'_>])> = ops
            .iter()
            .zip(&prs)
            .map(|((c, _), r)| (*c, r.as_slice()))
            .collect();
        let b = prepared_bytes(self.id, self.at as u64, &refs, txid, 9);
        self.bytes[self.at..self.at + b.len()].copy_from_slice(&b);
        let mut at = self.at;
        for (_, runs) in ops {
            let len: usize = runs.iter().map(|&(_, n, _)| (1 + n) * P).sum();
            self.ops.push((at as u64, (at + len) as u64));
            at += len;
        }
        self.ops.push((at as u64, (at + P) as u64));
        self.at += b.len();
        self
    }

    /// Appends the decision of transaction `txid`.
    fn decide(&mut self, txid: u64, commit: bool) -> &mut Self {
        let b = decide_bytes(self.id, self.at as u64, txid, commit);
        self.bytes[self.at..self.at + P].copy_from_slice(&b);
        self.ops.push((self.at as u64, (self.at + P) as u64));
        self.at += P;
        self
    }

    fn seal(&mut self) -> &mut Self {
        let s = seal_page(self.id, self.at as u64);
        self.bytes[self.at..self.at + P].copy_from_slice(&s);
        self
    }

    fn image(&self) -> LogImage<'_> {
        LogImage {
            seq: self.id.seq,
            bytes: &self.bytes,
        }
    }
}

fn anchor(log: (u64, u64), durable: (u64, u64)) -> AnchorSlot {
    AnchorSlot {
        seq: 5,
        log_lsn: Lsn::new(log.0, log.1),
        durable_lsn: Lsn::new(durable.0, durable.1),
    }
}

fn start() -> AnchorSlot {
    anchor((1, P as u64), (1, P as u64))
}

fn replayed(plan: &Plan) -> Vec<(u32, u64)> {
    plan.replay
        .iter()
        .map(|o| (o.cluster, o.lsn.offset))
        .collect()
}

#[test]
fn empty_log_plans_nothing() {
    let f = File::new(1, 16);
    let plan = plan(&start(), &[f.image()]).unwrap();
    assert!(plan.replay.is_empty());
    assert_eq!(plan.log_end, Lsn::new(1, P as u64));
    assert_eq!(plan.truncate, None);
    assert!(!plan.last_sealed);
}

#[test]
fn validated_ops_replay_in_order_with_their_runs() {
    let mut f = File::new(1, 64);
    f.op(7, &[(0, 2, 1)])
        .op(8, &[(3, 1, 2), (10, 3, 3)])
        .op(7, &[(0, 1, 4)]);
    let plan = plan(&start(), &[f.image()]).unwrap();
    assert_eq!(
        replayed(&plan),
        vec![(7, f.ops[0].0), (8, f.ops[1].0), (7, f.ops[2].0)]
    );
    let op = &plan.replay[1];
    assert_eq!(op.runs.len(), 2);
    assert_eq!(op.runs[1].first_page, 10);
    assert!(f.bytes[op.runs[1].bytes.clone()].iter().all(|&b| b == 3));
    assert_eq!(op.runs[1].bytes.len(), 3 * P);
    assert_eq!(plan.log_end, Lsn::new(1, f.ops[2].1));
}

#[test]
fn replay_starts_at_durable_lsn() {
    let mut f = File::new(1, 64);
    f.op(1, &[(0, 1, 1)])
        .op(2, &[(0, 1, 2)])
        .op(3, &[(0, 1, 3)]);
    let mid = f.ops[1].0;
    let plan = plan(&anchor((1, mid), (1, mid)), &[f.image()]).unwrap();
    assert_eq!(replayed(&plan), vec![(2, mid), (3, f.ops[2].0)]);
}

/// A crash can leave any prefix of the last operation's pages on disk (or any subset, since the
/// disk may reorder): it must never be replayed, and earlier operations must be kept.
#[test]
fn every_torn_prefix_and_subset_of_the_last_op_is_truncated() {
    let mut full = File::new(1, 64);
    full.op(1, &[(0, 2, 9)]).op(2, &[(0, 3, 1), (5, 2, 2)]);
    let (last_start, last_end) = full.ops[1];
    let npages = ((last_end - last_start) as usize) / P;
    let blank = {
        let mut f = File::new(1, 64);
        f.op(1, &[(0, 2, 9)]);
        f
    };
    // Every subset of the last op's pages (7 pages: 128 subsets) reached the disk.
    for mask in 0u32..(1 << npages) - 1 {
        let mut f = File::new(1, 64);
        f.bytes = blank.bytes.clone();
        for p in 0..npages {
            if mask & (1 << p) != 0 {
                let at = last_start as usize + p * P;
                f.bytes[at..at + P].copy_from_slice(&full.bytes[at..at + P]);
            }
        }
        let plan = plan(&start(), &[f.image()]).unwrap_or_else(|e| panic!("mask {mask:#b}: {e}"));
        assert_eq!(replayed(&plan), vec![(1, full.ops[0].0)], "mask {mask:#b}");
        assert_eq!(plan.log_end, Lsn::new(1, last_start));
        if let Some((_, r)) = &plan.truncate {
            assert_eq!(r.start, last_start);
            assert!(r.end <= last_end);
        }
    }
    // All pages present: validated.
    let plan = plan(&start(), &[full.image()]).unwrap();
    assert_eq!(plan.replay.len(), 2);
}

/// A group of three operations after a single one: any subset of the group's pages on disk
/// but the whole keeps none of the group, and the truncation starts at the group.
#[test]
fn a_group_is_kept_whole_or_not_at_all() {
    let mut full = File::new(1, 64);
    full.op(1, &[(0, 1, 9)]).group(&[
        (2, &[(0, 1, 1)]),
        (3, &[(4, 1, 2), (9, 1, 4)]),
        (2, &[(7, 1, 3)]),
    ]);
    let group_start = full.ops[1].0;
    let group_end = full.ops[3].1;
    let npages = ((group_end - group_start) as usize) / P;
    let blank = {
        let mut f = File::new(1, 64);
        f.op(1, &[(0, 1, 9)]);
        f
    };
    for mask in 0u32..(1 << npages) - 1 {
        let mut f = File::new(1, 64);
        f.bytes = blank.bytes.clone();
        for p in 0..npages {
            if mask & (1 << p) != 0 {
                let at = group_start as usize + p * P;
                f.bytes[at..at + P].copy_from_slice(&full.bytes[at..at + P]);
            }
        }
        let plan = plan(&start(), &[f.image()]).unwrap_or_else(|e| panic!("mask {mask:#b}: {e}"));
        assert_eq!(replayed(&plan), vec![(1, full.ops[0].0)], "mask {mask:#b}");
        assert_eq!(plan.log_end, Lsn::new(1, group_start), "mask {mask:#b}");
        if let Some((_, r)) = &plan.truncate {
            assert_eq!(r.start, group_start, "mask {mask:#b}");
            assert!(r.end <= group_end);
        }
        // What was validated of the group is zeroed with the rest.
        if mask & 0b11 == 0b11 {
            assert!(plan.truncate.is_some(), "mask {mask:#b}");
        }
    }
    let plan = plan(&start(), &[full.image()]).unwrap();
    assert_eq!(
        replayed(&plan),
        vec![
            (1, full.ops[0].0),
            (2, full.ops[1].0),
            (3, full.ops[2].0),
            (2, full.ops[3].0)
        ]
    );
    assert_eq!(plan.log_end, Lsn::new(1, group_end));
}

/// A prepared group is replayed only when a decision to commit follows it, dropped when one
/// to abort does, and given back in doubt, with its operations, when none does.
#[test]
fn a_prepared_group_waits_for_its_decision() {
    let mut f = File::new(1, 64);
    f.op(1, &[(0, 1, 1)])
        .prepared(77, &[(2, &[(0, 1, 2)]), (3, &[(0, 2, 3)])])
        .op(4, &[(0, 1, 4)]);
    let (g0, g1) = (f.ops[1].0, f.ops[2].0);
    let p = plan(&start(), &[f.image()]).unwrap();
    assert_eq!(replayed(&p), vec![(1, f.ops[0].0), (4, f.ops[4].0)]);
    assert_eq!(p.in_doubt.len(), 1);
    assert_eq!((p.in_doubt[0].txid, p.in_doubt[0].coordinator), (77, 9));
    assert_eq!(
        p.in_doubt[0]
            .ops
            .iter()
            .map(|o| (o.cluster, o.lsn.offset))
            .collect::<Vec<_>>(),
        vec![(2, g0), (3, g1)]
    );
    assert_eq!(p.log_end, Lsn::new(1, f.at as u64));
    for commit in [true, false] {
        let mut d = File::new(1, 64);
        d.bytes = f.bytes.clone();
        d.at = f.at;
        d.decide(77, commit).decide(12, true);
        let p = plan(&start(), &[d.image()]).unwrap();
        assert!(p.in_doubt.is_empty());
        let ops: Vec<u32> = p.replay.iter().map(|o| o.cluster).collect();
        if commit {
            assert_eq!(ops, vec![1, 2, 3, 4]);
        } else {
            assert_eq!(ops, vec![1, 4]);
        }
    }
}

/// A prepared group that is not complete (any of its pages missing, its prepare record
/// included) is truncated like any torn group, and is not in doubt.
#[test]
fn a_torn_prepared_group_is_truncated() {
    let mut full = File::new(1, 64);
    full.op(1, &[(0, 1, 9)])
        .prepared(5, &[(2, &[(0, 1, 1)]), (3, &[(4, 1, 2)])]);
    let group_start = full.ops[1].0;
    let npages = (full.at - group_start as usize) / P;
    for mask in 0u32..(1 << npages) - 1 {
        let mut f = File::new(1, 64);
        f.op(1, &[(0, 1, 9)]);
        for p in 0..npages {
            if mask & (1 << p) != 0 {
                let at = group_start as usize + p * P;
                f.bytes[at..at + P].copy_from_slice(&full.bytes[at..at + P]);
            }
        }
        let p = plan(&start(), &[f.image()]).unwrap_or_else(|e| panic!("mask {mask:#b}: {e}"));
        assert_eq!(replayed(&p), vec![(1, full.ops[0].0)], "mask {mask:#b}");
        assert!(p.in_doubt.is_empty(), "mask {mask:#b}");
        assert_eq!(p.log_end, Lsn::new(1, group_start), "mask {mask:#b}");
    }
}

#[test]
fn a_seal_inside_a_group_is_refused() {
    let mut f = File::new(1, 64);
    f.op(1, &[(0, 1, 1)])
        .group(&[(2, &[(0, 1, 2)]), (3, &[(0, 1, 3)])]);
    // The group's last op replaced by a seal.
    f.at = f.ops[2].0 as usize;
    f.bytes[f.at..f.at + 2 * P].fill(0);
    f.seal();
    let group_start = f.ops[1].0;
    match plan(&start(), &[f.image()]) {
        Err(RecoveryError::CorruptMidLog { at, .. }) => assert_eq!(at, Lsn::new(1, group_start)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncation_covers_the_whole_footprint_of_a_torn_op() {
    let mut f = File::new(1, 64);
    f.op(1, &[(0, 1, 1), (4, 2, 2), (9, 1, 3)]);
    let (s, e) = f.ops[0];
    // Tear the payload of the first record only: later headers stay live.
    f.bytes[s as usize + P + 5] ^= 0xff;
    let plan = plan(&start(), &[f.image()]).unwrap();
    assert!(plan.replay.is_empty());
    assert_eq!(plan.truncate, Some((1, s..e)));
}

#[test]
fn a_bit_flip_in_the_last_op_is_not_applied() {
    let mut base = File::new(1, 64);
    base.op(1, &[(0, 1, 1)]).op(2, &[(0, 2, 2)]);
    let (s, e) = base.ops[1];
    for at in (s as usize..e as usize).step_by(P / 4) {
        let mut f = File::new(1, 64);
        f.bytes = base.bytes.clone();
        f.bytes[at] ^= 0x10;
        let plan = plan(&start(), &[f.image()]).unwrap();
        assert_eq!(plan.replay.len(), 1, "flip at {at:#x} was applied");
    }
}

#[test]
fn damage_before_a_later_validated_op_is_refused() {
    let mut base = File::new(1, 64);
    base.op(1, &[(0, 1, 1)])
        .op(2, &[(0, 2, 2)])
        .op(3, &[(0, 1, 3)]);
    let (s, e) = base.ops[1];
    for at in (s as usize..e as usize).step_by(P / 2) {
        let mut f = File::new(1, 64);
        f.bytes = base.bytes.clone();
        f.bytes[at + 100] ^= 0x01;
        match plan(&start(), &[f.image()]) {
            Err(RecoveryError::CorruptMidLog { at: a, later }) => {
                assert_eq!(a, Lsn::new(1, s));
                assert!(
                    later.offset >= e,
                    "later record {later} inside the damaged op"
                );
            }
            other => panic!("flip at {at:#x}: {other:?}"),
        }
    }
}

#[test]
fn a_log_ending_before_the_validated_point_is_refused() {
    let mut f = File::new(1, 64);
    f.op(1, &[(0, 1, 1)]).op(2, &[(0, 1, 2)]);
    let end = f.ops[1].1;
    f.bytes[f.ops[1].0 as usize + P] ^= 1; // damage the last (validated) op
    let err = plan(&anchor((1, end), (1, P as u64)), &[f.image()]).unwrap_err();
    assert_eq!(
        err,
        RecoveryError::LostValidated {
            end: Lsn::new(1, f.ops[1].0),
            log_lsn: Lsn::new(1, end)
        }
    );
}

#[test]
fn stale_records_with_another_salt_or_position_are_not_live() {
    let mut old = File::new(1, 64);
    old.op(1, &[(0, 1, 1)])
        .op(2, &[(0, 1, 2)])
        .op(3, &[(0, 1, 3)]);
    // The file is recycled: new salt, one new op; the old ops' bytes remain after it.
    let mut f = File::new(1, 64);
    f.id.salt ^= 0xffff;
    f.bytes = old.bytes.clone();
    encode_file_header(f.id, &mut f.bytes[..P]);
    f.op(9, &[(0, 1, 9)]);
    let p = plan(&start(), &[f.image()]).unwrap();
    assert_eq!(replayed(&p), vec![(9, P as u64)]);
    // A record copied to another position is not live there either.
    let mut g = File::new(1, 64);
    g.op(1, &[(0, 1, 1)]);
    let copy = g.bytes[P..3 * P].to_vec();
    g.bytes[3 * P..5 * P].copy_from_slice(&copy);
    let plan = plan(&start(), &[g.image()]).unwrap();
    assert_eq!(plan.replay.len(), 1);
}

#[test]
fn record_shaped_client_data_is_never_taken_for_a_record() {
    // A client commits a page that holds a perfect record header for the position right after
    // its own op, but it cannot know the file's salt.
    let mut f = File::new(1, 64);
    let id = f.id;
    let forged_at = P + 2 * P;
    let mut forged = File::new(1, 64);
    forged.id.salt = 0x0bad;
    forged.at = forged_at;
    forged.op(0xdead, &[(0, 1, 0x66)]);
    let page = forged.bytes[forged_at..forged_at + P].to_vec();
    let prs = [PageRun {
        first_page: 0,
        pages: &page,
    }];
    let b = op_bytes(id, P as u64, 1, &prs);
    f.bytes[P..P + b.len()].copy_from_slice(&b);
    // Move the forged op's payload after it as if it had been written there.
    let tail = forged.bytes[forged_at + P..forged_at + 2 * P].to_vec();
    f.bytes[forged_at + P..forged_at + 2 * P].copy_from_slice(&tail);
    let plan = plan(&start(), &[f.image()]).unwrap();
    assert_eq!(replayed(&plan), vec![(1, P as u64)]);
}

#[test]
fn sealed_files_chain_and_unsealed_or_missing_files_are_refused() {
    let mut f1 = File::new(1, 32);
    f1.op(1, &[(0, 1, 1)]).seal();
    let mut f2 = File::new(2, 32);
    f2.op(2, &[(0, 1, 2)]);
    let plan = plan(&start(), &[f1.image(), f2.image()]).unwrap();
    assert_eq!(
        plan.replay.iter().map(|o| o.lsn).collect::<Vec<_>>(),
        vec![Lsn::new(1, P as u64), Lsn::new(2, P as u64)]
    );
    assert_eq!(plan.log_end, Lsn::new(2, f2.ops[0].1));

    let mut u1 = File::new(1, 32);
    u1.op(1, &[(0, 1, 1)]);
    assert_eq!(
        plan_err(&[u1.image(), f2.image()]),
        RecoveryError::UnsealedFile {
            seq: 1,
            offset: u1.ops[0].1
        }
    );
    let f3 = File::new(3, 32);
    assert_eq!(
        plan_err(&[f1.image(), f3.image()]),
        RecoveryError::MissingFile { seq: 2 }
    );
    assert_eq!(plan_err(&[]), RecoveryError::MissingFile { seq: 1 });
}

fn plan_err(files: &[LogImage<'_>]) -> RecoveryError {
    plan(&start(), files).unwrap_err()
}

#[test]
fn a_sealed_last_file_asks_for_a_new_file() {
    let mut f = File::new(1, 32);
    f.op(1, &[(0, 1, 1)]).seal();
    let plan = plan(&start(), &[f.image()]).unwrap();
    assert!(plan.last_sealed);
    assert_eq!(plan.log_end, Lsn::new(1, f.ops[0].1));
}

#[test]
fn bad_file_headers_are_named() {
    let mut f = File::new(1, 16);
    f.bytes[3] ^= 1;
    assert!(matches!(
        plan_err(&[f.image()]),
        RecoveryError::BadFileHeader {
            seq: 1,
            reason: DecodeError::BadMagic
        }
    ));
    let g = File::new(2, 16);
    let img = LogImage {
        seq: 1,
        bytes: &g.bytes,
    };
    assert!(matches!(
        plan_err(&[img]),
        RecoveryError::BadFileHeader { seq: 1, .. }
    ));
    let short = LogImage {
        seq: 1,
        bytes: &[0u8; 10],
    };
    assert!(matches!(
        plan_err(&[short]),
        RecoveryError::BadFileHeader { seq: 1, .. }
    ));
}

#[test]
fn durable_lsn_outside_its_file_is_refused() {
    let f = File::new(1, 4);
    let a = anchor((1, 64 * P as u64), (1, 64 * P as u64));
    assert!(matches!(
        plan(&a, &[f.image()]),
        Err(RecoveryError::DurableOutOfRange(_))
    ));
}

#[test]
fn the_newest_intact_anchor_slot_wins() {
    let enc = |seq| {
        let mut p = vec![0u8; P];
        AnchorSlot {
            seq,
            log_lsn: Lsn::new(1, P as u64),
            durable_lsn: Lsn::new(1, P as u64),
        }
        .encode(&mut p);
        p
    };
    let (a, b) = (enc(4), enc(5));
    assert_eq!(choose_anchor(&a, &b).unwrap().seq, 5);
    assert_eq!(choose_anchor(&b, &a).unwrap().seq, 5);
    let mut torn = b.clone();
    torn[20] ^= 1;
    assert_eq!(choose_anchor(&a, &torn).unwrap().seq, 4);
    assert_eq!(choose_anchor(&torn, &a).unwrap().seq, 4);
    assert_eq!(choose_anchor(&a, &[]).unwrap().seq, 4);
    assert!(choose_anchor(&torn, &vec![0u8; P]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes as anchor and log: recovery answers (a plan or an error), never panics.
    #[test]
    fn arbitrary_bytes_never_panic(
        slot0 in proptest::collection::vec(any::<u8>(), 0..128),
        body in proptest::collection::vec(any::<u8>(), 0..6 * P),
        keep_header: bool,
    ) {
        let _ = choose_anchor(&slot0, &slot0);
        let mut bytes = body;
        if keep_header && bytes.len() >= P {
            encode_file_header(FileId { seq: 1, salt: 3 }, &mut bytes[..P]);
        }
        let _ = plan(&start(), &[LogImage { seq: 1, bytes: &bytes }]);
    }

    /// Ops written in order, the disk cut at any page: the plan replays exactly the ops that were
    /// entirely written, in order, and never errors.
    #[test]
    fn any_cut_replays_exactly_the_complete_ops(
        ops in proptest::collection::vec((1u32..4, proptest::collection::vec((0u64..32, 1usize..4), 1..4)), 1..8),
        cut_page in 0usize..80,
    ) {
        let mut full = File::new(1, 96);
        for (i, (cluster, runs)) in ops.iter().enumerate() {
            let runs: Vec<(u64, usize, u8)> = runs.iter().map(|&(f, n)| (f, n, i as u8 + 1)).collect();
            full.op(*cluster, &runs);
        }
        let cut = (P + cut_page * P).min(full.at);
        let mut f = File::new(1, 96);
        f.bytes[..cut].copy_from_slice(&full.bytes[..cut]);
        let plan = plan(&start(), &[f.image()]).unwrap();
        let complete: Vec<u64> = full.ops.iter().filter(|&&(_, e)| e as usize <= cut).map(|&(s, _)| s).collect();
        prop_assert_eq!(plan.replay.iter().map(|o| o.lsn.offset).collect::<Vec<_>>(), complete);
    }

    /// Groups of ops written in order, the disk cut at any page: the plan replays exactly the
    /// ops of the groups entirely written, in order, and never errors.
    #[test]
    fn any_cut_replays_exactly_the_complete_groups(
        groups in proptest::collection::vec(
            proptest::collection::vec((1u32..4, 0u64..32, 1usize..3), 1..4), 1..6),
        cut_page in 0usize..60,
    ) {
        let mut full = File::new(1, 96);
        let mut bounds = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let runs: Vec<[(u64, usize, u8); 1]> =
                g.iter().map(|&(_, first, n)| [(first, n, i as u8 + 1)]).collect();
            let ops: Vec<(u32, Runs<'_>)> =
                g.iter().zip(&runs).map(|(&(c, _, _), r)| (c, &r[..])).collect();
            let before = full.ops.len();
            full.group(&ops);
            bounds.push(before..full.ops.len());
        }
        let cut = (P + cut_page * P).min(full.at);
        let mut f = File::new(1, 96);
        f.bytes[..cut].copy_from_slice(&full.bytes[..cut]);
        let plan = plan(&start(), &[f.image()]).unwrap();
        let mut complete = Vec::new();
        for b in bounds {
            if full.ops[b.end - 1].1 as usize > cut {
                break;
            }
            complete.extend(full.ops[b].iter().map(|&(s, _)| s));
        }
        prop_assert_eq!(plan.replay.iter().map(|o| o.lsn.offset).collect::<Vec<_>>(), complete);
    }
}
