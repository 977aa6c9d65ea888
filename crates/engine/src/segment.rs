//! Segments: the unit of storage, indexing and search.
//!
//! A segment holds rows of one partition in columnar form. It is *growing* while rows are
//! appended (in memory, searchable at once), *sealed* when it reaches the configured row
//! count or byte size (no more appends), and *flushed* once written to immutable files.
//!
//! # On-disk format (directory `segments/<id>/`, format 2)
//! | file | content |
//! |---|---|
//! | `meta.json` | format, id, partition, row count, vector dims and element types (`elems`; absent = all f32), CRC32C of each data file |
//! | `vector_<k>.f32` | vector field k (schema order): rows × dim little-endian f32, contiguous; memory-mapped on load. Float16Vector and BFloat16Vector fields are `vector_<k>.f16` / `.bf16`: rows × dim little-endian u16 bits (half the bytes), read through converting kernels |
//! | `columns.bin` | primary keys, insert timestamps, scalar columns (schema order) and the dynamic field as typed, encoded columns (layout below) |
//! | `deletes-<gen>.mpk` | MessagePack list of (row offset, delete timestamp) tombstones; rewritten under a new generation when deletes are added, referenced by the collection manifest |
//!
//! `columns.bin` (little-endian; the column encodings are in [`crate::column`]):
//! ```text
//! "MGC2" | rows: u64 | pk kind: u8 (1 = Int64, 2 = VarChar) | pks: packed ints or strings
//!        | insert timestamps: packed ints
//!        | scalar column count: u32 | each column (tag, validity, data)
//!        | dynamic: u8 (0 = none, 1 = a column follows) [| column]
//! ```
//! Format 1 (before typed columns) had `rows.mpk` instead: MessagePack of the primary
//! keys, timestamps, scalar values per column and dynamic objects. It still opens (its
//! values are sealed into typed columns in memory) and compaction rewrites it as
//! format 2.
//!
//! The files are keys of the collection's [`Storage`] (`collections/<c>/segments/<id>/…`;
//! on local storage, a directory). Everything but the tombstones is immutable once
//! written. Each file is put atomically and durably (meta.json last); the segment exists
//! for readers only once a manifest naming it has been put, and files of a segment no
//! manifest names (a crash mid-flush) are removed when the collection opens.

use crate::catalog::ManifestIndex;
use crate::column::{Column, PathIndex, Reader, Writer};
use crate::error::{EngineError, Result};
use crate::filter::{ColumnRow, Columns, JsonPath, PathBase};
use crate::schema::{CollectionSchema, RowBatch};
use crate::storage::{Blob, Storage};
use crate::types::{PrimaryKey, Timestamp};
use magpie_index::{AnyIndex, Bitset, Elem, VectorSlice};
use memmap2::Mmap;
use once_cell::sync::OnceCell;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `deleted_at` of a live row.
pub const LIVE: Timestamp = u64::MAX;
/// Segment format written by [`Segment::write`].
pub const FORMAT: u32 = 2;
const COLUMNS_MAGIC: &[u8; 4] = b"MGC2";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegState {
    Growing,
    Sealed,
    Flushed,
}

/// Vector storage: owned while growing; once flushed, memory-mapped (local storage) or
/// shared in memory (other stores). Flushed data is behind an `Arc`, so an index build
/// can read a flushed segment's vectors without holding the collection lock. Rows are
/// f32, or half precision (Float16Vector / BFloat16Vector: `u16` bits, half the bytes);
/// the column's [`Elem`] says which, and a mapped file is read as that type.
pub enum VecData {
    Owned(Vec<f32>),
    OwnedHalf(Vec<u16>),
    OwnedBytes(Vec<u8>),
    Mapped(Arc<Mmap>),
    Shared(Arc<Vec<f32>>),
    SharedHalf(Arc<Vec<u16>>),
    SharedBytes(Arc<Vec<u8>>),
}

/// Read-only view of a flushed vector column, shareable across threads.
#[derive(Clone)]
pub enum SharedVectors {
    Mapped(Arc<Mmap>),
    Shared(Arc<Vec<f32>>),
    SharedHalf(Arc<Vec<u16>>),
    SharedBytes(Arc<Vec<u8>>),
}

impl SharedVectors {
    /// The rows as the index crate reads them.
    pub fn slice(&self, dim: usize, elem: Elem) -> VectorSlice<'_> {
        match self {
            SharedVectors::Mapped(m) => mapped_slice(m, dim, elem),
            SharedVectors::Shared(v) => VectorSlice::new(v, dim),
            SharedVectors::SharedHalf(v) => VectorSlice::half(v, dim, elem == Elem::BF16),
            SharedVectors::SharedBytes(v) => VectorSlice::binary(v, dim),
        }
    }
}

/// A mapped vector file read as rows of `elem`.
fn mapped_slice(m: &Mmap, dim: usize, elem: Elem) -> VectorSlice<'_> {
    let bytes: &[u8] = m;
    match elem {
        Elem::F32 => VectorSlice::new(mmap_f32(bytes), dim),
        Elem::F16 | Elem::BF16 => VectorSlice::half(mmap_u16(bytes), dim, elem == Elem::BF16),
        Elem::Bin => VectorSlice::binary(bytes, dim),
    }
}

fn mmap_f32(bytes: &[u8]) -> &[f32] {
    // SAFETY: the file was validated to hold a whole number of f32 (len % 4 == 0 checked
    // on load), mmap memory is page-aligned (so 4-aligned), and the platform is
    // little-endian (checked at compile time below), which is the file's byte order.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) }
}

fn mmap_u16(bytes: &[u8]) -> &[u16] {
    // SAFETY: as for `mmap_f32`, with 2-byte elements (len % 2 == 0 checked on load).
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u16, bytes.len() / 2) }
}

/// Little-endian f32s from bytes (a whole number of them; checked by the caller).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// Little-endian u16s from bytes (a whole number of them; checked by the caller).
fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes(c.try_into().expect("2 bytes")))
        .collect()
}

/// The key of vector field `k`'s file: `vector_<k>.f32`, `.f16` or `.bf16`.
pub fn vector_key(k: usize, elem: Elem) -> String {
    let ext = match elem {
        Elem::F32 => "f32",
        Elem::F16 => "f16",
        Elem::BF16 => "bf16",
        Elem::Bin => "bin",
    };
    format!("vector_{k}.{ext}")
}

