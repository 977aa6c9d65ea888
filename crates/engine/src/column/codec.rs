//! The on-disk encoding of columns (see the parent module's docs, "On disk"): a
//! [`Writer`] that appends encoded columns and a checked [`Reader`] with an allocation
//! budget.

use super::*;

/// Appends the encoded form of values to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, x: u8) {
        self.buf.push(x);
    }
    pub fn u32(&mut self, x: u32) {
        self.buf.extend_from_slice(&x.to_le_bytes());
    }
    pub fn u64(&mut self, x: u64) {
        self.buf.extend_from_slice(&x.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn words(&mut self, w: &[u64]) {
        for x in w {
            self.u64(*x);
        }
    }
    fn validity(&mut self, v: &Option<Bitset>) {
        match v {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.words(b.words());
            }
        }
    }

    /// Integers, frame-of-reference bit-packed: min (i64), width (u8), packed words.
    pub fn ints(&mut self, vals: &[i64]) {
        let min = vals.iter().copied().min().unwrap_or(0);
        let max_d = vals
            .iter()
            .map(|v| v.wrapping_sub(min) as u64)
            .max()
            .unwrap_or(0);
        let width = 64 - max_d.leading_zeros();
        self.u64(min as u64);
        self.u8(width as u8);
        if width == 0 {
            return;
        }
        let mut words = vec![0u64; (vals.len() * width as usize).div_ceil(64)];
        for (i, v) in vals.iter().enumerate() {
            let d = v.wrapping_sub(min) as u64;
            let bit = i * width as usize;
            let (w, off) = (bit / 64, bit % 64);
            words[w] |= d << off;
            if off + width as usize > 64 {
                words[w + 1] |= d >> (64 - off);
            }
        }
        self.words(&words);
    }

    fn strs(&mut self, s: &Strs) {
        let lens: Vec<i64> = s.offsets.windows(2).map(|w| (w[1] - w[0]) as i64).collect();
        self.u64(lens.len() as u64);
        self.ints(&lens);
        self.bytes(s.text.as_bytes());
    }

    /// A string column without validity (primary keys use it).
    pub fn str_data(&mut self, d: &StrData) {
        match d {
            StrData::Plain(s) => {
                self.u8(0);
                self.strs(s);
            }
            StrData::Dict { dict, codes } => {
                self.u8(1);
                self.strs(dict);
                self.ints(&codes.iter().map(|c| *c as i64).collect::<Vec<_>>());
            }
        }
    }
}

const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_BOOL: u8 = 3;
const TAG_STR: u8 = 4;
const TAG_JSON: u8 = 5;

impl Column {
    /// Writes a sealed column (a growing one is sealed on a copy first).
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Column::Values(v) => Column::from_values(v.clone()).encode(w),
            Column::Int(c) => {
                w.u8(TAG_INT);
                w.validity(&c.valid);
                w.ints(&c.vals);
            }
            Column::Float(c) => {
                w.u8(TAG_FLOAT);
                w.validity(&c.valid);
                if c.vals.iter().all(|x| (*x as f32) as f64 == *x) {
                    w.u8(1);
                    for x in &c.vals {
                        w.buf.extend_from_slice(&(*x as f32).to_le_bytes());
                    }
                } else {
                    w.u8(0);
                    for x in &c.vals {
                        w.buf.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
            Column::Bool(c) => {
                w.u8(TAG_BOOL);
                w.validity(&c.valid);
                w.words(c.vals.words());
            }
            Column::Str(c) => {
                w.u8(TAG_STR);
                w.validity(&c.valid);
                w.str_data(&c.data);
            }
            Column::Json(c) => {
                w.u8(TAG_JSON);
                w.u32(c.keys.len() as u32);
                for (k, col) in c.keys.iter().zip(&c.cols) {
                    w.bytes(k.as_bytes());
                    col.encode(w);
                }
                w.u32(c.shapes.len() as u32);
                for s in &c.shapes {
                    w.u32(s.len() as u32);
                    for slot in s {
                        w.u32(slot.map_or(0, |k| k as u32 + 1));
                    }
                }
                w.ints(&c.shape_of.iter().map(|s| *s as i64).collect::<Vec<_>>());
                match &c.rest {
                    None => w.u8(0),
                    Some(r) => {
                        w.u8(1);
                        let lens: Vec<i64> =
                            r.offsets.windows(2).map(|x| (x[1] - x[0]) as i64).collect();
                        w.ints(&lens);
                        w.bytes(&r.bytes);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Decoding

/// Reads encoded values, checking every length against the input and charging every
/// allocation to a budget. Errors are messages; the caller names the file.
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    budget: usize,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    /// A reader that may allocate up to `budget` bytes in all.
    pub fn new(b: &'a [u8], budget: usize) -> Reader<'a> {
        Reader { b, pos: 0, budget }
    }

    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn charge(&mut self, bytes: usize) -> R<()> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            "decoded size exceeds what the file can hold (damaged lengths)".to_string()
        })?;
        Ok(())
    }

    pub fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {n} bytes wanted at offset {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A count that must not exceed `max`.
    pub fn count(&mut self, max: usize, what: &str) -> R<usize> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(format!("{what} count {n} exceeds {max}"));
        }
        Ok(n as usize)
    }
    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.count(self.remaining(), "byte")?;
        self.take(n)
    }
    fn words(&mut self, n_bits: usize) -> R<Bitset> {
        let nw = n_bits.div_ceil(64);
        if nw > self.remaining() / 8 {
            return Err("truncated bitmap".into());
        }
        self.charge(nw * 8)?;
        let mut w = Vec::with_capacity(nw);
        for _ in 0..nw {
            w.push(self.u64()?);
        }
        Bitset::from_words(w, n_bits).ok_or_else(|| "bitmap has bits past its length".into())
    }
    fn validity(&mut self, n: usize) -> R<Option<Bitset>> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.words(n).map(Some),
            t => Err(format!("unknown validity tag {t}")),
        }
    }

