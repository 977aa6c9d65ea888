//! Magpie's storage engine: schema, write-ahead log, segments, filter language,
//! collections and consistency. Synchronous; no HTTP and no models. See
//! `docs/ARCHITECTURE.md` for the write path, flush, search and recovery.

pub mod alloc;
pub mod analyzer;
pub mod backup;
mod builder;
pub mod catalog;
pub mod collection;
pub mod column;
pub mod engine;
pub mod error;
pub mod filter;
pub mod fsutil;
pub mod function;
pub mod import;
pub mod indexspec;
pub mod par;
pub mod schema;
pub mod segment;
pub mod storage;
pub mod types;
pub mod wal;

pub use catalog::{CollectionMeta, IndexMeta, PartitionMeta};
pub use collection::{Bm25Stats, Hit, SearchKnobs, SearchOutcome};
pub use engine::{
    check_name, qualified, split_qualified, CollectionStats, Engine, EngineConfig, EngineStats,
    HybridRequest, ImportProgress, Importer, IndexProgress, QueryRequest, Rerank, SearchRequest,
    SegmentIndexState, WriteResult, DEFAULT_DATABASE, MAX_HYBRID_SEARCHES, MAX_TOPK,
};
pub use engine::{check_rerank, fuse};
pub use error::{EngineError, Result};
pub use function::{Embedder, FunctionKind, FunctionSchema, ImageInput};
pub use magpie_index::Metric;
pub use magpie_index::{Cancel, Knob};
pub use schema::{CollectionSchema, DataType, FieldSchema};
pub use segment::{FILTER_CACHE_ENTRIES, FILTER_CACHE_MAX_TEXT};
pub use types::{Consistency, PrimaryKey, Timestamp};