impl VecData {
    /// The rows as the index crate reads them.
    pub fn slice(&self, dim: usize, elem: Elem) -> VectorSlice<'_> {
        match self {
            VecData::Owned(v) => VectorSlice::new(v, dim),
            VecData::Shared(v) => VectorSlice::new(v, dim),
            VecData::OwnedHalf(v) => VectorSlice::half(v, dim, elem == Elem::BF16),
            VecData::SharedHalf(v) => VectorSlice::half(v, dim, elem == Elem::BF16),
            VecData::OwnedBytes(v) => VectorSlice::binary(v, dim),
            VecData::SharedBytes(v) => VectorSlice::binary(v, dim),
            VecData::Mapped(m) => mapped_slice(m, dim, elem),
        }
    }

    /// The stored bytes (little-endian elements), as written to the vector file.
    pub fn bytes(&self) -> &[u8] {
        match self {
            VecData::Owned(v) => bytemuck_f32(v),
            VecData::Shared(v) => bytemuck_f32(v),
            VecData::OwnedHalf(v) => bytemuck_u16(v),
            VecData::SharedHalf(v) => bytemuck_u16(v),
            VecData::OwnedBytes(v) => v,
            VecData::SharedBytes(v) => v,
            VecData::Mapped(m) => m,
        }
    }

    /// The shared data of a flushed column (`None` while growing or when empty).
    pub fn share(&self) -> Option<SharedVectors> {
        match self {
            VecData::Mapped(m) => Some(SharedVectors::Mapped(m.clone())),
            VecData::Shared(v) => Some(SharedVectors::Shared(v.clone())),
            VecData::SharedHalf(v) => Some(SharedVectors::SharedHalf(v.clone())),
            VecData::SharedBytes(v) => Some(SharedVectors::SharedBytes(v.clone())),
            VecData::Owned(_) | VecData::OwnedHalf(_) | VecData::OwnedBytes(_) => None,
        }
    }

    /// Flushed data as read back from storage.
    fn from_blob(b: Blob, elem: Elem) -> VecData {
        match b {
            Blob::Mapped(m) => VecData::Mapped(m),
            Blob::Owned(v) => match elem {
                Elem::F32 => VecData::Shared(Arc::new(f32s(&v))),
                Elem::F16 | Elem::BF16 => VecData::SharedHalf(Arc::new(u16s(&v))),
                Elem::Bin => VecData::SharedBytes(v),
            },
        }
    }
}

/// A built index attached to one vector field of a flushed segment: in memory, or (on
/// a remote store) fetched on first use.
pub struct SegIndex {
    /// The [`ManifestIndex`] entry describing its file.
    pub file: ManifestIndex,
    state: IndexState,
}

enum IndexState {
    Ready(Arc<AnyIndex>),
    Lazy(Arc<LazyIndex>),
}

/// An index file fetched, checked and parsed on first use.
pub struct LazyIndex {
    store: Arc<dyn Storage>,
    key: String,
    kind: crate::indexspec::IndexKind,
    crc: u32,
    shape: (usize, usize),
    /// `None` once a fetch failed: the segment is then searched exactly.
    cell: OnceCell<Option<Arc<AnyIndex>>>,
}

impl LazyIndex {
    /// Fetches, checks and parses the file once; a failure is logged and the segment
    /// is searched exactly from then on (the file is rebuilt at the next open).
    pub fn get(&self) -> Option<&Arc<AnyIndex>> {
        self.cell
            .get_or_init(|| match self.fetch() {
                Ok(ix) => Some(ix),
                Err(e) => {
                    tracing::warn!(path = %self.store.locate(&self.key).display(),
                        "index file not loaded ({e}); the segment is searched exactly");
                    None
                }
            })
            .as_ref()
    }

    fn fetch(&self) -> std::result::Result<Arc<AnyIndex>, String> {
        let bytes = self.store.get(&self.key).map_err(|e| e.to_string())?;
        check_index(&self.kind, &bytes, self.crc, self.shape).map(Arc::new)
    }

    pub fn is_fetched(&self) -> bool {
        self.cell.get().is_some()
    }
}

/// Parses an index file's bytes, checking its checksum and that it covers `shape`
/// (rows, dim) of its segment.
pub fn check_index(
    kind: &crate::indexspec::IndexKind,
    bytes: &[u8],
    crc: u32,
    shape: (usize, usize),
) -> std::result::Result<AnyIndex, String> {
    if crc32c::crc32c(bytes) != crc {
        return Err("checksum mismatch".into());
    }
    let ix = crate::indexspec::from_bytes(kind, bytes).map_err(|e| e.to_string())?;
    if let Some((rows, d)) = ix.shape() {
        if (rows, d) != shape {
            return Err(format!(
                "the index covers {rows} rows of dim {d}; the segment has {} rows of dim {}",
                shape.0, shape.1
            ));
        }
    }
    Ok(ix)
}

impl SegIndex {
    /// An index in memory (just built, or loaded at open).
    pub fn ready(file: ManifestIndex, index: Arc<AnyIndex>) -> SegIndex {
        SegIndex {
            file,
            state: IndexState::Ready(index),
        }
    }

    /// An index fetched from `store` on first use.
    pub fn lazy(
        file: ManifestIndex,
        store: Arc<dyn Storage>,
        key: String,
        kind: crate::indexspec::IndexKind,
        shape: (usize, usize),
    ) -> SegIndex {
        let crc = file.crc;
        SegIndex {
            file,
            state: IndexState::Lazy(Arc::new(LazyIndex {
                store,
                key,
                kind,
                crc,
                shape,
                cell: OnceCell::new(),
            })),
        }
    }

    /// The index, fetching it first where it is lazy; `None` when that failed.
    pub fn get(&self) -> Option<&Arc<AnyIndex>> {
        match &self.state {
            IndexState::Ready(ix) => Some(ix),
            IndexState::Lazy(l) => l.get(),
        }
    }

    fn lazy_part(&self) -> Option<&Arc<LazyIndex>> {
        match &self.state {
            IndexState::Lazy(l) => Some(l),
            IndexState::Ready(_) => None,
        }
    }
}

/// An HNSW graph over the first `rows` rows of a vector field that has no built index
/// yet: a growing segment's, or a flushed one's whose build is pending. It is grown in
/// the background as rows arrive (`builder`, interim jobs) and searched together with
/// an exact scan of the rows after it, so a search right after a large insert does not
/// scan the whole segment. It lives only in memory: after a restart the rows replayed
/// from the WAL get a new one. The built index replaces it.
pub struct Interim {
    /// The index definition it stands in for.
    pub index_id: u64,
    /// Rows it covers: the segment's first `rows`.
    pub rows: usize,
    pub graph: Arc<magpie_index::HnswIndex>,
    /// Rows when its recall curve was measured (measured again once they double).
    pub curve_rows: usize,
}

