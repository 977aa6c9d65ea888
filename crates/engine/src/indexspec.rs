//! Index types and their parameters, parsed from Milvus's `indexParams` shape
//! (`index_type`, `M`, `efConstruction`, `nlist`, `m`, `nbits`), and the dispatch that
//! builds or loads the matching [`AnyIndex`]. Parameter names are case-insensitive and
//! values may be numbers or numeric strings, as Milvus clients send both.

use crate::catalog::IndexMeta;
use crate::error::{invalid, Result};
use crate::schema::DataType;
use magpie_index::{
    AnyIndex, BinIvfIndex, BinIvfParams, Cancel, CodecKind, HnswIndex, HnswParams, IvfIndex,
    IvfParams, Metric, VectorSlice,
};
use serde_json::{Map, Value};

/// A validated index definition.
#[derive(Clone, Debug)]
pub enum IndexKind {
    /// Exact scan; nothing is built.
    Flat,
    Hnsw(HnswParams),
    /// IVF_FLAT, IVF_SQ8, IVF_PQ.
    Ivf(IvfParams),
    /// BIN_IVF_FLAT (and AUTOINDEX on a BinaryVector field).
    BinIvf(BinIvfParams),
}

impl IndexKind {
    /// True when segments get a built index (everything but FLAT).
    pub fn is_built(&self) -> bool {
        !matches!(self, IndexKind::Flat)
    }
}

fn param(p: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    let v = p
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v);
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            invalid(format!(
                "index parameter '{name}' must be a positive integer, got {n}"
            ))
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| {
            invalid(format!(
                "index parameter '{name}' must be a positive integer, got \"{s}\""
            ))
        }),
        Some(other) => Err(invalid(format!(
            "index parameter '{name}' must be a positive integer, got {other}"
        ))),
    }
}

fn ranged(p: &Map<String, Value>, name: &str, default: u64, lo: u64, hi: u64) -> Result<usize> {
    let v = param(p, name)?.unwrap_or(default);
    if v < lo || v > hi {
        return Err(invalid(format!(
            "index parameter '{name}' must be in {lo}..={hi}, got {v}"
        )));
    }
    Ok(v as usize)
}

/// Index types accepted by `create_index`.
pub const SUPPORTED: &[&str] = &[
    "FLAT",
    "AUTOINDEX",
    "HNSW",
    "HNSW_SQ",
    "IVF_FLAT",
    "IVF_SQ8",
    "IVF_PQ",
];

/// Index types of BinaryVector fields (metric HAMMING or JACCARD); AUTOINDEX there is
/// BIN_IVF_FLAT.
pub const BINARY_TYPES: &[&str] = &["BIN_FLAT", "BIN_IVF_FLAT", "AUTOINDEX"];

/// Checks an index on a dense vector field against the field's kind: binary fields take
/// [`BINARY_TYPES`] with HAMMING or JACCARD, the others [`SUPPORTED`] with L2, IP or
/// COSINE.
pub fn check_vector(f: &crate::schema::FieldSchema, ix: &IndexMeta) -> Result<()> {
    let t = ix.index_type.to_ascii_uppercase();
    let name = &f.name;
    let binary = f.data_type == DataType::BinaryVector;
    if binary {
        if !BINARY_TYPES.contains(&t.as_str()) {
            return Err(invalid(format!(
                "BinaryVector field '{name}' takes index type {}, not '{t}'",
                BINARY_TYPES.join(", ")
            )));
        }
        if !ix.metric_type.is_binary() {
            return Err(invalid(format!(
                "BinaryVector field '{name}' takes metric HAMMING or JACCARD, not {}",
                ix.metric_type.as_str()
            )));
        }
    } else {
        if t.starts_with("BIN_") {
            return Err(invalid(format!(
                "index type '{t}' is for BinaryVector fields; '{name}' is a {:?}",
                f.data_type
            )));
        }
        if ix.metric_type.is_binary() {
            return Err(invalid(format!(
                "metric {} is for BinaryVector fields; '{name}' is a {:?} (L2, IP or COSINE)",
                ix.metric_type.as_str(),
                f.data_type
            )));
        }
    }
    Ok(())
}

