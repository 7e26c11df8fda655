//! Goofy: the reliable storage service (thesis VII.3). A reliable volume is mounted by one
//! manager, which holds its primary copy; backup servers keep images of it, kept up to date by
//! asynchronous propagation of the modified whole pages of each commit.
//!
//! - [`wire`]: the messages between a primary, its backups and a restorer.
//! - [`primary`]: the reliable service in the driver table (`ssf`); each backup is fed by a
//!   [`link`] that ships the primary's journal, after a full copy when it must.
//! - [`resume`]: where a backup resumes (from the journal or a full copy), a pure decision.
//! - [`backup`]: `pager backup-server`, and its [`state`] file.
//! - [`restore`]: `pager vol restore`: rebuild a volume from its freshest backup, fencing the
//!   primary it replaces.
//! - [`conf`]: `goofy.conf`, what makes a volume reliable.

pub mod backup;
pub mod conf;
pub mod link;
pub mod primary;
pub mod restore;
pub mod resume;
pub mod state;
pub mod wire;
