//! The thin raw layer: every `unsafe` system call of the project's fault path and of the shim is
//! in this module, each behind a safe function with a `// SAFETY:` comment.
//!
//! - [`uffd`]: creating a userfaultfd and the resolution ioctls (`CONTINUE`, `COPY`,
//!   `WRITEPROTECT`, `POISON`, `WAKE`).
//! - [`mem`]: mapping a cluster's memfd into this process and releasing it.
//! - [`scm`]: sending and receiving file descriptors beside a message (`SCM_RIGHTS`).
//! - [`pagemap`]: `PAGEMAP_SCAN`, the written pages of a client in write-protect-async mode.

pub mod mem;
pub mod pagemap;
pub mod scm;
pub mod uffd;
