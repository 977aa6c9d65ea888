//! Function rerankers (Milvus 2.6's `FunctionScore`): a search or a hybrid search
//! retrieves its best `max(offset + limit, window)` rows, each row's score is adjusted by
//! functions of the row, the rows are re-sorted, and then the page is cut. The window
//! (Magpie's param `window`, default [`DEFAULT_WINDOW`], at most 16384) does not depend
//! on the page, so pages within it are slices of one ranking.
//!
//! - **`decay`** on a numeric field `v`, with `origin`, `scale` (> 0), `offset` (≥ 0) and
//!   `decay` (in (0, 1): the factor at `origin ± (offset + scale)`); with
//!   `x = max(0, |v − origin| − offset)`:
//!   `gauss` = exp(−x² / (2σ²)) with σ² = −scale² / (2 ln decay);
//!   `exp` = exp(λx) with λ = ln(decay) / scale;
//!   `linear` = max(0, (s − x) / s) with s = scale / (1 − decay).
//!   A row whose field is null decays to 0.
//! - **`boost`**: `weight` (finite, ≥ 0) for the rows that pass `filter` (all rows without
//!   one); rows that do not pass are left as they are.
//!
//! A row's score first becomes "larger is better": L2 distances map to
//! `1 − 2·atan(d)/π` as Milvus does; IP, COSINE and BM25 scores (and a hybrid search's
//! fused score) are used as they are. `function_mode` (`multiply`, the default, or
//! `sum`) combines the functions that apply to a row; `boost_mode` (`multiply`, the
//! default, or `sum`) combines that with the score. The final score is the hit's
//! `distance` (larger is better, whatever the metric). Ties are broken by primary key.
//!
//! Grouped searches cannot be reranked (Milvus refuses them too).

use super::{invalid, Engine, QueryRequest, Result, SearchRequest};
use crate::collection::Hit;
use crate::schema::DataType;
use crate::types::{PrimaryKey, Timestamp};
use magpie_index::Metric;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Most functions in one `FunctionScore`.
pub const MAX_SCORE_FUNCTIONS: usize = 8;
/// Rows reranked when the page asks for fewer.
pub const DEFAULT_WINDOW: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecayKind {
    Gauss,
    Exp,
    Linear,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ScoreFunction {
    Decay {
        field: String,
        kind: DecayKind,
        origin: f64,
        scale: f64,
        offset: f64,
        decay: f64,
    },
    Boost {
        filter: Option<String>,
        weight: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Combine {
    #[default]
    Multiply,
    Sum,
}

impl Combine {
    fn parse(what: &str, v: Option<&Value>) -> Result<Combine> {
        match v.map(|v| v.as_str().unwrap_or("")) {
            None => Ok(Combine::Multiply),
            Some(s) if s.eq_ignore_ascii_case("multiply") => Ok(Combine::Multiply),
            Some(s) if s.eq_ignore_ascii_case("sum") => Ok(Combine::Sum),
            Some(_) => Err(invalid(format!(
                "{what} must be \"multiply\" or \"sum\", got {}",
                v.unwrap()
            ))),
        }
    }
    fn identity(self) -> f64 {
        match self {
            Combine::Multiply => 1.0,
            Combine::Sum => 0.0,
        }
    }
    fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Combine::Multiply => a * b,
            Combine::Sum => a + b,
        }
    }
}

/// Rerank functions and how they combine (module docs).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FunctionScore {
    pub functions: Vec<ScoreFunction>,
    pub function_mode: Combine,
    pub boost_mode: Combine,
    /// Rows reranked at least (module docs).
    pub window: usize,
}

/// A number given as a JSON number or as a string (pymilvus sends params as strings).
fn number(params: &Map<String, Value>, key: &str, name: &str) -> Result<Option<f64>> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() => Ok(Some(n)),
        _ => Err(invalid(format!(
            "function '{name}': '{key}' must be a finite number, got {v}"
        ))),
    }
}

