//! Small shared types: primary keys, timestamps, consistency levels.

use crate::schema::{DataType, FieldSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A primary key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PrimaryKey {
    Int(i64),
    Str(String),
}

impl PrimaryKey {
    pub fn from_json(v: &Value, f: &FieldSchema) -> Result<PrimaryKey, String> {
        match f.data_type {
            DataType::Int64 => v
                .as_i64()
                .map(PrimaryKey::Int)
                .ok_or_else(|| format!("primary key must be an Int64, got {v}")),
            _ => {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("primary key must be a string, got {v}"))?;
                let max = f.max_length.unwrap_or(65535);
                if s.len() > max {
                    return Err(format!(
                        "primary key of {} bytes exceeds max_length {max}",
                        s.len()
                    ));
                }
                Ok(PrimaryKey::Str(s.to_string()))
            }
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            PrimaryKey::Int(i) => Value::from(*i),
            PrimaryKey::Str(s) => Value::from(s.as_str()),
        }
    }
}

impl fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrimaryKey::Int(i) => write!(f, "{i}"),
            PrimaryKey::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Hybrid timestamp: milliseconds since the Unix epoch in the high 46 bits, a logical
/// counter in the low 18 bits (Milvus's TSO layout).
pub type Timestamp = u64;
pub const LOGICAL_BITS: u32 = 18;

pub fn physical_ms(ts: Timestamp) -> u64 {
    ts >> LOGICAL_BITS
}

pub fn ts_from_ms(ms: u64) -> Timestamp {
    ms << LOGICAL_BITS
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Read consistency of a request (see docs/ARCHITECTURE.md, "Consistency").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Sees every write acknowledged before the request started, and waits for writes
    /// already in flight at that moment to become durable.
    Strong,
    /// Sees every write acknowledged to anyone, the caller's own included (default).
    #[default]
    Session,
    /// Reads a snapshot at most the collection's staleness bound old.
    Bounded,
    /// Reads whatever is applied in memory, without waiting.
    Eventually,
}

impl Consistency {
    pub fn parse(s: &str) -> Option<Consistency> {
        match s.to_ascii_lowercase().as_str() {
            "strong" => Some(Consistency::Strong),
            "session" => Some(Consistency::Session),
            "bounded" => Some(Consistency::Bounded),
            "eventually" => Some(Consistency::Eventually),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Consistency::Strong => "Strong",
            Consistency::Session => "Session",
            Consistency::Bounded => "Bounded",
            Consistency::Eventually => "Eventually",
        }
    }
}