/// Index types of SparseFloatVector fields (both are the same exact inverted index here;
/// `inverted_index_algo` picks how it is walked, see `magpie_index::sparse`).
pub const SPARSE_TYPES: &[&str] = &["SPARSE_INVERTED_INDEX", "SPARSE_WAND"];

/// Checks the metric and params of an index on a sparse field (`bm25`: one filled by a
/// BM25 function, whose metric is BM25; IP otherwise).
pub fn check_sparse(ix: &crate::catalog::IndexMeta, bm25: bool) -> Result<()> {
    let want = if bm25 { Metric::BM25 } else { Metric::IP };
    if ix.metric_type != want {
        return Err(invalid(format!(
            "sparse vector field '{}' {}is indexed with metric {}, not {}",
            ix.field_name,
            if bm25 {
                "(the output of a BM25 function) "
            } else {
                ""
            },
            want.as_str(),
            ix.metric_type.as_str()
        )));
    }
    for (k, v) in &ix.params {
        let num = || v.as_f64().or_else(|| v.as_str()?.parse().ok());
        match k.as_str() {
            "bm25_k1" | "bm25_b" if !bm25 => {
                return Err(invalid(format!(
                    "'{k}' is for BM25 fields; '{}' is not the output of a BM25 function",
                    ix.field_name
                )))
            }
            "bm25_k1" if !num().is_some_and(|x| (0.0..=3.0).contains(&x)) => {
                return Err(invalid(format!("bm25_k1 must be a number in [0, 3], got {v}")))
            }
            "bm25_b" if !num().is_some_and(|x| (0.0..=1.0).contains(&x)) => {
                return Err(invalid(format!("bm25_b must be a number in [0, 1], got {v}")))
            }
            "inverted_index_algo"
                if v.as_str().and_then(magpie_index::SparseAlgo::parse).is_none() =>
            {
                return Err(invalid(format!(
                    "inverted_index_algo must be DAAT_MAXSCORE, DAAT_WAND or TAAT_NAIVE, got {v}"
                )));
            }
            "drop_ratio_build" if v.as_f64() == Some(0.0) => {}
            "drop_ratio_build" => {
                return Err(invalid(
                    "drop_ratio_build is not supported (Milvus 2.5 removed it too); drop entries at search time with drop_ratio_search",
                ))
            }
            // Other keys are ignored, as for dense indexes (clients send index_type,
            // metric_type and the like among the params).
            _ => {}
        }
    }
    Ok(())
}

/// Index types of scalar fields (Milvus's names). All are served by a
/// [`crate::column::SortedIndex`] per sealed segment, built in memory on first use.
pub const SCALAR_TYPES: &[&str] = &["INVERTED", "BITMAP", "STL_SORT", "TRIE", "AUTOINDEX"];

