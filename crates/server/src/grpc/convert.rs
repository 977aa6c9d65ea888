//! Conversions between Milvus's protobuf types and the engine's: schemas, columnar
//! `FieldData` to and from the engine's JSON rows, search hits to `SearchResultData`.
//!
//! Every length and type in a request is checked here before the engine sees it: a
//! column shorter or longer than `num_rows`, a vector whose length is not a multiple of
//! its dimension, a JSON value that does not parse, each gives a message naming the
//! field and the row.

use magpie_engine::schema::DYNAMIC_FIELD;
use magpie_engine::{CollectionMeta, CollectionSchema, DataType, FieldSchema, Hit};
use magpie_milvus_proto::common::KeyValuePair;
use magpie_milvus_proto::schema as pb;
use pb::field_data::Field;
use pb::scalar_field::Data as SData;
use pb::vector_field::Data as VData;
use serde_json::{Map, Value};

/// A request that does not fit the protocol or the schema; becomes an IllegalArgument
/// status with this message.
pub type ConvResult<T> = Result<T, String>;

/// Milvus's field ids start at 100 (0-99 are reserved for system fields).
const FIELD_ID_BASE: i64 = 100;

pub fn dtype_to_pb(t: DataType) -> pb::DataType {
    match t {
        DataType::Bool => pb::DataType::Bool,
        DataType::Int8 => pb::DataType::Int8,
        DataType::Int16 => pb::DataType::Int16,
        DataType::Int32 => pb::DataType::Int32,
        DataType::Int64 => pb::DataType::Int64,
        DataType::Float => pb::DataType::Float,
        DataType::Double => pb::DataType::Double,
        DataType::VarChar => pb::DataType::VarChar,
        DataType::JSON => pb::DataType::Json,
        DataType::Array => pb::DataType::Array,
        DataType::FloatVector => pb::DataType::FloatVector,
        DataType::Float16Vector => pb::DataType::Float16Vector,
        DataType::BFloat16Vector => pb::DataType::BFloat16Vector,
        DataType::BinaryVector => pb::DataType::BinaryVector,
        DataType::SparseFloatVector => pb::DataType::SparseFloatVector,
    }
}

pub fn dtype_from_pb(t: i32, what: &str) -> ConvResult<DataType> {
    let p = pb::DataType::try_from(t).map_err(|_| format!("{what}: unknown data type {t}"))?;
    Ok(match p {
        pb::DataType::Bool => DataType::Bool,
        pb::DataType::Int8 => DataType::Int8,
        pb::DataType::Int16 => DataType::Int16,
        pb::DataType::Int32 => DataType::Int32,
        pb::DataType::Int64 => DataType::Int64,
        pb::DataType::Float => DataType::Float,
        pb::DataType::Double => DataType::Double,
        pb::DataType::String | pb::DataType::VarChar => DataType::VarChar,
        pb::DataType::Json => DataType::JSON,
        pb::DataType::Array => DataType::Array,
        pb::DataType::FloatVector => DataType::FloatVector,
        pb::DataType::Float16Vector => DataType::Float16Vector,
        pb::DataType::BFloat16Vector => DataType::BFloat16Vector,
        pb::DataType::BinaryVector => DataType::BinaryVector,
        pb::DataType::SparseFloatVector => DataType::SparseFloatVector,
        other => {
            return Err(format!(
                "{what}: data type {} is not supported by Magpie yet (supported: Bool, Int8-64, Float, Double, VarChar, JSON, Array, FloatVector, Float16Vector, BFloat16Vector, BinaryVector, SparseFloatVector)",
                other.as_str_name()
            ))
        }
    })
}

