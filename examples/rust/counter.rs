//! A persistent counter: a u64 in a cluster, incremented and committed, that survives the
//! process (and `kill -9`): every value printed after "count" was committed.
//!
//! ```sh
//! cargo run -p client --example counter              # creates a cluster, prints its id
//! cargo run -p client --example counter -- ID 1000   # adds 1000, committing each step
//! cargo run -p client --example counter -- ID        # prints the committed count
//! ```
//! A pager must be running (`pager serve`; `CLU_PAGER_SOCKET` if not the default socket).

use std::process::ExitCode;

use client::{api, ClusterId, ClusterKind, MapMode};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (id, region) = match args.first() {
        // A protected cluster: its pages change only through commits.
        None => {
            let (id, region) = api::create_map(1, 1, ClusterKind::Protected)?;
            println!("cluster {id}");
            (id, region)
        }
        Some(text) => {
            let id: ClusterId = text.parse()?;
            (id, api::map(id, MapMode::ReadWrite)?)
        }
    };
    let times: u64 = match args.get(1) {
        Some(n) => n.parse()?,
        None => 0,
    };
    let read = |r: &client::Region| {
        let mut b = [0u8; 8];
        r.read(0, &mut b);
        u64::from_le_bytes(b)
    };
    for _ in 0..times {
        let next = read(&region) + 1;
        region.write(0, &next.to_le_bytes());
        // Atomic: after it returns, `next` is the stored count, whatever happens next.
        api::commit(id)?;
        println!("count {next}");
    }
    if times == 0 {
        println!("count {}", read(&region));
    }
    api::unmap(id)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter: {e}");
            ExitCode::FAILURE
        }
    }
}
