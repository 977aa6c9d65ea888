//! Collection schemas and row validation.
//!
//! Rows arrive as JSON objects (the REST API's shape). [`CollectionSchema::validate_batch`]
//! checks a whole batch before anything is written and turns it into a columnar
//! [`RowBatch`]; the first bad row rejects the batch with an error naming the row index
//! and the field.

use crate::error::{EngineError, Result};
use crate::function::{FunctionKind, FunctionSchema};
use crate::types::PrimaryKey;
use magpie_index::SparseVector;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Name of the hidden JSON column holding dynamic fields.
pub const DYNAMIC_FIELD: &str = "$meta";
/// Largest vector dimension accepted.
pub const MAX_DIM: usize = 32768;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Float,
    Double,
    VarChar,
    JSON,
    Array,
    FloatVector,
    /// Half-precision dense vectors (IEEE binary16): numbers on input, rounded to the
    /// nearest half and stored at 2 bytes per element ([`magpie_index::Elem::F16`]).
    Float16Vector,
    /// bfloat16 dense vectors: as [`DataType::Float16Vector`] with bfloat16's range.
    BFloat16Vector,
    /// Bit vectors of `dim` bits (a multiple of 8), given as `dim / 8` bytes (numbers
    /// 0..=255; bit `k` of a vector is bit `k % 8` of byte `k / 8`) and searched with
    /// HAMMING or JACCARD ([`magpie_index::Elem::Bin`]).
    BinaryVector,
    /// Milvus's `SparseFloatVector`: `{"17": 0.5, ...}` or `{"indices": [...], "values":
    /// [...]}`. Stored as a scalar column in the canonical form of [`sparse_to_json`];
    /// searched through [`magpie_index::SparseIndex`].
    SparseFloatVector,
}

impl DataType {
    /// Parses Milvus's type names (case-insensitive; "String" is accepted for VarChar).
    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bool" => DataType::Bool,
            "int8" => DataType::Int8,
            "int16" => DataType::Int16,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "float" => DataType::Float,
            "double" => DataType::Double,
            "varchar" | "string" => DataType::VarChar,
            "json" => DataType::JSON,
            "array" => DataType::Array,
            "floatvector" => DataType::FloatVector,
            "float16vector" => DataType::Float16Vector,
            "bfloat16vector" => DataType::BFloat16Vector,
            "binaryvector" => DataType::BinaryVector,
            "sparsefloatvector" => DataType::SparseFloatVector,
            _ => return None,
        })
    }

    /// A dense vector type (stored in vector columns).
    pub fn is_dense_vector(&self) -> bool {
        matches!(
            self,
            DataType::FloatVector
                | DataType::Float16Vector
                | DataType::BFloat16Vector
                | DataType::BinaryVector
        )
    }

    /// Element type of a dense vector type's stored rows (f32 for everything else).
    pub fn elem(&self) -> magpie_index::Elem {
        match self {
            DataType::Float16Vector => magpie_index::Elem::F16,
            DataType::BFloat16Vector => magpie_index::Elem::BF16,
            DataType::BinaryVector => magpie_index::Elem::Bin,
            _ => magpie_index::Elem::F32,
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
        )
    }
}

/// One field of a collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldSchema {
    pub name: String,
    pub data_type: DataType,
    #[serde(default)]
    pub is_primary: bool,
    #[serde(default)]
    pub auto_id: bool,
    #[serde(default)]
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<Value>,
    /// VarChar (and VarChar array elements): maximum length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// FloatVector: dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Array: element type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_type: Option<DataType>,
    /// Array: maximum number of elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<usize>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Set on the partition key (Int64 or VarChar): rows go to one of this many
    /// partitions by a hash of the key (`CollectionSchema::key_partition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<usize>,
    /// VarChar: the text is analyzed into terms (for a BM25 function), with
    /// `analyzer_params` (see [`crate::analyzer`]; `None`: the standard analyzer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_analyzer: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyzer_params: Option<Value>,
    /// VarChar: `TEXT_MATCH` / `PHRASE_MATCH` filters may use the field (its terms come
    /// from the same analyzer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_match: bool,
}

/// Partitions of a partition-key collection unless the request names a number
/// (Milvus's default).
pub const DEFAULT_KEY_PARTITIONS: usize = 16;

impl FieldSchema {
    pub fn new(name: &str, data_type: DataType) -> Self {
        Self {
            name: name.to_string(),
            data_type,
            is_primary: false,
            auto_id: false,
            nullable: false,
            default_value: None,
            max_length: None,
            dim: None,
            element_type: None,
            max_capacity: None,
            description: String::new(),
            partition_key: None,
            enable_analyzer: false,
            analyzer_params: None,
            enable_match: false,
        }
    }