pub(crate) fn kv(key: &str, value: impl ToString) -> KeyValuePair {
    KeyValuePair {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn param_usize(params: &[KeyValuePair], key: &str, what: &str) -> ConvResult<Option<usize>> {
    match params.iter().find(|p| p.key == key) {
        None => Ok(None),
        Some(p) => p.value.trim().parse().map(Some).map_err(|_| {
            format!(
                "{what}: '{key}' must be a positive integer, got '{}'",
                p.value
            )
        }),
    }
}

fn value_field_to_json(v: &pb::ValueField) -> Option<Value> {
    use pb::value_field::Data as D;
    Some(match v.data.as_ref()? {
        D::BoolData(b) => Value::from(*b),
        D::IntData(i) => Value::from(*i),
        D::LongData(i) => Value::from(*i),
        D::FloatData(f) => Value::from(*f as f64),
        D::DoubleData(f) => Value::from(*f),
        D::StringData(s) => Value::from(s.as_str()),
        D::BytesData(_) | D::TimestamptzData(_) => return None,
    })
}

fn json_to_value_field(v: &Value, t: DataType) -> Option<pb::ValueField> {
    use pb::value_field::Data as D;
    let d = match t {
        DataType::Bool => D::BoolData(v.as_bool()?),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => D::IntData(v.as_i64()? as i32),
        DataType::Int64 => D::LongData(v.as_i64()?),
        DataType::Float => D::FloatData(v.as_f64()? as f32),
        DataType::Double => D::DoubleData(v.as_f64()?),
        DataType::VarChar => D::StringData(v.as_str()?.to_string()),
        _ => return None,
    };
    Some(pb::ValueField { data: Some(d) })
}

/// A protobuf schema (CreateCollection's `schema` bytes, decoded) as the engine's.
pub fn schema_from_pb(
    s: &pb::CollectionSchema,
    num_partitions: i64,
) -> ConvResult<CollectionSchema> {
    let mut fields = Vec::new();
    let mut dynamic = s.enable_dynamic_field;
    for f in &s.fields {
        let what = format!("field '{}'", f.name);
        if f.is_dynamic || f.name == DYNAMIC_FIELD {
            // The hidden dynamic column is the engine's own.
            dynamic = true;
            continue;
        }
        if f.is_clustering_key {
            return Err(format!(
                "{what}: clustering keys are not supported by Magpie yet"
            ));
        }
        let mut fs = FieldSchema::new(&f.name, dtype_from_pb(f.data_type, &what)?);
        if f.is_partition_key {
            fs.partition_key = Some(if num_partitions > 0 {
                num_partitions as usize
            } else {
                magpie_engine::schema::DEFAULT_KEY_PARTITIONS
            });
        }
        fs.is_primary = f.is_primary_key;
        #[allow(deprecated)]
        let schema_auto_id = s.auto_id;
        fs.auto_id = f.is_primary_key && (f.auto_id || schema_auto_id);
        fs.nullable = f.nullable;
        fs.description = f.description.clone();
        fs.dim = param_usize(&f.type_params, "dim", &what)?;
        fs.max_length = param_usize(&f.type_params, "max_length", &what)?;
        fs.max_capacity = param_usize(&f.type_params, "max_capacity", &what)?;
        let tp = |k: &str| {
            f.type_params
                .iter()
                .find(|p| p.key == k)
                .map(|p| p.value.trim())
        };
        let flag = |k: &str| match tp(k) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(format!("{what}: {k} must be true or false, got '{v}'")),
        };
        fs.enable_analyzer = flag("enable_analyzer")?;
        fs.enable_match = flag("enable_match")?;
        if let Some(v) = tp("analyzer_params") {
            fs.analyzer_params = Some(
                serde_json::from_str(v)
                    .map_err(|e| format!("{what}: analyzer_params is not JSON: {e}"))?,
            );
        }
        if fs.data_type == DataType::Array {
            fs.element_type = Some(dtype_from_pb(f.element_type, &format!("{what} element"))?);
        }
        if let Some(d) = &f.default_value {
            fs.default_value =
                Some(value_field_to_json(d).ok_or_else(|| {
                    format!("{what}: this kind of default_value is not supported")
                })?);
        }
        fields.push(fs);
    }
    let functions = s
        .functions
        .iter()
        .map(|f| {
            let kind = pb::FunctionType::try_from(f.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| f.r#type.to_string());
            let params: Map<String, Value> = f
                .params
                .iter()
                .map(|p| (p.key.clone(), Value::from(p.value.clone())))
                .collect();
            let j = serde_json::json!({
                "name": f.name, "type": kind, "inputFieldNames": f.input_field_names,
                "outputFieldNames": f.output_field_names, "params": params,
                "description": f.description,
            });
            serde_json::from_value::<magpie_engine::FunctionSchema>(j)
                .map_err(|e| format!("function '{}': {e}", f.name))
        })
        .collect::<ConvResult<Vec<_>>>()?;
    Ok(CollectionSchema {
        fields,
        enable_dynamic_field: dynamic,
        description: s.description.clone(),
        functions,
    })
}

/// The engine's schema as protobuf (DescribeCollection).
pub fn schema_to_pb(m: &CollectionMeta) -> pb::CollectionSchema {
    let outputs: Vec<&str> = m.schema.functions.iter().map(|f| f.output()).collect();
    let fields = m
        .schema
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut type_params = Vec::new();
            if let Some(d) = f.dim {
                type_params.push(kv("dim", d));
            }
            if let Some(l) = f.max_length {
                type_params.push(kv("max_length", l));
            }
            if let Some(c) = f.max_capacity {
                type_params.push(kv("max_capacity", c));
            }
            if f.enable_analyzer {
                type_params.push(kv("enable_analyzer", "true"));
            }
            if f.enable_match {
                type_params.push(kv("enable_match", "true"));
            }
            if let Some(p) = &f.analyzer_params {
                type_params.push(kv("analyzer_params", p));
            }
            pb::FieldSchema {
                field_id: FIELD_ID_BASE + i as i64,
                name: f.name.clone(),
                is_primary_key: f.is_primary,
                description: f.description.clone(),
                data_type: dtype_to_pb(f.data_type) as i32,
                type_params,
                auto_id: f.auto_id,
                element_type: f.element_type.map_or(0, |t| dtype_to_pb(t) as i32),
                default_value: f
                    .default_value
                    .as_ref()
                    .and_then(|v| json_to_value_field(v, f.data_type)),
                nullable: f.nullable,
                is_partition_key: f.partition_key.is_some(),
                is_function_output: outputs.contains(&f.name.as_str()),
                ..Default::default()
            }
        })
        .collect();
    let field_id = |name: &str| {
        m.schema
            .fields
            .iter()
            .position(|f| f.name == name)
            .map_or(0, |i| FIELD_ID_BASE + i as i64)
    };
    let functions = m
        .schema
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| pb::FunctionSchema {
            name: f.name.clone(),
            id: i as i64 + 1,
            description: f.description.clone(),
            r#type: pb::FunctionType::from_str_name(f.kind.as_str())
                .map_or(pb::FunctionType::Unknown as i32, |t| t as i32),
            input_field_ids: f.input_field_names.iter().map(|n| field_id(n)).collect(),
            input_field_names: f.input_field_names.clone(),
            output_field_ids: f.output_field_names.iter().map(|n| field_id(n)).collect(),
            output_field_names: f.output_field_names.clone(),
            params: f
                .params
                .iter()
                .map(|(k, v)| kv(k, v.as_str().map_or_else(|| v.to_string(), String::from)))
                .collect(),
        })
        .collect();
    #[allow(deprecated)]
    pb::CollectionSchema {
        name: magpie_engine::split_qualified(&m.name).1.to_string(),
        description: m.description.clone(),
        auto_id: m.schema.pk().auto_id,
        fields,
        enable_dynamic_field: m.schema.enable_dynamic_field,
        functions,
        ..Default::default()
    }
}

// ------------------------------------------------------------------ rows in

/// How many values a scalar column holds.
fn scalar_len(d: &SData) -> usize {
    match d {
        SData::BoolData(a) => a.data.len(),
        SData::IntData(a) => a.data.len(),
        SData::LongData(a) => a.data.len(),
        SData::FloatData(a) => a.data.len(),
        SData::DoubleData(a) => a.data.len(),
        SData::StringData(a) => a.data.len(),
        SData::BytesData(a) => a.data.len(),
        SData::ArrayData(a) => a.data.len(),
        SData::JsonData(a) => a.data.len(),
        SData::GeometryData(a) => a.data.len(),
        SData::TimestamptzData(a) => a.data.len(),
        SData::GeometryWktData(a) => a.data.len(),
    }
}

fn json_bytes(b: &[u8], what: &str) -> ConvResult<Value> {
    serde_json::from_slice(b).map_err(|e| format!("{what}: not valid JSON: {e}"))
}