/// Checks a scalar index type against its field, with Milvus's rules of which type
/// suits which field.
pub fn check_scalar(f: &crate::schema::FieldSchema, index_type: &str) -> Result<()> {
    let t = index_type.to_ascii_uppercase();
    let name = &f.name;
    if f.is_sparse() != SPARSE_TYPES.contains(&t.as_str()) && t != "AUTOINDEX" {
        return Err(invalid(if f.is_sparse() {
            format!(
                "sparse vector field '{name}' takes index type {} (metric IP), not '{t}'",
                SPARSE_TYPES.join(" or ")
            )
        } else {
            format!("index type '{t}' is for SparseFloatVector fields; '{name}' is not one")
        }));
    }
    if f.is_sparse() {
        return Ok(());
    }
    if f.is_primary {
        return Err(invalid(format!(
            "field '{name}' is the primary key, which is always indexed"
        )));
    }
    if !SCALAR_TYPES.contains(&t.as_str()) {
        return Err(invalid(if SUPPORTED.contains(&t.as_str()) {
            format!(
                "index type '{t}' is for vector fields; scalar field '{name}' takes one of {}",
                SCALAR_TYPES.join(", ")
            )
        } else {
            format!(
                "index type '{t}' is not supported; scalar field '{name}' takes one of {}",
                SCALAR_TYPES.join(", ")
            )
        }));
    }
    let dt = f.data_type;
    let ok = match dt {
        // JSON fields take path indexes (`check_json_path`).
        DataType::JSON => true,
        DataType::Array => {
            return Err(invalid(format!(
                "Array field '{name}': scalar indexes on arrays are not supported yet"
            )))
        }
        _ => match t.as_str() {
            "TRIE" => dt == DataType::VarChar,
            "BITMAP" => dt == DataType::Bool || dt == DataType::VarChar || dt.is_integer(),
            "STL_SORT" => {
                dt.is_integer()
                    || matches!(dt, DataType::Float | DataType::Double | DataType::VarChar)
            }
            _ => true,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "index type '{t}' does not apply to field '{name}' of type {dt:?}"
        )))
    }
}

