//! A scripted client of the pager for the end-to-end tests: reads one command per line on
//! stdin, runs it through the `client` API, and answers one line on stdout (`ok ...` or
//! `err CODE message`). The tests drive several of these processes at once and kill them.
//!
//! Commands (ids as printed by `create`, in hex `vvvv:cccc`):
//! `create PAGES [protected|shareable|temporary [VOL]]`, `map ID [ro]`, `unmap ID`, `commit ID`,
//! `abort ID`, `commit-group ID...`, `group-loop START ID...` (every page of each cluster filled
//! with version START, START+1, ... committed as one group, for ever, printing `acked V`),
//! `resize ID ADD`, `extend ID`, `fill ID SEED [FIRST N]`, `check ID SEED [FIRST N]`,
//! `w ID OFFSET BYTE`, `r ID OFFSET`, `loop ID [START [FIRST N [LOCKFILE]]]` (fill pages
//! FIRST..FIRST+N and commit versions START, START+1, ... for ever, printing `acked V`; with
//! LOCKFILE, under an exclusive flock), `which ID [FIRST N]` (the version every page holds, or
//! `err torn`), `outside` (a raw mapping whose pager-side region is one page short, then a read
//! of the page the pager does not know), `grant ID UID [ro]`, `revoke ID UID`, `promote ID`,
//! `owner ID`, `force-w ID OFFSET BYTE` (mprotect the page writable, then write), `exit`.

use std::io::{BufRead, Write};

use client::{api, ClusterId, ClusterKind, MapMode, Region, PAGE_SIZE};
use clu_tests::{check_pattern, fill_pattern};

fn regions(id: ClusterId) -> Result<Vec<Region>, String> {
    api::regions(id).map_err(|e| format!("{} {e}", e.code as i32))
}

/// The region holding byte `offset` of the cluster, and where in it.
fn at(id: ClusterId, offset: u64) -> Result<(Region, usize), String> {
    regions(id)?
        .into_iter()
        .find_map(|r| r.offset_of(offset).map(|o| (r, o)))
        .ok_or_else(|| format!("-22 offset {offset} is not mapped here"))
}

fn range(words: &[&str], total: u64) -> Result<(u64, u64), String> {
    match words {
        [] => Ok((0, total)),
        [first, n] => Ok((num(first)?, num(n)?)),
        _ => Err("-22 expected FIRST N".into()),
    }
}

fn num(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("-22 not a number: {s}"))
}

fn id(s: Option<&&str>) -> Result<ClusterId, String> {
    s.ok_or("-22 missing cluster id")?
        .parse()
        .map_err(|e| format!("-22 {e}"))
}

fn pages_of(id: ClusterId) -> Result<u64, String> {
    Ok(regions(id)?.iter().map(|r| r.npages).sum())
}