impl Interim {
    /// The best rows of `v` (the whole column) for `q`: the graph over the first
    /// `rows`, an exact scan of the rest; offsets are the column's.
    pub fn search(
        &self,
        v: VectorSlice<'_>,
        inv_norms: &[f32],
        q: &[f32],
        p: &magpie_index::SearchParams<'_>,
    ) -> magpie_index::Result<Vec<magpie_index::Scored>> {
        use magpie_index::VectorIndexRead;
        let n = v.len();
        let m = self.rows.min(n);
        let inv = |a: usize, b: usize| inv_norms.get(a..b).unwrap_or(&[]);
        let head_allow = p.allow.map(|a| a.slice(0, m));
        let head = magpie_index::SearchParams {
            allow: head_allow.as_ref(),
            ..*p
        };
        let mut out = self.graph.search(v.rows_range(0, m), inv(0, m), q, &head)?;
        if m < n {
            let tail_allow = p.allow.map(|a| a.slice(m, n));
            let tail = magpie_index::SearchParams {
                allow: tail_allow.as_ref(),
                ..*p
            };
            let flat = magpie_index::FlatIndex::new(self.graph.metric());
            out.extend(
                flat.search(v.rows_range(m, n), inv(m, n), q, &tail)?
                    .into_iter()
                    .map(|s| magpie_index::Scored {
                        offset: s.offset + m as u32,
                        ..s
                    }),
            );
        }
        Ok(out)
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("Magpie's segment files are little-endian and memory-mapped as-is");

/// A vector field's rows: in memory (growing segments, and every segment on a local or
/// in-memory store), or on a remote store fetched on first use.
pub struct VecColumn {
    pub dim: usize,
    pub elem: Elem,
    state: VecState,
}

enum VecState {
    Ready(Vectors),
    Lazy(Arc<LazyVectors>),
}

/// A vector column's data and norms.
pub struct Vectors {
    pub dim: usize,
    pub elem: Elem,
    pub data: VecData,
    /// 1/‖x‖ per row (0 for a zero vector), for COSINE.
    pub inv_norms: Vec<f32>,
}

impl Vectors {
    pub fn slice(&self) -> VectorSlice<'_> {
        self.data.slice(self.dim, self.elem)
    }

    /// The read-ahead hook a quantized index calls before it rescores rows: only a
    /// memory-mapped file has anything to fetch.
    pub fn prefetch(&self) -> Option<&dyn magpie_index::RowPrefetch> {
        match self.data {
            VecData::Mapped(_) => Some(self),
            _ => None,
        }
    }
}

/// Rows of a memory-mapped vector file that are about to be read are asked for together
/// (`madvise(MADV_WILLNEED)` per row, which starts the reads without waiting), so that a
/// file larger than memory costs one overlapped round of disk reads per rescore instead
/// of one page fault after another. Rows already in the page cache cost a system call.
impl magpie_index::RowPrefetch for Vectors {
    fn will_read(&self, rows: &[u32]) {
        let VecData::Mapped(m) = &self.data else {
            return;
        };
        let row_bytes = match self.elem {
            Elem::Bin => self.dim.div_ceil(8),
            e => self.dim * e.size(),
        };
        for &r in rows {
            let off = r as usize * row_bytes;
            if off + row_bytes <= m.len() {
                // A hint: a failure only means the read faults in later.
                let _ = m.advise_range(memmap2::Advice::WillNeed, off, row_bytes);
            }
        }
    }
}

/// A flushed vector file fetched (into the store's cache, memory-mapped from there),
/// checked and normalised on first use.
pub struct LazyVectors {
    store: Arc<dyn Storage>,
    key: String,
    rows: usize,
    dim: usize,
    elem: Elem,
    crc: u32,
    cell: OnceCell<Vectors>,
}

impl LazyVectors {
    pub fn get(&self) -> Result<&Vectors> {
        self.cell.get_or_try_init(|| {
            let blob = self.store.get_mapped(&self.key)?;
            let path = self.store.locate(&self.key);
            let data = checked_vectors(&path, blob, self.rows, self.dim, self.elem, self.crc)?;
            let inv_norms = data.slice(self.dim, self.elem).inv_norms();
            Ok(Vectors {
                dim: self.dim,
                elem: self.elem,
                data,
                inv_norms,
            })
        })
    }

    pub fn is_fetched(&self) -> bool {
        self.cell.get().is_some()
    }
}

/// Vector data read back from a file, checked: a whole number of elements, `rows ×
/// dim` of them, and the checksum.
fn checked_vectors(
    path: &Path,
    blob: Blob,
    rows: usize,
    dim: usize,
    elem: Elem,
    crc: u32,
) -> Result<VecData> {
    check_blob_len(path, blob.len(), elem)?;
    let data = VecData::from_blob(blob, elem);
    check_vec_data(path, &data, rows, dim, elem, crc)?;
    Ok(data)
}

/// A vector file's length must be a whole number of its elements.
fn check_blob_len(path: &Path, len: usize, elem: Elem) -> Result<()> {
    if !len.is_multiple_of(elem.size()) {
        return Err(EngineError::Corrupt {
            path: path.to_path_buf(),
            msg: format!("{len} bytes is not a whole number of {elem:?} values"),
        });
    }
    Ok(())
}

fn check_vec_data(
    path: &Path,
    data: &VecData,
    rows: usize,
    dim: usize,
    elem: Elem,
    crc: u32,
) -> Result<()> {
    let corrupt = |msg: String| EngineError::Corrupt {
        path: path.to_path_buf(),
        msg,
    };
    let want = rows
        .checked_mul(dim)
        .and_then(|e| e.checked_mul(elem.size()))
        .filter(|_| dim > 0);
    let found = data.bytes().len();
    if want != Some(found) {
        return Err(corrupt(format!(
            "expected {rows} rows of dim {dim} ({elem:?}), found {found} bytes"
        )));
    }
    if crc32c::crc32c(data.bytes()) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(())
}

impl VecColumn {
    /// The rows, fetching them first where they are lazy (an error when that fails).
    pub fn get(&self) -> Result<&Vectors> {
        match &self.state {
            VecState::Ready(v) => Ok(v),
            VecState::Lazy(l) => l.get(),
        }
    }

    /// The lazy part, for prefetching without holding the collection's lock.
    pub fn lazy_part(&self) -> Option<&Arc<LazyVectors>> {
        match &self.state {
            VecState::Lazy(l) => Some(l),
            VecState::Ready(_) => None,
        }
    }

    fn ready_mut(&mut self) -> &mut Vectors {
        match &mut self.state {
            VecState::Ready(v) => v,
            VecState::Lazy(_) => unreachable!("appending to a flushed segment"),
        }
    }

