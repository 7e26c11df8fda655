//! `clu_CommitGroup`: the clusters of a group committed atomically (thesis I14: all or
//! nothing). The checks of a request are a pure function ([`check_group`]); the commit itself
//! is [`crate::image::commit_group`].

use std::sync::Arc;

use clu_proto::protocol::MAX_GROUP;
use clu_proto::{ClusterId, ErrorCode};

use super::{not_mapped, Manager};
use crate::error::Refusal;
use crate::image::Image;
use crate::types::ConnId;

/// What is wrong with a group of cluster ids, before anything is looked up: none, too many,
/// or one named twice. Returns the ids in cluster order, the
/// order their commits are serialised in.
pub fn check_group(ids: &[ClusterId]) -> Result<Vec<ClusterId>, Refusal> {
    if ids.is_empty() {
        return Err(Refusal::invalid(
            "a commit group names at least one cluster; none was given",
        ));
    }
    if ids.len() > MAX_GROUP {
        return Err(Refusal::invalid(format!(
            "a commit group names at most {MAX_GROUP} clusters, not {}; commit them in \
             several groups",
            ids.len()
        )));
    }
    let mut sorted = ids.to_vec();
    sorted.sort_by_key(|id| id.0);
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Refusal::invalid(format!(
            "cluster {} is named twice in the commit group; name each cluster once",
            w[0]
        )));
    }
    Ok(sorted)
}

impl Manager {
    /// `clu_CommitGroup`: commits every modified page of the clusters `ids` atomically, as
    /// one snapshot of them all. Each must be mapped read-write by `conn`. Returns the number
    /// of pages written. On an error nothing is committed.
    pub fn commit_group(&self, conn: ConnId, ids: &[ClusterId]) -> Result<u64, Refusal> {
        let sorted = check_group(ids)?;
        let mut images: Vec<Arc<Image>> = Vec::with_capacity(sorted.len());
        for &id in &sorted {
            let (img, writable) = self.mapped(conn, id).map_err(|_| not_mapped(id))?;
            if !writable {
                return Err(Refusal::new(
                    ErrorCode::AccessDenied,
                    format!(
                        "cluster {id} is mapped read-only here; a commit group needs each of \
                         its clusters mapped read-write"
                    ),
                ));
            }
            if img.is_temporary() {
                return Err(Refusal::invalid(format!(
                    "cluster {id} is temporary: it is never written to storage; promote it \
                     (clu_Promote) or leave it out of the group"
                )));
            }
            images.push(img);
        }
        crate::image::commit_group(&images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(vol: u16, clu: u16) -> ClusterId {
        ClusterId((u32::from(vol) << 16) | u32::from(clu))
    }

    #[test]
    fn a_group_is_checked_before_anything_is_looked_up() {
        assert!(check_group(&[])
            .unwrap_err()
            .message
            .contains("at least one"));
        let many: Vec<ClusterId> = (0..=MAX_GROUP as u16).map(|c| id(1, c)).collect();
        assert!(check_group(&many).unwrap_err().message.contains("at most"));
        assert!(check_group(&many[..MAX_GROUP]).is_ok());
        let twice = check_group(&[id(1, 3), id(1, 4), id(1, 3)]).unwrap_err();
        assert!(twice.message.contains("named twice"), "{}", twice.message);
        assert!(check_group(&[id(1, 3), id(2, 3)]).is_ok());
        assert_eq!(
            check_group(&[id(1, 9), id(1, 2), id(1, 5)]).unwrap(),
            vec![id(1, 2), id(1, 5), id(1, 9)]
        );
    }

    /// Every group of up to four ids drawn from two volumes of three clusters: refused
    /// exactly when it is empty or names an id twice, else sorted.
    #[test]
    fn every_small_group_is_judged_by_the_rules() {
        let pool: Vec<ClusterId> = (1..=2)
            .flat_map(|v| (0..3).map(move |c| id(v, c)))
            .collect();
        let mut groups: Vec<Vec<ClusterId>> = vec![vec![]];
        for _ in 0..4 {
            let next: Vec<Vec<ClusterId>> = groups
                .iter()
                .filter(|g| g.len() < 4)
                .flat_map(|g| {
                    pool.iter().map(move |&x| {
                        let mut g = g.clone();
                        g.push(x);
                        g
                    })
                })
                .collect();
            groups.extend(next);
        }
        groups.sort();
        groups.dedup();
        for g in groups {
            let mut uniq = g.clone();
            uniq.sort_by_key(|i| i.0);
            uniq.dedup();
            let ok = !g.is_empty() && uniq.len() == g.len();
            match check_group(&g) {
                Ok(sorted) => {
                    assert!(ok, "{g:?} accepted");
                    assert_eq!(sorted, uniq);
                }
                Err(_) => assert!(!ok, "{g:?} refused"),
            }
        }
    }
}