/// Value `i` of a scalar column as JSON.
fn scalar_at(d: &SData, i: usize, what: &str) -> ConvResult<Value> {
    Ok(match d {
        SData::BoolData(a) => Value::from(a.data[i]),
        SData::IntData(a) => Value::from(a.data[i]),
        SData::LongData(a) => Value::from(a.data[i]),
        SData::FloatData(a) => Value::from(a.data[i] as f64),
        SData::DoubleData(a) => Value::from(a.data[i]),
        SData::StringData(a) => Value::from(a.data[i].as_str()),
        SData::JsonData(a) => json_bytes(&a.data[i], what)?,
        SData::ArrayData(a) => {
            let inner = &a.data[i];
            match &inner.data {
                None => Value::Array(Vec::new()),
                Some(d) => Value::Array(
                    (0..scalar_len(d))
                        .map(|j| scalar_at(d, j, what))
                        .collect::<ConvResult<_>>()?,
                ),
            }
        }
        SData::BytesData(_)
        | SData::GeometryData(_)
        | SData::TimestamptzData(_)
        | SData::GeometryWktData(_) => {
            return Err(format!("{what}: this kind of column is not supported"))
        }
    })
}

/// A column of `rows` JSON values (`None` = null) from one `FieldData`.
fn column_values(f: &pb::FieldData, rows: usize) -> ConvResult<Vec<Option<Value>>> {
    let what = format!("field '{}'", f.field_name);
    let valid = &f.valid_data;
    if !valid.is_empty() && valid.len() != rows {
        return Err(format!(
            "{what}: valid_data has {} entries for {rows} rows",
            valid.len()
        ));
    }
    let n_valid = if valid.is_empty() {
        rows
    } else {
        valid.iter().filter(|v| **v).count()
    };
    // Values come either one per row, or (nullable fields, as pymilvus sends them) one
    // per valid row.
    let slot = |len: usize| -> ConvResult<Box<dyn Fn(usize) -> Option<usize>>> {
        if len == rows {
            let valid = valid.clone();
            Ok(Box::new(move |i| {
                (valid.is_empty() || valid[i]).then_some(i)
            }))
        } else if !valid.is_empty() && len == n_valid {
            let mut map = Vec::with_capacity(rows);
            let mut k = 0;
            for v in valid {
                map.push(v.then(|| {
                    k += 1;
                    k - 1
                }));
            }
            Ok(Box::new(move |i| map[i]))
        } else {
            Err(format!("{what}: {len} values for {rows} rows"))
        }
    };
    match &f.field {
        Some(Field::Scalars(s)) => {
            let Some(d) = &s.data else {
                return Err(format!("{what}: no values"));
            };
            let at = slot(scalar_len(d))?;
            (0..rows)
                .map(|i| {
                    at(i)
                        .map(|j| scalar_at(d, j, &format!("{what}, row {i}")))
                        .transpose()
                })
                .collect()
        }
        Some(Field::Vectors(v)) => match &v.data {
            Some(VData::FloatVector(a)) => {
                if v.dim <= 0 {
                    return Err(format!(
                        "{what}: vector dim must be positive, got {}",
                        v.dim
                    ));
                }
                let dim = v.dim as usize;
                if a.data.len() % dim != 0 {
                    return Err(format!(
                        "{what}: {} floats is not a whole number of {dim}-dimensional vectors",
                        a.data.len()
                    ));
                }
                let at = slot(a.data.len() / dim)?;
                Ok((0..rows)
                    .map(|i| {
                        at(i).map(|j| {
                            Value::Array(
                                a.data[j * dim..(j + 1) * dim]
                                    .iter()
                                    .map(|x| Value::from(*x as f64))
                                    .collect(),
                            )
                        })
                    })
                    .collect())
            }
            Some(VData::Float16Vector(b))
            | Some(VData::Bfloat16Vector(b))
            | Some(VData::BinaryVector(b)) => {
                let (data, dim) = match &v.data {
                    Some(VData::BinaryVector(_)) => (binary_vectors(b, v.dim, &what)?, v.dim as usize / 8),
                    _ => {
                        let bf = matches!(v.data, Some(VData::Bfloat16Vector(_)));
                        (half_vectors(b, v.dim, bf, &what)?, v.dim as usize)
                    }
                };
                let at = slot(data.len() / dim)?;
                Ok((0..rows)
                    .map(|i| {
                        at(i).map(|j| {
                            Value::Array(
                                data[j * dim..(j + 1) * dim]
                                    .iter()
                                    .map(|x| Value::from(*x as f64))
                                    .collect(),
                            )
                        })
                    })
                    .collect())
            }
            Some(VData::SparseFloatVector(a)) => {
                let at = slot(a.contents.len())?;
                (0..rows)
                    .map(|i| {
                        at(i)
                            .map(|j| sparse_from_bytes(&a.contents[j]))
                            .transpose()
                            .map_err(|e| format!("{what}, row {i}: {e}"))
                    })
                    .collect()
            }
            Some(other) => Err(format!(
                "{what}: {} vectors are not supported by Magpie yet (FloatVector, Float16Vector, BFloat16Vector, BinaryVector and SparseFloatVector are)",
                match other {
                    VData::BinaryVector(_) => "binary",
                    VData::Float16Vector(_) => "float16",
                    VData::Bfloat16Vector(_) => "bfloat16",
                    VData::SparseFloatVector(_) => "sparse",
                    VData::Int8Vector(_) => "int8",
                    _ => "these",
                }
            )),
            None => Err(format!("{what}: no vectors")),
        },
        Some(Field::StructArrays(_)) => Err(format!(
            "{what}: struct arrays are not supported by Magpie yet"
        )),
        None => Err(format!("{what}: no data")),
    }
}

/// Columnar `fields_data` of an Insert or Upsert as the engine's JSON rows. Keys of the
/// dynamic field (`$meta`, `is_dynamic`) become top-level keys of each row, as the REST
/// API takes them.
pub fn rows_from_fields(fields: &[pb::FieldData], rows: usize) -> ConvResult<Vec<Value>> {
    let mut out: Vec<Map<String, Value>> = (0..rows).map(|_| Map::new()).collect();
    let mut seen = std::collections::HashSet::new();
    for f in fields {
        if !seen.insert(f.field_name.as_str()) {
            return Err(format!("field '{}' is given twice", f.field_name));
        }
    }
    for f in fields {
        let dynamic = f.is_dynamic || f.field_name == DYNAMIC_FIELD;
        let values = column_values(f, rows)?;
        for (i, v) in values.into_iter().enumerate() {
            if dynamic {
                match v {
                    Some(Value::Object(o)) => {
                        for (k, x) in o {
                            if out[i].contains_key(&k) {
                                return Err(format!(
                                    "row {i}: dynamic key '{k}' is also a field of the schema"
                                ));
                            }
                            out[i].insert(k, x);
                        }
                    }
                    None | Some(Value::Null) => {}
                    Some(other) => {
                        return Err(format!(
                            "row {i}: the dynamic field must hold a JSON object, got {other}"
                        ))
                    }
                }
            } else {
                out[i].insert(f.field_name.clone(), v.unwrap_or(Value::Null));
            }
        }
    }
    Ok(out.into_iter().map(Value::Object).collect())
}

