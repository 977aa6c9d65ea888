//! Seal, flush and compaction: what moves rows from memory to segment files, and the
//! manifest that lists them.

use super::{Collection, SealPolicy};
use crate::catalog::{Manifest, ManifestSegment};
use crate::error::Result;
use crate::schema::RowBatch;
use crate::segment::{SegState, Segment, LIVE};
use crate::types::Timestamp;
use std::collections::HashMap;

impl Collection {
    /// Seals segments older than the age limit; true if any segment awaits a flush.
    pub fn needs_flush(&mut self, policy: &SealPolicy, now_ms: u64) -> bool {
        let mut need = false;
        for s in &mut self.segments {
            if s.state == SegState::Growing
                && !s.is_empty()
                && now_ms.saturating_sub(s.created_ms) >= policy.max_age_ms
            {
                s.state = SegState::Sealed;
            }
            need |= s.state == SegState::Sealed;
        }
        // New tombstones alone do not seal growing rows into a tiny segment: they are
        // durable in the WAL and reach segment files with the next flush. Only when no
        // growing rows wait (so the flush makes no segment) are they written now.
        let dirty = self
            .segments
            .iter()
            .any(|s| s.state == SegState::Flushed && s.deletes_dirty);
        let growing = self
            .segments
            .iter()
            .any(|s| s.state == SegState::Growing && !s.is_empty());
        need || (dirty && !growing)
    }

    /// Whether [`Collection::compact`] would find work: two or more small flushed
    /// segments in one partition, or a flushed segment with more than `delete_ratio`
    /// of its rows deleted.
    pub fn wants_compaction(&self, delete_ratio: f64, small_rows: usize) -> bool {
        let mut small: HashMap<u64, usize> = HashMap::new();
        for s in &self.segments {
            if s.state != SegState::Flushed || s.is_empty() {
                continue;
            }
            let dead = s.len() - s.live_count();
            if dead as f64 > delete_ratio * s.len() as f64 {
                return true;
            }
            if s.len() < small_rows {
                let n = small.entry(s.partition).or_default();
                *n += 1;
                if *n >= 2 {
                    return true;
                }
            }
        }
        false
    }

