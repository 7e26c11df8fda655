//! Where the catalog lives in etcd: one key prefix per cell, and under it
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `<cell>/sites/<name>` | [`SiteRecord`](crate::SiteRecord) (JSON) | permanent: the sites the cell has known |
//! | `<cell>/alive/<name>` | the site's address | bound to the site's lease: present while it is alive |
//! | `<cell>/volumes/<id>` | [`VolumeRecord`](crate::VolumeRecord) (JSON) | permanent |
//! | `<cell>/next-volume` | the next volume id to try, decimal | permanent |
//! | `<cell>/mounts/<id>` | the name of the site that mounts the volume | bound to that site's lease (mount = lock) |
//! | `<cell>/images/<vvvv:cccc>` | the name of the site holding the cluster's image | bound to that site's lease (one image per cluster) |
//! | `<cell>/readers/<vvvv:cccc>/<site>` | the site holding a read copy of a shareable cluster | bound to that site's lease; none while `images/` holds the cluster |
//! | `<cell>/placed/<vvvv:cccc>` | the site that last held it for writing | permanent: whether a cached image is still the stored one |
//!
//! Ids are written as 4 hex digits, as everywhere else in the project (`0001`).

use clu_proto::VolId;

use crate::CellError;

/// The keys of one cell.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// A site's name: 1 to 64 of `a-z 0-9 - _ .`, not starting with a dot.
pub fn check_site_name(name: &str) -> Result<(), CellError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CellError::BadName(name.to_owned()))
    }
}

impl Keys {
    /// The keys of cell `cell` (its name is the prefix, e.g. `/clu/default`).
    pub fn new(cell: &str) -> Keys {
        Keys {
            prefix: format!("/clu/{}", cell.trim_matches('/')),
        }
    }

    /// The permanent record of site `name`.
    pub fn site(&self, name: &str) -> String {
        format!("{}/sites/{name}", self.prefix)
    }
    /// The prefix of every site record.
    pub fn sites(&self) -> String {
        format!("{}/sites/", self.prefix)
    }
    /// The lease-bound key of a live site.
    pub fn alive(&self, name: &str) -> String {
        format!("{}/alive/{name}", self.prefix)
    }
    /// The prefix of every live site's key.
    pub fn alives(&self) -> String {
        format!("{}/alive/", self.prefix)
    }
    /// Where a cluster's image is now (lease-bound).
    pub fn image(&self, id: clu_proto::ClusterId) -> String {
        format!("{}/images/{id}", self.prefix)
    }
    /// The prefix of every placement.
    pub fn images(&self) -> String {
        format!("{}/images/", self.prefix)
    }
    /// Site `site`'s read copy of a cluster (lease-bound).
    pub fn reader(&self, id: clu_proto::ClusterId, site: &str) -> String {
        format!("{}/readers/{id}/{site}", self.prefix)
    }
    /// The prefix of a cluster's read copies.
    pub fn readers(&self, id: clu_proto::ClusterId) -> String {
        format!("{}/readers/{id}/", self.prefix)
    }
    /// The prefix of every read copy.
    pub fn all_readers(&self) -> String {
        format!("{}/readers/", self.prefix)
    }
    /// Which site last held a cluster's image (permanent).
    pub fn placed(&self, id: clu_proto::ClusterId) -> String {
        format!("{}/placed/{id}", self.prefix)
    }
    /// A volume's record.
    pub fn volume(&self, vol: VolId) -> String {
        format!("{}/volumes/{:04x}", self.prefix, vol.0)
    }
    /// The prefix of every volume record.
    pub fn volumes(&self) -> String {
        format!("{}/volumes/", self.prefix)
    }
    /// The volume id counter.
    pub fn next_volume(&self) -> String {
        format!("{}/next-volume", self.prefix)
    }
    /// A volume's mount lock.
    pub fn mount(&self, vol: VolId) -> String {
        format!("{}/mounts/{:04x}", self.prefix, vol.0)
    }
    /// The prefix of every mount lock.
    pub fn mounts(&self) -> String {
        format!("{}/mounts/", self.prefix)
    }

    /// The last component of `key` under `prefix` (a site name, or a volume id's hex digits).
    pub fn tail<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
        key.strip_prefix(prefix)
            .filter(|t| !t.is_empty() && !t.contains('/'))
    }

    /// The volume id at the end of a `volumes/` or `mounts/` key.
    pub fn vol_of(key: &str, prefix: &str) -> Option<VolId> {
        let t = Self::tail(key, prefix)?;
        if t.len() != 4 {
            return None;
        }
        u16::from_str_radix(t, 16).ok().map(VolId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_names_are_checked() {
        let k = Keys::new("/test/");
        assert_eq!(k.volume(VolId(0x2a)), "/clu/test/volumes/002a");
        assert_eq!(
            Keys::vol_of(&k.volume(VolId(0x2a)), &k.volumes()),
            Some(VolId(0x2a))
        );
        assert_eq!(
            Keys::vol_of(&k.mount(VolId(7)), &k.mounts()),
            Some(VolId(7))
        );
        assert_eq!(Keys::vol_of("/clu/test/volumes/zz", &k.volumes()), None);
        assert_eq!(Keys::vol_of("/clu/test/volumes/00001", &k.volumes()), None);
        assert_eq!(Keys::tail(&k.site("a"), &k.sites()), Some("a"));
        assert_eq!(Keys::tail("/clu/test/sites/a/b", &k.sites()), None);
        for good in ["a", "site-1", "x.y_z", &"a".repeat(64)] {
            check_site_name(good).unwrap();
        }
        for bad in ["", ".a", "A", "a/b", "a b", &"a".repeat(65)] {
            assert!(check_site_name(bad).is_err(), "{bad:?}");
        }
    }
}
