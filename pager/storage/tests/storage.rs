//! The storage service on real files: volumes, clusters, atomic writes, the catalog and the mount
//! table across restarts, and damaged or hostile input.

use std::fs;
use std::path::Path;

use clu_proto::{CluId, ClusterId, ClusterKind, VolId, PAGE_SIZE};
use clu_storage::{Storage, StorageConfig, StorageError, VolumeParams};
use journal::PageRun;

const P: usize = PAGE_SIZE;

fn open(root: &Path) -> Storage {
    Storage::open(root, StorageConfig::default()).unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn page(b: u8) -> Vec<u8> {
    vec![b; P]
}

#[test]
fn clusters_are_created_written_atomically_and_read_back_across_restarts() {
    let dir = tmp();
    let s = open(dir.path());
    let v = s.vol_create("data", &VolumeParams::default()).unwrap();
    assert_eq!(v.vol, VolId(1));
    s.vol_mount(v.vol).unwrap();
    let d = s
        .clu_create(v.vol, 20, 1000, ClusterKind::Protected)
        .unwrap();
    assert_eq!(d.id, ClusterId::new(VolId(1), CluId(0)));
    assert_eq!((d.npages, d.owner), (20, 1000));
    let mut buf = vec![1u8; 20 * P];
    s.clu_read(d.id, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "a new cluster reads as zeros");
    let (a, b) = (vec![7u8; 2 * P], page(9));
    s.clu_write(
        d.id,
        &[
            PageRun {
                first_page: 3,
                pages: &a,
            },
            PageRun {
                first_page: 19,
                pages: &b,
            },
        ],
    )
    .unwrap();
    s.close().unwrap();

    // The mount table brings the volume back at the next start.
    let s = open(dir.path());
    let mut one = page(0);
    s.clu_read(d.id, 4, &mut one).unwrap();
    assert_eq!(one, page(7));
    s.clu_read(d.id, 19, &mut one).unwrap();
    assert_eq!(one, page(9));
    let data = dir.path().join("vol-0001/clusters/0000.data");
    assert_eq!(fs::metadata(&data).unwrap().len(), 20 * P as u64);
    let alloc = fs::metadata(&data)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap();
    assert!(
        alloc * 512 >= 20 * P as u64,
        "cluster file is sparse: {alloc} blocks"
    );
}

#[test]
fn out_of_range_and_malformed_requests_are_refused_and_change_nothing() {
    let dir = tmp();
    let s = open(dir.path());
    let v = s.vol_create("data", &VolumeParams::default()).unwrap().vol;
    s.vol_mount(v).unwrap();
    let id = s.clu_create(v, 4, 0, ClusterKind::Protected).unwrap().id;
    let err = s
        .clu_write(
            id,
            &[
                PageRun {
                    first_page: 0,
                    pages: &page(1),
                },
                PageRun {
                    first_page: 4,
                    pages: &page(1),
                },
            ],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::OutOfRange {
                end: 5,
                npages: 4,
                ..
            }
        ),
        "{err}"
    );
    let mut b = page(5);
    s.clu_read(id, 0, &mut b).unwrap();
    assert_eq!(
        b,
        page(0),
        "the valid run of a refused write was not stored"
    );
    assert!(matches!(
        s.clu_read(id, 0, &mut [0u8; 10]),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        s.clu_read(id, u64::MAX, &mut b),
        Err(StorageError::OutOfRange { .. })
    ));
    let foreign = ClusterId::new(VolId(0x8001), CluId(0));
    assert!(matches!(
        s.clu_get_desc(foreign),
        Err(StorageError::ForeignVolume(_))
    ));
    assert!(matches!(
        s.clu_get_desc(ClusterId::new(v, CluId(9))),
        Err(StorageError::NoSuchCluster(_))
    ));
    assert!(matches!(
        s.clu_get_desc(ClusterId::new(VolId(7), CluId(0))),
        Err(StorageError::NoSuchVolume(_))
    ));
    assert!(matches!(
        s.vol_create("9lives", &VolumeParams::default()),
        Err(StorageError::BadName(_))
    ));
    assert!(matches!(
        s.vol_create("data", &VolumeParams::default()),
        Err(StorageError::NameTaken(_))
    ));
}

#[test]
fn resize_destroy_and_quota() {
    let dir = tmp();
    let s = open(dir.path());
    let v = s
        .vol_create(
            "small",
            &VolumeParams {
                capacity_pages: 10,
                ..VolumeParams::default()
            },
        )
        .unwrap()
        .vol;
    s.vol_mount(v).unwrap();
    let a = s.clu_create(v, 6, 0, ClusterKind::Protected).unwrap().id;
    let err = s.clu_create(v, 5, 0, ClusterKind::Protected).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Quota {
                wanted: 5,
                free: 4,
                ..
            }
        ),
        "{err}"
    );
    let d = s.clu_resize(a, 4).unwrap();
    assert_eq!(d.npages, 10);
    s.clu_write(
        a,
        &[PageRun {
            first_page: 9,
            pages: &page(3),
        }],
    )
    .unwrap();
    assert!(matches!(
        s.clu_resize(a, 1),
        Err(StorageError::Quota { .. })
    ));
    s.vol_resize(v, 0).unwrap();
    let b = s.clu_create(v, 5, 0, ClusterKind::Shareable).unwrap().id;
    s.clu_destroy(a).unwrap();
    assert!(matches!(
        s.clu_get_desc(a),
        Err(StorageError::NoSuchCluster(_))
    ));
    // Numbers are not reused: a reference to the destroyed cluster never finds a new one.
    let c = s.clu_create(v, 1, 0, ClusterKind::Protected).unwrap().id;
    assert!(c.clu() > b.clu(), "{c} reused a number");
    assert!(matches!(
        s.vol_delete(v, false),
        Err(StorageError::StillMounted(_))
    ));
    s.vol_unmount(v).unwrap();
    assert!(matches!(
        s.vol_delete(v, false),
        Err(StorageError::VolumeNotEmpty { clusters: 2, .. })
    ));
    s.vol_delete(v, true).unwrap();
    assert!(!dir.path().join("vol-0001").exists());
    assert!(s.volumes().is_empty());
    s.close().unwrap();
    assert!(open(dir.path()).volumes().is_empty());
}