/// Rows without their vector fields, and those as `(field, rows × dim floats)`.
pub type RowsAndVectors = (Vec<Value>, Vec<(String, Vec<f32>)>);

/// [`rows_from_fields`] that keeps float vector columns as columns (`rows × dim`
/// floats, moved out of the message without a copy) for [`magpie_engine::Engine::write_columns`].
pub fn columns_from_fields(
    mut fields: Vec<pb::FieldData>,
    rows: usize,
) -> ConvResult<RowsAndVectors> {
    let mut vectors = Vec::new();
    for f in &mut fields {
        if !f.valid_data.is_empty() {
            continue;
        }
        let Some(Field::Vectors(v)) = &mut f.field else {
            continue;
        };
        let dim = v.dim;
        let what = format!("field '{}'", f.field_name);
        let half = match &v.data {
            Some(VData::Float16Vector(b)) => Some((half_vectors(b, dim, false, &what)?, dim)),
            Some(VData::Bfloat16Vector(b)) => Some((half_vectors(b, dim, true, &what)?, dim)),
            Some(VData::BinaryVector(b)) => Some((binary_vectors(b, dim, &what)?, dim / 8)),
            _ => None,
        };
        if let Some((data, per_row)) = half {
            if data.len() / per_row as usize != rows {
                return Err(format!(
                    "{what}: {} values for {rows} rows",
                    data.len() / per_row as usize
                ));
            }
            vectors.push((f.field_name.clone(), data));
            f.field = None;
            continue;
        }
        let Some(VData::FloatVector(a)) = &mut v.data else {
            continue;
        };
        if dim <= 0 {
            return Err(format!("{what}: vector dim must be positive, got {dim}"));
        }
        if a.data.len() % dim as usize != 0 {
            return Err(format!(
                "{what}: {} floats is not a whole number of {dim}-dimensional vectors",
                a.data.len()
            ));
        }
        if a.data.len() / dim as usize != rows {
            return Err(format!(
                "{what}: {} values for {rows} rows",
                a.data.len() / dim as usize
            ));
        }
        vectors.push((f.field_name.clone(), std::mem::take(&mut a.data)));
        f.field = None;
    }
    let rest: Vec<pb::FieldData> = fields.into_iter().filter(|f| f.field.is_some()).collect();
    let mut seen: std::collections::HashSet<&str> =
        vectors.iter().map(|(n, _)| n.as_str()).collect();
    for f in &rest {
        if !seen.insert(f.field_name.as_str()) {
            return Err(format!("field '{}' is given twice", f.field_name));
        }
    }
    Ok((rows_from_fields(&rest, rows)?, vectors))
}

// ------------------------------------------------------------------ rows out

/// Typed column of `values` (null → a zero placeholder with `valid_data` false).
fn column_of(
    name: &str,
    t: DataType,
    elem: Option<DataType>,
    dim: Option<usize>,
    values: &[&Value],
) -> pb::FieldData {
    let nulls = values.iter().any(|v| v.is_null());
    let valid_data = if nulls {
        values.iter().map(|v| !v.is_null()).collect()
    } else {
        Vec::new()
    };
    let field = match t {
        DataType::FloatVector => {
            let dim = dim.unwrap_or_else(|| {
                values
                    .iter()
                    .find_map(|v| v.as_array().map(|a| a.len()))
                    .unwrap_or(0)
            });
            let mut data = Vec::with_capacity(values.len() * dim);
            for v in values {
                match v.as_array() {
                    Some(a) => data.extend(a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32)),
                    None => data.extend(std::iter::repeat_n(0.0, dim)),
                }
            }
            Field::Vectors(pb::VectorField {
                dim: dim as i64,
                data: Some(VData::FloatVector(pb::FloatArray { data })),
            })
        }
        DataType::BinaryVector => {
            // Milvus's wire form: each row's dim / 8 bytes, concatenated; dim in bits.
            let dim = dim.unwrap_or_else(|| {
                values
                    .iter()
                    .find_map(|v| v.as_array().map(|a| a.len() * 8))
                    .unwrap_or(0)
            });
            let mut data = Vec::with_capacity(values.len() * dim / 8);
            for v in values {
                let row = v.as_array().map(|a| a.as_slice()).unwrap_or_default();
                data.extend(
                    (0..dim / 8).map(|k| row.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as u8),
                );
            }
            Field::Vectors(pb::VectorField {
                dim: dim as i64,
                data: Some(VData::BinaryVector(data)),
            })
        }
        DataType::Float16Vector | DataType::BFloat16Vector => {
            // Milvus's wire form: each row's little-endian 2-byte values, concatenated.
            let bf = t == DataType::BFloat16Vector;
            let dim = dim.unwrap_or_else(|| {
                values
                    .iter()
                    .find_map(|v| v.as_array().map(|a| a.len()))
                    .unwrap_or(0)
            });
            let mut data = Vec::with_capacity(values.len() * dim * 2);
            for v in values {
                let row = v.as_array().map(|a| a.as_slice()).unwrap_or_default();
                for k in 0..dim {
                    let x = row.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0) as f32;
                    let h = magpie_linalg::f32_to_half(x, bf).unwrap_or(0);
                    data.extend_from_slice(&h.to_le_bytes());
                }
            }
            Field::Vectors(pb::VectorField {
                dim: dim as i64,
                data: Some(if bf {
                    VData::Bfloat16Vector(data)
                } else {
                    VData::Float16Vector(data)
                }),
            })
        }
        DataType::SparseFloatVector => {
            let contents: Vec<Vec<u8>> = values.iter().map(|v| sparse_to_bytes(v)).collect();
            // Milvus reports the dimension of a sparse batch as its largest index + 1.
            let dim = values
                .iter()
                .filter_map(|v| v.as_object())
                .flat_map(|o| o.keys())
                .filter_map(|k| k.parse::<i64>().ok())
                .max()
                .map_or(0, |m| m + 1);
            Field::Vectors(pb::VectorField {
                dim,
                data: Some(VData::SparseFloatVector(pb::SparseFloatArray {
                    contents,
                    dim,
                })),
            })
        }
        _ => Field::Scalars(pb::ScalarField {
            data: Some(scalar_column(t, elem, values)),
        }),
    };
    pb::FieldData {
        r#type: dtype_to_pb(t) as i32,
        field_name: name.to_string(),
        field: Some(field),
        valid_data,
        ..Default::default()
    }
}