    fn push_rows(&mut self, data: &[f32]) {
        let v = self.ready_mut();
        v.inv_norms
            .extend(data.chunks_exact(v.dim).map(magpie_linalg::inv_norm));
        let bf = v.elem == Elem::BF16;
        match &mut v.data {
            VecData::Owned(o) => o.extend_from_slice(data),
            // Values were rounded to the type and range-checked at insert
            // (`schema::parse_vector`), so this narrowing is exact.
            VecData::OwnedHalf(o) => o.extend(
                data.iter()
                    .map(|&x| magpie_linalg::f32_to_half(x, bf).unwrap_or(0)),
            ),
            // Bytes were checked to be integers 0..=255 at insert (`schema::check_bytes`).
            VecData::OwnedBytes(o) => o.extend(data.iter().map(|&x| x as u8)),
            VecData::Mapped(_)
            | VecData::Shared(_)
            | VecData::SharedHalf(_)
            | VecData::SharedBytes(_) => {
                unreachable!("appending to a flushed segment")
            }
        }
    }
}

/// Vector data for [`Segment::from_parts`]: read already, or fetched on first use.
pub enum VecSource {
    Data(VecData),
    Lazy {
        store: Arc<dyn Storage>,
        key: String,
    },
}

/// Filter results kept per flushed segment: a repeated filter (a tenant, a category, the
/// UI's folder) costs one bitset copy instead of an evaluation. At one bit per row, a
/// 1M-row segment holds at most 1 MB of them.
pub const FILTER_CACHE_ENTRIES: usize = 8;
/// Longest filter text whose result is cached (the cache compares texts).
pub const FILTER_CACHE_MAX_TEXT: usize = 4096;

pub struct Segment {
    pub id: u64,
    pub partition: u64,
    pub state: SegState,
    pub pks: Vec<PrimaryKey>,
    pub ts: Vec<Timestamp>,
    pub deleted_at: Vec<Timestamp>,
    pub vectors: Vec<VecColumn>,
    /// Scalar fields (schema order of non-pk, non-vector fields); values while growing,
    /// typed once flushed ([`crate::column`]).
    pub scalars: Vec<Column>,
    /// The dynamic field (empty when the collection has none).
    pub dynamic: Column,
    /// Scalar index slot per scalar column, built on first use by a filter on a field
    /// that has a scalar index ([`crate::column::SortedIndex`]).
    pub sorted: Vec<OnceCell<Option<crate::column::SortedIndex>>>,
    /// Sparse index slot per scalar column, built on first search of a sparse vector
    /// field once the segment no longer grows (its rows never change after that).
    pub sparse: Vec<OnceCell<Arc<magpie_index::SparseIndex>>>,
    /// JSON path indexes by index id, built on first use by a filter on their path once
    /// the segment is sealed (`None`: the values cannot form one).
    pub paths: parking_lot::Mutex<HashMap<u64, Option<Arc<PathIndex>>>>,
    /// Results of the last filters run here, by filter text, least recently used first
    /// ([`Segment::cache_filter`]); in a growing segment, over the rows it had then.
    filter_cache: parking_lot::Mutex<std::collections::VecDeque<(String, Arc<Bitset>)>>,
    pub created_ms: u64,
    /// Format of the files it was loaded from ([`FORMAT`] for segments written now);
    /// compaction rewrites older ones.
    pub format: u32,
    /// Tombstones changed since they were last written.
    pub deletes_dirty: bool,
    /// Current tombstone file generation (0 = none written).
    pub deletes_gen: u64,
    /// Built index per vector field (flushed segments only).
    pub indexes: Vec<Option<SegIndex>>,
    /// Interim graph per vector field while it has no built index ([`Interim`]).
    pub interim: Vec<Option<Interim>>,
    /// Largest insert timestamp and number of tombstones: a snapshot at or after
    /// `max_ts` of a segment without tombstones sees every row, so searches can skip
    /// building a visibility bitset.
    max_ts: Timestamp,
    n_deleted: usize,
    approx_bytes: usize,
}

#[derive(Serialize, Deserialize)]
struct RowsFile {
    pks: Vec<PrimaryKey>,
    ts: Vec<Timestamp>,
    scalars: Vec<Vec<Value>>,
    dynamic: Vec<Value>,
}

/// The row data of a segment file, decoded and checked.
struct Rows {
    pks: Vec<PrimaryKey>,
    ts: Vec<Timestamp>,
    scalars: Vec<Column>,
    dynamic: Column,
}

fn rows_file(format: u32) -> &'static str {
    if format == 1 {
        "rows.mpk"
    } else {
        "columns.bin"
    }
}

/// Format 1 `rows.mpk`; its values are sealed into typed columns.
fn decode_rows_v1(b: &[u8], n: usize) -> std::result::Result<Rows, String> {
    let rows: RowsFile = rmp_serde::from_slice(b).map_err(|e| e.to_string())?;
    if rows.pks.len() != n || rows.ts.len() != n {
        return Err("row count does not match meta.json".into());
    }
    if rows.scalars.iter().any(|c| c.len() != n)
        || !(rows.dynamic.is_empty() || rows.dynamic.len() == n)
    {
        return Err("a scalar column does not have one value per row".into());
    }
    Ok(Rows {
        pks: rows.pks,
        ts: rows.ts,
        scalars: rows.scalars.into_iter().map(Column::from_values).collect(),
        dynamic: Column::from_values(rows.dynamic),
    })
}

/// Format 2 `columns.bin` (module docs). Decoding may allocate at most 256 times the
/// file's size plus 256 MiB (constant columns pack to nothing), so damaged lengths
/// cannot ask for unbounded memory.
fn decode_columns(b: &[u8], n: usize) -> std::result::Result<Rows, String> {
    let budget = b.len().saturating_mul(256).saturating_add(256 << 20);
    let mut r = Reader::new(b, budget);
    if r.take(4)? != COLUMNS_MAGIC {
        return Err("not a columns file (bad magic)".into());
    }
    if r.u64()? != n as u64 {
        return Err("row count does not match meta.json".into());
    }
    if n > budget / 64 {
        return Err(format!("{n} rows cannot fit in {} bytes", b.len()));
    }
    let pks = match r.u8()? {
        1 => r.ints(n)?.into_iter().map(PrimaryKey::Int).collect(),
        2 => {
            let d = r.str_data(n)?;
            let c = crate::column::StrCol {
                data: d,
                valid: None,
            };
            (0..n)
                .map(|i| PrimaryKey::Str(c.get(i).to_string()))
                .collect()
        }
        t => return Err(format!("unknown primary key kind {t}")),
    };
    let ts = r.ints(n)?.into_iter().map(|t| t as u64).collect();
    let k = r.u32()? as usize;
    if k > r.remaining() {
        return Err(format!("{k} scalar columns cannot fit the file"));
    }
    let mut scalars = Vec::with_capacity(k);
    for i in 0..k {
        scalars.push(Column::decode(&mut r, n).map_err(|m| format!("scalar column {i}: {m}"))?);
    }
    let dynamic = match r.u8()? {
        0 => Column::default(),
        1 => Column::decode(&mut r, n).map_err(|m| format!("dynamic field: {m}"))?,
        t => return Err(format!("unknown dynamic tag {t}")),
    };
    if r.remaining() != 0 {
        return Err(format!("{} trailing bytes", r.remaining()));
    }
    Ok(Rows {
        pks,
        ts,
        scalars,
        dynamic,
    })
}

impl MetaFile {
    /// Element type of vector field `k` (f32 in files that predate the list).
    fn elem(&self, k: usize) -> Elem {
        self.elems.get(k).copied().unwrap_or_default()
    }
}