    /// The field's analyzer (an analyzed VarChar field).
    pub fn analyzer(&self) -> std::result::Result<crate::analyzer::Analyzer, String> {
        crate::analyzer::Analyzer::from_params(self.analyzer_params.as_ref())
    }
    pub fn primary(mut self, auto_id: bool) -> Self {
        self.is_primary = true;
        self.auto_id = auto_id;
        self
    }
    pub fn with_dim(mut self, dim: usize) -> Self {
        self.dim = Some(dim);
        self
    }
    pub fn with_max_length(mut self, n: usize) -> Self {
        self.max_length = Some(n);
        self
    }
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }
    pub fn with_default(mut self, v: Value) -> Self {
        self.default_value = Some(v);
        self
    }
    pub fn array_of(mut self, elem: DataType, capacity: usize) -> Self {
        self.element_type = Some(elem);
        self.max_capacity = Some(capacity);
        self
    }
    /// A dense vector field (stored in vector columns, searched by the vector indexes).
    pub fn is_vector(&self) -> bool {
        self.data_type.is_dense_vector()
    }

    /// Stored elements per row of a dense vector field: `dim`, or `dim / 8` bytes for a
    /// BinaryVector.
    pub fn vec_len(&self) -> usize {
        let d = self.dim.unwrap_or(0);
        if self.data_type == DataType::BinaryVector {
            d / 8
        } else {
            d
        }
    }

    /// A sparse vector field (a scalar column; searched by the sparse index).
    pub fn is_sparse(&self) -> bool {
        self.data_type == DataType::SparseFloatVector
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionSchema {
    pub fields: Vec<FieldSchema>,
    #[serde(default)]
    pub enable_dynamic_field: bool,
    #[serde(default)]
    pub description: String,
    /// Embedding functions (see [`crate::function`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionSchema>,
}

/// A validated batch in columnar form: what the WAL stores and segments append.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RowBatch {
    pub pks: Vec<PrimaryKey>,
    /// One entry per vector field, in schema order: `rows × dim` floats.
    pub vectors: Vec<Vec<f32>>,
    /// One entry per scalar (non-pk, non-vector) field, in schema order.
    pub scalars: Vec<Vec<Value>>,
    /// Dynamic fields per row (`Value::Null` when none); empty when dynamic is off.
    pub dynamic: Vec<Value>,
}

impl RowBatch {
    /// The rows at `rows` (in that order); `dims` are the vector fields' dimensions.
    pub fn select(&self, rows: &[usize], dims: &[usize]) -> RowBatch {
        RowBatch {
            pks: rows.iter().map(|&i| self.pks[i].clone()).collect(),
            vectors: self
                .vectors
                .iter()
                .zip(dims)
                .map(|(v, &d)| {
                    rows.iter()
                        .flat_map(|&i| &v[i * d..(i + 1) * d])
                        .copied()
                        .collect()
                })
                .collect(),
            scalars: self
                .scalars
                .iter()
                .map(|c| rows.iter().map(|&i| c[i].clone()).collect())
                .collect(),
            dynamic: if self.dynamic.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|&i| self.dynamic[i].clone()).collect()
            },
        }
    }

    pub fn len(&self) -> usize {
        self.pks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pks.is_empty()
    }
}

impl CollectionSchema {
    /// Checks the schema itself: one primary key of type Int64 or VarChar, at least one
    /// vector field, unique names, sane dimensions and lengths.
    /// The function whose output is `field`, if any.
    pub fn function_for_output(&self, field: &str) -> Option<&FunctionSchema> {
        self.functions.iter().find(|f| f.output() == field)
    }

    fn check_functions(&self) -> Result<()> {
        let err = |m: String| Err(EngineError::Schema(m));
        let mut names = HashSet::new();
        let mut outputs = HashSet::new();
        for f in &self.functions {
            if f.name.is_empty() || !names.insert(f.name.as_str()) {
                return err(format!("function name '{}' is empty or repeated", f.name));
            }
            if f.input_field_names.len() != 1 || f.output_field_names.len() != 1 {
                return err(format!(
                    "function '{}' needs exactly one input and one output field",
                    f.name
                ));
            }
            match self.field(f.input()) {
                Some(x) if x.data_type == DataType::VarChar && !x.is_primary => {}
                Some(x) => {
                    return err(format!(
                        "function '{}': input field '{}' must be a VarChar field, not {:?}",
                        f.name, x.name, x.data_type
                    ))
                }
                None => {
                    return err(format!(
                        "function '{}': input field '{}' does not exist",
                        f.name,
                        f.input()
                    ))
                }
            }
            let bm25 = f.kind == FunctionKind::BM25;
            if bm25 && !self.field(f.input()).is_some_and(|x| x.enable_analyzer) {
                return err(format!(
                    "BM25 function '{}': input field '{}' needs enable_analyzer: true",
                    f.name,
                    f.input()
                ));
            }
            let (output_ok, wanted) = match self.field(f.output()) {
                Some(x) if bm25 => (x.is_sparse(), "SparseFloatVector"),
                x => (
                    x.is_some_and(|x| x.data_type == DataType::FloatVector),
                    "FloatVector",
                ),
            };
            if !output_ok {
                return err(format!(
                    "function '{}': output field '{}' must be a {wanted} field",
                    f.name,
                    f.output()
                ));
            }
            if !outputs.insert(f.output()) {
                return err(format!(
                    "field '{}' is the output of more than one function",
                    f.output()
                ));
            }
            if bm25 {
                // No model: terms come from the input field's analyzer.
                continue;
            }
            if f.model().is_none_or(|m| m.trim().is_empty()) {
                return err(format!(
                    "function '{}' needs params.model (e.g. \"all-minilm-l6-v2\")",
                    f.name
                ));
            }
        }
        Ok(())
    }