fn scalar_column(t: DataType, elem: Option<DataType>, values: &[&Value]) -> SData {
    match t {
        DataType::Bool => SData::BoolData(pb::BoolArray {
            data: values
                .iter()
                .map(|v| v.as_bool().unwrap_or(false))
                .collect(),
        }),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => SData::IntData(pb::IntArray {
            data: values
                .iter()
                .map(|v| v.as_i64().unwrap_or(0) as i32)
                .collect(),
        }),
        DataType::Int64 => SData::LongData(pb::LongArray {
            data: values.iter().map(|v| v.as_i64().unwrap_or(0)).collect(),
        }),
        DataType::Float => SData::FloatData(pb::FloatArray {
            data: values
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                .collect(),
        }),
        DataType::Double => SData::DoubleData(pb::DoubleArray {
            data: values.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        }),
        DataType::VarChar => SData::StringData(pb::StringArray {
            data: values
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect(),
        }),
        DataType::JSON
        | DataType::FloatVector
        | DataType::Float16Vector
        | DataType::BFloat16Vector
        | DataType::BinaryVector
        | DataType::SparseFloatVector => SData::JsonData(pb::JsonArray {
            data: values
                .iter()
                .map(|v| serde_json::to_vec(v).unwrap_or_default())
                .collect(),
        }),
        DataType::Array => {
            let et = elem.unwrap_or(DataType::Int64);
            SData::ArrayData(pb::ArrayArray {
                data: values
                    .iter()
                    .map(|v| {
                        let items: Vec<&Value> =
                            v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
                        pb::ScalarField {
                            data: Some(scalar_column(et, None, &items)),
                        }
                    })
                    .collect(),
                element_type: dtype_to_pb(et) as i32,
            })
        }
    }
}

/// Engine rows (query results, or the fields of search hits) as columns: one per schema
/// field present, in schema order, and the other keys in the dynamic field `$meta`.
/// `requested` names the columns to return even when there are no rows.
pub fn fields_from_rows(
    schema: &CollectionSchema,
    rows: &[&Map<String, Value>],
    requested: &[String],
) -> Vec<pb::FieldData> {
    let mut present: Vec<&str> = Vec::new();
    let mut dynamic = false;
    for r in rows {
        for k in r.keys() {
            if schema.field(k).is_some() || k == "count(*)" {
                if !present.contains(&k.as_str()) {
                    present.push(k);
                }
            } else {
                dynamic = true;
            }
        }
    }
    if rows.is_empty() {
        // Columns even for no rows: clients read the result's shape from them.
        present.push(&schema.pk().name);
        for r in requested {
            if schema.field(r).is_some() && !present.contains(&r.as_str()) {
                present.push(r);
            }
        }
    }
    let null = Value::Null;
    let mut out = Vec::new();
    if present.contains(&"count(*)") {
        let values: Vec<&Value> = rows
            .iter()
            .map(|r| r.get("count(*)").unwrap_or(&null))
            .collect();
        out.push(column_of("count(*)", DataType::Int64, None, None, &values));
    }
    for (i, f) in schema.fields.iter().enumerate() {
        if !present.contains(&f.name.as_str()) {
            continue;
        }
        let values: Vec<&Value> = rows
            .iter()
            .map(|r| r.get(&f.name).unwrap_or(&null))
            .collect();
        let mut c = column_of(&f.name, f.data_type, f.element_type, f.dim, &values);
        c.field_id = FIELD_ID_BASE + i as i64;
        out.push(c);
    }
    if dynamic {
        let data = rows
            .iter()
            .map(|r| {
                let o: Map<String, Value> = r
                    .iter()
                    .filter(|(k, _)| schema.field(k).is_none() && k.as_str() != "count(*)")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                serde_json::to_vec(&Value::Object(o)).unwrap_or_default()
            })
            .collect();
        out.push(pb::FieldData {
            r#type: pb::DataType::Json as i32,
            field_name: DYNAMIC_FIELD.to_string(),
            field: Some(Field::Scalars(pb::ScalarField {
                data: Some(SData::JsonData(pb::JsonArray { data })),
            })),
            is_dynamic: true,
            ..Default::default()
        });
    }
    out
}

/// Primary keys as Milvus's `IDs`.
pub fn ids_of<'a>(keys: impl Iterator<Item = &'a magpie_engine::PrimaryKey>, int: bool) -> pb::IDs {
    use magpie_engine::PrimaryKey as K;
    let keys: Vec<&K> = keys.collect();
    let id_field = if int {
        pb::i_ds::IdField::IntId(pb::LongArray {
            data: keys
                .iter()
                .map(|k| match k {
                    K::Int(i) => *i,
                    K::Str(_) => 0,
                })
                .collect(),
        })
    } else {
        pb::i_ds::IdField::StrId(pb::StringArray {
            data: keys
                .iter()
                .map(|k| k.to_json().as_str().unwrap_or("").to_string())
                .collect(),
        })
    };
    pb::IDs {
        id_field: Some(id_field),
    }
}

