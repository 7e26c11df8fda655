//! A small persistent key-value store in one cluster: an open-addressing hash table of
//! fixed-size slots (key up to 32 bytes, value up to 94), each change committed, so that it
//! survives the process and `kill -9` (a put that printed "ok" is stored; one in flight is
//! either wholly there or not at all).
//!
//! ```sh
//! cargo run -p client --example kv -- create           # prints the store's cluster id
//! cargo run -p client --example kv -- ID put KEY VALUE
//! cargo run -p client --example kv -- ID get KEY
//! cargo run -p client --example kv -- ID list
//! cargo run -p client --example kv -- ID fill N        # puts key-0..key-N, one commit each
//! ```
//! A pager must be running (`pager serve`; `CLU_PAGER_SOCKET` if not the default socket).

use std::process::ExitCode;

use client::{api, ClusterId, ClusterKind, MapMode, Region};

/// The store's size: 64 pages of 32 slots.
const PAGES: u64 = 64;
const SLOT: usize = 128;
const SLOTS: usize = PAGES as usize * 4096 / SLOT;
const KEY_MAX: usize = 32;
const VALUE_MAX: usize = SLOT - KEY_MAX - 2;

/// A slot: key length, value length, key, value (a key length of 0: empty).
struct Store {
    id: ClusterId,
    region: Region,
}

fn hash(key: &[u8]) -> usize {
    // FNV-1a: enough to spread the keys of an example.
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % SLOTS as u64) as usize
}

impl Store {
    fn slot(&self, i: usize) -> (Vec<u8>, Vec<u8>) {
        let mut s = [0u8; SLOT];
        self.region.read(i * SLOT, &mut s);
        let (k, v) = (s[0] as usize, s[1] as usize);
        let k = k.min(KEY_MAX);
        let v = v.min(VALUE_MAX);
        (
            s[2..2 + k].to_vec(),
            s[2 + KEY_MAX..2 + KEY_MAX + v].to_vec(),
        )
    }

    /// The slot holding `key`, or the empty one where it would go.
    fn find(&self, key: &[u8]) -> Result<usize, String> {
        let start = hash(key);
        for probe in 0..SLOTS {
            let i = (start + probe) % SLOTS;
            let (k, _) = self.slot(i);
            if k.is_empty() || k == key {
                return Ok(i);
            }
        }
        Err("the store is full".into())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let i = self.find(key)?;
        let (k, v) = self.slot(i);
        Ok((!k.is_empty()).then_some(v))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        if key.is_empty() || key.len() > KEY_MAX || value.len() > VALUE_MAX {
            return Err(
                format!("a key has 1 to {KEY_MAX} bytes and a value at most {VALUE_MAX}").into(),
            );
        }
        let i = self.find(key)?;
        let mut s = [0u8; SLOT];
        s[0] = key.len() as u8;
        s[1] = value.len() as u8;
        s[2..2 + key.len()].copy_from_slice(key);
        s[2 + KEY_MAX..2 + KEY_MAX + value.len()].copy_from_slice(value);
        self.region.write(i * SLOT, &s);
        // The slot and nothing else changed since the last commit: stored atomically.
        api::commit(self.id)?;
        Ok(())
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if words == ["create"] {
        let (id, _region) = api::create_map(1, PAGES, ClusterKind::Protected)?;
        api::unmap(id)?;
        println!("store {id}");
        return Ok(());
    }
    let usage =
        "usage: kv create | kv ID put KEY VALUE | kv ID get KEY | kv ID list | kv ID fill N";
    let (Some(id), Some(cmd)) = (words.first(), words.get(1)) else {
        return Err(usage.into());
    };
    let id: ClusterId = id.parse()?;
    let store = Store {
        id,
        region: api::map(id, MapMode::ReadWrite)?,
    };
    match (*cmd, &words[2..]) {
        ("put", [k, v]) => {
            store.put(k.as_bytes(), v.as_bytes())?;
            println!("ok");
        }
        ("get", [k]) => match store.get(k.as_bytes())? {
            Some(v) => println!("{}", String::from_utf8_lossy(&v)),
            None => return Err(format!("no key {k}").into()),
        },
        ("list", []) => {
            for i in 0..SLOTS {
                let (k, v) = store.slot(i);
                if !k.is_empty() {
                    println!(
                        "{} {}",
                        String::from_utf8_lossy(&k),
                        String::from_utf8_lossy(&v)
                    );
                }
            }
        }
        ("fill", [n]) => {
            let n: usize = n.parse()?;
            for i in 0..n {
                store.put(
                    format!("key-{i}").as_bytes(),
                    format!("value-{i}").as_bytes(),
                )?;
                println!("put {i}");
            }
        }
        _ => return Err(usage.into()),
    }
    api::unmap(id)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::FAILURE
        }
    }
}