/// Parses and checks `meta.json` (format 1 or 2).
fn parse_meta(dir: &Path, bytes: &[u8]) -> Result<MetaFile> {
    let path = dir.join("meta.json");
    let meta: MetaFile = serde_json::from_slice(bytes).map_err(|e| EngineError::Corrupt {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    if meta.format != 1 && meta.format != FORMAT {
        return Err(EngineError::Corrupt {
            path,
            msg: format!("unknown segment format {}", meta.format),
        });
    }
    Ok(meta)
}

/// The bytes of little-endian u16s as stored (this crate targets little-endian machines).
fn bytemuck_u16(v: &[u16]) -> &[u8] {
    // SAFETY: u16 has no padding and every byte pattern is a valid u8; the length is
    // the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The bytes of little-endian f32s as stored (this crate targets little-endian machines).
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte pattern is a valid u8; the length is
    // the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    format: u32,
    id: u64,
    partition: u64,
    rows: usize,
    dims: Vec<usize>,
    /// Element type per vector field; absent (all f32) in files written before
    /// half-precision fields.
    #[serde(default)]
    elems: Vec<Elem>,
    crc_rows: u32,
    crc_vectors: Vec<u32>,
}

impl Segment {
    /// An empty growing segment with one vector column per `(dim, elem)`.
    pub fn new_growing(
        id: u64,
        partition: u64,
        dims: &[(usize, Elem)],
        n_scalars: usize,
    ) -> Segment {
        Segment {
            id,
            partition,
            state: SegState::Growing,
            pks: Vec::new(),
            ts: Vec::new(),
            deleted_at: Vec::new(),
            vectors: dims
                .iter()
                .map(|&(dim, elem)| VecColumn {
                    dim,
                    elem,
                    state: VecState::Ready(Vectors {
                        dim,
                        elem,
                        data: match elem {
                            Elem::F32 => VecData::Owned(Vec::new()),
                            Elem::F16 | Elem::BF16 => VecData::OwnedHalf(Vec::new()),
                            Elem::Bin => VecData::OwnedBytes(Vec::new()),
                        },
                        inv_norms: Vec::new(),
                    }),
                })
                .collect(),
            scalars: (0..n_scalars).map(|_| Column::default()).collect(),
            dynamic: Column::default(),
            sorted: (0..n_scalars).map(|_| OnceCell::new()).collect(),
            sparse: (0..n_scalars).map(|_| OnceCell::new()).collect(),
            paths: Default::default(),
            filter_cache: Default::default(),
            created_ms: crate::types::now_ms(),
            format: FORMAT,
            deletes_dirty: false,
            deletes_gen: 0,
            indexes: dims.iter().map(|_| None).collect(),
            interim: dims.iter().map(|_| None).collect(),
            max_ts: 0,
            n_deleted: 0,
            approx_bytes: 0,
        }
    }

    /// Marks row `i` deleted at `ts`.
    pub fn mark_deleted(&mut self, i: usize, ts: Timestamp) {
        if self.deleted_at[i] == LIVE {
            self.n_deleted += 1;
        }
        self.deleted_at[i] = ts;
        self.deletes_dirty = true;
    }

    /// True when every row is visible at `snap` (no tombstones, nothing newer).
    pub fn all_visible(&self, snap: Timestamp) -> bool {
        self.n_deleted == 0 && snap >= self.max_ts
    }

    pub fn len(&self) -> usize {
        self.pks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pks.is_empty()
    }

    /// Approximate in-memory bytes of the row data (for seal-by-size).
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Appends a validated batch at timestamp `ts`; returns the first new offset.
    pub fn append(&mut self, b: &RowBatch, ts: Timestamp, dynamic_enabled: bool) -> u32 {
        debug_assert_eq!(self.state, SegState::Growing);
        let start = self.pks.len() as u32;
        self.pks.extend_from_slice(&b.pks);
        self.ts.extend(std::iter::repeat_n(ts, b.len()));
        self.max_ts = self.max_ts.max(ts);
        self.deleted_at.extend(std::iter::repeat_n(LIVE, b.len()));
        for (col, data) in self.vectors.iter_mut().zip(&b.vectors) {
            col.push_rows(data);
            self.approx_bytes += data.len() * col.elem.size();
        }
        for (col, data) in self.scalars.iter_mut().zip(&b.scalars) {
            col.push(data);
        }
        if dynamic_enabled {
            self.dynamic.push(&b.dynamic);
        }
        self.approx_bytes += b.len() * (16 + 16 * self.scalars.len());
        start
    }

    /// The sparse vector of row `i` in scalar column `si` (`None` for a null).
    pub fn sparse_row(&self, si: usize, i: usize) -> Result<Option<magpie_index::SparseVector>> {
        let v = self.scalars[si].get(i);
        if v.is_null() {
            return Ok(None);
        }
        crate::schema::parse_sparse(&v)
            .map(Some)
            .map_err(|e| EngineError::Corrupt {
                path: PathBuf::from(format!("segment {}", self.id)),
                msg: format!("row {i} holds an invalid sparse vector: {e}"),
            })
    }

    /// The sparse index of scalar column `si`, built on first use. Only for segments that
    /// no longer grow (a growing segment is scanned row by row instead).
    pub fn sparse_index(&self, si: usize) -> Result<&Arc<magpie_index::SparseIndex>> {
        debug_assert_ne!(self.state, SegState::Growing);
        self.sparse[si].get_or_try_init(|| {
            let mut rows = Vec::with_capacity(self.len());
            for i in 0..self.len() {
                if let Some(v) = self.sparse_row(si, i)? {
                    rows.push((i as u32, v));
                }
            }
            magpie_index::SparseIndex::build(self.len(), rows.iter().map(|(i, v)| (*i, v)))
                .map(Arc::new)
                .map_err(EngineError::from)
        })
    }

    /// Rows visible at snapshot `snap`: inserted at or before it and not deleted by then.
    pub fn visible(&self, snap: Timestamp) -> Bitset {
        if self.all_visible(snap) {
            return Bitset::ones(self.len());
        }
        // 64 rows per word, without branches.
        let words = self
            .ts
            .chunks(64)
            .zip(self.deleted_at.chunks(64))
            .map(|(ts, del)| {
                let mut w = 0u64;
                for (j, (t, d)) in ts.iter().zip(del).enumerate() {
                    w |= ((*t <= snap && *d > snap) as u64) << j;
                }
                w
            })
            .collect();
        Bitset::from_words(words, self.len()).expect("one bit per row")
    }

    /// The cached result of filter `text` on this segment (visibility aside): on every
    /// row, or on the first `len()` rows of the bitset where the segment has grown since.
    pub fn cached_filter(&self, text: &str) -> Option<Arc<Bitset>> {
        let mut c = self.filter_cache.lock();
        let at = c.iter().position(|(t, _)| t == text)?;
        // Most recently used last.
        let hit = c.remove(at)?;
        let bits = hit.1.clone();
        c.push_back(hit);
        Some(bits)
    }

    /// Caches the result of filter `text` on the segment's first `bits.len()` rows (see
    /// [`FILTER_CACHE_ENTRIES`]). A row's values never change once appended (deletes
    /// only stamp `deleted_at`, upserts delete and append elsewhere, sealing converts
    /// the representation, not the values), so the result stays true for those rows
    /// while a growing segment appends more; a longer result replaces a shorter one.
    pub fn cache_filter(&self, text: &str, bits: Arc<Bitset>) {
        if text.len() > FILTER_CACHE_MAX_TEXT || bits.len() > self.len() {
            return;
        }
        let mut c = self.filter_cache.lock();
        if let Some(at) = c.iter().position(|(t, _)| t == text) {
            if c[at].1.len() >= bits.len() {
                return;
            }
            c.remove(at);
        }
        if c.len() == FILTER_CACHE_ENTRIES {
            c.pop_front();
        }
        c.push_back((text.to_string(), bits));
    }

    pub fn live_count(&self) -> usize {
        self.deleted_at.iter().filter(|d| **d == LIVE).count()
    }

    /// The columns a filter reads.
    pub fn columns(&self) -> Columns<'_> {
        Columns::new(&self.pks, &self.scalars, &self.dynamic)
    }

    /// The columns with the scalar indexes of the fields flagged in `indexed`.
    pub fn columns_indexed<'a>(&'a self, indexed: &'a [bool]) -> Columns<'a> {
        Columns {
            indexed,
            sorted: &self.sorted,
            ..self.columns()
        }
    }

    /// This segment's JSON path indexes among `defs` whose paths are in `wanted`, built
    /// now where this is their first use. None while the segment grows (its JSON
    /// values are not sealed yet).
    pub fn path_indexes(
        &self,
        defs: &[crate::collection::PathDef],
        wanted: &[JsonPath],
    ) -> Vec<(JsonPath, Arc<PathIndex>)> {
        let mut out = Vec::new();
        for d in defs.iter().filter(|d| wanted.contains(&d.path)) {
            let base = match d.path.base {
                PathBase::Field(i) => self.scalars.get(i),
                PathBase::Dynamic => Some(&self.dynamic),
            };
            if base.is_none_or(|c| matches!(c, Column::Values(_))) {
                continue;
            }
            let cached = self.paths.lock().get(&d.id).cloned();
            let ix = match cached {
                Some(ix) => ix,
                None => {
                    // Built outside the lock; two filters racing build it twice.
                    let cols = self.columns();
                    let ix = PathIndex::build(self.len(), d.cast, |i| d.path.value(&cols, i))
                        .map(Arc::new);
                    self.paths.lock().insert(d.id, ix.clone());
                    ix
                }
            };
            if let Some(ix) = ix {
                out.push((d.path.clone(), ix));
            }
        }
        out
    }

    /// Bytes of the built JSON path index `id` (0 when not built).
    pub fn path_index_bytes(&self, id: u64) -> usize {
        self.paths
            .lock()
            .get(&id)
            .and_then(|x| x.as_ref())
            .map_or(0, |x| x.bytes())
    }

    /// A row, as filters see it.
    pub fn row(&self, i: usize) -> ColumnRow<'_> {
        self.columns().row(i)
    }

    /// Seals the scalar columns into their typed form (done when the segment is
    /// flushed; reads return the same values).
    pub fn seal_columns(&mut self) {
        for c in &mut self.scalars {
            c.seal();
        }
        self.dynamic.seal();
    }

    /// The encoded `columns.bin` (module docs).
    fn encode_columns(&self, path: impl Fn() -> PathBuf) -> Result<Vec<u8>> {
        let mut w = Writer::default();
        w.buf.extend_from_slice(COLUMNS_MAGIC);
        w.u64(self.len() as u64);
        let ints: Option<Vec<i64>> = self
            .pks
            .iter()
            .map(|p| match p {
                PrimaryKey::Int(i) => Some(*i),
                PrimaryKey::Str(_) => None,
            })
            .collect();
        let strs: Option<Vec<Value>> = self
            .pks
            .iter()
            .map(|p| match p {
                PrimaryKey::Str(s) => Some(Value::String(s.clone())),
                PrimaryKey::Int(_) => None,
            })
            .collect();
        match (ints, strs) {
            (Some(ints), _) => {
                w.u8(1);
                w.ints(&ints);
            }
            (None, Some(strs)) => match Column::from_values(strs) {
                Column::Str(c) => {
                    w.u8(2);
                    w.str_data(&c.data);
                }
                _ => {
                    return Err(EngineError::Corrupt {
                        path: path(),
                        msg: "primary keys exceed 4 GiB".into(),
                    })
                }
            },
            (None, None) => {
                return Err(EngineError::Corrupt {
                    path: path(),
                    msg: "primary keys of two types in one segment".into(),
                })
            }
        }
        w.ints(&self.ts.iter().map(|t| *t as i64).collect::<Vec<_>>());
        w.u32(self.scalars.len() as u32);
        for c in &self.scalars {
            c.encode(&mut w);
        }
        if self.dynamic.is_empty() {
            w.u8(0);
        } else {
            w.u8(1);
            self.dynamic.encode(&mut w);
        }
        Ok(w.buf)
    }

    /// Writes this segment's files under `prefix` (`…/segments/<id>/`, see the module
    /// docs), replacing anything a crash left there. On return every file is durable;
    /// the segment becomes part of the collection only when a manifest naming it is put.
    /// Seals the segment (typed columns), writes its files under `prefix` and reads its
    /// vectors back from them (mapped, or shared): from then on it is `Flushed`. Sealed
    /// first, so if the write fails (the store is unreachable) new rows go to a new
    /// growing segment and this one is written by the next try. Not listed in any
    /// manifest yet: that is the caller's step.
    pub fn persist(&mut self, store: &dyn Storage, prefix: &str) -> Result<()> {
        self.state = SegState::Sealed;
        self.seal_columns();
        self.write(store, prefix)?;
        self.state = SegState::Flushed;
        self.remap(store, prefix)
    }

    pub fn write(&self, store: &dyn Storage, prefix: &str) -> Result<()> {
        self.write_format(store, prefix, FORMAT)
    }

    /// [`Segment::write`] in a given format: 2 (current) or 1 (kept so that tests can
    /// check that format-1 segments still open).
    pub fn write_format(&self, store: &dyn Storage, prefix: &str, format: u32) -> Result<()> {
        store.delete_prefix(prefix)?;
        let mut crc_vectors = Vec::new();
        for (k, col) in self.vectors.iter().enumerate() {
            let bytes = col.get()?.data.bytes();
            crc_vectors.push(crc32c::crc32c(bytes));
            store.put(&format!("{prefix}{}", vector_key(k, col.elem)), bytes)?;
        }
        let (name, rows_bytes) = if format == 1 {
            let n = self.len();
            let rows = RowsFile {
                pks: self.pks.clone(),
                ts: self.ts.clone(),
                scalars: self
                    .scalars
                    .iter()
                    .map(|c| (0..n).map(|i| c.get(i).into_owned()).collect())
                    .collect(),
                dynamic: (0..self.dynamic.len())
                    .map(|i| self.dynamic.get(i).into_owned())
                    .collect(),
            };
            let bytes = rmp_serde::to_vec(&rows).map_err(|e| EngineError::Corrupt {
                path: store.locate(&format!("{prefix}rows.mpk")),
                msg: e.to_string(),
            })?;
            ("rows.mpk", bytes)
        } else {
            let bytes = self.encode_columns(|| store.locate(&format!("{prefix}columns.bin")))?;
            ("columns.bin", bytes)
        };
        store.put(&format!("{prefix}{name}"), &rows_bytes)?;
        let meta = MetaFile {
            format,
            id: self.id,
            partition: self.partition,
            rows: self.len(),
            dims: self.vectors.iter().map(|c| c.dim).collect(),
            elems: self.vectors.iter().map(|c| c.elem).collect(),
            crc_rows: crc32c::crc32c(&rows_bytes),
            crc_vectors,
        };
        store.put(
            &format!("{prefix}meta.json"),
            &serde_json::to_vec_pretty(&meta).expect("meta"),
        )
    }

    /// Writes the tombstones as generation `gen` (`deletes-<gen>.mpk`). Durable on return.
    pub fn write_deletes(&self, store: &dyn Storage, prefix: &str, gen: u64) -> Result<()> {
        let list: Vec<(u32, Timestamp)> = self
            .deleted_at
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != LIVE)
            .map(|(i, d)| (i as u32, *d))
            .collect();
        let bytes = rmp_serde::to_vec(&list).expect("tombstones serialize");
        store.put(&format!("{prefix}deletes-{gen}.mpk"), &bytes)
    }

    /// Loads a flushed segment from `prefix`; vectors are memory-mapped where the store
    /// is local, and fetched on first use where it is remote ([`Storage::is_remote`]).
    /// `deletes_gen` names the tombstone file to apply (0 = none). Everything read is
    /// checked by [`Segment::from_parts`] (lazy vectors when they are fetched).
    pub fn load(store: &Arc<dyn Storage>, prefix: &str, deletes_gen: u64) -> Result<Segment> {
        let meta_bytes = store.get(&format!("{prefix}meta.json"))?;
        let dir = store.locate(prefix);
        let meta = parse_meta(&dir, &meta_bytes)?;
        let rows = store.get(&format!("{prefix}{}", rows_file(meta.format)))?;
        let mut vectors = Vec::with_capacity(meta.dims.len());
        for k in 0..meta.dims.len() {
            let elem = meta.elem(k);
            let key = format!("{prefix}{}", vector_key(k, elem));
            if store.is_remote() {
                vectors.push(VecSource::Lazy {
                    store: store.clone(),
                    key,
                });
                continue;
            }
            let blob = store.get_mapped(&key)?;
            check_blob_len(&store.locate(&key), blob.len(), elem)?;
            vectors.push(VecSource::Data(VecData::from_blob(blob, elem)));
        }
        let deletes = if deletes_gen > 0 {
            let key = format!("{prefix}deletes-{deletes_gen}.mpk");
            Some((deletes_gen, store.get(&key)?))
        } else {
            None
        };
        Segment::from_parts(&dir, &meta_bytes, &rows, vectors, deletes)
    }

    /// Builds a flushed segment from the contents of its files (see the module docs),
    /// checking everything: format, checksums, and that every column has one entry per
    /// row. `dir` only names the files in errors. Corrupt input is an
    /// [`EngineError::Corrupt`], never a panic (fuzzed: `fuzz/`, target `segment`).
    pub fn from_parts(
        dir: &Path,
        meta_bytes: &[u8],
        rows_bytes: &[u8],
        vectors: Vec<VecSource>,
        deletes: Option<(u64, Vec<u8>)>,
    ) -> Result<Segment> {
        let corrupt = |path: PathBuf, msg: String| EngineError::Corrupt { path, msg };
        let meta = parse_meta(dir, meta_bytes)?;
        let rows_path = dir.join(rows_file(meta.format));
        if crc32c::crc32c(rows_bytes) != meta.crc_rows {
            return Err(corrupt(rows_path, "checksum mismatch".into()));
        }
        let n = meta.rows;
        let rows = if meta.format == 1 {
            decode_rows_v1(rows_bytes, n)
        } else {
            decode_columns(rows_bytes, n)
        }
        .map_err(|m| corrupt(rows_path, m))?;
        if vectors.len() != meta.dims.len()
            || meta.crc_vectors.len() != meta.dims.len()
            || !(meta.elems.is_empty() || meta.elems.len() == meta.dims.len())
        {
            return Err(corrupt(
                dir.join("meta.json"),
                "vector file count does not match meta.json".into(),
            ));
        }
        let mut cols = Vec::with_capacity(vectors.len());
        for (k, (src, &dim)) in vectors.into_iter().zip(&meta.dims).enumerate() {
            let crc = meta.crc_vectors[k];
            let elem = meta.elem(k);
            let state = match src {
                VecSource::Data(data) => {
                    let path = dir.join(vector_key(k, elem));
                    check_vec_data(&path, &data, n, dim, elem, crc)?;
                    let inv_norms = data.slice(dim, elem).inv_norms();
                    VecState::Ready(Vectors {
                        dim,
                        elem,
                        data,
                        inv_norms,
                    })
                }
                VecSource::Lazy { store, key } => {
                    if dim == 0 || n.checked_mul(dim).is_none() {
                        return Err(corrupt(
                            dir.join("meta.json"),
                            format!("{n} rows of dim {dim}"),
                        ));
                    }
                    VecState::Lazy(Arc::new(LazyVectors {
                        store,
                        key,
                        rows: n,
                        dim,
                        elem,
                        crc,
                        cell: OnceCell::new(),
                    }))
                }
            };
            cols.push(VecColumn { dim, elem, state });
        }
        let mut deleted_at = vec![LIVE; n];
        let deletes_gen = match deletes {
            None => 0,
            Some((gen, bytes)) => {
                let path = dir.join(format!("deletes-{gen}.mpk"));
                let list: Vec<(u32, Timestamp)> = rmp_serde::from_slice(&bytes)
                    .map_err(|e| corrupt(path.clone(), e.to_string()))?;
                for (off, ts) in list {
                    *deleted_at.get_mut(off as usize).ok_or_else(|| {
                        corrupt(
                            path.clone(),
                            format!("tombstone for row {off} beyond {n} rows"),
                        )
                    })? = ts;
                }
                gen
            }
        };
        let n_deleted = deleted_at.iter().filter(|d| **d != LIVE).count();
        let max_ts = rows.ts.iter().copied().max().unwrap_or(0);
        Ok(Segment {
            indexes: meta.dims.iter().map(|_| None).collect(),
            interim: meta.dims.iter().map(|_| None).collect(),
            max_ts,
            n_deleted,
            id: meta.id,
            partition: meta.partition,
            state: SegState::Flushed,
            pks: rows.pks,
            ts: rows.ts,
            deleted_at,
            vectors: cols,
            sorted: rows.scalars.iter().map(|_| OnceCell::new()).collect(),
            sparse: rows.scalars.iter().map(|_| OnceCell::new()).collect(),
            paths: Default::default(),
            filter_cache: Default::default(),
            scalars: rows.scalars,
            dynamic: rows.dynamic,
            created_ms: crate::types::now_ms(),
            format: meta.format,
            deletes_dirty: false,
            deletes_gen,
            approx_bytes: 0,
        })
    }

    /// Checks that this segment's columns are the ones `schema` describes (vector
    /// dimensions, scalar column count, dynamic fields), so that reads by schema position
    /// cannot go out of range. `segments_dir` names the segment in the error.
    pub fn check_schema(&self, schema: &CollectionSchema, segments_dir: &Path) -> Result<()> {
        let dims: Vec<usize> = schema.vector_fields().map(|f| f.vec_len()).collect();
        let have: Vec<usize> = self.vectors.iter().map(|c| c.dim).collect();
        let scalars = schema.scalar_fields().count();
        let msg = if dims != have {
            format!("vector dimensions {have:?}, the schema has {dims:?}")
        } else if self.scalars.len() != scalars {
            format!(
                "{} scalar columns, the schema has {scalars}",
                self.scalars.len()
            )
        } else if !self.dynamic.is_empty() && !schema.enable_dynamic_field {
            "dynamic fields in a collection without them".to_string()
        } else {
            return Ok(());
        };
        Err(EngineError::Corrupt {
            path: segments_dir.join(self.id.to_string()).join("meta.json"),
            msg,
        })
    }

    /// Removes tombstone files other than generation `keep`.
    pub fn remove_old_deletes(store: &dyn Storage, prefix: &str, keep: u64) {
        let Ok(keys) = store.list(&format!("{prefix}deletes-")) else {
            return;
        };
        for key in keys {
            let gen = key[prefix.len()..]
                .strip_prefix("deletes-")
                .and_then(|s| s.strip_suffix(".mpk"))
                .and_then(|g| g.parse::<u64>().ok());
            if gen.is_some_and(|g| g != keep) {
                let _ = store.delete(&key);
            }
        }
    }

    /// Replaces owned vectors with the stored copies just written: memory-mapped from
    /// local storage; elsewhere the owned data becomes the shared copy.
    pub fn remap(&mut self, store: &dyn Storage, prefix: &str) -> Result<()> {
        for (k, col) in self.vectors.iter_mut().enumerate() {
            if col.lazy_part().is_some() {
                continue;
            }
            let col = col.ready_mut();
            if col.data.bytes().is_empty() {
                continue;
            }
            let key = format!("{prefix}{}", vector_key(k, col.elem));
            match store.get_mapped(&key)? {
                Blob::Mapped(m) => {
                    if m.len() != col.data.bytes().len() {
                        return Err(EngineError::Corrupt {
                            path: store.locate(&key),
                            msg: "size changed after write".into(),
                        });
                    }
                    col.data = VecData::Mapped(m);
                }
                Blob::Owned(_) => match &mut col.data {
                    VecData::Owned(v) => col.data = VecData::Shared(Arc::new(std::mem::take(v))),
                    VecData::OwnedHalf(v) => {
                        col.data = VecData::SharedHalf(Arc::new(std::mem::take(v)))
                    }
                    VecData::OwnedBytes(v) => {
                        col.data = VecData::SharedBytes(Arc::new(std::mem::take(v)))
                    }
                    _ => {}
                },
            }
        }
        Ok(())
    }

    /// What is still to be fetched of a segment on a remote store (vector files and
    /// index files), shareable so that a prefetch can run without the collection's lock.
    pub fn unfetched(&self) -> (Vec<Arc<LazyVectors>>, Vec<Arc<LazyIndex>>) {
        let v = self
            .vectors
            .iter()
            .filter_map(|c| c.lazy_part())
            .filter(|l| !l.is_fetched())
            .cloned()
            .collect();
        let i = self
            .indexes
            .iter()
            .flatten()
            .filter_map(|i| i.lazy_part())
            .filter(|l| !l.is_fetched())
            .cloned()
            .collect();
        (v, i)
    }

    /// Number of vector and index files this segment fetches from a remote store.
    pub fn remote_files(&self) -> usize {
        self.vectors
            .iter()
            .filter(|c| c.lazy_part().is_some())
            .count()
            + self
                .indexes
                .iter()
                .flatten()
                .filter(|i| i.lazy_part().is_some())
                .count()
    }

    /// Drops fetched vectors and indexes of a segment on a remote store from memory
    /// (`collections/release`); they are fetched again on next use.
    pub fn evict(&mut self) {
        for c in &mut self.vectors {
            if let VecState::Lazy(l) = &c.state {
                if l.is_fetched() {
                    c.state = VecState::Lazy(Arc::new(LazyVectors {
                        store: l.store.clone(),
                        key: l.key.clone(),
                        rows: l.rows,
                        dim: l.dim,
                        elem: l.elem,
                        crc: l.crc,
                        cell: OnceCell::new(),
                    }));
                }
            }
        }
        for ix in self.indexes.iter_mut().flatten() {
            if let IndexState::Lazy(l) = &ix.state {
                if l.is_fetched() {
                    ix.state = IndexState::Lazy(Arc::new(LazyIndex {
                        store: l.store.clone(),
                        key: l.key.clone(),
                        kind: l.kind.clone(),
                        crc: l.crc,
                        shape: l.shape,
                        cell: OnceCell::new(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mapped_vectors_offer_a_prefetch_and_it_tolerates_any_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        let rows: Vec<f32> = (0..4 * 1000).map(|i| i as f32).collect();
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the test owns the file and nothing writes to it while it is mapped.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let mapped = Vectors {
            dim: 4,
            elem: Elem::F32,
            data: VecData::Mapped(Arc::new(map)),
            inv_norms: Vec::new(),
        };
        let pf = mapped.prefetch().expect("a mapped file has rows to fetch");
        // In range, the last row, and rows past the end (ignored, never a panic).
        pf.will_read(&[0, 17, 999, 1000, u32::MAX]);
        assert_eq!(&*mapped.slice().row(999), &[3996.0, 3997.0, 3998.0, 3999.0]);
        let owned = Vectors {
            dim: 4,
            elem: Elem::F32,
            data: VecData::Owned(rows),
            inv_norms: Vec::new(),
        };
        assert!(owned.prefetch().is_none());
    }
}