/// Search hits (one list per query) as `SearchResultData`.
pub fn search_result(
    schema: &CollectionSchema,
    hits: &[Vec<Hit>],
    top_k: usize,
    output_fields: &[String],
) -> pb::SearchResultData {
    let pk = schema.pk();
    let all: Vec<&Hit> = hits.iter().flatten().collect();
    // The primary key is a column when asked for by name or by "*" (Milvus's rule; the
    // hits' ids are in `ids` either way). The Node SDK reads ids only from the column.
    let with_pk = output_fields.iter().any(|f| f == &pk.name || f == "*");
    let rows: Vec<Map<String, Value>> = all
        .iter()
        .map(|h| {
            let mut m = Map::with_capacity(h.fields.len() + 1);
            if with_pk {
                m.insert(pk.name.clone(), h.id.to_json());
            }
            m.extend(h.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            m
        })
        .collect();
    let refs: Vec<&Map<String, Value>> = rows.iter().collect();
    let fields_data = fields_from_rows(schema, &refs, output_fields);
    pb::SearchResultData {
        num_queries: hits.len() as i64,
        top_k: top_k as i64,
        fields_data,
        scores: all.iter().map(|h| h.distance).collect(),
        ids: Some(ids_of(
            all.iter().map(|h| &h.id),
            pk.data_type == DataType::Int64,
        )),
        topks: hits.iter().map(|h| h.len() as i64).collect(),
        output_fields: output_fields.to_vec(),
        primary_field_name: pk.name.clone(),
        ..Default::default()
    }
}

/// The group-by field's value of every hit, as one column (`group_by_field_value`).
pub fn group_values(
    schema: &CollectionSchema,
    hits: &[Vec<Hit>],
    field: &str,
) -> Option<pb::FieldData> {
    let f = schema.field(field)?;
    let null = Value::Null;
    let values: Vec<&Value> = hits
        .iter()
        .flatten()
        .map(|h| h.fields.get(field).unwrap_or(&null))
        .collect();
    Some(column_of(
        &f.name,
        f.data_type,
        f.element_type,
        f.dim,
        &values,
    ))
}

/// Query vectors from a search's `placeholder_group` (PlaceholderGroup protobuf): float
/// vectors as little-endian f32 bytes, or texts (VarChar) for an embedding function.
pub enum Queries {
    Vectors(Vec<Vec<f32>>),
    Texts(Vec<String>),
    /// Sparse vectors, in the JSON form the engine parses.
    Sparse(Vec<Value>),
}

/// A sparse vector in Milvus's binary row form (pairs of a little-endian `u32` index and
/// `f32` value) as `{"indices": [..], "values": [..]}`; the engine checks the entries.
pub fn sparse_from_bytes(b: &[u8]) -> ConvResult<Value> {
    if !b.len().is_multiple_of(8) {
        return Err(format!(
            "a sparse vector is pairs of a u32 index and an f32 value (8 bytes each), got {} bytes",
            b.len()
        ));
    }
    let (mut indices, mut values) = (Vec::new(), Vec::new());
    for c in b.chunks_exact(8) {
        indices.push(Value::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        let x = f32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        if !x.is_finite() {
            return Err(format!(
                "the value at sparse index {} is not a finite float32",
                indices.last().unwrap()
            ));
        }
        values.push(Value::from(x as f64));
    }
    Ok(serde_json::json!({"indices": indices, "values": values}))
}

/// The vector columns of an insert whose data kind does not match its field's type in
/// `schema` (float data for a Float16Vector field, bytes for a FloatVector, ...): an error
/// naming both, before any value is read as the wrong type.
pub fn check_vector_kinds(fields: &[pb::FieldData], schema: &CollectionSchema) -> ConvResult<()> {
    for f in fields {
        let Some(Field::Vectors(v)) = &f.field else {
            continue;
        };
        let Some(sf) = schema.field(&f.field_name) else {
            continue; // the engine names unknown fields
        };
        let sent = match &v.data {
            Some(VData::FloatVector(_)) => DataType::FloatVector,
            Some(VData::Float16Vector(_)) => DataType::Float16Vector,
            Some(VData::Bfloat16Vector(_)) => DataType::BFloat16Vector,
            Some(VData::BinaryVector(_)) => DataType::BinaryVector,
            Some(VData::SparseFloatVector(_)) => DataType::SparseFloatVector,
            _ => continue, // refused by name while converting
        };
        if sent != sf.data_type {
            return Err(format!(
                "field '{}' is a {:?}; the request carries {sent:?} data",
                f.field_name, sf.data_type
            ));
        }
    }
    Ok(())
}

/// Binary vectors in Milvus's wire form (`dim / 8` bytes per row, rows concatenated) as
/// the engine takes them: one f32 per byte.
fn binary_vectors(b: &[u8], dim: i64, what: &str) -> ConvResult<Vec<f32>> {
    if dim <= 0 || dim % 8 != 0 {
        return Err(format!(
            "{what}: a binary vector's dim must be a positive multiple of 8, got {dim}"
        ));
    }
    let row = dim as usize / 8;
    if !b.len().is_multiple_of(row) {
        return Err(format!(
            "{what}: {} bytes is not a whole number of {dim}-bit binary vectors ({row} bytes each)",
            b.len()
        ));
    }
    Ok(b.iter().map(|&x| x as f32).collect())
}

/// Half-precision vectors in Milvus's wire form (little-endian 2-byte values, rows
/// concatenated) widened to f32, checked against `dim`.
fn half_vectors(b: &[u8], dim: i64, bf: bool, what: &str) -> ConvResult<Vec<f32>> {
    if dim <= 0 {
        return Err(format!("{what}: vector dim must be positive, got {dim}"));
    }
    let row = dim as usize * 2;
    if !b.len().is_multiple_of(row) {
        return Err(format!(
            "{what}: {} bytes is not a whole number of {dim}-dimensional {} vectors ({row} bytes each)",
            b.len(),
            if bf { "bfloat16" } else { "float16" }
        ));
    }
    Ok(b.chunks_exact(2)
        .map(|c| magpie_linalg::half_to_f32(u16::from_le_bytes([c[0], c[1]]), bf))
        .collect())
}

/// The binary row form of a stored sparse vector (`{"<index>": value}`).
pub fn sparse_to_bytes(v: &Value) -> Vec<u8> {
    let mut pairs: Vec<(u32, f32)> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, x)| Some((k.parse::<u32>().ok()?, x.as_f64().unwrap_or(0.0) as f32)))
        .collect();
    pairs.sort_unstable_by_key(|p| p.0);
    let mut out = Vec::with_capacity(pairs.len() * 8);
    for (i, x) in pairs {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub fn queries_from_placeholder(bytes: &[u8]) -> ConvResult<Queries> {
    use magpie_milvus_proto::common::{PlaceholderGroup, PlaceholderType};
    use prost::Message;
    let g = PlaceholderGroup::decode(bytes)
        .map_err(|e| format!("placeholder_group is not a valid PlaceholderGroup: {e}"))?;
    let p = match g.placeholders.as_slice() {
        [p] => p,
        [] => return Err("placeholder_group holds no query".into()),
        _ => return Err("placeholder_group must hold exactly one placeholder".into()),
    };
    match PlaceholderType::try_from(p.r#type) {
        Ok(PlaceholderType::FloatVector) => p
            .values
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if b.len() % 4 != 0 {
                    return Err(format!(
                        "query vector {i}: {} bytes is not a whole number of float32 values",
                        b.len()
                    ));
                }
                Ok(b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            })
            .collect::<ConvResult<_>>()
            .map(Queries::Vectors),
        Ok(t @ (PlaceholderType::Float16Vector | PlaceholderType::BFloat16Vector)) => p
            .values
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if b.len() % 2 != 0 {
                    return Err(format!(
                        "query vector {i}: {} bytes is not a whole number of 2-byte values",
                        b.len()
                    ));
                }
                let bf = t == PlaceholderType::BFloat16Vector;
                Ok(b.chunks_exact(2)
                    .map(|c| magpie_linalg::half_to_f32(u16::from_le_bytes([c[0], c[1]]), bf))
                    .collect())
            })
            .collect::<ConvResult<_>>()
            .map(Queries::Vectors),
        Ok(PlaceholderType::BinaryVector) => Ok(Queries::Vectors(
            p.values
                .iter()
                .map(|b| b.iter().map(|&x| x as f32).collect())
                .collect(),
        )),
        Ok(PlaceholderType::VarChar) => p
            .values
            .iter()
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.clone()).map_err(|_| format!("query text {i} is not UTF-8"))
            })
            .collect::<ConvResult<_>>()
            .map(Queries::Texts),
        Ok(PlaceholderType::SparseFloatVector) => p
            .values
            .iter()
            .enumerate()
            .map(|(i, b)| sparse_from_bytes(b).map_err(|e| format!("query {i}: {e}")))
            .collect::<ConvResult<_>>()
            .map(Queries::Sparse),
        Ok(t) => Err(format!(
            "queries of type {} are not supported by Magpie yet (FloatVector, Float16Vector, BFloat16Vector, BinaryVector, SparseFloatVector and VarChar are)",
            t.as_str_name()
        )),
        Err(_) => Err(format!("unknown placeholder type {}", p.r#type)),
    }
}