/// Runs `f` on a copy of each mapped page of `first..first+n` (cluster page number, bytes);
/// with `write_back`, copies the page back afterwards.
fn pages(
    id: ClusterId,
    first: u64,
    n: u64,
    write_back: bool,
    mut f: impl FnMut(u64, &mut [u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut page = vec![0u8; PAGE_SIZE];
    for r in regions(id)? {
        for p in first.max(r.first_page)..(first + n).min(r.first_page + r.npages) {
            let at = ((p - r.first_page) as usize) * PAGE_SIZE;
            if write_back {
                f(p, &mut page)?;
                r.write(at, &page);
            } else {
                r.read(at, &mut page);
                f(p, &mut page)?;
            }
        }
    }
    Ok(())
}

fn run(line: &str, out: &mut impl Write) -> Result<String, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let e = |e: client::CluError| format!("{} {}", e.code as i32, e.message);
    match w.first().copied() {
        Some("create") => {
            let kind: ClusterKind = match w.get(2) {
                Some(k) => k.parse().map_err(|e| format!("-22 {e}"))?,
                None => ClusterKind::Shareable,
            };
            let vol = w.get(3).map(|v| num(v)).transpose()?.unwrap_or(1) as u16;
            let (id, r) =
                api::create_map(vol, num(w.get(1).ok_or("-22 PAGES")?)?, kind).map_err(e)?;
            Ok(format!("{id} {}", r.npages))
        }
        Some("map") => {
            let mode = if w.get(2) == Some(&"ro") {
                MapMode::ReadOnly
            } else {
                MapMode::ReadWrite
            };
            let r = api::map(id(w.get(1))?, mode).map_err(e)?;
            Ok(r.npages.to_string())
        }
        Some("unmap") => api::unmap(id(w.get(1))?).map(|()| String::new()).map_err(e),
        Some("commit") => api::commit(id(w.get(1))?)
            .map(|()| String::new())
            .map_err(e),
        Some("commit-group") => {
            let ids = w[1..]
                .iter()
                .map(|s| id(Some(s)))
                .collect::<Result<Vec<_>, _>>()?;
            api::commit_group(&ids).map(|()| String::new()).map_err(e)
        }
        Some("group-loop") => {
            let start = num(w.get(1).ok_or("-22 START")?)?;
            let ids = w[2..]
                .iter()
                .map(|s| id(Some(s)))
                .collect::<Result<Vec<_>, _>>()?;
            for v in start.. {
                for &id in &ids {
                    pages(id, 0, pages_of(id)?, true, |p, page| {
                        fill_pattern(page, v, p);
                        Ok(())
                    })?;
                }
                api::commit_group(&ids).map_err(e)?;
                let _ = writeln!(out, "acked {v}");
                let _ = out.flush();
            }
            Ok(String::new())
        }
        Some("abort") => api::abort(id(w.get(1))?).map(|()| String::new()).map_err(e),
        Some("where") => api::where_is(id(w.get(1))?)
            .map(|s| if s.is_empty() { "-".into() } else { s })
            .map_err(e),
        Some("resize") => {
            let r = api::resize(id(w.get(1))?, num(w.get(2).ok_or("-22 ADD")?)?).map_err(e)?;
            Ok(format!("{} {}", r.first_page, r.npages))
        }
        Some("extend") => {
            let r = api::extend(id(w.get(1))?).map_err(e)?;
            Ok(r.map_or(0, |r| r.npages).to_string())
        }
        Some("fill") | Some("check") => {
            let id = id(w.get(1))?;
            let seed = num(w.get(2).ok_or("-22 SEED")?)?;
            let (first, n) = range(&w[3..], pages_of(id)?)?;
            let fill = w[0] == "fill";
            pages(id, first, n, fill, |p, page| {
                if fill {
                    fill_pattern(page, seed, p);
                    Ok(())
                } else if check_pattern(page, seed, p) {
                    Ok(())
                } else {
                    Err(format!("bad page {p}"))
                }
            })?;
            Ok(String::new())
        }
        Some("w") => {
            let (r, o) = at(id(w.get(1))?, num(w.get(2).ok_or("-22 OFFSET")?)?)?;
            let v = num(w.get(3).ok_or("-22 BYTE")?)? as u8;
            r.write_u8(o, v);
            Ok(String::new())
        }
        Some("force-w") => {
            let (r, o) = at(id(w.get(1))?, num(w.get(2).ok_or("-22 OFFSET")?)?)?;
            let v = num(w.get(3).ok_or("-22 BYTE")?)? as u8;
            r.force_writable(o).map_err(|e| format!("-13 {e}"))?;
            r.write_u8(o, v);
            Ok(String::new())
        }
        Some("r") => {
            let (r, o) = at(id(w.get(1))?, num(w.get(2).ok_or("-22 OFFSET")?)?)?;
            Ok(r.read_u8(o).to_string())
        }
        Some("which") => {
            let id = id(w.get(1))?;
            let (first, n) = range(w.get(2..4).unwrap_or(&[]), pages_of(id)?)?;
            let (r, o) = at(id, first * PAGE_SIZE as u64)?;
            let mut word = [0u8; 8];
            r.read(o, &mut word);
            let seed = clu_tests::seed_of(u64::from_le_bytes(word));
            pages(id, first, n, false, |p, page| {
                if check_pattern(page, seed, p) {
                    Ok(())
                } else {
                    Err(format!(
                        "torn: page {first} has version {seed}, page {p} does not"
                    ))
                }
            })?;
            Ok(seed.to_string())
        }
        Some("loop") => {
            let id = id(w.get(1))?;
            let start = w.get(2).map(|s| num(s)).transpose()?.unwrap_or(1);
            let (first, n) = range(w.get(3..5).unwrap_or(&[]), pages_of(id)?)?;
            // Writers sharing a cluster take this lock around fill + commit, so that every
            // commit captures whole versions of every writer's pages.
            let lock = w
                .get(5)
                .map(|path| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(path)
                        .map_err(|err| format!("-5 {path}: {err}"))
                })
                .transpose()?;
            for v in start.. {
                let held = match &lock {
                    Some(f) => {
                        let f = f.try_clone().map_err(|err| format!("-5 dup: {err}"))?;
                        Some(
                            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                                .map_err(|(_, err)| format!("-5 flock: {err}"))?,
                        )
                    }
                    None => None,
                };
                pages(id, first, n, true, |p, page| {
                    fill_pattern(page, v, p);
                    Ok(())
                })?;
                api::commit(id).map_err(e)?;
                drop(held);
                let _ = writeln!(out, "acked {v}");
                let _ = out.flush();
            }
            Ok(String::new())
        }
        Some("grant") => {
            let mode = if w.get(3) == Some(&"ro") {
                MapMode::ReadOnly
            } else {
                MapMode::ReadWrite
            };
            let uid = num(w.get(2).ok_or("-22 UID")?)? as u32;
            api::grant(id(w.get(1))?, uid, mode)
                .map(|()| String::new())
                .map_err(e)
        }
        Some("revoke") => {
            let uid = num(w.get(2).ok_or("-22 UID")?)? as u32;
            api::revoke(id(w.get(1))?, uid)
                .map(|()| String::new())
                .map_err(e)
        }
        Some("promote") => api::promote(id(w.get(1))?)
            .map(|()| String::new())
            .map_err(e),
        Some("owner") => api::owner(id(w.get(1))?).map(|u| u.to_string()).map_err(e),
        Some("outside") => clu_tests::raw::outside(),
        Some("exit") => std::process::exit(0),
        Some(other) => Err(format!("-22 unknown command {other}")),
        None => Ok(String::new()),
    }
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = match run(&line, &mut out) {
            Ok(s) if s.is_empty() => "ok".to_string(),
            Ok(s) => format!("ok {s}"),
            Err(s) => format!("err {s}"),
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}