/// Checks a JSON path index: Milvus's `json_path` and `json_cast_type` params on a JSON
/// field, or on a dynamic key (`field_name` the key, or `$meta`). Returns the path and
/// the cast type.
pub fn check_json_path(
    schema: &crate::schema::CollectionSchema,
    ix: &IndexMeta,
) -> Result<(crate::filter::JsonPath, crate::column::JsonCast)> {
    use crate::column::JsonCast;
    use crate::filter::{JsonPath, PathBase};
    let name = &ix.field_name;
    let field = schema.field(name);
    let what = match field {
        Some(_) => format!("JSON field '{name}'"),
        None => format!("dynamic key '{name}'"),
    };
    let t = ix.index_type.to_ascii_uppercase();
    if t != "INVERTED" && t != "AUTOINDEX" {
        return Err(invalid(format!(
            "{what}: a JSON path index is INVERTED or AUTOINDEX, not '{t}'"
        )));
    }
    if ix.params.contains_key("json_cast_function") {
        return Err(invalid(format!(
            "{what}: json_cast_function is not supported yet; index values that already have the cast type"
        )));
    }
    let text = |k: &str| {
        ix.params
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let (Some(src), Some(cast)) = (text("json_path"), text("json_cast_type")) else {
        return Err(invalid(format!(
            "{what}: a scalar index needs the params json_path (e.g. {name}[\"key\"]) and json_cast_type (BOOL, DOUBLE or VARCHAR)"
        )));
    };
    let cast = JsonCast::parse(cast).ok_or_else(|| {
        invalid(if cast.to_ascii_uppercase().starts_with("ARRAY_") {
            format!(
                "{what}: json_cast_type '{cast}' is not supported yet; use BOOL, DOUBLE or VARCHAR"
            )
        } else {
            format!("{what}: unknown json_cast_type '{cast}'; use BOOL, DOUBLE or VARCHAR")
        })
    })?;
    let path = JsonPath::parse(src, schema)
        .map_err(|e| invalid(format!("{what}: json_path '{src}': {e}")))?;
    let base_ok = match (&path.base, field) {
        (PathBase::Field(i), Some(f)) => schema
            .scalar_fields()
            .nth(*i)
            .is_some_and(|g| g.name == f.name),
        (PathBase::Dynamic, Some(f)) => f.name == crate::schema::DYNAMIC_FIELD,
        (PathBase::Dynamic, None) => {
            name == crate::schema::DYNAMIC_FIELD
                || path.keys.first() == Some(&Value::String(name.clone()))
        }
        _ => false,
    };
    if !base_ok {
        return Err(invalid(format!(
            "{what}: json_path '{src}' does not start at '{name}'"
        )));
    }
    if path.keys.is_empty() {
        return Err(invalid(format!(
            "{what}: json_path '{src}' names the whole field; index a key inside it, e.g. {name}[\"key\"]"
        )));
    }
    Ok((path, cast))
}

/// The path and cast type of a JSON path index (`None` for other indexes).
pub fn json_path_of(
    schema: &crate::schema::CollectionSchema,
    ix: &IndexMeta,
) -> Option<(crate::filter::JsonPath, crate::column::JsonCast)> {
    if !ix.params.contains_key("json_path") {
        return None;
    }
    check_json_path(schema, ix).ok()
}

/// Parses and validates an index definition for a vector field of dimension `dim`.
pub fn parse(ix: &IndexMeta, dim: usize, build_threads: usize) -> Result<IndexKind> {
    let p = &ix.params;
    let hnsw = |m_default: u64, sq8: bool| -> Result<IndexKind> {
        Ok(IndexKind::Hnsw(HnswParams {
            m: ranged(p, "M", m_default, 2, 128)?,
            ef_construction: ranged(p, "efConstruction", 200, 1, 4096)?,
            threads: build_threads,
            sq8,
            ..Default::default()
        }))
    };
    let ivf_nlist = || ranged(p, "nlist", 128, 1, 65536);
    match ix.index_type.to_ascii_uppercase().as_str() {
        "FLAT" | "BIN_FLAT" => Ok(IndexKind::Flat),
        // A binary metric means a BinaryVector field (`check_vector`).
        "BIN_IVF_FLAT" | "AUTOINDEX" if ix.metric_type.is_binary() => {
            Ok(IndexKind::BinIvf(BinIvfParams {
                nlist: ivf_nlist()?,
                threads: build_threads,
                ..Default::default()
            }))
        }
        "HNSW" => hnsw(16, false),
        // The graph walked over 8-bit codes, candidates rescored with the raw vectors.
        // AUTOINDEX is the configuration that measured fastest at recall 0.95 on both
        // benchmark sets (docs/BENCHMARKS.md).
        "AUTOINDEX" | "HNSW_SQ" => hnsw(16, true),
        t @ ("IVF_FLAT" | "IVF_SQ8" | "IVF_PQ") => {
            // Milvus's default nlist is 128.
            let nlist = ivf_nlist()?;
            let codec = match t {
                "IVF_FLAT" => CodecKind::Flat,
                "IVF_SQ8" => CodecKind::Sq8,
                _ => {
                    let nbits = ranged(p, "nbits", 8, 1, 64)?;
                    if nbits != 8 {
                        return Err(invalid(format!(
                            "IVF_PQ supports nbits = 8 only, got {nbits}"
                        )));
                    }
                    let m = param(p, "m")?.ok_or_else(|| {
                        invalid("IVF_PQ needs 'm', the number of sub-quantizers (it must divide the dimension)")
                    })? as usize;
                    if m == 0 || (dim > 0 && !dim.is_multiple_of(m)) {
                        return Err(invalid(format!(
                            "IVF_PQ: 'm' must divide the dimension {dim}, got {m}"
                        )));
                    }
                    CodecKind::Pq { m }
                }
            };
            Ok(IndexKind::Ivf(IvfParams {
                nlist,
                codec,
                threads: build_threads,
                ..Default::default()
            }))
        }
        // Milvus's disk index (a Vamana graph) is not built here; say what plays its part.
        "DISKANN" => Err(invalid(
            "index type 'DISKANN' is not supported; for vectors larger than memory use \
             IVF_SQ8 or IVF_PQ with 'refine': they keep only their codes in memory and read \
             the full vectors they rescore from the segment files on disk \
             (docs/ARCHITECTURE.md, \"Vectors larger than memory\")",
        )),
        other => Err(invalid(format!(
            "index type '{other}' is not supported; use one of {} (BinaryVector fields: {})",
            SUPPORTED.join(", "),
            BINARY_TYPES.join(", ")
        ))),
    }
}

/// Builds the index of one segment's vectors.
pub fn build(
    kind: &IndexKind,
    v: VectorSlice<'_>,
    inv_norms: &[f32],
    metric: Metric,
    cancel: &Cancel,
) -> magpie_index::Result<AnyIndex> {
    match kind {
        IndexKind::Flat => Ok(AnyIndex::Flat(magpie_index::FlatIndex::new(metric))),
        IndexKind::Hnsw(p) => Ok(AnyIndex::Hnsw(HnswIndex::build_with(
            v, inv_norms, metric, p, cancel,
        )?)),
        IndexKind::Ivf(p) => Ok(AnyIndex::Ivf(IvfIndex::build_with(
            v, inv_norms, metric, p, cancel,
        )?)),
        IndexKind::BinIvf(p) => Ok(AnyIndex::BinIvf(BinIvfIndex::build(v, metric, p, cancel)?)),
    }
}

/// Writes a built index's file to `out` (streamed: no copy of the file in memory).
pub fn write_to(ix: &AnyIndex, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    match ix {
        AnyIndex::Flat(_) => Ok(()),
        AnyIndex::Hnsw(h) => h.write_to(out),
        AnyIndex::Ivf(i) => i.write_to(out),
        AnyIndex::BinIvf(i) => i.write_to(out),
    }
}

/// Parses an index file written by [`write_to`] for an index of `kind`.
pub fn from_bytes(kind: &IndexKind, b: &[u8]) -> magpie_index::Result<AnyIndex> {
    match kind {
        IndexKind::Flat => Err(magpie_index::IndexError::Corrupt(
            "FLAT indexes have no file".into(),
        )),
        IndexKind::Hnsw(_) => Ok(AnyIndex::Hnsw(HnswIndex::from_bytes(b)?)),
        IndexKind::Ivf(_) => Ok(AnyIndex::Ivf(IvfIndex::from_bytes(b)?)),
        IndexKind::BinIvf(_) => Ok(AnyIndex::BinIvf(BinIvfIndex::from_bytes(b)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(t: &str, params: Value) -> IndexMeta {
        IndexMeta {
            id: 1,
            index_name: "v".into(),
            field_name: "v".into(),
            index_type: t.into(),
            metric_type: Metric::L2,
            params: params.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn parses_milvus_params() {
        match parse(
            &meta("hnsw", json!({"M": "32", "efConstruction": 100})),
            8,
            0,
        )
        .unwrap()
        {
            IndexKind::Hnsw(p) => assert_eq!((p.m, p.ef_construction), (32, 100)),
            k => panic!("{k:?}"),
        }
        assert!(matches!(
            parse(&meta("AUTOINDEX", json!({})), 8, 0).unwrap(),
            IndexKind::Hnsw(HnswParams { sq8: true, .. })
        ));
        match parse(&meta("ivf_pq", json!({"nlist": "256", "m": 4})), 8, 0).unwrap() {
            IndexKind::Ivf(p) => {
                assert_eq!(p.nlist, 256);
                assert_eq!(p.codec, CodecKind::Pq { m: 4 });
            }
            k => panic!("{k:?}"),
        }
        for (t, p, frag) in [
            ("HNSW", json!({"M": 1}), "'M' must be in 2..=128, got 1"),
            ("HNSW", json!({"M": "x"}), "positive integer"),
            ("HNSW", json!({"efConstruction": -3}), "positive integer"),
            ("DISKANN", json!({}), "use IVF_SQ8 or IVF_PQ with 'refine'"),
            ("IVF_PQ", json!({"nlist": 64}), "needs 'm'"),
            ("IVF_PQ", json!({"m": 3}), "must divide the dimension 8"),
            ("IVF_PQ", json!({"m": 4, "nbits": 4}), "nbits = 8 only"),
            (
                "IVF_FLAT",
                json!({"nlist": 0}),
                "'nlist' must be in 1..=65536",
            ),
        ] {
            let e = parse(&meta(t, p), 8, 0).unwrap_err().to_string();
            assert!(e.contains(frag), "{e}");
        }
    }
}