    /// `n` bit-packed integers (see [`Writer::ints`]).
    pub fn ints(&mut self, n: usize) -> R<Vec<i64>> {
        let min = self.u64()? as i64;
        let width = self.u8()? as usize;
        if width > 64 {
            return Err(format!("bit width {width} exceeds 64"));
        }
        self.charge(n.saturating_mul(8))?;
        if width == 0 {
            return Ok(vec![min; n]);
        }
        let nw = n
            .checked_mul(width)
            .map(|b| b.div_ceil(64))
            .filter(|nw| *nw <= self.remaining() / 8)
            .ok_or("truncated packed integers")?;
        let raw = self.take(nw * 8)?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let bit = i * width;
            let (w, off) = (bit / 64, bit % 64);
            let mut d = words[w] >> off;
            if off + width > 64 {
                d |= words[w + 1] << (64 - off);
            }
            out.push(min.wrapping_add((d & mask) as i64));
        }
        Ok(out)
    }

    fn strs(&mut self) -> R<Strs> {
        let n = self.count(self.budget / 8, "string")?;
        let lens = self.ints(n)?;
        let text = self.bytes()?;
        self.charge(text.len() + 4 * (n + 1))?;
        let text = std::str::from_utf8(text).map_err(|e| format!("strings: {e}"))?;
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        let mut end: u64 = 0;
        for l in lens {
            if l < 0 {
                return Err(format!("negative string length {l}"));
            }
            end += l as u64;
            if end > text.len() as u64 || !text.is_char_boundary(end as usize) {
                return Err("string lengths do not fit the text".into());
            }
            offsets.push(end as u32);
        }
        if end != text.len() as u64 {
            return Err("string lengths do not add up to the text".into());
        }
        Ok(Strs {
            offsets,
            text: text.to_string(),
        })
    }

    /// A string column of `n` rows without validity (see [`Writer::str_data`]).
    pub fn str_data(&mut self, n: usize) -> R<StrData> {
        match self.u8()? {
            0 => {
                let s = self.strs()?;
                if s.len() != n {
                    return Err(format!("{} strings for {n} rows", s.len()));
                }
                Ok(StrData::Plain(s))
            }
            1 => {
                let dict = self.strs()?;
                let codes = self.ints(n)?;
                let codes = codes
                    .into_iter()
                    .map(|c| {
                        u32::try_from(c)
                            .ok()
                            .filter(|c| (*c as usize) < dict.len())
                            .ok_or_else(|| format!("dictionary code {c} out of range"))
                    })
                    .collect::<R<Vec<u32>>>()?;
                Ok(StrData::Dict { dict, codes })
            }
            t => Err(format!("unknown string encoding {t}")),
        }
    }
}

impl Column {
    /// Reads a column of `n` rows written by [`Column::encode`], checking it whole.
    pub fn decode(r: &mut Reader<'_>, n: usize) -> R<Column> {
        Column::decode_at(r, n, 0)
    }

    fn decode_at(r: &mut Reader<'_>, n: usize, depth: usize) -> R<Column> {
        Ok(match r.u8()? {
            TAG_INT => {
                let valid = r.validity(n)?;
                Column::Int(IntCol {
                    vals: r.ints(n)?,
                    valid,
                })
            }
            TAG_FLOAT => {
                let valid = r.validity(n)?;
                let width = match r.u8()? {
                    0 => 8,
                    1 => 4,
                    t => return Err(format!("unknown float encoding {t}")),
                };
                let raw = r.take(n.checked_mul(width).ok_or("float column too long")?)?;
                r.charge(n * 8)?;
                let vals: Vec<f64> = if width == 4 {
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64)
                        .collect()
                } else {
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                        .collect()
                };
                if vals.iter().any(|x| !x.is_finite()) {
                    return Err("a float value is not finite".into());
                }
                Column::Float(FloatCol { vals, valid })
            }
            TAG_BOOL => {
                let valid = r.validity(n)?;
                Column::Bool(BoolCol {
                    vals: r.words(n)?,
                    valid,
                })
            }
            TAG_STR => {
                let valid = r.validity(n)?;
                Column::Str(StrCol {
                    data: r.str_data(n)?,
                    valid,
                })
            }
            TAG_JSON if depth < 2 => Column::Json(Box::new(JsonCol::decode(r, n, depth)?)),
            t => return Err(format!("unknown column tag {t}")),
        })
    }
}

