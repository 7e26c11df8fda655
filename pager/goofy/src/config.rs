//! The reliable service's settings, given by the daemon from its command line (the one place
//! where settings are read).

use std::time::Duration;

use clu_transport::Transport;
use journal::JournalConfig;

/// How the reliable service behaves.
#[derive(Clone, Debug)]
pub struct GoofyConfig {
    /// Journal settings of the local part of each volume.
    pub journal: JournalConfig,
    /// How far (bytes of log) a backup may fall behind before it is marked stale and its hold
    /// on the log released (it then gets a full copy when it returns).
    pub retain_bytes: u64,
    /// How long a synchronous commit waits for its acknowledgements.
    pub sync_timeout: Duration,
    /// How long mounting waits for the backups' first answers (the fencing check).
    pub first_contact: Duration,
    /// How long connecting to a backup may take.
    pub connect_timeout: Duration,
    /// How to reach backup servers (TLS with the cell's keys).
    pub transport: Transport,
}

impl Default for GoofyConfig {
    fn default() -> GoofyConfig {
        GoofyConfig {
            journal: JournalConfig::default(),
            retain_bytes: 256 << 20,
            sync_timeout: Duration::from_secs(30),
            first_contact: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            transport: Transport::unconfigured(),
        }
    }
}
