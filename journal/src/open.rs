//! Opening a journal: recovery from the anchor and the log files (the rules are the pure
//! [`crate::recovery::plan`]), then the live state and the background thread.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use crate::anchor::Anchor;
use crate::apply::{Applier, Batch, Queued};
use crate::format::{decode_file_header, PAGE_SIZE};
use crate::inner::{Checkpoint, Inner, Prepared, SyncState, Wake, Writer};
use crate::journal::ANCHOR;
use crate::recovery::{self, LogImage};
use crate::{files, ApplyTarget, Journal, JournalConfig, JournalError, RecoveryReport};

impl Journal {
    /// Opens the journal in `dir` and recovers: replays validated operations onto `target`,
    /// truncates an unvalidated tail, checkpoints, and deletes files nothing needs.
    pub fn open(
        dir: &Path,
        config: JournalConfig,
        target: Arc<dyn ApplyTarget>,
    ) -> Result<(Journal, RecoveryReport), JournalError> {
        let anchor_path = dir.join(ANCHOR);
        if !anchor_path.exists() {
            return Err(JournalError::NotFound(dir.to_owned()));
        }
        let mut anchor = Anchor::open(&anchor_path)?;
        let slot = anchor.current();
        let seqs = files::list(dir)?;
        let (obsolete, needed): (Vec<u64>, Vec<u64>) =
            seqs.iter().partition(|&&s| s < slot.durable_lsn.file);
        let mut images = Vec::with_capacity(needed.len());
        for &seq in &needed {
            let path = files::log_path(dir, seq);
            images.push((
                seq,
                fs::read(&path).map_err(|e| JournalError::io(&path, e))?,
            ));
        }
        let views: Vec<LogImage<'_>> = images
            .iter()
            .map(|(seq, bytes)| LogImage { seq: *seq, bytes })
            .collect();
        let plan = recovery::plan(&slot, &views).map_err(|source| JournalError::Recovery {
            dir: dir.to_owned(),
            source,
        })?;
        let bytes_of = |seq: u64| &images[(seq - slot.durable_lsn.file) as usize].1;
        let mut report = RecoveryReport {
            log_end: plan.log_end,
            ..RecoveryReport::default()
        };
        for op in &plan.replay {
            for run in &op.runs {
                let pages = &bytes_of(op.lsn.file)[run.bytes.clone()];
                target
                    .apply(op.cluster, run.first_page, pages)
                    .map_err(|source| JournalError::Apply {
                        lsn: op.lsn,
                        cluster: op.cluster,
                        source,
                    })?;
                report.replayed_pages += (pages.len() / PAGE_SIZE) as u64;
            }
            report.replayed_ops += 1;
        }
        let last_seq = plan.log_end.file;
        let path = files::log_path(dir, last_seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        if let Some((_, range)) = &plan.truncate {
            let zeros = vec![0u8; (range.end - range.start) as usize];
            file.write_all_at(&zeros, range.start)
                .map_err(|e| JournalError::io(&path, e))?;
            file.sync_data().map_err(|e| JournalError::io(&path, e))?;
            report.truncated_bytes = zeros.len() as u64;
        }
        if config.sync {
            target.sync().map_err(|e| JournalError::io(dir, e))?;
        }
        // Prepared groups in doubt are held (not applied, their operations pending) until
        // their decision is known: `durableLSN` stays before the first of them.
        let mut prepared = HashMap::new();
        let mut held = BTreeSet::new();
        for d in &plan.in_doubt {
            let mut ops = Vec::with_capacity(d.ops.len());
            for op in &d.ops {
                ops.push(Queued {
                    lsn: op.lsn,
                    cluster: op.cluster,
                    batch: batch_of(bytes_of(op.lsn.file), op)?,
                });
                held.insert(op.lsn);
            }
            prepared.insert(
                d.txid,
                Prepared {
                    coordinator: d.coordinator,
                    ops,
                },
            );
        }
        let durable = held.first().copied().unwrap_or(plan.log_end);
        if slot.log_lsn != plan.log_end || slot.durable_lsn != durable {
            anchor.write(plan.log_end, durable, config.sync)?;
        }
        if !plan.in_doubt.is_empty() {
            tracing::info!(dir = %dir.display(), groups = plan.in_doubt.len(), "journal holds prepared commit groups in doubt");
        }
        crate::decisions::compact(dir, 1024)?;
        files::retire(
            dir,
            &obsolete,
            config.checkpoint_files as usize,
            config.sync,
        )?;
        let last = bytes_of(last_seq);
        let id =
            decode_file_header(&last[..PAGE_SIZE]).map_err(|reason| JournalError::Recovery {
                dir: dir.to_owned(),
                source: recovery::RecoveryError::BadFileHeader {
                    seq: last_seq,
                    reason,
                },
            })?;
        let file = Arc::new(file);
        let writer = Writer {
            file: file.clone(),
            direct: files::open_direct(&files::log_path(dir, last_seq)),
            id,
            size: last.len() as u64,
            offset: plan.log_end.offset,
            sealed: plan.last_sealed,
            rotations: 0,
        };
        let oldest_file = needed.first().copied().unwrap_or(last_seq);
        if report.replayed_ops > 0 || report.truncated_bytes > 0 {
            tracing::info!(dir = %dir.display(), ?report, "journal recovered");
        }
        let inner = Inner {
            dir: dir.to_owned(),
            config,
            target,
            writer: Mutex::new(writer),
            sync: Mutex::new(SyncState {
                file,
                written: plan.log_end,
                written_ops: 0,
                opened_at: plan.log_end,
                synced: plan.log_end,
                syncing: false,
            }),
            synced_cv: Condvar::new(),
            pending: Mutex::new(held),
            checkpoint: Mutex::new(Checkpoint {
                anchor,
                oldest_file,
            }),
            consumers: Mutex::new(BTreeMap::new()),
            next_consumer: AtomicU64::new(0),
            want_checkpoint: Mutex::new(Wake::default()),
            checkpoint_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            files: Mutex::new(()),
            stopped: Mutex::new(None),
            commits: AtomicU64::new(0),
            log_syncs: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            applier: Applier::default(),
            tail: Mutex::new(None),
            on_written: Mutex::new(None),
            prepared: Mutex::new(prepared),
        };
        let inner = Arc::new(inner);
        let checkpointer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("journal-checkpoint".into())
                .spawn(move || inner.background())
                .map_err(|e| JournalError::io(dir, e))?
        };
        let applier = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("journal-apply".into())
                .spawn(move || inner.apply_loop())
                .map_err(|e| JournalError::io(dir, e))?
        };
        Ok((
            Journal {
                inner,
                checkpointer: Some(checkpointer),
                applier: Some(applier),
            },
            report,
        ))
    }
}

/// The pages of an operation read from its log file's bytes, as a batch (for a prepared group
/// held in doubt).
fn batch_of(bytes: &[u8], op: &recovery::OpRef) -> Result<Batch, JournalError> {
    let total: usize = op.runs.iter().map(|r| r.bytes.len()).sum();
    let mut buf = clu_sys::buf::PageBuf::zeroed(total);
    let mut at = 0;
    let mut runs = Vec::with_capacity(op.runs.len());
    for r in &op.runs {
        let n = r.bytes.len();
        buf[at..at + n].copy_from_slice(&bytes[r.bytes.clone()]);
        runs.push((r.first_page, at, n / PAGE_SIZE));
        at += n;
    }
    let mut batch = Batch::new(buf);
    for (first, at, n) in runs {
        batch.push(first, at, n)?;
    }
    Ok(batch)
}