impl JsonCol {
    fn decode(r: &mut Reader<'_>, n: usize, depth: usize) -> R<JsonCol> {
        let nk = r.u32()? as usize;
        if nk > MAX_SHRED_KEYS {
            return Err(format!("{nk} shredded keys exceed {MAX_SHRED_KEYS}"));
        }
        let mut keys = Vec::with_capacity(nk);
        let mut cols = Vec::with_capacity(nk);
        for _ in 0..nk {
            let k = std::str::from_utf8(r.bytes()?).map_err(|e| format!("key: {e}"))?;
            if keys.iter().any(|x: &String| x == k) {
                return Err(format!("key {k:?} shredded twice"));
            }
            keys.push(k.to_string());
            let c = Column::decode_at(r, n, depth + 1)?;
            if c.len() != n {
                return Err(format!("sub-column {k:?} has {} rows, not {n}", c.len()));
            }
            cols.push(c);
        }
        let ns = r.u32()? as usize;
        if ns > MAX_SHAPES || (nk == 0 && ns > 0) {
            return Err(format!("{ns} shapes for {nk} keys"));
        }
        let mut shapes = Vec::with_capacity(ns);
        for _ in 0..ns {
            let len = r.u32()? as usize;
            if len > r.remaining() / 4 {
                return Err("truncated shape".into());
            }
            r.charge(len * 4)?;
            let mut s = Vec::with_capacity(len);
            let mut seen = vec![false; nk];
            for _ in 0..len {
                let x = r.u32()? as usize;
                s.push(if x == 0 {
                    None
                } else if x <= nk && !seen[x - 1] {
                    seen[x - 1] = true;
                    Some((x - 1) as u16)
                } else {
                    return Err(format!("shape slot {x} is not a key of the column"));
                });
            }
            shapes.push(s);
        }
        let shape_of = r
            .ints(n)?
            .into_iter()
            .map(|s| {
                u16::try_from(s)
                    .ok()
                    .filter(|s| (*s as usize) < SHAPE_FIRST as usize + ns)
                    .ok_or_else(|| format!("shape {s} out of range"))
            })
            .collect::<R<Vec<u16>>>()?;
        let rest = match r.u8()? {
            0 => None,
            1 => {
                let lens = r.ints(n)?;
                let bytes = r.bytes()?;
                r.charge(bytes.len() + 8 * (n + 1))?;
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0u64);
                let mut end = 0u64;
                for l in lens {
                    end = u64::try_from(l)
                        .ok()
                        .and_then(|l| end.checked_add(l))
                        .filter(|e| *e <= bytes.len() as u64)
                        .ok_or("rest lengths do not fit the bytes")?;
                    offsets.push(end);
                }
                if end != bytes.len() as u64 {
                    return Err("rest lengths do not add up".into());
                }
                Some(Blobs {
                    offsets,
                    bytes: bytes.to_vec(),
                })
            }
            t => return Err(format!("unknown rest tag {t}")),
        };
        let c = JsonCol {
            keys,
            cols,
            shapes,
            shape_of,
            rest,
        };
        c.check()?;
        Ok(c)
    }

    /// Checks the invariants of the module docs row by row.
    fn check(&self) -> R<()> {
        for (i, &s) in self.shape_of.iter().enumerate() {
            let rest = match self.rest.as_ref().map(|r| r.get(i)) {
                None | Some([]) => None,
                Some(b) => Some(
                    rmp_serde::from_slice::<Value>(b).map_err(|e| format!("row {i}: rest: {e}"))?,
                ),
            };
            match s {
                SHAPE_NULL => {
                    if rest.is_some() {
                        return Err(format!("row {i}: a null row with data"));
                    }
                }
                SHAPE_OPAQUE => match rest {
                    None | Some(Value::Null) => {
                        return Err(format!("row {i}: an opaque row without a value"))
                    }
                    Some(Value::Object(_)) if !self.keys.is_empty() => {
                        return Err(format!("row {i}: an object outside the shapes"))
                    }
                    _ => {}
                },
                s => {
                    let slots = &self.shapes[(s - SHAPE_FIRST) as usize];
                    for (c, col) in self.cols.iter().enumerate() {
                        let listed = slots.contains(&Some(c as u16));
                        if col.is_valid(i) != listed {
                            return Err(format!(
                                "row {i}: key {:?} present {listed} but valid {}",
                                self.keys[c],
                                col.is_valid(i)
                            ));
                        }
                    }
                    let n_rest = slots.iter().filter(|x| x.is_none()).count();
                    let ok = match &rest {
                        None => n_rest == 0,
                        Some(Value::Object(m)) => {
                            m.len() == n_rest && m.keys().all(|k| self.key_index(k).is_none())
                        }
                        Some(_) => false,
                    };
                    if !ok {
                        return Err(format!("row {i}: rest does not fit its shape"));
                    }
                }
            }
        }
        Ok(())
    }
}
