//! Writes through the proxy: validated against the schema, auto ids assigned, split by
//! primary-key hash and appended to the shards' logs.

use super::{api, call, err_of, need, ApiResult, Proxy, RECORD_BYTES};
use crate::log::ShardId;
use crate::meta::{shard_of, CollectionRecord};
use crate::node::Record;
use magpie_engine::types::{now_ms, ts_from_ms};
use magpie_engine::{Consistency, EngineError, PrimaryKey};
use magpie_server::error::ApiError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

impl Proxy {
    /// The request's `partitionName` (none: the default partition), checked against
    /// the mirror (brought up to date by [`Proxy::collection`] first).
    pub(super) fn write_partition(
        &self,
        name: &str,
        body: &Value,
    ) -> Result<Option<String>, ApiError> {
        let partition = body
            .get("partitionName")
            .and_then(|v| v.as_str())
            .filter(|p| !p.is_empty())
            .map(String::from);
        if let Some(p) = &partition {
            if !self.mirror.has_partition(name, p)? {
                return Err(ApiError::from(
                    magpie_engine::EngineError::PartitionNotFound {
                        collection: name.to_string(),
                        partition: p.clone(),
                    },
                ));
            }
        }
        Ok(partition)
    }

    pub(super) async fn write(&self, mut body: Value, upsert: bool) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let meta = self.mirror.describe_collection(&name)?;
        let schema = &meta.schema;
        let partition = self.write_partition(&name, &body)?;
        let mut rows = match body.get_mut("data").map(Value::take) {
            Some(Value::Array(a)) => a,
            Some(o @ Value::Object(_)) => vec![o],
            None | Some(Value::Null) => {
                return Err(ApiError::bad_request("missing 'data': give a list of rows"))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "'data' must be a list of row objects",
                ))
            }
        };
        if rows.is_empty() {
            return Err(ApiError::bad_request(
                "no rows given: 'data' must hold at least one row",
            ));
        }
        let pkf = schema.pk().clone();
        // Rows are validated as the shards will store them, with every function's output
        // filled in. They are logged with the embedding functions' outputs (the model
        // runs once, here; shard engines keep what is given, `function_outputs_given`)
        // and without BM25's (each shard counts the terms of the logged text again).
        let filled = if schema.functions.is_empty() {
            None
        } else {
            Some(self.mirror.apply_functions(schema, &rows)?)
        };
        let checked: &[Value] = filled.as_deref().unwrap_or(&rows);
        let batch = if pkf.auto_id && !upsert {
            let floor = ts_from_ms(now_ms());
            let r = self
                .meta
                .allocate("ids", rows.len() as u64, floor)
                .await
                .map_err(api)?;
            let mut ids = (r.start as i64)..;
            schema.validate_batch(checked, Some(&mut ids), false)?
        } else {
            schema.validate_batch(checked, None, upsert)?
        };
        if let Some(filled) = filled {
            let embedded: Vec<&str> = schema
                .functions
                .iter()
                .filter(|f| f.kind != magpie_engine::FunctionKind::BM25)
                .map(|f| f.output())
                .collect();
            if !embedded.is_empty() {
                for (row, full) in rows.iter_mut().zip(filled) {
                    if let (Some(o), Value::Object(mut full)) = (row.as_object_mut(), full) {
                        for out in &embedded {
                            if let Some(v) = full.remove(*out) {
                                o.insert(out.to_string(), v);
                            }
                        }
                    }
                }
            }
        }
        let ids: Vec<Value> = batch.pks.iter().map(PrimaryKey::to_json).collect();
        // Held until the batch is logged (dropped at the end of this function).
        let mut _serial = None;
        if !upsert && !pkf.auto_id {
            let lock = self.insert_locks.lock().entry(rec.id).or_default().clone();
            _serial = Some(lock.lock_owned().await);
            self.refuse_stored_keys(&rec, &name, &pkf.name, &batch.pks, &ids)
                .await?;
        }
        let mut by_shard: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
        for (row, id) in rows.iter_mut().zip(&ids) {
            if let Some(o) = row.as_object_mut() {
                o.insert(pkf.name.clone(), id.clone());
            }
            by_shard
                .entry(shard_of(id, rec.shards))
                .or_default()
                .push(row.take());
        }
        for (s, rows) in by_shard {
            let id = ShardId {
                collection: rec.id,
                shard: s,
            };
            // Each row is serialised once, into the record that carries it.
            let mut chunk = UpsertRecord::new(&name, partition.as_deref());
            let n = rows.len();
            for (i, row) in rows.into_iter().enumerate() {
                chunk.push(&row);
                drop(row);
                if chunk.len() >= RECORD_BYTES || i + 1 == n {
                    let bytes = std::mem::replace(
                        &mut chunk,
                        UpsertRecord::new(&name, partition.as_deref()),
                    )
                    .finish();
                    self.append_bytes(id, bytes).await?;
                }
            }
        }
        let n = ids.len();
        Ok(if upsert {
            json!({"code": 0, "data": {"upsertCount": n, "upsertIds": ids}})
        } else {
            json!({"code": 0, "data": {"insertCount": n, "insertIds": ids}})
        })
    }

    /// Standalone refuses an insert whose primary key is already stored (an upsert
    /// replaces it), and so does the cluster: before anything is logged, the batch's keys
    /// are looked up on their shards at Strong consistency, so a refused batch leaves
    /// nothing behind on any shard, with the same 400 and message as standalone.
    ///
    /// The log records every write as an upsert (that is what makes replay from a
    /// checkpoint idempotent), so the lookup is not atomic with the append. Through one
    /// proxy, inserts with client-given keys into one collection hold a lock from their
    /// lookup to their last append, so the second of two inserts of one new key sees the
    /// first and is refused, as standalone refuses it. Through two proxies they can
    /// still both pass, and the later replaces the earlier.
    async fn refuse_stored_keys(
        &self,
        rec: &CollectionRecord,
        name: &str,
        pk_name: &str,
        pks: &[PrimaryKey],
        ids: &[Value],
    ) -> Result<(), ApiError> {
        let mut per: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
        for id in ids {
            per.entry(shard_of(id, rec.shards))
                .or_default()
                .push(id.clone());
        }
        let targets: Vec<(u32, Value)> = per
            .into_iter()
            .map(|(s, ids)| {
                let q = json!({"collectionName": name, "ids": ids, "outputFields": [pk_name]});
                (s, q)
            })
            .collect();
        let parts = self
            .fan_out(
                rec,
                &targets,
                "/v2/vectordb/entities/query",
                Consistency::Strong,
            )
            .await?;
        let stored: HashSet<String> = parts
            .iter()
            .flat_map(|v| v["data"].as_array().cloned().unwrap_or_default())
            .map(|row| row[pk_name].to_string())
            .collect();
        match ids.iter().position(|id| stored.contains(&id.to_string())) {
            None => Ok(()),
            Some(row) => Err(ApiError::from(EngineError::Row {
                row,
                field: pk_name.to_string(),
                msg: format!(
                    "primary key {} already exists; use upsert to replace it",
                    pks[row]
                ),
            })),
        }
    }

    pub(super) async fn delete(&self, body: Value) -> ApiResult {
        let name = need(&body, "collectionName")?;
        let rec = self.collection(&name).await?;
        let meta = self.mirror.describe_collection(&name)?;
        let pkf = meta.schema.pk().clone();
        let ids: Option<Vec<Value>> = match body.get("ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(x) => Some(vec![x.clone()]),
        };
        let filter = body
            .get("filter")
            .and_then(|v| v.as_str())
            .filter(|f| !f.is_empty());
        if ids.is_none() && filter.is_none() {
            return Err(ApiError::bad_request(
                "delete needs 'filter' or 'ids' (to delete everything, drop the collection)",
            ));
        }
        let mut norm = Vec::new();
        for v in ids.iter().flatten() {
            let pk = PrimaryKey::from_json(v, &pkf)
                .map_err(|m| ApiError::bad_request(format!("invalid id {v}: {m}")))?;
            norm.push(pk.to_json());
        }
        // The filter is checked on the mirror (an empty copy of the collection).
        let mut probe = json!({"collectionName": name, "limit": 1});
        if let Some(f) = filter {
            probe["filter"] = json!(f);
        }
        if let Some(p) = body.get("partitionName") {
            probe["partitionNames"] = json!([p]);
        }
        let (st, v) = call(&self.mirror_router, "/v2/vectordb/entities/query", &probe).await;
        if !st.is_success() {
            return Err(err_of(st, &v));
        }
        let shards: Vec<u32> = if filter.is_some() {
            (0..rec.shards).collect()
        } else {
            let mut s: Vec<u32> = norm.iter().map(|id| shard_of(id, rec.shards)).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        // The count the client gets: matching rows at Strong consistency just before.
        let mut count_q = probe.clone();
        count_q["outputFields"] = json!(["count(*)"]);
        count_q.as_object_mut().expect("object").remove("limit");
        count_q["consistencyLevel"] = json!("Strong");
        let mut targets: Vec<(u32, Value)> = Vec::new();
        for s in &shards {
            let mut q = count_q.clone();
            if filter.is_none() || !norm.is_empty() {
                let mine: Vec<Value> = norm
                    .iter()
                    .filter(|id| shard_of(id, rec.shards) == *s)
                    .cloned()
                    .collect();
                if filter.is_none() && mine.is_empty() {
                    continue;
                }
                q["ids"] = json!(mine);
            }
            targets.push((*s, q));
        }
        let counts = self
            .fan_out(
                &rec,
                &targets,
                "/v2/vectordb/entities/query",
                Consistency::Strong,
            )
            .await?;
        let n: u64 = counts
            .iter()
            .map(|v| v["data"][0]["count(*)"].as_u64().unwrap_or(0))
            .sum();
        for (s, q) in &targets {
            let mut b = body.clone();
            if let Some(ids) = q.get("ids") {
                b["ids"] = ids.clone();
            }
            self.append(
                ShardId {
                    collection: rec.id,
                    shard: *s,
                },
                &Record {
                    path: "/v2/vectordb/entities/delete".into(),
                    body: b,
                },
            )
            .await?;
        }
        Ok(json!({"code": 0, "data": {"deleteCount": n}}))
    }
}