impl FunctionScore {
    /// Parses Milvus's shape: functions `{"name", "type": "Rerank", "inputFieldNames":
    /// [field], "params": {"reranker": "decay" | "boost", ...}}` and the score's params
    /// `function_mode` / `boost_mode`. Every problem is named.
    pub fn parse(
        functions: &[Value],
        params: Option<&Map<String, Value>>,
    ) -> Result<FunctionScore> {
        if functions.is_empty() || functions.len() > MAX_SCORE_FUNCTIONS {
            return Err(invalid(format!(
                "a function score needs 1 to {MAX_SCORE_FUNCTIONS} functions, got {}",
                functions.len()
            )));
        }
        let empty = Map::new();
        let params = params.unwrap_or(&empty);
        if let Some(k) = params
            .keys()
            .find(|k| !["function_mode", "boost_mode", "window"].contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "function score params have no '{k}' (function_mode, boost_mode, window)"
            )));
        }
        let window = match number(params, "window", "score")? {
            None => DEFAULT_WINDOW,
            Some(w) if w.fract() == 0.0 && (1.0..=16384.0).contains(&w) => w as usize,
            Some(w) => {
                return Err(invalid(format!(
                    "the rerank window must be an integer in 1..=16384, got {w}"
                )))
            }
        };
        let mut out = FunctionScore {
            functions: Vec::new(),
            function_mode: Combine::parse("function_mode", params.get("function_mode"))?,
            boost_mode: Combine::parse("boost_mode", params.get("boost_mode"))?,
            window,
        };
        for f in functions {
            out.functions.push(Self::function(f)?);
        }
        Ok(out)
    }

    fn function(f: &Value) -> Result<ScoreFunction> {
        let o = f
            .as_object()
            .ok_or_else(|| invalid(format!("a rerank function is an object, got {f}")))?;
        let name = o
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("(unnamed)");
        match o.get("type") {
            Some(Value::String(t)) if t.eq_ignore_ascii_case("rerank") => {}
            Some(Value::Number(n)) if n.as_i64() == Some(3) => {} // FunctionType.RERANK
            t => {
                return Err(invalid(format!(
                    "function '{name}': a ranker's type is \"Rerank\", got {}",
                    t.map_or("nothing".into(), |t| t.to_string())
                )))
            }
        }
        let p = o
            .get("params")
            .and_then(|p| p.as_object())
            .ok_or_else(|| invalid(format!("function '{name}' needs 'params'")))?;
        let inputs: Vec<&str> = o
            .get("inputFieldNames")
            .or_else(|| o.get("input_field_names"))
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let reranker = p.get("reranker").and_then(|r| r.as_str()).unwrap_or("");
        let known = |keys: &[&str]| -> Result<()> {
            match p
                .keys()
                .find(|k| *k != "reranker" && !keys.contains(&k.as_str()))
            {
                Some(k) => Err(invalid(format!(
                    "function '{name}' ({reranker}) has no parameter '{k}'"
                ))),
                None => Ok(()),
            }
        };
        match reranker {
            "decay" => {
                known(&["function", "origin", "scale", "offset", "decay"])?;
                let [field] = inputs.as_slice() else {
                    return Err(invalid(format!(
                        "function '{name}': a decay ranker takes exactly one numeric field in inputFieldNames, got {}",
                        inputs.len()
                    )));
                };
                let kind = match p.get("function").and_then(|k| k.as_str()) {
                    Some("gauss") => DecayKind::Gauss,
                    Some("exp") => DecayKind::Exp,
                    Some("linear") => DecayKind::Linear,
                    k => {
                        return Err(invalid(format!(
                            "function '{name}': 'function' must be gauss, exp or linear, got {}",
                            k.unwrap_or("nothing")
                        )))
                    }
                };
                let need = |k: &str| {
                    number(p, k, name)?
                        .ok_or_else(|| invalid(format!("function '{name}' needs '{k}'")))
                };
                let (origin, scale) = (need("origin")?, need("scale")?);
                let offset = number(p, "offset", name)?.unwrap_or(0.0);
                let decay = number(p, "decay", name)?.unwrap_or(0.5);
                if scale <= 0.0 {
                    return Err(invalid(format!("function '{name}': 'scale' must be > 0, got {scale}")));
                }
                if offset < 0.0 {
                    return Err(invalid(format!("function '{name}': 'offset' must be ≥ 0, got {offset}")));
                }
                if !(decay > 0.0 && decay < 1.0) {
                    return Err(invalid(format!("function '{name}': 'decay' must be in (0, 1), got {decay}")));
                }
                Ok(ScoreFunction::Decay {
                    field: field.to_string(),
                    kind,
                    origin,
                    scale,
                    offset,
                    decay,
                })
            }
            "boost" => {
                known(&["filter", "weight"])?;
                if !inputs.is_empty() {
                    return Err(invalid(format!(
                        "function '{name}': a boost ranker takes no inputFieldNames (it has a 'filter')"
                    )));
                }
                let weight = number(p, "weight", name)?
                    .ok_or_else(|| invalid(format!("function '{name}' needs 'weight'")))?;
                if weight < 0.0 {
                    return Err(invalid(format!("function '{name}': 'weight' must be ≥ 0, got {weight}")));
                }
                let filter = match p.get("filter") {
                    None => None,
                    Some(Value::String(s)) if s.trim().is_empty() => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(x) => {
                        return Err(invalid(format!(
                            "function '{name}': 'filter' must be a string, got {x}"
                        )))
                    }
                };
                Ok(ScoreFunction::Boost { filter, weight })
            }
            other => Err(invalid(format!(
                "function '{name}': unknown reranker '{other}' (decay, boost; rrf and weighted are hybrid search's 'rerank')"
            ))),
        }
    }

    /// The fields the functions read from each hit.
    pub fn fields(&self) -> Vec<String> {
        self.functions
            .iter()
            .filter_map(|f| match f {
                ScoreFunction::Decay { field, .. } => Some(field.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The decay factor of value `v` (module docs).
pub fn decay_factor(
    kind: DecayKind,
    origin: f64,
    scale: f64,
    offset: f64,
    decay: f64,
    v: f64,
) -> f64 {
    let x = ((v - origin).abs() - offset).max(0.0);
    match kind {
        DecayKind::Gauss => {
            let sigma2 = -scale * scale / (2.0 * decay.ln());
            (-x * x / (2.0 * sigma2)).exp()
        }
        DecayKind::Exp => (decay.ln() / scale * x).exp(),
        DecayKind::Linear => {
            let s = scale / (1.0 - decay);
            ((s - x) / s).max(0.0)
        }
    }
}

/// A hit's score as "larger is better".
fn base(metric: Metric, d: f32) -> f64 {
    if metric.higher_is_closer() {
        d as f64
    } else {
        1.0 - 2.0 * (d as f64).atan() / std::f64::consts::PI
    }
}

impl FunctionScore {
    /// Checks the functions against `schema`: decay fields exist and are numeric.
    pub fn check(&self, schema: &crate::schema::CollectionSchema) -> Result<()> {
        for field in self.fields() {
            let f = schema.field(&field).ok_or_else(|| {
                invalid(format!("the decay ranker's field '{field}' does not exist"))
            })?;
            let numeric = matches!(
                f.data_type,
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Float
                    | DataType::Double
            );
            if !numeric {
                return Err(invalid(format!(
                    "the decay ranker's field '{field}' is {:?}; it must be numeric (Int8..Int64, Float, Double)",
                    f.data_type
                )));
            }
        }
        Ok(())
    }

    /// The boost functions' filters, by function position (`None`: no filter).
    pub fn boost_filters(&self) -> Vec<Option<&str>> {
        self.functions
            .iter()
            .map(|f| match f {
                ScoreFunction::Boost {
                    filter: Some(filter),
                    ..
                } => Some(filter.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Reranks one query's hits (in `metric`): each hit's score is adjusted by the
    /// functions, the hits are re-sorted (ties by primary key), the page cut, and the
    /// `added` output fields removed. `passing[i]` holds the hits that pass function
    /// `i`'s boost filter (`None` where function `i` has no filter). Pure: the engine
    /// and a cluster proxy (over hits merged from shards) rank alike.
    pub fn rerank(
        &self,
        metric: Metric,
        hits: Vec<Hit>,
        passing: &[Option<HashSet<PrimaryKey>>],
        offset: usize,
        limit: usize,
        added: &[String],
    ) -> Vec<Hit> {
        let mut scored: Vec<(f64, Hit)> = hits
            .into_iter()
            .map(|mut h| {
                let mut acc: Option<f64> = None;
                for (i, f) in self.functions.iter().enumerate() {
                    let v = match f {
                        ScoreFunction::Decay {
                            field,
                            kind,
                            origin,
                            scale,
                            offset,
                            decay,
                        } => Some(
                            h.fields
                                .get(field)
                                .and_then(|v| v.as_f64())
                                .map_or(0.0, |v| {
                                    decay_factor(*kind, *origin, *scale, *offset, *decay, v)
                                }),
                        ),
                        ScoreFunction::Boost { weight, filter } => {
                            let applies = filter.is_none()
                                || passing
                                    .get(i)
                                    .and_then(|p| p.as_ref())
                                    .is_some_and(|p| p.contains(&h.id));
                            applies.then_some(*weight)
                        }
                    };
                    if let Some(v) = v {
                        acc = Some(acc.map_or(v, |a| self.function_mode.apply(a, v)));
                    }
                }
                let f = acc.unwrap_or(self.boost_mode.identity());
                let s = self.boost_mode.apply(base(metric, h.distance), f);
                for a in added {
                    h.fields.remove(a);
                }
                (s, h)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        scored
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(s, mut h)| {
                h.distance = s as f32;
                h
            })
            .collect()
    }
}

impl Engine {
    /// Checks `fs` against the collection: decay fields exist and are numeric.
    pub(crate) fn check_function_score(&self, coll: &str, fs: &FunctionScore) -> Result<()> {
        let c = self.coll(coll)?;
        let g = c.read();
        fs.check(&g.meta.schema)
    }

    /// Reranks one query's hits (all `offset + limit` of them, in `metric`) by `fs` at
    /// `snap`, then cuts the page. `added` output fields are removed afterwards.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_function_score(
        &self,
        coll: &str,
        fs: &FunctionScore,
        metric: Metric,
        hits: Vec<Hit>,
        snap: Timestamp,
        offset: usize,
        limit: usize,
        added: &[String],
    ) -> Result<Vec<Hit>> {
        // Rows each boost filter passes, among these hits.
        let ids: Vec<Value> = hits.iter().map(|h| h.id.to_json()).collect();
        let mut passing: Vec<Option<HashSet<PrimaryKey>>> = Vec::with_capacity(fs.functions.len());
        // The primary-key field, looked up once for all boost filters.
        let mut pk_field: Option<crate::schema::FieldSchema> = None;
        for filter in fs.boost_filters() {
            passing.push(match filter {
                Some(filter) if !ids.is_empty() => {
                    let rows = self
                        .query(
                            coll,
                            &QueryRequest {
                                filter: Some(filter.to_string()),
                                ids: Some(ids.clone()),
                                output_fields: vec![],
                                snapshot: Some(snap),
                                ..Default::default()
                            },
                        )
                        .map_err(|e| match e {
                            super::EngineError::Filter(m) => {
                                invalid(format!("the boost ranker's filter: {m}"))
                            }
                            e => e,
                        })?;
                    let pk = match pk_field {
                        Some(ref p) => p,
                        None => {
                            pk_field.insert(self.describe_collection(coll)?.schema.pk().clone())
                        }
                    };
                    Some(
                        rows.iter()
                            .filter_map(|r| r.get(&pk.name))
                            .filter_map(|v| PrimaryKey::from_json(v, pk).ok())
                            .collect(),
                    )
                }
                _ => None,
            });
        }
        Ok(fs.rerank(metric, hits, &passing, offset, limit, added))
    }

    /// A search whose hits are reranked by `r.function_score` (module docs).
    pub(crate) fn search_with_functions(
        &self,
        coll: &str,
        r: &SearchRequest,
        fs: &FunctionScore,
    ) -> Result<crate::collection::SearchOutcome> {
        if r.group_by.as_ref().is_some_and(|g| !g.is_empty()) {
            return Err(invalid(
                "a grouped search cannot be reranked by functions; search without groupingField",
            ));
        }
        self.check_function_score(coll, fs)?;
        let c = self.coll(coll)?;
        let snap = match r.snapshot {
            Some(s) => s,
            None => self.read_snapshot(&c, r.consistency)?,
        };
        drop(c);
        let added: Vec<String> = fs
            .fields()
            .into_iter()
            .filter(|f| !r.output_fields.contains(f))
            .collect();
        let inner = SearchRequest {
            function_score: None,
            offset: 0,
            limit: r.limit.saturating_add(r.offset).max(fs.window),
            snapshot: Some(snap),
            output_fields: r.output_fields.iter().chain(&added).cloned().collect(),
            ..r.clone()
        };
        let mut out = self.search_ex(coll, &inner)?;
        let metric = out.metric.unwrap_or(Metric::IP);
        let lists = std::mem::take(&mut out.hits);
        for hits in lists {
            out.hits.push(
                self.apply_function_score(coll, fs, metric, hits, snap, r.offset, r.limit, &added)?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decay_curves_meet_their_definition() {
        for kind in [DecayKind::Gauss, DecayKind::Exp, DecayKind::Linear] {
            let f = |v: f64| decay_factor(kind, 100.0, 10.0, 5.0, 0.5, v);
            // Inside the offset: no decay; at offset + scale: exactly `decay`.
            assert_eq!(f(100.0), 1.0);
            assert_eq!(f(95.0), 1.0);
            assert!((f(115.0) - 0.5).abs() < 1e-12, "{kind:?}: {}", f(115.0));
            assert!((f(85.0) - 0.5).abs() < 1e-12, "{kind:?}");
            // Monotone away from the origin, never negative.
            let mut last = 1.0;
            for v in (105..400).step_by(7) {
                let x = f(v as f64);
                assert!(x <= last && x >= 0.0, "{kind:?} at {v}: {x}");
                last = x;
            }
        }
        // Linear reaches zero at offset + scale / (1 - decay) = 5 + 20.
        assert_eq!(
            decay_factor(DecayKind::Linear, 100.0, 10.0, 5.0, 0.5, 125.0),
            0.0
        );
        assert!(
            decay_factor(DecayKind::Gauss, 0.0, 10.0, 0.0, 0.5, 40.0)
                < decay_factor(DecayKind::Exp, 0.0, 10.0, 0.0, 0.5, 40.0)
        );
    }

    #[test]
    fn bad_functions_are_named() {
        let decay = |p: Value| json!({"name": "d", "type": "Rerank", "inputFieldNames": ["ts"], "params": p});
        for (fns, params, want) in [
            (vec![], None, "1 to 8 functions"),
            (
                vec![decay(
                    json!({"reranker": "decay", "function": "cubic", "origin": 0, "scale": 1}),
                )],
                None,
                "gauss, exp or linear",
            ),
            (
                vec![decay(
                    json!({"reranker": "decay", "function": "gauss", "origin": 0}),
                )],
                None,
                "needs 'scale'",
            ),
            (
                vec![decay(
                    json!({"reranker": "decay", "function": "gauss", "origin": 0, "scale": 0}),
                )],
                None,
                "'scale' must be > 0",
            ),
            (
                vec![decay(
                    json!({"reranker": "decay", "function": "gauss", "origin": 0, "scale": 1, "decay": 1}),
                )],
                None,
                "'decay' must be in (0, 1)",
            ),
            (
                vec![decay(
                    json!({"reranker": "decay", "function": "gauss", "origin": "soon", "scale": 1}),
                )],
                None,
                "finite number",
            ),
            (
                vec![decay(
                    json!({"reranker": "decay", "function": "gauss", "origin": 0, "scale": 1, "sigma": 1}),
                )],
                None,
                "no parameter 'sigma'",
            ),
            (
                vec![decay(json!({"reranker": "boost", "weight": 2}))],
                None,
                "takes no inputFieldNames",
            ),
            (
                vec![decay(json!({"reranker": "model"}))],
                None,
                "unknown reranker 'model'",
            ),
            (
                vec![
                    json!({"name": "b", "type": "BM25", "params": {"reranker": "boost", "weight": 1}}),
                ],
                None,
                "type is \"Rerank\"",
            ),
            (
                vec![
                    json!({"name": "b", "type": "Rerank", "params": {"reranker": "boost", "weight": -1}}),
                ],
                None,
                "'weight' must be ≥ 0",
            ),
            (
                vec![
                    json!({"name": "b", "type": "Rerank", "params": {"reranker": "boost", "weight": 1}}),
                ],
                Some(json!({"boost_mode": "max"})),
                "boost_mode",
            ),
            (
                vec![
                    json!({"name": "b", "type": "Rerank", "params": {"reranker": "boost", "weight": 1}}),
                ],
                Some(json!({"score_mode": "sum"})),
                "no 'score_mode'",
            ),
        ] {
            let p = params.as_ref().and_then(|p: &Value| p.as_object());
            let e = FunctionScore::parse(&fns, p).unwrap_err().to_string();
            assert!(e.contains(want), "{fns:?}: {e}");
        }
        // pymilvus's string params parse.
        let fs = FunctionScore::parse(
            &[decay(json!({"reranker": "decay", "function": "exp", "origin": "10", "scale": "2.5", "offset": "0", "decay": "0.3"}))],
            None,
        )
        .unwrap();
        assert_eq!(
            fs.functions[0],
            ScoreFunction::Decay {
                field: "ts".into(),
                kind: DecayKind::Exp,
                origin: 10.0,
                scale: 2.5,
                offset: 0.0,
                decay: 0.3
            }
        );
    }
}
