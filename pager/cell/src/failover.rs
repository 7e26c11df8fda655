//! When a standby takes a reliable volume over (immediate restoration, thesis N1-N3,
//! automated): a pure decision over what the standby saw of the catalog, step after step.
//! The daemon polls the catalog, feeds each look to [`Standby::step`], and carries out the
//! takeovers it returns (the election is then a mount transaction in etcd: of the standbys
//! that decide at once, one wins).
//!
//! The rules:
//! - Only a volume whose record names this site among its standbys.
//! - Only after this standby saw another site hold the volume's mount lock, and then saw it
//!   free: the primary's lease ended (it died, or etcd lost it) or it unmounted the volume. A
//!   volume nobody mounted since this standby started (a cell starting up, its primary not
//!   yet up) is left to its primary.
//! - Not while this site holds it (it is then the primary).
//! - After a takeover that failed (no quorum of backups reached, the election lost to
//!   another standby that then died...), not again before `retry` has passed.

use std::collections::BTreeMap;
use std::time::Duration;

use clu_proto::VolId;

use crate::records::Failover;

/// One volume with a failover policy, as one look at the catalog found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The volume.
    pub vol: VolId,
    /// Its policy.
    pub failover: Failover,
    /// The site holding its mount lock now, if any.
    pub holder: Option<String>,
}

/// What a standby remembers between looks.
#[derive(Clone, Debug, Default)]
struct Memory {
    /// The other site last seen holding the volume, until a takeover is decided.
    held_by: Option<String>,
    /// No takeover before this time (after a failed one).
    not_before: Duration,
}

/// A standby's view of the volumes it may take over.
#[derive(Clone, Debug)]
pub struct Standby {
    me: String,
    retry: Duration,
    volumes: BTreeMap<VolId, Memory>,
}

/// A takeover to attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeOver {
    /// The volume.
    pub vol: VolId,
    /// The site that held it last.
    pub from: String,
}

impl Standby {
    /// A standby for site `me`, retrying a failed takeover after `retry`.
    pub fn new(me: &str, retry: Duration) -> Standby {
        Standby {
            me: me.to_owned(),
            retry,
            volumes: BTreeMap::new(),
        }
    }

    /// One look at the catalog at time `now` (any monotonic clock): the takeovers to attempt
    /// now. Volumes absent from `seen` are forgotten.
    pub fn step(&mut self, now: Duration, seen: &[Seen]) -> Vec<TakeOver> {
        let mut out = Vec::new();
        let mut next = BTreeMap::new();
        for s in seen {
            if !s.failover.standbys.contains(&self.me) {
                continue;
            }
            let mut m = self.volumes.remove(&s.vol).unwrap_or_default();
            match &s.holder {
                Some(h) if *h == self.me => m.held_by = None,
                Some(h) => m.held_by = Some(h.clone()),
                None => {
                    if let Some(from) = &m.held_by {
                        if now >= m.not_before {
                            out.push(TakeOver {
                                vol: s.vol,
                                from: from.clone(),
                            });
                        }
                    }
                }
            }
            next.insert(s.vol, m);
        }
        self.volumes = next;
        out
    }

    /// The takeover of `vol` failed at `now`: try again after the retry delay, as long as
    /// nobody mounts the volume meanwhile.
    pub fn failed(&mut self, vol: VolId, now: Duration) {
        if let Some(m) = self.volumes.get_mut(&vol) {
            m.not_before = now + self.retry;
        }
    }

    /// The takeover of `vol` succeeded (or another site won the election): forget who held
    /// it; the next looks see the new holder.
    pub fn done(&mut self, vol: VolId) {
        if let Some(m) = self.volumes.get_mut(&vol) {
            m.held_by = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(vol: u16, standbys: &[&str], holder: Option<&str>) -> Seen {
        Seen {
            vol: VolId(vol),
            failover: Failover {
                standbys: standbys.iter().map(|s| s.to_string()).collect(),
                backups: vec!["b1:1".into()],
                sync: 1,
            },
            holder: holder.map(str::to_owned),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_standby_takes_over_only_after_seeing_the_primary_go() {
        let mut st = Standby::new("b", S);
        // The cell starts: nobody mounts the volume yet; then its primary does.
        assert!(st.step(Duration::ZERO, &[seen(1, &["b"], None)]).is_empty());
        assert!(st.step(S * 1, &[seen(1, &["b"], Some("a"))]).is_empty());
        // Its lease ends.
        assert_eq!(
            st.step(S * 2, &[seen(1, &["b"], None)]),
            vec![TakeOver {
                vol: VolId(1),
                from: "a".into()
            }]
        );
        // Decided again at the next look until it is done or failed.
        assert_eq!(st.step(S * 2, &[seen(1, &["b"], None)]).len(), 1);
        st.done(VolId(1));
        assert!(st.step(S * 3, &[seen(1, &["b"], None)]).is_empty());
        // This site holds it now: it is the primary.
        assert!(st.step(S * 4, &[seen(1, &["b"], Some("b"))]).is_empty());
        assert!(st.step(S * 5, &[seen(1, &["b"], None)]).is_empty());
    }

    #[test]
    fn a_failed_takeover_waits_and_a_site_not_named_never_acts() {
        let mut st = Standby::new("b", S);
        st.step(
            Duration::ZERO,
            &[seen(1, &["b"], Some("a")), seen(2, &["c"], Some("a"))],
        );
        let t = st.step(S * 1, &[seen(1, &["b"], None), seen(2, &["c"], None)]);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].vol, VolId(1));
        st.failed(VolId(1), S * 1);
        assert!(st.step(S * 1 + S / 2, &[seen(1, &["b"], None)]).is_empty());
        assert_eq!(st.step(S * 2, &[seen(1, &["b"], None)]).len(), 1);
        // Another standby won meanwhile: its mount is seen, nothing to do; when it dies in
        // turn, this one tries again.
        assert!(st
            .step(S * 3, &[seen(1, &["b", "c"], Some("c"))])
            .is_empty());
        let t = st.step(S * 4, &[seen(1, &["b", "c"], None)]);
        assert_eq!(
            t,
            vec![TakeOver {
                vol: VolId(1),
                from: "c".into()
            }]
        );
        // A volume that leaves the catalog is forgotten.
        assert!(st.step(S * 5, &[]).is_empty());
        assert!(st.step(S * 6, &[seen(1, &["b"], None)]).is_empty());
    }

    #[test]
    fn every_short_history_takes_over_only_after_a_holder_then_none() {
        // Exhaustive over histories of 5 looks, each: nobody, site a, this site b.
        let states = [None, Some("a"), Some("b")];
        for code in 0..3usize.pow(5) {
            let mut st = Standby::new("b", S);
            let mut c = code;
            let mut last_other = false;
            for t in 0..5u32 {
                let h = states[c % 3];
                c /= 3;
                let out = st.step(S * t, &[seen(7, &["b"], h)]);
                let expect = h.is_none() && last_other;
                assert_eq!(!out.is_empty(), expect, "history {code} look {t}");
                if !out.is_empty() {
                    st.done(VolId(7));
                    last_other = false;
                }
                match h {
                    Some("a") => last_other = true,
                    Some(_) => last_other = false,
                    None => {}
                }
            }
        }
    }
}
