//! Journal recovery over arbitrary anchor and log bytes: `choose_anchor` and `plan` answer with a
//! plan or an error, never a panic, and a plan only replays operations inside the files given.
//!
//! The input is split as: 2 anchor slots of 64 bytes, one byte choosing the file layout, then the
//! log bytes. Half of the inputs start from a valid log (a header and operations built from the
//! input) that the rest of the input then damages, so the fuzzer spends its time past the
//! magic-number checks.
#![no_main]

use journal::format::{encode_file_header, AnchorSlot, FileId, PAGE_SIZE};
use journal::recovery::{choose_anchor, plan, LogImage};
use journal::{op_bytes, Lsn, PageRun};
use libfuzzer_sys::fuzz_target;

const P: usize = PAGE_SIZE;

/// A valid log file: a header page, then operations of the pages `seed` describes.
fn valid_log(id: FileId, seed: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; P];
    encode_file_header(id, &mut bytes[..P]);
    for (i, chunk) in seed.chunks(3).take(6).enumerate() {
        let first_page = u64::from(chunk[0] % 16);
        let n = 1 + usize::from(chunk.get(1).copied().unwrap_or(0) % 3);
        let pages = vec![chunk.get(2).copied().unwrap_or(i as u8); n * P];
        let run = PageRun {
            first_page,
            pages: &pages,
        };
        let offset = bytes.len() as u64;
        bytes.extend(op_bytes(id, offset, 1 + i as u32 % 3, &[run]));
    }
    bytes.resize(bytes.len() + 2 * P, 0);
    bytes
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 129 {
        return;
    }
    let (slots, rest) = data.split_at(128);
    let chosen = choose_anchor(&slots[..64], &slots[64..]);
    let (layout, body) = (rest[0], &rest[1..]);
    let id = FileId { seq: 1, salt: 7 };
    let log = if layout & 1 == 0 {
        body.to_vec()
    } else {
        // Damage a valid log: the rest of the input is a list of (offset, xor) pairs.
        let (seed, damage) = body.split_at(body.len().min(18));
        let mut log = valid_log(id, seed);
        for pair in damage.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % log.len();
            log[at] ^= pair[2];
        }
        if layout & 2 != 0 {
            let cut = usize::from(layout) * 97 % log.len();
            log.truncate(cut);
        }
        log
    };
    let anchor = chosen.unwrap_or(AnchorSlot {
        seq: 1,
        log_lsn: Lsn::new(1, P as u64),
        durable_lsn: Lsn::new(1, P as u64),
    });
    let files = [LogImage {
        seq: 1,
        bytes: &log,
    }];
    if let Ok(p) = plan(&anchor, &files) {
        for op in &p.replay {
            assert!(op.end.offset as usize <= log.len(), "an op past the file's end");
        }
    }
});
