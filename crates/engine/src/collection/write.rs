//! Applying a logged write: inserts routed to partitions and growing segments,
//! deletes as tombstones (see the engine's "Write path").

use super::{Collection, SealPolicy, WalOp};
use crate::error::Result;
use crate::schema::{CollectionSchema, RowBatch};
use crate::segment::SegState;
use crate::types::{PrimaryKey, Timestamp};

impl Collection {
    /// Applies a logged write at `ts`. Never fails: everything was validated before the
    /// write was logged, and replay re-applies exactly what was logged.
    pub fn apply(&mut self, op: &WalOp, ts: Timestamp, policy: &SealPolicy) {
        match op {
            WalOp::Insert { partition, batch } => self.route_insert(*partition, batch, ts, policy),
            WalOp::Upsert { partition, batch } => {
                self.apply_delete(&batch.pks, ts);
                self.route_insert(*partition, batch, ts, policy);
            }
            WalOp::Delete { pks } => self.apply_delete(pks, ts),
        }
        self.applied_ts = self.applied_ts.max(ts);
    }

    /// Inserts into `partition`, or, in a partition-key collection, into the partition
    /// of each row's key (deterministic, so replay puts every row where it was).
    fn route_insert(
        &mut self,
        partition: u64,
        batch: &RowBatch,
        ts: Timestamp,
        policy: &SealPolicy,
    ) {
        let Some(routes) = self.key_routes(batch) else {
            return self.apply_insert(partition, batch, ts, policy);
        };
        let dims: Vec<usize> = self
            .meta
            .schema
            .vector_fields()
            .map(|f| f.vec_len())
            .collect();
        for (id, rows) in routes {
            if rows.len() == batch.len() {
                self.apply_insert(id, batch, ts, policy);
            } else {
                let sub = batch.select(&rows, &dims);
                self.apply_insert(id, &sub, ts, policy);
            }
        }
    }

    /// In a partition-key collection, the rows of `batch` per partition their key
    /// places them in (partition id, row positions; partitions without rows left out);
    /// `None` in other collections.
    pub(crate) fn key_routes(&self, batch: &RowBatch) -> Option<Vec<(u64, Vec<usize>)>> {
        let schema = &self.meta.schema;
        let col = schema.scalar_index(&schema.partition_key()?.name)?;
        let n = self.meta.partitions.len();
        let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, v) in batch.scalars[col].iter().enumerate() {
            by_part[CollectionSchema::key_partition(v, n)].push(i);
        }
        Some(
            by_part
                .into_iter()
                .enumerate()
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(p, rows)| (self.meta.partitions[p].id, rows))
                .collect(),
        )
    }

    /// The partition a write names: `partition` (default `_default`); in a
    /// partition-key collection, which routes each row by its key when it is applied,
    /// the first partition as a placeholder, and naming one is an error.
    pub(crate) fn write_partition(&self, partition: Option<&str>) -> Result<u64> {
        if self.meta.schema.partition_key().is_some() {
            if partition.is_some_and(|p| !p.is_empty()) {
                self.no_named_partitions()?;
            }
            Ok(self.meta.partitions[0].id)
        } else {
            self.partition_id(partition)
        }
    }

    fn apply_insert(
        &mut self,
        partition: u64,
        batch: &RowBatch,
        ts: Timestamp,
        policy: &SealPolicy,
    ) {
        if batch.is_empty() {
            return;
        }
        let pos = match self
            .segments
            .iter()
            .position(|s| s.state == SegState::Growing && s.partition == partition)
        {
            Some(p) => p,
            None => {
                let seg = self.new_segment(partition);
                self.segments.push(seg);
                self.segments.len() - 1
            }
        };
        let dynamic = self.meta.schema.enable_dynamic_field;
        let seg = &mut self.segments[pos];
        let start = seg.append(batch, ts, dynamic);
        let sid = seg.id;
        if seg.len() >= policy.max_rows || seg.approx_bytes() >= policy.max_bytes {
            seg.state = SegState::Sealed;
        }
        for (i, pk) in batch.pks.iter().enumerate() {
            self.pk_index.insert(pk.clone(), (sid, start + i as u32));
        }
    }

    fn apply_delete(&mut self, pks: &[PrimaryKey], ts: Timestamp) {
        for pk in pks {
            if let Some((sid, off)) = self.pk_index.remove(pk) {
                if let Some(p) = self.seg_pos(sid) {
                    let s = &mut self.segments[p];
                    s.mark_deleted(off as usize, ts);
                }
            }
        }
    }
}
