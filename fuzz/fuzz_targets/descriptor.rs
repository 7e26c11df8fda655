//! The storage decoders: cluster descriptors, volume headers, access histories, the catalog and
//! the mount table. Damaged bytes are refused with a reason, never a panic; what decodes
//! re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use clu_storage::{history, Catalog, ClusterDesc, VolumeMeta};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = ClusterDesc::decode(data) {
        assert_eq!(ClusterDesc::decode(&d.encode()), Ok(d));
    }
    if let Ok(m) = VolumeMeta::decode(data) {
        assert_eq!(VolumeMeta::decode(&m.encode()), Ok(m));
    }
    if let Some(pages) = history::decode(data) {
        assert_eq!(history::decode(&history::encode(&pages)), Some(pages));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Catalog::parse(text);
        let _ = clu_storage::parse_mounts(text);
    }
});