#[test]
fn one_process_per_storage_root() {
    let dir = tmp();
    let _s = open(dir.path());
    let err = Storage::open(dir.path(), StorageConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::RootBusy(_)), "{err}");
}

#[test]
fn damaged_catalog_and_descriptors_are_named_not_trusted() {
    let dir = tmp();
    let s = open(dir.path());
    let v = s.vol_create("data", &VolumeParams::default()).unwrap().vol;
    s.vol_mount(v).unwrap();
    s.clu_create(v, 2, 0, ClusterKind::Protected).unwrap();
    s.close().unwrap();
    let desc = dir.path().join("vol-0001/clusters/0000.desc");
    let mut b = fs::read(&desc).unwrap();
    b[30] ^= 1;
    fs::write(&desc, &b).unwrap();
    let err = Storage::open(dir.path(), StorageConfig::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("0000.desc is damaged (checksum mismatch)"),
        "{err}"
    );
    b[30] ^= 1;
    fs::write(&desc, &b).unwrap();
    // Debris of an interrupted creation (a data file with no descriptor) is cleared at mount.
    let orphan = dir.path().join("vol-0001/clusters/0001.data");
    fs::write(&orphan, page(1)).unwrap();
    let orphan_sums = dir.path().join("vol-0001/clusters/0001.sums");
    fs::write(&orphan_sums, [0u8; 4]).unwrap();
    drop(open(dir.path()));
    assert!(!orphan.exists());
    assert!(!orphan_sums.exists());
    fs::write(
        dir.path().join("catalog"),
        "0001 data ssr vol-0001\n0002 ../../etc ssr x\n",
    )
    .unwrap();
    let err = Storage::open(dir.path(), StorageConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("line 2: bad volume name"), "{err}");
}

#[test]
fn a_flipped_bit_in_a_stored_page_is_reported_not_served() {
    let dir = tmp();
    let s = open(dir.path());
    let v = s.vol_create("data", &VolumeParams::default()).unwrap().vol;
    s.vol_mount(v).unwrap();
    let d = s.clu_create(v, 8, 0, ClusterKind::Protected).unwrap();
    let pages = [page(1), page(2), page(3)].concat();
    s.clu_write(
        d.id,
        &[PageRun {
            first_page: 2,
            pages: &pages,
        }],
    )
    .unwrap();
    s.close().unwrap();

    // One bit of page 3 flips on the disk.
    let data = dir.path().join("vol-0001/clusters/0000.data");
    let mut bytes = fs::read(&data).unwrap();
    bytes[3 * P + 1234] ^= 0x04;
    fs::write(&data, &bytes).unwrap();

    let s = open(dir.path());
    let mut buf = page(0);
    s.clu_read(d.id, 2, &mut buf).unwrap();
    assert_eq!(buf, page(1), "an intact page still reads");
    let mut run = vec![0u8; 3 * P];
    let err = s.clu_read(d.id, 1, &mut run).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("page 3 of cluster 0001:0000 fails its checksum"),
        "{err}"
    );
    // Rewriting the page through the journal repairs it.
    s.clu_write(
        d.id,
        &[PageRun {
            first_page: 3,
            pages: &page(4),
        }],
    )
    .unwrap();
    s.clu_read(d.id, 1, &mut run).unwrap();
    assert_eq!(run, [page(0), page(1), page(4)].concat());
    // Resized pages get sums too.
    s.clu_resize(d.id, 2).unwrap();
    let mut tail = vec![1u8; 2 * P];
    s.clu_read(d.id, 8, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    s.clu_destroy(d.id).unwrap();
    assert!(!dir.path().join("vol-0001/clusters/0000.sums").exists());
}

#[test]
fn a_read_right_after_a_batch_commit_sees_it_and_destroy_waits_for_it() {
    use clu_sys::buf::PageBuf;
    use journal::Batch;
    let dir = tmp();
    let s = open(dir.path());
    let v = s.vol_create("data", &VolumeParams::default()).unwrap().vol;
    s.vol_mount(v).unwrap();
    let d = s.clu_create(v, 256, 0, ClusterKind::Protected).unwrap();
    // Large batches, read back at once: the journal's thread applies them after the commit
    // returned, and the read must wait for it, every time.
    let mut got = vec![0u8; 256 * P];
    for round in 1..=40u8 {
        let mut buf = PageBuf::zeroed(256 * P);
        buf.fill(round);
        let mut batch = Batch::new(buf);
        batch.push(0, 0, 256).unwrap();
        s.clu_commit(d.id, batch).unwrap();
        s.clu_read(d.id, 0, &mut got).unwrap();
        assert!(
            got.iter().all(|&b| b == round),
            "round {round}: a stale page was read"
        );
    }
    let mut buf = PageBuf::zeroed(256 * P);
    buf.fill(0xee);
    let mut batch = Batch::new(buf);
    batch.push(0, 0, 256).unwrap();
    s.clu_commit(d.id, batch).unwrap();
    s.clu_destroy(d.id).unwrap();
    s.close().unwrap();
    // Nothing of the destroyed cluster is left to replay, and the volume opens clean.
    let s = open(dir.path());
    assert!(s.volume(v).unwrap().clu_list().is_empty());
}