/// The bytes of an upsert [`Record`] (`{"path": "/v2/vectordb/entities/upsert", "body":
/// {"collectionName", "partitionName"?, "data": [rows]}}`), written row by row so that
/// each row is serialised once and the record's size is known as it grows.
struct UpsertRecord {
    buf: Vec<u8>,
    rows: usize,
}

impl UpsertRecord {
    fn new(collection: &str, partition: Option<&str>) -> Self {
        let mut buf = Vec::with_capacity(RECORD_BYTES + (RECORD_BYTES >> 3));
        buf.extend_from_slice(
            br#"{"path":"/v2/vectordb/entities/upsert","body":{"collectionName":"#,
        );
        serde_json::to_writer(&mut buf, collection).expect("a string serialises");
        if let Some(p) = partition {
            buf.extend_from_slice(br#","partitionName":"#);
            serde_json::to_writer(&mut buf, p).expect("a string serialises");
        }
        buf.extend_from_slice(br#","data":["#);
        UpsertRecord { buf, rows: 0 }
    }

    fn push(&mut self, row: &Value) {
        if self.rows > 0 {
            self.buf.push(b',');
        }
        serde_json::to_writer(&mut self.buf, row).expect("a JSON value serialises");
        self.rows += 1;
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"]}}");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_records_decode_as_the_records_they_stand_for() {
        let rows = [
            json!({"id": 1, "v": [0.5, -1.25e-7], "s": "a \"quoted\" \n text"}),
            json!({"id": "k", "meta": {"x": null}}),
        ];
        for partition in [None, Some("p\"1")] {
            let mut r = UpsertRecord::new("db.coll\"x", partition);
            for row in &rows {
                r.push(row);
            }
            let got: Record = serde_json::from_slice(&r.finish()).unwrap();
            let mut body = json!({"collectionName": "db.coll\"x", "data": rows});
            if let Some(p) = partition {
                body["partitionName"] = json!(p);
            }
            assert_eq!(got.path, "/v2/vectordb/entities/upsert");
            assert_eq!(got.body, body);
        }
    }
}
