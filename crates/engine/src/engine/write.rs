//! The write path: insert, upsert and delete (see the engine's "Write path").

use super::{compile_filter, Engine};
use crate::collection::{Collection, WalOp};
use crate::error::{invalid, EngineError, Result};
use crate::types::{PrimaryKey, Timestamp};
use serde_json::Value;
use std::collections::HashSet;

/// Result of an insert or upsert.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub count: usize,
    pub ids: Vec<PrimaryKey>,
    pub ts: Timestamp,
}

impl Engine {
    /// Appends `op` to the WAL (which assigns its timestamp) and applies it to `g`,
    /// under `g`'s write lock; the caller waits for the returned sequence to be durable.
    pub(super) fn log_and_apply(&self, g: &mut Collection, op: WalOp) -> Result<(u64, Timestamp)> {
        let bytes =
            rmp_serde::to_vec(&op).map_err(|e| invalid(format!("cannot encode write: {e}")))?;
        let (seq, ts) = self.wal.append(g.meta.id, &bytes)?;
        g.apply(&op, ts, &self.config.policy());
        Ok((seq, ts))
    }

    /// Inserts rows. The batch is validated whole (schema, dimensions, NaN/Inf, duplicate
    /// and existing primary keys) before anything is written; returns once durable.
    pub fn insert(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
    ) -> Result<WriteResult> {
        self.write_rows(coll, partition, rows, &[], false)
    }

    /// Inserts rows, replacing any live rows with the same primary keys.
    pub fn upsert(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
    ) -> Result<WriteResult> {
        self.write_rows(coll, partition, rows, &[], true)
    }

    /// Inserts (or upserts) rows whose vector fields come as columns, `rows × dim`
    /// floats per named field ([`CollectionSchema::validate_columns`]): the columnar
    /// protocols' path, which spares each float a JSON value.
    pub fn write_columns(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
        vectors: &[(String, Vec<f32>)],
        upsert: bool,
    ) -> Result<WriteResult> {
        self.write_rows(coll, partition, rows, vectors, upsert)
    }

    fn write_rows(
        &self,
        coll: &str,
        partition: Option<&str>,
        rows: &[Value],
        vectors: &[(String, Vec<f32>)],
        upsert: bool,
    ) -> Result<WriteResult> {
        if rows.is_empty() {
            return Err(invalid("no rows given: 'data' must hold at least one row"));
        }
        let c = self.coll(coll)?;
        // Embedding is slow: done before the collection's write lock is taken. The schema
        // is copied only for collections that have functions (not on every insert).
        let with_functions = {
            let g = c.read();
            (!g.meta.schema.functions.is_empty()).then(|| g.meta.schema.clone())
        };
        let filled = match &with_functions {
            Some(schema) => Some(self.apply_functions(schema, rows)?),
            None => None,
        };
        let rows: &[Value] = filled.as_deref().unwrap_or(rows);
        let (seq, res) = {
            let mut g = c.write();
            // Partition-key collections route each row by its key when it is applied
            // (`Collection::apply`); the logged partition is only a placeholder.
            let part = g.write_partition(partition)?;
            let schema = &g.meta.schema;
            let batch = if schema.pk().auto_id && !upsert {
                let start = self.wal.alloc_ts(rows.len() as u64) as i64;
                let mut ids = start..;
                schema.validate_columns(rows, vectors, Some(&mut ids), false)?
            } else {
                schema.validate_columns(rows, vectors, None, upsert)?
            };
            if !upsert {
                if let Some((i, pk)) = batch
                    .pks
                    .iter()
                    .enumerate()
                    .find(|(_, pk)| g.pk_index.contains_key(pk))
                {
                    return Err(EngineError::Row {
                        row: i,
                        field: schema.pk().name.clone(),
                        msg: format!("primary key {pk} already exists; use upsert to replace it"),
                    });
                }
            }
            let ids = batch.pks.clone();
            let op = if upsert {
                WalOp::Upsert {
                    partition: part,
                    batch,
                }
            } else {
                WalOp::Insert {
                    partition: part,
                    batch,
                }
            };
            let (seq, ts) = self.log_and_apply(&mut g, op)?;
            (
                seq,
                WriteResult {
                    count: ids.len(),
                    ids,
                    ts,
                },
            )
        };
        self.wal.sync_to(seq)?;
        self.schedule_interim(&c);
        Ok(res)
    }

    /// Deletes by primary keys and/or filter; returns the number of rows deleted.
    pub fn delete(
        &self,
        coll: &str,
        partition: Option<&str>,
        ids: Option<&[Value]>,
        filter: Option<&str>,
    ) -> Result<usize> {
        let c = self.coll(coll)?;
        let (seq, n) = {
            let mut g = c.write();
            let parts = match partition.filter(|p| !p.is_empty()) {
                Some(p) => Some(HashSet::from([g.partition_id(Some(p))?])),
                None => None,
            };
            let filter = compile_filter(filter, &g.meta.schema)?;
            let idset = ids.map(|ids| self.parse_ids(&g, ids)).transpose()?;
            if filter.is_none() && idset.is_none() {
                return Err(invalid(
                    "delete needs 'filter' or 'ids' (to delete everything, drop the collection)",
                ));
            }
            let mut pks = Vec::new();
            let indexed = g.scalar_indexed();
            for s in &g.segments {
                if parts.as_ref().is_some_and(|p| !p.contains(&s.partition)) {
                    continue;
                }
                for i in g
                    .allowed(
                        s,
                        Timestamp::MAX - 1,
                        filter.as_ref(),
                        idset.as_ref(),
                        &indexed,
                    )
                    .iter_ones()
                {
                    pks.push(s.pks[i].clone());
                }
            }
            if pks.is_empty() {
                return Ok(0);
            }
            let n = pks.len();
            let (seq, _) = self.log_and_apply(&mut g, WalOp::Delete { pks })?;
            (seq, n)
        };
        self.wal.sync_to(seq)?;
        Ok(n)
    }

    pub(super) fn parse_ids(&self, g: &Collection, ids: &[Value]) -> Result<HashSet<PrimaryKey>> {
        let pkf = g.meta.schema.pk();
        ids.iter()
            .map(|v| {
                PrimaryKey::from_json(v, pkf).map_err(|m| invalid(format!("invalid id {v}: {m}")))
            })
            .collect()
    }
}
