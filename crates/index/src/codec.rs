//! Little-endian binary encoding of index files. The index crate decides the layout of
//! its own bytes; where they are stored (and how they are checksummed) is the engine's
//! business.

use crate::{IndexError, Result};
use std::io::{self, Write};

/// How many bytes [`Writer`] stages before handing them to its sink.
const STAGE: usize = 1 << 16;

/// Writes little-endian values to a sink through a small staging buffer, so an index
/// streams to its file without a second in-memory copy of itself.
///
/// The value methods cannot fail: the first error of the sink is kept, later writes are
/// dropped, and [`Writer::finish`] returns it. A caller that does not call `finish` loses
/// the staged tail, so every path ends with it.
pub struct Writer<'a> {
    out: &'a mut dyn Write,
    stage: Vec<u8>,
    err: Option<io::Error>,
}

impl<'a> Writer<'a> {
    /// A writer into `out` that starts with the file's `magic`.
    pub fn new(out: &'a mut dyn Write, magic: &[u8; 8]) -> Self {
        let mut w = Self {
            out,
            stage: Vec::with_capacity(STAGE),
            err: None,
        };
        w.put(magic);
        w
    }
    fn drain(&mut self) {
        if self.err.is_none() && !self.stage.is_empty() {
            if let Err(e) = self.out.write_all(&self.stage) {
                self.err = Some(e);
            }
        }
        self.stage.clear();
    }
    fn put(&mut self, b: &[u8]) {
        if self.stage.len() + b.len() > STAGE {
            self.drain();
            if b.len() >= STAGE {
                if self.err.is_none() {
                    if let Err(e) = self.out.write_all(b) {
                        self.err = Some(e);
                    }
                }
                return;
            }
        }
        self.stage.extend_from_slice(b);
    }
    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.put(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.put(v);
    }
    pub fn u32s(&mut self, v: impl ExactSizeIterator<Item = u32>) {
        self.u64(v.len() as u64);
        for x in v {
            self.put(&x.to_le_bytes());
        }
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.put(&x.to_le_bytes());
        }
    }
    /// Hands the staged tail to the sink and flushes it; the first error of the sink.
    pub fn finish(mut self) -> io::Result<()> {
        self.drain();
        match self.err.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

/// Collects what `write` writes into a buffer: the whole file in memory, for tests and
/// small files.
pub fn to_vec(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Vec<u8> {
    let mut v = Vec::new();
    write(&mut v).expect("writing to a Vec does not fail");
    v
}

/// Reads what [`Writer`] wrote; every read is bounds-checked and a short or malformed
/// buffer is an [`IndexError::Corrupt`].
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], magic: &[u8; 8]) -> Result<Self> {
        if buf.len() < 8 || &buf[..8] != magic {
            return Err(IndexError::Corrupt(format!(
                "bad magic: expected {:?}",
                String::from_utf8_lossy(magic)
            )));
        }
        Ok(Self { buf, pos: 8 })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(IndexError::Corrupt(format!(
                "truncated: wanted {n} bytes at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn len(&mut self, elem: usize) -> Result<usize> {
        let n = self.u64()? as usize;
        if n.checked_mul(elem)
            .is_none_or(|b| b > self.buf.len() - self.pos)
        {
            return Err(IndexError::Corrupt(format!(
                "array of {n} elements does not fit in the file"
            )));
        }
        Ok(n)
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.len(1)?;
        Ok(self.take(n)?.to_vec())
    }
    pub fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.len(4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    pub fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.len(4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    pub fn finish(self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(IndexError::Corrupt(format!(
                "{} trailing bytes",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

pub fn metric_code(m: crate::Metric) -> u8 {
    match m {
        crate::Metric::L2 => 0,
        crate::Metric::IP => 1,
        crate::Metric::COSINE => 2,
        crate::Metric::BM25 => 3,
        crate::Metric::HAMMING => 4,
        crate::Metric::JACCARD => 5,
    }
}

pub fn metric_from_code(c: u8) -> Result<crate::Metric> {
    Ok(match c {
        0 => crate::Metric::L2,
        1 => crate::Metric::IP,
        2 => crate::Metric::COSINE,
        4 => crate::Metric::HAMMING,
        5 => crate::Metric::JACCARD,
        _ => return Err(IndexError::Corrupt(format!("unknown metric code {c}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every kind, with arrays longer than the staging buffer.
    fn sample(w: &mut Writer<'_>) {
        w.u8(7);
        w.u32(42);
        w.f32s(&[1.5, -2.0]);
        w.u32s([1u32, 2, 3].into_iter());
        w.bytes(&vec![9u8; STAGE + 3]);
        w.u32s(0..(STAGE as u32));
        w.u64(u64::MAX - 1);
    }

    /// A sink that takes at most `per_call` bytes a call and fails once it holds `cap`.
    struct Stingy {
        got: Vec<u8>,
        per_call: usize,
        cap: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.got.len() >= self.cap {
                return Err(io::Error::other("sink full"));
            }
            let k = buf.len().min(self.per_call).min(self.cap - self.got.len());
            self.got.extend_from_slice(&buf[..k]);
            Ok(k)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stream_in_short_writes_is_the_same_file_and_a_sink_error_is_returned() {
        let whole = to_vec(|out| {
            let mut w = Writer::new(out, b"TESTMAG1");
            sample(&mut w);
            w.finish()
        });
        assert_eq!(
            whole.len(),
            8 + 1 + 4 + 16 + 20 + (8 + STAGE + 3) + (8 + 4 * STAGE) + 8
        );
        let mut sink = Stingy {
            got: Vec::new(),
            per_call: 7,
            cap: usize::MAX,
        };
        let mut w = Writer::new(&mut sink, b"TESTMAG1");
        sample(&mut w);
        w.finish().unwrap();
        assert!(sink.got == whole);
        // A sink that fails part-way: the error comes out of `finish`, nothing after it
        // is written.
        for cap in [5, 100, STAGE + 10, whole.len() - 1] {
            let mut sink = Stingy {
                got: Vec::new(),
                per_call: 1000,
                cap,
            };
            let mut w = Writer::new(&mut sink, b"TESTMAG1");
            sample(&mut w);
            let e = w.finish().unwrap_err();
            assert_eq!(e.to_string(), "sink full", "cap {cap}");
            assert_eq!(sink.got, whole[..cap], "cap {cap}");
        }
    }

    #[test]
    fn round_trip_and_truncation() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, b"TESTMAG1");
        w.u8(7);
        w.u32(42);
        w.f32s(&[1.5, -2.0]);
        w.u32s([1u32, 2, 3].into_iter());
        w.finish().unwrap();
        let mut r = Reader::new(&buf, b"TESTMAG1").unwrap();
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 42);
        assert_eq!(r.f32s().unwrap(), vec![1.5, -2.0]);
        assert_eq!(r.u32s().unwrap(), vec![1, 2, 3]);
        r.finish().unwrap();
        let cut = &buf[..buf.len() - 2];
        let mut r = Reader::new(cut, b"TESTMAG1").unwrap();
        r.u8().unwrap();
        r.u32().unwrap();
        r.f32s().unwrap();
        assert!(matches!(r.u32s(), Err(IndexError::Corrupt(_))));
        assert!(Reader::new(&buf, b"OTHERMAG").is_err());
    }
}