    /// Seals every growing segment and persists all segments and tombstones not yet on
    /// disk, then replaces the manifest. On return, every write applied so far is durable
    /// in segment files and `flushed_ts == applied_ts`.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_inner(false)
    }

    fn flush_inner(&mut self, force_manifest: bool) -> Result<()> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let sp = |id: u64| format!("{prefix}segments/{id}/");
        self.segments
            .retain(|s| !(s.state == SegState::Growing && s.is_empty()));
        let mut changed = force_manifest;
        for s in &mut self.segments {
            if s.state != SegState::Flushed {
                s.persist(&*store, &sp(s.id))?;
                s.deletes_dirty = s.deleted_at.iter().any(|d| *d != LIVE);
                changed = true;
            }
            if s.deletes_dirty {
                s.write_deletes(&*store, &sp(s.id), s.deletes_gen + 1)?;
                s.deletes_gen += 1;
                s.deletes_dirty = false;
                changed = true;
            }
        }
        if changed || self.applied_ts > self.flushed_ts {
            self.save_manifest(self.applied_ts)?;
            for s in &self.segments {
                Segment::remove_old_deletes(&*store, &sp(s.id), s.deletes_gen);
            }
        }
        Ok(())
    }

    /// Replaces the manifest: every flushed segment, its tombstone generation and its
    /// index files, with `flushed_ts`. Durable on return.
    pub(crate) fn save_manifest(&mut self, flushed_ts: Timestamp) -> Result<()> {
        let m = Manifest {
            format: 1,
            flushed_ts,
            next_segment_id: self.next_segment_id,
            segments: self
                .segments
                .iter()
                .filter(|s| s.state == SegState::Flushed)
                .map(|s| ManifestSegment {
                    id: s.id,
                    partition: s.partition,
                    rows: s.len(),
                    deletes_gen: s.deletes_gen,
                    indexes: s.indexes.iter().flatten().map(|i| i.file.clone()).collect(),
                })
                .collect(),
        };
        m.save(&*self.store, &self.manifest_key())?;
        self.flushed_ts = flushed_ts;
        Ok(())
    }

    /// Drops a partition's segments (after the catalog no longer lists it).
    pub fn drop_partition_data(&mut self, partition: u64) -> Result<()> {
        let gone: Vec<u64> = self
            .segments
            .iter()
            .filter(|s| s.partition == partition)
            .map(|s| s.id)
            .collect();
        self.segments.retain(|s| s.partition != partition);
        self.rebuild_pk_index();
        // A full flush: the manifest's flushed_ts may only advance once every other
        // partition's growing rows are on disk too.
        self.flush_inner(true)?;
        for id in gone {
            let _ = self.store.delete_prefix(&self.seg_prefix(id));
        }
        Ok(())
    }

    /// Compaction: rewrites flushed segments whose deleted fraction exceeds
    /// `delete_ratio` or that are in an older segment format, and merges small flushed
    /// segments of the same partition, keeping only live rows. With `flush_first` (a user's `compact`) everything is flushed first;
    /// without (automatic compaction) growing rows stay growing. Either way the caller has
    /// synced the WAL, so every tombstone dropped is durable in the log; the manifest keeps
    /// its `flushed_ts`, and replaying a delete of a row compaction already dropped is a
    /// no-op. Returns (segments removed, segments written).
    pub fn compact(
        &mut self,
        delete_ratio: f64,
        small_rows: usize,
        flush_first: bool,
    ) -> Result<(usize, usize)> {
        if flush_first {
            self.flush()?;
        }
        let mut by_part: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, s) in self.segments.iter().enumerate() {
            if s.state != SegState::Flushed || s.is_empty() {
                continue;
            }
            let dead = s.len() - s.live_count();
            if dead as f64 > delete_ratio * s.len() as f64
                || s.len() < small_rows
                || s.format < crate::segment::FORMAT
            {
                by_part.entry(s.partition).or_default().push(i);
            }
        }
        let mut removed_ids = Vec::new();
        let mut written = Vec::new();
        for (part, idxs) in by_part {
            let any_dead = idxs
                .iter()
                .any(|&i| self.segments[i].live_count() < self.segments[i].len());
            let any_old = idxs
                .iter()
                .any(|&i| self.segments[i].format < crate::segment::FORMAT);
            if idxs.len() < 2 && !any_dead && !any_old {
                continue;
            }
            let dynamic = self.meta.schema.enable_dynamic_field;
            let mut out = self.new_segment(part);
            for &i in &idxs {
                let s = &self.segments[i];
                let vecs = s
                    .vectors
                    .iter()
                    .map(|c| c.get())
                    .collect::<Result<Vec<_>>>()?;
                for r in 0..s.len() {
                    if s.deleted_at[r] != LIVE {
                        continue;
                    }
                    let b = RowBatch {
                        pks: vec![s.pks[r].clone()],
                        vectors: vecs.iter().map(|c| c.slice().row(r).to_vec()).collect(),
                        scalars: s
                            .scalars
                            .iter()
                            .map(|c| vec![c.get(r).into_owned()])
                            .collect(),
                        dynamic: if dynamic {
                            vec![s.dynamic.get(r).into_owned()]
                        } else {
                            vec![]
                        },
                    };
                    out.append(&b, s.ts[r], dynamic);
                }
                removed_ids.push(s.id);
            }
            if !out.is_empty() {
                let sp = self.seg_prefix(out.id);
                out.seal_columns();
                out.write(&*self.store, &sp)?;
                out.state = SegState::Flushed;
                out.remap(&*self.store, &sp)?;
                written.push(out);
            }
        }
        if removed_ids.is_empty() {
            return Ok((0, 0));
        }
        let n_written = written.len();
        self.segments.retain(|s| !removed_ids.contains(&s.id));
        self.segments.extend(written);
        self.segments.sort_by_key(|s| s.id);
        self.rebuild_pk_index();
        self.save_manifest(self.flushed_ts)?;
        for id in &removed_ids {
            self.store.delete_prefix(&self.seg_prefix(*id))?;
        }
        Ok((removed_ids.len(), n_written))
    }
}
