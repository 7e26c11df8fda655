//! Shared pieces of the end-to-end tests: deterministic cluster versions that a killed process
//! writes and the test verifies byte for byte.

use client::PAGE_SIZE;
use journal::PageRun;

/// Pages per cluster in the crash test.
pub const CLUSTER_PAGES: usize = 16;

/// SplitMix64: a small, good, dependency-free PRNG step.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which pages version `v` (from 1) of cluster `c` writes: a non-empty pseudo-random subset, all
/// pages every seventh version.
pub fn pages_of(c: u32, v: u64) -> u16 {
    if v % 7 == 0 {
        return u16::MAX;
    }
    let m = splitmix(u64::from(c) << 40 ^ v) as u16;
    if m == 0 {
        1
    } else {
        m
    }
}

/// The content of page `p` as written by version `v` of cluster `c`: the triple repeated.
pub fn stamp(c: u32, v: u64, p: usize) -> Vec<u8> {
    let mut unit = Vec::with_capacity(24);
    unit.extend_from_slice(&u64::from(c).to_le_bytes());
    unit.extend_from_slice(&v.to_le_bytes());
    unit.extend_from_slice(&(p as u64).to_le_bytes());
    unit.iter().copied().cycle().take(PAGE_SIZE).collect()
}

/// The new page images of version `v` as contiguous runs: `(first_page, bytes)`.
pub fn version_runs(c: u32, v: u64) -> Vec<(u64, Vec<u8>)> {
    let mask = pages_of(c, v);
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for p in 0..CLUSTER_PAGES {
        if mask & (1 << p) == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((first, bytes)) if *first as usize + bytes.len() / PAGE_SIZE == p => {
                bytes.extend(stamp(c, v, p))
            }
            _ => runs.push((p as u64, stamp(c, v, p))),
        }
    }
    runs
}

/// Borrows runs as the journal's page runs.
pub fn as_page_runs(runs: &[(u64, Vec<u8>)]) -> Vec<PageRun<'_>> {
    runs.iter()
        .map(|(first, pages)| PageRun {
            first_page: *first,
            pages,
        })
        .collect()
}

/// The same runs as an owned [`journal::Batch`] (the commit path that returns before the
/// pages are applied to the cluster file).
pub fn as_batch(runs: &[(u64, Vec<u8>)]) -> journal::Batch {
    let total: usize = runs.iter().map(|(_, p)| p.len()).sum();
    let mut at = 0;
    let buf = clu_sys::buf::PageBuf::filled(total, |f| {
        for (_, pages) in runs {
            f.copy(at, pages)?;
            at += pages.len();
        }
        Ok::<(), std::io::Error>(())
    })
    .expect("whole pages");
    let mut batch = journal::Batch::new(buf);
    let mut at = 0;
    for (first, pages) in runs {
        batch
            .push(*first, at, pages.len() / PAGE_SIZE)
            .expect("inside the buffer");
        at += pages.len();
    }
    batch
}

/// The whole cluster image after versions 1..=`v` were committed.
pub fn image_after(c: u32, v: u64) -> Vec<u8> {
    let mut img = vec![0u8; CLUSTER_PAGES * PAGE_SIZE];
    for p in 0..CLUSTER_PAGES {
        if let Some(last) = (1..=v).rev().find(|&w| pages_of(c, w) & (1 << p) != 0) {
            img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].copy_from_slice(&stamp(c, last, p));
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_exactly_the_pages_of_a_version_and_images_follow() {
        for v in 1..50 {
            let runs = version_runs(3, v);
            let covered: u16 = runs
                .iter()
                .flat_map(|(f, b)| *f as usize..*f as usize + b.len() / PAGE_SIZE)
                .fold(0, |m, p| m | 1 << p);
            assert_eq!(covered, pages_of(3, v));
            let mut img = image_after(3, v - 1);
            for (f, b) in &runs {
                img[*f as usize * PAGE_SIZE..][..b.len()].copy_from_slice(b);
            }
            assert_eq!(img, image_after(3, v));
        }
        assert_ne!(image_after(1, 5), image_after(1, 6));
    }
}

pub mod etcd;
pub mod harness;
pub mod lan;
pub mod netns;
pub mod raw;

/// Fills `page` (cluster page `p`) with the pattern of `seed`: every 8-byte word differs.
pub fn fill_pattern(page: &mut [u8], seed: u64, p: u64) {
    for (k, w) in page.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern_word(seed, p, k as u64).to_le_bytes());
    }
}

/// Whether `page` holds exactly the pattern of `seed` for page `p`.
pub fn check_pattern(page: &[u8], seed: u64, p: u64) -> bool {
    page.chunks_exact(8)
        .enumerate()
        .all(|(k, w)| w == pattern_word(seed, p, k as u64).to_le_bytes())
}

const PATTERN_MARK: u64 = 0x5a5a_0000_0000_0000;

fn pattern_word(seed: u64, p: u64, k: u64) -> u64 {
    if seed == 0 {
        return 0;
    }
    (seed << 40) ^ (p << 12) ^ k ^ PATTERN_MARK
}

/// The seed that wrote `word`, the first word of page 0 (0 for a page never written).
pub fn seed_of(word: u64) -> u64 {
    if word == 0 {
        return 0;
    }
    (word ^ PATTERN_MARK) >> 40
}
