//! Slowing down a client whose requests keep being refused.

use tracing::warn;

use clu_mm::ConnId;

/// Refused requests a connection may make per second before each further one is delayed.
const REFUSALS_PER_SECOND: u32 = 200;
/// The delay of a refusal over that rate.
const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Slows down a client whose requests keep being refused (malformed, foreign ids, ...), so that
/// a flood of bad requests costs the machine little and other clients keep their latency.
#[derive(Default)]
pub(super) struct Throttle {
    second: Option<std::time::Instant>,
    count: u32,
    logged: bool,
}

impl Throttle {
    pub fn refused(&mut self, conn: ConnId, pid: i32) {
        let now = std::time::Instant::now();
        let new_second = self.second.map_or(true, |t| {
            now.duration_since(t) >= std::time::Duration::from_secs(1)
        });
        if new_second {
            if self.count > REFUSALS_PER_SECOND {
                warn!(
                    %conn,
                    pid,
                    refused = self.count,
                    "client sent {} refused requests in a second; its requests are slowed down",
                    self.count
                );
            }
            self.second = Some(now);
            self.count = 0;
            self.logged = false;
        }
        self.count += 1;
        if self.count > REFUSALS_PER_SECOND {
            if !self.logged {
                warn!(%conn, pid, "over {REFUSALS_PER_SECOND} refused requests in a second: slowing this client down");
                self.logged = true;
            }
            std::thread::sleep(REFUSAL_DELAY);
        }
    }
}
