//! Parquet import files, as Milvus's bulk import (and pymilvus's `BulkWriter`) write
//! them: one column per field, named after it; vectors as lists (or fixed-size lists)
//! of floats, the dynamic field as a `$meta` column of JSON text. Read with the `parquet`
//! crate's Arrow reader, one record batch at a time, so memory holds one batch.

use super::{io, RowSink};
use crate::error::{invalid, EngineError, Result};
use crate::schema::{CollectionSchema, DataType};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType as A;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Column of Milvus's dynamic field.
const META: &str = "$meta";

/// Checks that every column chunk the footer lists lies inside the file (`len` bytes):
/// the reader asserts non-negative offsets and sizes, and would panic on a file whose
/// footer says otherwise (found by the `import_file` fuzz target).
fn check_chunks(
    meta: &parquet::file::metadata::ParquetMetaData,
    len: u64,
) -> std::result::Result<(), String> {
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for (c, col) in rg.columns().iter().enumerate() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let size = col.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(a, b)| a.checked_add(b));
            if end.is_none_or(|e| e > len) {
                return Err(format!(
                    "row group {g}, column {c}: chunk at offset {start} of {size} bytes lies outside the file's {len} bytes"
                ));
            }
        }
    }
    Ok(())
}

pub fn read(
    path: &Path,
    schema: &CollectionSchema,
    batch: usize,
    total: &AtomicU64,
    sink: &mut RowSink<'_>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    let bad = |m: String| invalid(format!("not a readable Parquet file: {m}"));
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    check_chunks(b.metadata(), len).map_err(bad)?;
    total.store(
        b.metadata().file_metadata().num_rows().max(0) as u64,
        Relaxed,
    );
    // Which schema field each column is (checked once, before any row is read).
    let cols: Vec<(String, Option<usize>)> = b
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().clone();
            if name == META {
                if !schema.enable_dynamic_field {
                    return Err(invalid(
                        "a '$meta' column, but the collection has no dynamic field",
                    ));
                }
                return Ok((name, None));
            }
            let i = schema
                .fields
                .iter()
                .position(|x| x.name == name)
                .ok_or_else(|| invalid(format!("column '{name}' is no field of the collection")))?;
            let fs = &schema.fields[i];
            if fs.is_primary && fs.auto_id {
                return Err(invalid(format!(
                    "primary key '{name}' is generated (autoID); leave its column out"
                )));
            }
            if schema.function_for_output(&name).is_some() {
                return Err(invalid(format!(
                    "'{name}' is computed by a function from its input field; leave its column out"
                )));
            }
            Ok((name, Some(i)))
        })
        .collect::<Result<_>>()?;
    let reader = b
        .with_batch_size(batch.clamp(1, 65_536))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut base = 0usize;
    for rb in reader {
        let rb = rb.map_err(|e| bad(e.to_string()))?;
        let n = rb.num_rows();
        let mut objs: Vec<Map<String, Value>> = (0..n).map(|_| Map::new()).collect();
        let mut vectors = Vec::new();
        for ((name, field), col) in cols.iter().zip(rb.columns()) {
            let at = |row: usize, msg: String| EngineError::Row {
                row: base + row,
                field: name.clone(),
                msg,
            };
            let Some(fi) = field else {
                // `$meta`: JSON text whose keys become dynamic fields.
                for (r, o) in objs.iter_mut().enumerate() {
                    match value_at(col, r).map_err(|m| at(r, m))? {
                        Value::Null => {}
                        Value::String(s) => match serde_json::from_str(&s) {
                            Ok(Value::Object(m)) => o.extend(m),
                            _ => return Err(at(r, "'$meta' must hold a JSON object".into())),
                        },
                        _ => return Err(at(r, "'$meta' must be JSON text".into())),
                    }
                }
                continue;
            };
            let fs = &schema.fields[*fi];
            if matches!(
                fs.data_type,
                DataType::FloatVector | DataType::Float16Vector | DataType::BFloat16Vector
            ) && col.null_count() == 0
            {
                if let Some(v) = float_rows(col, fs.vec_len()).map_err(|m| at(0, m))? {
                    vectors.push((name.clone(), v));
                    continue;
                }
            }
            for (r, o) in objs.iter_mut().enumerate() {
                let mut v = value_at(col, r).map_err(|m| at(r, m))?;
                if fs.data_type == DataType::JSON {
                    if let Value::String(s) = &v {
                        v = serde_json::from_str(s)
                            .map_err(|e| at(r, format!("not JSON text: {e}")))?;
                    }
                }
                o.insert(name.clone(), v);
            }
        }
        let objs: Vec<Value> = objs.into_iter().map(Value::Object).collect();
        sink((objs, vectors))?;
        base += n;
    }
    Ok(())
}