/// Fills Milvus's filter templates: each `{name}` outside string literals becomes the
/// literal of `values[name]` (pymilvus's `filter_params`, the request's
/// `expr_template_values`), so the engine parses an ordinary filter.
pub fn fill_templates(
    expr: &str,
    values: &std::collections::HashMap<String, pb::TemplateValue>,
) -> ConvResult<String> {
    if values.is_empty() {
        return Ok(expr.to_string());
    }
    let mut out = String::with_capacity(expr.len() + 16);
    let mut quote: Option<char> = None;
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' {
                    if let Some((_, n)) = chars.next() {
                        out.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '{' => {
                let rest = &expr[i + 1..];
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("filter template at byte {i}: '{{' without '}}'"))?;
                let name = rest[..end].trim();
                let v = values.get(name).ok_or_else(|| {
                    format!("filter template '{{{name}}}' has no value in filter_params")
                })?;
                out.push_str(&template_literal(v)?);
                for _ in 0..rest[..=end].chars().count() {
                    chars.next();
                }
            }
            None => out.push(c),
        }
    }
    Ok(out)
}

fn string_literal(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn template_literal(v: &pb::TemplateValue) -> ConvResult<String> {
    use pb::template_array_value::Data as A;
    use pb::template_value::Val;
    fn list<T>(items: &[T], f: impl Fn(&T) -> ConvResult<String>) -> ConvResult<String> {
        Ok(format!(
            "[{}]",
            items
                .iter()
                .map(f)
                .collect::<ConvResult<Vec<_>>>()?
                .join(", ")
        ))
    }
    fn array(a: &pb::TemplateArrayValue) -> ConvResult<String> {
        match &a.data {
            Some(A::BoolData(x)) => list(&x.data, |b| Ok(b.to_string())),
            Some(A::LongData(x)) => list(&x.data, |n| Ok(n.to_string())),
            Some(A::DoubleData(x)) => list(&x.data, |f| float(*f)),
            Some(A::StringData(x)) => list(&x.data, |s| Ok(string_literal(s))),
            Some(A::ArrayData(x)) => list(&x.data, array),
            Some(A::JsonData(_)) => Err("JSON values in filter templates are not supported".into()),
            None => Ok("[]".into()),
        }
    }
    fn float(f: f64) -> ConvResult<String> {
        if f.is_finite() {
            Ok(format!("{f:?}"))
        } else {
            Err(format!("filter template value {f} is not a finite number"))
        }
    }
    match &v.val {
        Some(Val::BoolVal(b)) => Ok(b.to_string()),
        Some(Val::Int64Val(n)) => Ok(n.to_string()),
        Some(Val::FloatVal(f)) => float(*f),
        Some(Val::StringVal(s)) => Ok(string_literal(s)),
        Some(Val::ArrayVal(a)) => array(a),
        None => Err("a filter template value is empty".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn long(name: &str, v: Vec<i64>) -> pb::FieldData {
        pb::FieldData {
            field_name: name.into(),
            r#type: pb::DataType::Int64 as i32,
            field: Some(Field::Scalars(pb::ScalarField {
                data: Some(SData::LongData(pb::LongArray { data: v })),
            })),
            ..Default::default()
        }
    }

    fn fvec(name: &str, dim: i64, v: Vec<f32>) -> pb::FieldData {
        pb::FieldData {
            field_name: name.into(),
            r#type: pb::DataType::FloatVector as i32,
            field: Some(Field::Vectors(pb::VectorField {
                dim,
                data: Some(VData::FloatVector(pb::FloatArray { data: v })),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn columns_become_rows_with_dynamic_keys_flattened() {
        let meta = pb::FieldData {
            field_name: "$meta".into(),
            is_dynamic: true,
            r#type: pb::DataType::Json as i32,
            field: Some(Field::Scalars(pb::ScalarField {
                data: Some(SData::JsonData(pb::JsonArray {
                    data: vec![br#"{"color":"red"}"#.to_vec(), b"{}".to_vec()],
                })),
            })),
            ..Default::default()
        };
        let rows = rows_from_fields(
            &[
                long("id", vec![1, 2]),
                fvec("v", 2, vec![0.5, 1.0, 2.0, 3.0]),
                meta,
            ],
            2,
        )
        .unwrap();
        assert_eq!(rows[0], json!({"id": 1, "v": [0.5, 1.0], "color": "red"}));
        assert_eq!(rows[1], json!({"id": 2, "v": [2.0, 3.0]}));
    }

    #[test]
    fn filter_templates_become_literals() {
        use pb::template_value::Val;
        let tv = |v: Val| pb::TemplateValue { val: Some(v) };
        let values: std::collections::HashMap<String, pb::TemplateValue> = [
            ("age".to_string(), tv(Val::Int64Val(30))),
            ("name".to_string(), tv(Val::StringVal("a\"b".into()))),
            (
                "ids".to_string(),
                tv(Val::ArrayVal(pb::TemplateArrayValue {
                    data: Some(pb::template_array_value::Data::LongData(pb::LongArray {
                        data: vec![1, 2],
                    })),
                })),
            ),
        ]
        .into();
        assert_eq!(
            fill_templates(
                "age > {age} and name == {name} and id in {ids} and t == '{age}'",
                &values
            )
            .unwrap(),
            "age > 30 and name == \"a\\\"b\" and id in [1, 2] and t == '{age}'"
        );
        let e = fill_templates("x == {nope}", &values).unwrap_err();
        assert!(e.contains("'{nope}'"), "{e}");
        assert!(fill_templates("x == {age", &values).is_err());
        assert_eq!(
            fill_templates("x == {a}", &Default::default()).unwrap(),
            "x == {a}"
        );
    }

    #[test]
    fn wrong_lengths_are_named() {
        let e = rows_from_fields(&[long("id", vec![1, 2, 3])], 2).unwrap_err();
        assert!(
            e.contains("field 'id'") && e.contains("3 values for 2 rows"),
            "{e}"
        );
        let e = rows_from_fields(&[fvec("v", 3, vec![0.0; 4])], 1).unwrap_err();
        assert!(e.contains("not a whole number"), "{e}");
        let e = rows_from_fields(&[fvec("v", 0, vec![])], 1).unwrap_err();
        assert!(e.contains("dim must be positive"), "{e}");
        let e = rows_from_fields(&[long("id", vec![1]), long("id", vec![1])], 1).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn nullable_columns_come_compact_or_full() {
        let mut f = long("n", vec![7]);
        f.valid_data = vec![false, true];
        let rows = rows_from_fields(&[f], 2).unwrap();
        assert_eq!(rows, vec![json!({"n": null}), json!({"n": 7})]);
        let mut f = long("n", vec![0, 7]);
        f.valid_data = vec![false, true];
        let rows = rows_from_fields(&[f], 2).unwrap();
        assert_eq!(rows, vec![json!({"n": null}), json!({"n": 7})]);
    }

    #[test]
    fn rows_become_columns_and_back() {
        let schema = CollectionSchema {
            fields: vec![
                FieldSchema::new("id", DataType::Int64).primary(false),
                FieldSchema::new("v", DataType::FloatVector).with_dim(2),
                FieldSchema::new("tags", DataType::Array).array_of(DataType::VarChar, 4),
                FieldSchema::new("n", DataType::Int32).nullable(),
            ],
            enable_dynamic_field: true,
            description: String::new(),
            functions: Vec::new(),
        };
        let rows = [
            json!({"id": 1, "v": [0.5, 1.0], "tags": ["a"], "n": null, "color": "red"}),
            json!({"id": 2, "v": [2.0, 3.0], "tags": [], "n": 4}),
        ];
        let maps: Vec<&Map<String, Value>> = rows.iter().map(|r| r.as_object().unwrap()).collect();
        let cols = fields_from_rows(&schema, &maps, &[]);
        assert_eq!(cols.len(), 5);
        let back = rows_from_fields(&cols, 2).unwrap();
        assert_eq!(back[0], rows[0]);
        assert_eq!(back[1], rows[1]);
    }

    #[test]
    fn placeholder_vectors_and_bad_bytes() {
        use magpie_milvus_proto::common::{PlaceholderGroup, PlaceholderType, PlaceholderValue};
        use prost::Message;
        let g = PlaceholderGroup {
            placeholders: vec![PlaceholderValue {
                tag: "$0".into(),
                r#type: PlaceholderType::FloatVector as i32,
                values: vec![[1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()],
            }],
        };
        match queries_from_placeholder(&g.encode_to_vec()).unwrap() {
            Queries::Vectors(v) => assert_eq!(v, vec![vec![1.0, 2.0]]),
            _ => panic!("vectors expected"),
        }
        assert!(queries_from_placeholder(b"\xff\xff\xff").is_err());
        let g = PlaceholderGroup {
            placeholders: vec![PlaceholderValue {
                tag: "$0".into(),
                r#type: PlaceholderType::FloatVector as i32,
                values: vec![vec![0u8; 5]],
            }],
        };
        let Err(e) = queries_from_placeholder(&g.encode_to_vec()) else {
            panic!("5 bytes accepted")
        };
        assert!(e.contains("5 bytes"), "{e}");
    }

    #[test]
    fn sparse_vectors_in_milvus_binary_form() {
        use magpie_milvus_proto::common::{PlaceholderGroup, PlaceholderType, PlaceholderValue};
        use prost::Message;
        let row = [
            3u32.to_le_bytes(),
            0.5f32.to_le_bytes(),
            17u32.to_le_bytes(),
            2.0f32.to_le_bytes(),
        ]
        .concat();
        let v = sparse_from_bytes(&row).unwrap();
        assert_eq!(v, json!({"indices": [3, 17], "values": [0.5, 2.0]}));
        // The stored form goes back to the same bytes.
        let stored = magpie_engine::schema::sparse_to_json(
            &magpie_engine::schema::parse_sparse(&v).unwrap(),
        );
        assert_eq!(sparse_to_bytes(&stored), row);
        assert!(sparse_from_bytes(&row[..7])
            .unwrap_err()
            .contains("7 bytes"));
        let nan = [1u32.to_le_bytes(), f32::NAN.to_le_bytes()].concat();
        assert!(sparse_from_bytes(&nan).unwrap_err().contains("finite"));
        let g = PlaceholderGroup {
            placeholders: vec![PlaceholderValue {
                tag: "$0".into(),
                r#type: PlaceholderType::SparseFloatVector as i32,
                values: vec![row.clone()],
            }],
        };
        match queries_from_placeholder(&g.encode_to_vec()).unwrap() {
            Queries::Sparse(q) => assert_eq!(q, vec![v]),
            _ => panic!("sparse queries expected"),
        }
    }
}