    /// Validates field definitions, then functions.
    pub fn check(&self) -> Result<()> {
        self.check_fields()?;
        self.check_functions()
    }

    /// The partition-key field, if the collection has one.
    pub fn partition_key(&self) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.partition_key.is_some())
    }

    /// Which of `n` key partitions a key value belongs to: FNV-1a (64 bit) of the value's
    /// bytes (an Int64 little-endian, a VarChar's UTF-8) modulo `n`. Stable across
    /// versions and machines: it decides where rows live, and replay depends on it.
    pub fn key_partition(value: &Value, n: usize) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= *b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        match value {
            Value::Number(x) => eat(&x.as_i64().unwrap_or(0).to_le_bytes()),
            Value::String(s) => eat(s.as_bytes()),
            _ => {}
        }
        (h % n.max(1) as u64) as usize
    }

    fn check_fields(&self) -> Result<()> {
        let err = |m: String| Err(EngineError::Schema(m));
        let keys: Vec<&FieldSchema> = self
            .fields
            .iter()
            .filter(|f| f.partition_key.is_some())
            .collect();
        if keys.len() > 1 {
            return err("a collection has at most one partition key".into());
        }
        if let Some(k) = keys.first() {
            if k.is_primary || !matches!(k.data_type, DataType::Int64 | DataType::VarChar) {
                return err(format!(
                    "partition key '{}' must be an Int64 or VarChar field that is not the primary key",
                    k.name
                ));
            }
            if k.nullable {
                return err(format!("partition key '{}' cannot be nullable", k.name));
            }
            let n = k.partition_key.unwrap_or(0);
            if !(1..=1024).contains(&n) {
                return err(format!(
                    "numPartitions of a partition-key collection must be 1-1024, got {n}"
                ));
            }
        }
        let mut names = HashSet::new();
        let mut pks = 0;
        let mut vecs = 0;
        if self.fields.is_empty() {
            return err("a schema needs fields".into());
        }
        for f in &self.fields {
            if f.name.is_empty()
                || f.name.len() > 255
                || !f
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || f.name.chars().next().is_some_and(|c| c.is_ascii_digit())
            {
                return err(format!(
                    "field name '{}' must be 1-255 ASCII letters, digits or '_', not starting with a digit",
                    f.name
                ));
            }
            if !names.insert(f.name.as_str()) {
                return err(format!("duplicate field name '{}'", f.name));
            }
            if f.is_primary {
                pks += 1;
                if !matches!(f.data_type, DataType::Int64 | DataType::VarChar) {
                    return err(format!(
                        "primary key '{}' must be Int64 or VarChar, not {:?}",
                        f.name, f.data_type
                    ));
                }
                if f.nullable || f.default_value.is_some() {
                    return err(format!(
                        "primary key '{}' cannot be nullable or have a default",
                        f.name
                    ));
                }
                if f.auto_id && f.data_type != DataType::Int64 {
                    return err("autoId needs an Int64 primary key".into());
                }
            } else if f.auto_id {
                return err(format!(
                    "autoId is only valid on the primary key, not '{}'",
                    f.name
                ));
            }
            match f.data_type {
                DataType::FloatVector
                | DataType::Float16Vector
                | DataType::BFloat16Vector
                | DataType::BinaryVector => {
                    vecs += 1;
                    if f.data_type == DataType::BinaryVector
                        && !f.dim.unwrap_or(0).is_multiple_of(8)
                    {
                        return err(format!(
                            "BinaryVector field '{}' has dim {}; it must be a multiple of 8 (bits)",
                            f.name,
                            f.dim.unwrap_or(0)
                        ));
                    }
                    match f.dim {
                        Some(d) if (1..=MAX_DIM).contains(&d) => {}
                        Some(d) => {
                            return err(format!(
                                "vector field '{}' has dim {d}; it must be 1..={MAX_DIM}",
                                f.name
                            ))
                        }
                        None => return err(format!("vector field '{}' needs a dim", f.name)),
                    }
                    if f.nullable || f.default_value.is_some() {
                        return err(format!(
                            "vector field '{}' cannot be nullable or have a default",
                            f.name
                        ));
                    }
                }
                DataType::SparseFloatVector => {
                    vecs += 1;
                    if f.is_primary || f.partition_key.is_some() {
                        return err(format!(
                            "sparse vector field '{}' cannot be a primary or partition key",
                            f.name
                        ));
                    }
                    if f.nullable || f.default_value.is_some() {
                        return err(format!(
                            "vector field '{}' cannot be nullable or have a default",
                            f.name
                        ));
                    }
                }
                _ if (f.enable_analyzer || f.enable_match) && f.data_type != DataType::VarChar => {
                    return err(format!(
                        "enable_analyzer and enable_match are for VarChar fields; '{}' is {:?}",
                        f.name, f.data_type
                    ))
                }
                DataType::VarChar
                    if (f.enable_analyzer || f.enable_match) && f.analyzer().is_err() =>
                {
                    return err(format!("field '{}': {}", f.name, f.analyzer().unwrap_err()))
                }
                DataType::VarChar => match f.max_length {
                    Some(n) if (1..=65535).contains(&n) => {}
                    _ => {
                        return err(format!(
                            "VarChar field '{}' needs max_length in 1..=65535",
                            f.name
                        ))
                    }
                },
                DataType::Array => {
                    let et = f.element_type.ok_or_else(|| {
                        EngineError::Schema(format!(
                            "Array field '{}' needs an elementDataType",
                            f.name
                        ))
                    })?;
                    if matches!(
                        et,
                        DataType::Array
                            | DataType::JSON
                            | DataType::FloatVector
                            | DataType::Float16Vector
                            | DataType::BFloat16Vector
                            | DataType::BinaryVector
                            | DataType::SparseFloatVector
                    ) {
                        return err(format!("Array field '{}' cannot hold {et:?}", f.name));
                    }
                    if et == DataType::VarChar && f.max_length.is_none() {
                        return err(format!(
                            "Array of VarChar '{}' needs max_length for its elements",
                            f.name
                        ));
                    }
                    match f.max_capacity {
                        Some(c) if (1..=4096).contains(&c) => {}
                        _ => {
                            return err(format!(
                                "Array field '{}' needs max_capacity in 1..=4096",
                                f.name
                            ))
                        }
                    }
                }
                _ => {}
            }
            if let Some(d) = &f.default_value {
                if !f.is_vector() {
                    check_scalar(f, d).map_err(|m| {
                        EngineError::Schema(format!("default of '{}' is invalid: {m}", f.name))
                    })?;
                }
            }
        }
        if pks != 1 {
            return err(format!(
                "a schema needs exactly one primary key field, found {pks}"
            ));
        }
        if vecs == 0 {
            return err(
                "a schema needs at least one vector field (FloatVector or SparseFloatVector)"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn pk(&self) -> &FieldSchema {
        self.fields
            .iter()
            .find(|f| f.is_primary)
            .expect("checked schema")
    }

    pub fn field(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Vector fields in schema order.
    pub fn vector_fields(&self) -> impl Iterator<Item = &FieldSchema> {
        self.fields.iter().filter(|f| f.is_vector())
    }

    /// Scalar (non-pk, non-vector) fields in schema order.
    pub fn scalar_fields(&self) -> impl Iterator<Item = &FieldSchema> {
        self.fields
            .iter()
            .filter(|f| !f.is_vector() && !f.is_primary)
    }

    pub fn vector_index(&self, name: &str) -> Option<usize> {
        self.vector_fields().position(|f| f.name == name)
    }

    pub fn scalar_index(&self, name: &str) -> Option<usize> {
        self.scalar_fields().position(|f| f.name == name)
    }

    /// Validates rows and converts them into a [`RowBatch`]. `auto_ids` supplies primary
    /// keys for an auto-id collection (one per row); `require_pk` forces the key to be
    /// present even with auto-id (upsert).
    pub fn validate_batch(
        &self,
        rows: &[Value],
        auto_ids: Option<&mut dyn Iterator<Item = i64>>,
        require_pk: bool,
    ) -> Result<RowBatch> {
        self.validate_columns(rows, &[], auto_ids, require_pk)
    }

    /// [`Self::validate_batch`] for rows whose vector fields (some or all) arrive as
    /// columns: `vectors` holds, per named field, `rows × dim` floats, as columnar
    /// protocols (Milvus's gRPC) carry them. They are checked like row vectors (length,
    /// finite, magnitude) without passing through JSON.
    pub fn validate_columns(
        &self,
        rows: &[Value],
        vectors: &[(String, Vec<f32>)],
        auto_ids: Option<&mut dyn Iterator<Item = i64>>,
        require_pk: bool,
    ) -> Result<RowBatch> {
        let pkf = self.pk();
        let vfields: Vec<&FieldSchema> = self.vector_fields().collect();
        for (name, _) in vectors {
            if !vfields.iter().any(|f| &f.name == name) {
                return Err(EngineError::Row {
                    row: 0,
                    field: name.clone(),
                    msg: "not a vector field of the collection".into(),
                });
            }
        }
        // Per vector field: its column, checked for length.
        let cols: Vec<Option<&[f32]>> = vfields
            .iter()
            .map(|f| {
                let Some((_, flat)) = vectors.iter().find(|(n, _)| n == &f.name) else {
                    return Ok(None);
                };
                let dim = f.vec_len();
                if flat.len() != rows.len() * dim {
                    let msg = if !rows.is_empty() && flat.len() % rows.len() == 0 {
                        format!(
                            "vector has dimension {}, the field expects {dim}",
                            flat.len() / rows.len()
                        )
                    } else {
                        format!(
                            "{} floats are not {} vectors of dimension {dim}",
                            flat.len(),
                            rows.len()
                        )
                    };
                    return Err(EngineError::Row {
                        row: 0,
                        field: f.name.clone(),
                        msg,
                    });
                }
                Ok(Some(flat.as_slice()))
            })
            .collect::<Result<_>>()?;
        let sfields: Vec<&FieldSchema> = self.scalar_fields().collect();
        let mut batch = RowBatch {
            pks: Vec::with_capacity(rows.len()),
            vectors: vfields
                .iter()
                .map(|f| Vec::with_capacity(rows.len() * f.vec_len()))
                .collect(),
            scalars: sfields
                .iter()
                .map(|_| Vec::with_capacity(rows.len()))
                .collect(),
            dynamic: Vec::new(),
        };
        let mut seen = HashSet::with_capacity(rows.len());
        let mut auto_ids = auto_ids;
        let use_auto = pkf.auto_id && !require_pk;
        for (ri, row) in rows.iter().enumerate() {
            let obj = row.as_object().ok_or_else(|| EngineError::Row {
                row: ri,
                field: String::new(),
                msg: format!("a row must be a JSON object, got {}", json_kind(row)),
            })?;
            let rerr = |field: &str, msg: String| EngineError::Row {
                row: ri,
                field: field.to_string(),
                msg,
            };
            // Primary key.
            let pk = if use_auto {
                if obj.contains_key(&pkf.name) {
                    return Err(rerr(
                        &pkf.name,
                        "the primary key is auto-generated (autoId); do not supply it".into(),
                    ));
                }
                let it = auto_ids
                    .as_mut()
                    .ok_or_else(|| rerr(&pkf.name, "no auto id available".into()))?;
                PrimaryKey::Int(it.next().expect("one auto id per row"))
            } else {
                let v = obj
                    .get(&pkf.name)
                    .ok_or_else(|| rerr(&pkf.name, "missing primary key".into()))?;
                PrimaryKey::from_json(v, pkf).map_err(|m| rerr(&pkf.name, m))?
            };
            if !seen.insert(pk.clone()) {
                return Err(rerr(
                    &pkf.name,
                    format!("duplicate primary key {pk} in the batch"),
                ));
            }
            batch.pks.push(pk);
            for (vi, f) in vfields.iter().enumerate() {
                if let Some(flat) = cols[vi] {
                    if obj.contains_key(&f.name) {
                        return Err(rerr(
                            &f.name,
                            "given both in the row and as a column".into(),
                        ));
                    }
                    let dim = f.vec_len();
                    let v = &flat[ri * dim..(ri + 1) * dim];
                    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                        return Err(rerr(
                            &f.name,
                            format!("element {i} of the vector is not a finite float32"),
                        ));
                    }
                    check_magnitude(v).map_err(|m| rerr(&f.name, m))?;
                    batch.vectors[vi].extend_from_slice(v);
                    continue;
                }
                let v = obj
                    .get(&f.name)
                    .ok_or_else(|| rerr(&f.name, "missing vector".into()))?;
                parse_vector(v, f.vec_len(), &mut batch.vectors[vi])
                    .map_err(|m| rerr(&f.name, m))?;
            }
            for (si, f) in sfields.iter().enumerate() {
                let v = match obj.get(&f.name) {
                    None | Some(Value::Null) => {
                        if let Some(d) = &f.default_value {
                            d.clone()
                        } else if f.nullable {
                            Value::Null
                        } else if obj.contains_key(&f.name) {
                            return Err(rerr(
                                &f.name,
                                "null given for a non-nullable field".into(),
                            ));
                        } else {
                            return Err(rerr(
                                &f.name,
                                "missing field (it is not nullable and has no default)".into(),
                            ));
                        }
                    }
                    // A sparse vector is parsed once: checked and canonicalised.
                    Some(v) if f.is_sparse() => parse_sparse(v)
                        .map(|x| sparse_to_json(&x))
                        .map_err(|m| rerr(&f.name, m))?,
                    Some(v) => {
                        check_scalar(f, v).map_err(|m| rerr(&f.name, m))?;
                        normalize_scalar(f, v)
                    }
                };
                batch.scalars[si].push(v);
            }
            let mut dynamic = Map::new();
            for (k, v) in obj {
                if self.field(k).is_some() {
                    continue;
                }
                if !self.enable_dynamic_field {
                    return Err(rerr(
                        k,
                        "unknown field (the collection has no dynamic field; add it to the schema or enable dynamic fields)".into(),
                    ));
                }
                if k == DYNAMIC_FIELD {
                    // Milvus clients may send dynamic keys nested under $meta.
                    if let Value::Object(m) = v {
                        for (k2, v2) in m {
                            dynamic.insert(k2.clone(), v2.clone());
                        }
                        continue;
                    }
                }
                check_json_finite(v).map_err(|m| rerr(k, m))?;
                dynamic.insert(k.clone(), v.clone());
            }
            if self.enable_dynamic_field {
                batch.dynamic.push(if dynamic.is_empty() {
                    Value::Null
                } else {
                    Value::Object(dynamic)
                });
            }
        }
        // Half-precision fields: every value rounded to the type (so the WAL, growing
        // and flushed segments hold the same numbers) and refused when out of its range.
        for (vi, f) in vfields.iter().enumerate() {
            if f.data_type == DataType::BinaryVector {
                check_bytes(&batch.vectors[vi], f.vec_len()).map_err(|(k, msg)| {
                    EngineError::Row {
                        row: k / f.vec_len().max(1),
                        field: f.name.clone(),
                        msg,
                    }
                })?;
                continue;
            }
            let Some(bf) = f.data_type.elem().half() else {
                continue;
            };
            let dim = f.dim.unwrap_or(1).max(1);
            for (k, x) in batch.vectors[vi].iter_mut().enumerate() {
                let h = magpie_linalg::f32_to_half(*x, bf).ok_or_else(|| EngineError::Row {
                    row: k / dim,
                    field: f.name.clone(),
                    msg: format!(
                        "element {} of the vector is {x}, outside the range of {:?}",
                        k % dim,
                        f.data_type
                    ),
                })?;
                *x = magpie_linalg::half_to_f32(h, bf);
            }
        }
        Ok(batch)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_vector(v: &Value, dim: usize, out: &mut Vec<f32>) -> std::result::Result<(), String> {
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "a FloatVector must be an array of numbers, got {}",
            json_kind(v)
        )
    })?;
    if arr.len() != dim {
        return Err(format!(
            "vector has dimension {}, the field expects {dim}",
            arr.len()
        ));
    }
    for (i, x) in arr.iter().enumerate() {
        let f = x.as_f64().ok_or_else(|| {
            format!(
                "element {i} of the vector is {}, not a number",
                json_kind(x)
            )
        })?;
        let f32v = f as f32;
        if !f32v.is_finite() {
            return Err(format!("element {i} of the vector is not a finite float32"));
        }
        out.push(f32v);
    }
    check_magnitude(&out[out.len() - dim..])
}

/// Binary vectors travel as one f32 per byte: each must be an integer in 0..=255.
/// The error carries the element's flat position and a message.
pub fn check_bytes(v: &[f32], bytes: usize) -> std::result::Result<(), (usize, String)> {
    match v
        .iter()
        .position(|&x| !(0.0..=255.0).contains(&x) || x.fract() != 0.0)
    {
        None => Ok(()),
        Some(k) => Err((
            k,
            format!(
                "byte {} of the binary vector is {}; a BinaryVector is given as {bytes} bytes, each an integer 0..=255",
                k % bytes.max(1),
                v[k]
            ),
        )),
    }
}

/// Largest accepted squared norm of a vector: a quarter of `f32::MAX`, so that every
/// squared L2 distance (at most 2‖q‖² + 2‖x‖²) and inner product between two accepted
/// vectors is a finite float32.
pub const MAX_SQUARED_NORM: f64 = f32::MAX as f64 / 4.0;

/// Refuses a vector whose distances to other vectors could overflow float32.
pub fn check_magnitude(v: &[f32]) -> std::result::Result<(), String> {
    let n2: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
    if n2 > MAX_SQUARED_NORM {
        return Err(format!(
            "the vector's squared norm {n2:.3e} is over {MAX_SQUARED_NORM:.3e}; its distances would overflow float32 (scale it down)"
        ));
    }
    Ok(())
}

fn check_json_finite(v: &Value) -> std::result::Result<(), String> {
    // serde_json cannot represent NaN/Inf, so any parsed JSON is finite; this guards depth.
    fn depth(v: &Value, d: usize) -> bool {
        if d > 64 {
            return false;
        }
        match v {
            Value::Array(a) => a.iter().all(|x| depth(x, d + 1)),
            Value::Object(o) => o.values().all(|x| depth(x, d + 1)),
            _ => true,
        }
    }
    if depth(v, 0) {
        Ok(())
    } else {
        Err("JSON nested deeper than 64 levels".into())
    }
}

fn int_range(t: DataType) -> (i64, i64) {
    match t {
        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

fn check_elem(t: DataType, max_len: Option<usize>, v: &Value) -> std::result::Result<(), String> {
    match t {
        DataType::Bool => v
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| format!("expected a boolean, got {}", json_kind(v))),
        t if t.is_integer() => {
            let i = v
                .as_i64()
                .ok_or_else(|| format!("expected an integer ({t:?}), got {v}"))?;
            let (lo, hi) = int_range(t);
            if i < lo || i > hi {
                return Err(format!("{i} is out of range for {t:?} ({lo}..={hi})"));
            }
            Ok(())
        }
        DataType::Float | DataType::Double => {
            let f = v
                .as_f64()
                .ok_or_else(|| format!("expected a number, got {}", json_kind(v)))?;
            if t == DataType::Float && !(f as f32).is_finite() {
                return Err(format!("{f} is not a finite float32"));
            }
            Ok(())
        }
        DataType::VarChar => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected a string, got {}", json_kind(v)))?;
            let max = max_len.unwrap_or(65535);
            if s.len() > max {
                return Err(format!(
                    "string of {} bytes exceeds max_length {max}",
                    s.len()
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks one non-null scalar value against its field.
pub(crate) fn check_scalar(f: &FieldSchema, v: &Value) -> std::result::Result<(), String> {
    match f.data_type {
        DataType::JSON => check_json_finite(v),
        DataType::SparseFloatVector => parse_sparse(v).map(|_| ()),
        DataType::Array => {
            let a = v
                .as_array()
                .ok_or_else(|| format!("expected an array, got {}", json_kind(v)))?;
            let cap = f.max_capacity.unwrap_or(4096);
            if a.len() > cap {
                return Err(format!(
                    "array of {} elements exceeds max_capacity {cap}",
                    a.len()
                ));
            }
            let et = f.element_type.unwrap_or(DataType::Int64);
            for (i, x) in a.iter().enumerate() {
                check_elem(et, f.max_length, x).map_err(|m| format!("element {i}: {m}"))?;
            }
            Ok(())
        }
        t => check_elem(t, f.max_length, v),
    }
}

/// Canonical stored form: Float is rounded to f32 precision so that what is read back
/// equals what a float32 column would hold; Double is always a float (an integer sent
/// for a Double field is stored and returned as `2.0`), so the field seals into one
/// typed float column.
fn normalize_scalar(f: &FieldSchema, v: &Value) -> Value {
    match f.data_type {
        DataType::Float => {
            let x = v.as_f64().unwrap_or(0.0) as f32;
            serde_json::Number::from_f64(x as f64).map_or(Value::Null, Value::Number)
        }
        DataType::Double => v
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        _ => v.clone(),
    }
}

/// Most non-zero entries of one sparse vector.
pub const MAX_SPARSE_NNZ: usize = 1 << 20;

/// Parses a sparse vector in either of Milvus's JSON forms: `{"17": 0.5, "42": 0.1}` or
/// `{"indices": [17, 42], "values": [0.5, 0.1]}`. Indices are integers in
/// `0..=4294967294`, each at most once; values finite float32.
pub fn parse_sparse(v: &Value) -> std::result::Result<SparseVector, String> {
    let o = v.as_object().ok_or_else(|| {
        format!(
            "a SparseFloatVector must be an object ({{\"17\": 0.5}} or {{\"indices\": [..], \"values\": [..]}}), got {}",
            json_kind(v)
        )
    })?;
    let index = |x: &Value| -> std::result::Result<u32, String> {
        let n: i128 = match x {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            Value::String(s) => s.trim().parse::<i128>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("sparse index {x} is not an integer"))?;
        if n < 0 {
            return Err(format!("sparse index {n} is negative"));
        }
        u32::try_from(n)
            .ok()
            .filter(|&i| i <= magpie_index::sparse::MAX_SPARSE_INDEX)
            .ok_or_else(|| {
                format!(
                    "sparse index {n} is out of range (indices are 0..={})",
                    magpie_index::sparse::MAX_SPARSE_INDEX
                )
            })
    };
    let value = |i: u32, x: &Value| -> std::result::Result<f32, String> {
        x.as_f64()
            .map(|f| f as f32)
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("the value at sparse index {i} is {x}, not a finite float32"))
    };
    let pairs: Vec<(u32, f32)> = if o.contains_key("indices") || o.contains_key("values") {
        let (Some(Value::Array(ix)), Some(Value::Array(vals)), 2) =
            (o.get("indices"), o.get("values"), o.len())
        else {
            return Err(
                "a SparseFloatVector in the indices/values form needs exactly the arrays 'indices' and 'values'".into(),
            );
        };
        if ix.len() != vals.len() {
            return Err(format!(
                "'indices' has {} entries and 'values' {}",
                ix.len(),
                vals.len()
            ));
        }
        if ix.len() > MAX_SPARSE_NNZ {
            return Err(format!(
                "a sparse vector has at most {MAX_SPARSE_NNZ} entries, got {}",
                ix.len()
            ));
        }
        ix.iter()
            .zip(vals)
            .map(|(i, x)| {
                let i = index(i)?;
                Ok((i, value(i, x)?))
            })
            .collect::<std::result::Result<_, String>>()?
    } else {
        if o.len() > MAX_SPARSE_NNZ {
            return Err(format!(
                "a sparse vector has at most {MAX_SPARSE_NNZ} entries, got {}",
                o.len()
            ));
        }
        o.iter()
            .map(|(k, x)| {
                let i = index(&Value::String(k.clone()))?;
                Ok((i, value(i, x)?))
            })
            .collect::<std::result::Result<_, String>>()?
    };
    SparseVector::from_pairs(pairs)
}

/// The stored and returned form of a sparse vector: `{"<index>": value}` by ascending
/// index (as Milvus returns them).
pub fn sparse_to_json(v: &SparseVector) -> Value {
    Value::Object(
        v.iter()
            .map(|(i, x)| {
                (
                    i.to_string(),
                    serde_json::Number::from_f64(x as f64).map_or(Value::Null, Value::Number),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> CollectionSchema {
        CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(false),
                FieldSchema::new("v", DataType::FloatVector).with_dim(2),
                FieldSchema::new("age", DataType::Int8),
                FieldSchema::new("name", DataType::VarChar)
                    .with_max_length(4)
                    .nullable(),
                FieldSchema::new("score", DataType::Float).with_default(json!(1.5)),
                FieldSchema::new("tags", DataType::Array).array_of(DataType::Int32, 2),
            ],
            enable_dynamic_field: true,
            description: String::new(),
            functions: Vec::new(),
        }
    }

    #[test]
    fn vector_columns_are_checked_like_row_vectors() {
        let s = schema();
        let (dim, name) = (2, "v".to_string());
        let rows = vec![
            json!({"id": 1, "age": 3, "tags": [1]}),
            json!({"id": 2, "age": 4, "tags": []}),
        ];
        let ok = vec![(name.clone(), vec![0.5f32; 2 * dim])];
        let b = s.validate_columns(&rows, &ok, None, false).unwrap();
        assert_eq!(b.vectors[0].len(), 2 * dim);
        let short = vec![(name.clone(), vec![0.5f32; 2 * dim - 1])];
        let e = s.validate_columns(&rows, &short, None, false).unwrap_err();
        assert!(e.to_string().contains("vectors of dimension"), "{e}");
        let mut nan = vec![0.5f32; 2 * dim];
        nan[dim + 1] = f32::NAN;
        let e = s
            .validate_columns(&rows, &[(name.clone(), nan)], None, false)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("row 1") && e.to_string().contains("finite"),
            "{e}"
        );
        let huge = vec![(name.clone(), vec![1e30f32; 2 * dim])];
        assert!(s.validate_columns(&rows, &huge, None, false).is_err());
        let e = s
            .validate_columns(&rows, &[("nope".into(), vec![])], None, false)
            .unwrap_err();
        assert!(e.to_string().contains("not a vector field"), "{e}");
    }

    #[test]
    fn valid_batch_is_columnar() {
        let s = schema();
        s.check().unwrap();
        let rows = vec![
            json!({"id": 1, "v": [0.5, 1], "age": 3, "name": "ab", "tags": [1], "color": "red"}),
            json!({"id": 2, "v": [1, 2], "age": -3, "tags": []}),
        ];
        let b = s.validate_batch(&rows, None, false).unwrap();
        assert_eq!(b.pks, vec![PrimaryKey::Int(1), PrimaryKey::Int(2)]);
        assert_eq!(b.vectors[0], vec![0.5, 1.0, 1.0, 2.0]);
        assert_eq!(b.scalars[1], vec![json!("ab"), Value::Null]);
        assert_eq!(b.scalars[2], vec![json!(1.5), json!(1.5)]);
        assert_eq!(b.dynamic, vec![json!({"color": "red"}), Value::Null]);
    }

    #[test]
    fn errors_name_row_and_field() {
        let s = schema();
        let cases = [
            (
                json!({"id": 1, "v": [1.0], "age": 1, "tags": []}),
                "v",
                "dimension 1",
            ),
            (
                json!({"id": 1, "v": [1.0, "x"], "age": 1, "tags": []}),
                "v",
                "not a number",
            ),
            (
                json!({"id": 1, "v": [1.0, 1e39], "age": 1, "tags": []}),
                "v",
                "finite",
            ),
            (
                json!({"id": 1, "v": [1, 2], "age": 300, "tags": []}),
                "age",
                "out of range",
            ),
            (
                json!({"id": 1, "v": [1, 2], "tags": []}),
                "age",
                "missing field",
            ),
            (
                json!({"id": 1, "v": [1, 2], "age": 1, "name": "toolong", "tags": []}),
                "name",
                "max_length",
            ),
            (
                json!({"id": 1, "v": [1, 2], "age": 1, "tags": [1, 2, 3]}),
                "tags",
                "max_capacity",
            ),
            (
                json!({"id": "x", "v": [1, 2], "age": 1, "tags": []}),
                "id",
                "Int64",
            ),
            (
                json!({"v": [1, 2], "age": 1, "tags": []}),
                "id",
                "missing primary key",
            ),
        ];
        for (row, field, frag) in cases {
            let rows = vec![json!({"id": 0, "v": [0, 0], "age": 0, "tags": []}), row];
            match s.validate_batch(&rows, None, false) {
                Err(EngineError::Row { row, field: f, msg }) => {
                    assert_eq!(row, 1);
                    assert_eq!(f, field, "{msg}");
                    assert!(msg.contains(frag), "{msg} should contain {frag}");
                }
                other => panic!("expected row error for {field}, got {other:?}"),
            }
        }
        let dup = vec![
            json!({"id": 7, "v": [0, 0], "age": 0, "tags": []}),
            json!({"id": 7, "v": [0, 0], "age": 0, "tags": []}),
        ];
        assert!(s
            .validate_batch(&dup, None, false)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }

    #[test]
    fn schema_checks() {
        let mut s = schema();
        s.fields[1].dim = Some(MAX_DIM + 1);
        assert!(s.check().is_err());
        let mut s = schema();
        s.fields.retain(|f| !f.is_vector());
        assert!(s.check().unwrap_err().to_string().contains("FloatVector"));
        let mut s = schema();
        s.fields[0].data_type = DataType::Float;
        assert!(s.check().is_err());
        let mut s = schema();
        s.enable_dynamic_field = false;
        let rows = vec![json!({"id": 1, "v": [0, 0], "age": 0, "tags": [], "extra": 1})];
        assert!(s
            .validate_batch(&rows, None, false)
            .unwrap_err()
            .to_string()
            .contains("extra"));
    }

    #[test]
    fn auto_id_assigns_and_rejects_supplied_keys() {
        let mut s = schema();
        s.fields[0].auto_id = true;
        let rows = vec![json!({"v": [0, 0], "age": 0, "tags": []})];
        let mut ids = 100..;
        let b = s.validate_batch(&rows, Some(&mut ids), false).unwrap();
        assert_eq!(b.pks, vec![PrimaryKey::Int(100)]);
        let rows = vec![json!({"id": 5, "v": [0, 0], "age": 0, "tags": []})];
        let mut ids = 100..;
        assert!(s.validate_batch(&rows, Some(&mut ids), false).is_err());
    }
}
