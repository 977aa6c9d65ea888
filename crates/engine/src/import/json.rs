//! JSON import files, as Milvus's bulk import takes them: a list of row objects, either
//! at the top level (`[{...}, ...]`) or under `"rows"` (`{"rows": [{...}, ...]}`).
//!
//! The file is memory-mapped and parsed as a stream: rows are handed out in batches as
//! they are parsed, so memory holds one batch of rows, not the file's tree of values.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Receives each batch of parsed rows; an error stops the parse and is returned as is.
pub type Sink<'a> = dyn FnMut(Vec<Value>) -> crate::Result<()> + 'a;

/// Parses `bytes` and hands rows to `sink` in batches of `batch` rows. A syntax error
/// says where (line and column); a sink error is returned unchanged.
pub fn stream(bytes: &[u8], batch: usize, sink: &mut Sink<'_>) -> crate::Result<()> {
    let mut failed: Option<crate::EngineError> = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let r = Top {
        batch: batch.max(1),
        sink,
        failed: &mut failed,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (r, failed) {
        (_, Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(crate::error::invalid(format!("invalid JSON: {e}"))),
    }
}

struct Top<'s, 'a> {
    batch: usize,
    sink: &'s mut Sink<'a>,
    failed: &'s mut Option<crate::EngineError>,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rows, or an object with a \"rows\" list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        rows(seq, self.batch, self.sink, self.failed)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        let (batch, sink, failed) = (self.batch, self.sink, self.failed);
        while let Some(key) = map.next_key::<String>()? {
            if key == "rows" && !seen {
                seen = true;
                map.next_value_seed(Rows {
                    batch,
                    sink: &mut *sink,
                    failed: &mut *failed,
                })?;
            } else {
                return Err(de::Error::custom(format!(
                    "unexpected key \"{key}\" (the rows go in a \"rows\" list)"
                )));
            }
        }
        if !seen {
            return Err(de::Error::custom("no \"rows\" list"));
        }
        Ok(())
    }
}

struct Rows<'s, 'a> {
    batch: usize,
    sink: &'s mut Sink<'a>,
    failed: &'s mut Option<crate::EngineError>,
}

impl<'de> DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        rows(seq, self.batch, self.sink, self.failed)
    }
}

fn rows<'de, A: SeqAccess<'de>>(
    mut seq: A,
    batch: usize,
    sink: &mut Sink<'_>,
    failed: &mut Option<crate::EngineError>,
) -> Result<(), A::Error> {
    let mut buf = Vec::with_capacity(batch);
    while let Some(v) = seq.next_element::<Value>()? {
        buf.push(v);
        if buf.len() == batch {
            if let Err(e) = sink(std::mem::replace(&mut buf, Vec::with_capacity(batch))) {
                *failed = Some(e);
                return Err(de::Error::custom("stopped"));
            }
        }
    }
    if !buf.is_empty() {
        if let Err(e) = sink(buf) {
            *failed = Some(e);
            return Err(de::Error::custom("stopped"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn collect(text: &str, batch: usize) -> crate::Result<Vec<usize>> {
        let mut sizes = Vec::new();
        stream(text.as_bytes(), batch, &mut |rows: Vec<Value>| {
            sizes.push(rows.len());
            Ok(())
        })?;
        Ok(sizes)
    }

    #[test]
    fn both_layouts_in_batches() {
        let rows: Vec<Value> = (0..7).map(|i| json!({"id": i})).collect();
        let list = serde_json::to_string(&rows).unwrap();
        assert_eq!(collect(&list, 3).unwrap(), [3, 3, 1]);
        let obj = serde_json::to_string(&json!({ "rows": rows })).unwrap();
        assert_eq!(collect(&obj, 7).unwrap(), [7]);
        assert_eq!(collect("[]", 3).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let e = collect("[{\"id\": 1},\n {\"id\": ]", 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid JSON") && e.contains("line 2"), "{e}");
        let e = collect("{\"data\": []}", 2).unwrap_err().to_string();
        assert!(e.contains("unexpected key \"data\""), "{e}");
        let e = collect("{}", 2).unwrap_err().to_string();
        assert!(e.contains("no \"rows\""), "{e}");
        let e = collect("[1] [2]", 2).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
        // The sink's own error comes back unchanged.
        let e = stream(b"[1, 2, 3]", 1, &mut |_| {
            Err(crate::error::invalid("row 2 is bad"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "row 2 is bad");
    }
}