/// A column of float lists as `rows × dim` floats, when every list holds `dim` of them
/// (`None` for other element types: those go through JSON values).
fn float_rows(col: &ArrayRef, dim: usize) -> std::result::Result<Option<Vec<f32>>, String> {
    let (values, lens): (&ArrayRef, Vec<usize>) = match col.data_type() {
        A::List(_) => {
            let l = col.as_list::<i32>();
            let o = l.value_offsets();
            (
                l.values(),
                o.windows(2).map(|w| (w[1] - w[0]) as usize).collect(),
            )
        }
        A::LargeList(_) => {
            let l = col.as_list::<i64>();
            let o = l.value_offsets();
            (
                l.values(),
                o.windows(2).map(|w| (w[1] - w[0]) as usize).collect(),
            )
        }
        A::FixedSizeList(_, k) => {
            let l = col.as_fixed_size_list();
            (l.values(), vec![*k as usize; l.len()])
        }
        _ => return Ok(None),
    };
    if let Some((r, l)) = lens.iter().enumerate().find(|(_, l)| **l != dim) {
        return Err(format!(
            "row {r} holds {l} values; the field's dim is {dim}"
        ));
    }
    // The lists' values, from the first list's start (a sliced array may begin later).
    let start = match col.data_type() {
        A::List(_) => col.as_list::<i32>().value_offsets()[0] as usize,
        A::LargeList(_) => col.as_list::<i64>().value_offsets()[0] as usize,
        _ => col.as_fixed_size_list().offset() * dim,
    };
    let n = lens.len() * dim;
    if values.null_count() > 0 {
        return Err("a vector holds a null".into());
    }
    let out: Vec<f32> = match values.data_type() {
        A::Float32 => values.as_primitive::<Float32Type>().values()[start..start + n].to_vec(),
        A::Float64 => values.as_primitive::<Float64Type>().values()[start..start + n]
            .iter()
            .map(|&x| x as f32)
            .collect(),
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// Element `i` of an Arrow array as a JSON value: numbers, booleans, strings, lists of
/// them, nulls; anything else is refused naming its type.
fn value_at(col: &ArrayRef, i: usize) -> std::result::Result<Value, String> {
    if col.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match col.data_type() {
        A::Boolean => Value::Bool(col.as_boolean().value(i)),
        A::Int8 => col.as_primitive::<Int8Type>().value(i).into(),
        A::Int16 => col.as_primitive::<Int16Type>().value(i).into(),
        A::Int32 => col.as_primitive::<Int32Type>().value(i).into(),
        A::Int64 => col.as_primitive::<Int64Type>().value(i).into(),
        A::UInt8 => col.as_primitive::<UInt8Type>().value(i).into(),
        A::Float32 => (col.as_primitive::<Float32Type>().value(i) as f64).into(),
        A::Float64 => col.as_primitive::<Float64Type>().value(i).into(),
        A::Utf8 => col.as_string::<i32>().value(i).into(),
        A::LargeUtf8 => col.as_string::<i64>().value(i).into(),
        A::List(_) => list(&col.as_list::<i32>().value(i))?,
        A::LargeList(_) => list(&col.as_list::<i64>().value(i))?,
        A::FixedSizeList(_, _) => list(&col.as_fixed_size_list().value(i))?,
        t => return Err(format!("Parquet columns of type {t} cannot be imported")),
    })
}

fn list(a: &ArrayRef) -> std::result::Result<Value, String> {
    (0..a.len())
        .map(|j| value_at(a, j))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Value::Array)
}
