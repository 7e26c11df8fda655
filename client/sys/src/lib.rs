//! The thin raw layer: every `unsafe` system call of the project is in this crate, each behind a
//! safe function or type with a `// SAFETY:` comment. No other crate of the workspace may use
//! `unsafe` (the workspace lints forbid it) except the C ABI.
//!
//! - [`uffd`]: creating a userfaultfd and the resolution ioctls (`CONTINUE`, `COPY`,
//!   `WRITEPROTECT`, `POISON`, `WAKE`).
//! - [`mem`]: mappings owned by this process ([`mem::Mapping`]: a cluster's memfd, a file, or
//!   anonymous memory), with bounds-checked volatile access, since their bytes are shared with
//!   other processes and no Rust reference into them would be honest.
//! - [`buf`]: [`buf::PageBuf`], page-aligned heap buffers for direct I/O.
//! - [`scm`]: sending and receiving file descriptors beside a message (`SCM_RIGHTS`).
//! - [`pagemap`]: `PAGEMAP_SCAN`, the written pages of a client in write-protect-async mode.
//! - [`sync`]: lock helpers that carry on after a panic elsewhere (no system call, but the one
//!   helper every crate shares).
//!
//! The facts about userfaultfd that the design rests on, checked on the project's kernel, are in
//! `docs/uffd-facts.md`.

pub mod buf;
pub mod mem;
pub mod pagemap;
pub mod scm;
pub mod sync;
pub mod uffd;

/// Size of a page: the unit of mapping, faults and write-back.
pub const PAGE_SIZE: usize = 4096;
