//! Remote memory paging (thesis K2): a machine's RAM as the paging partition of other sites.
//!
//! `pager memory-server` runs [`serve`]: it keeps the pages sites evict to it in a [`Store`],
//! each slot owned by the site that stored it (a site may read and free only its own), within
//! `--pages`. `pager serve --paging-server` pages through a [`MemoryClient`], which is the
//! memory manager's [`clu_mm::paging::PagingServer`]. Execution memory, as the local partition: no durability
//! promise. A memory server that dies takes its pages with it: a fault on one raises SIGBUS
//! in its process, an eviction that cannot reach it keeps the page resident, an abort still
//! discards.

mod client;
mod server;
mod store;

pub use client::{MemoryClient, MemoryFigures};
pub use server::serve;
pub use store::{Store, StoreError};
