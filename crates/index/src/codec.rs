//! Little-endian binary encoding of index files. The index crate decides the layout of
//! its own bytes; where they are stored (and how they are checksummed) is the engine's
//! business.

use crate::{IndexError, Result};

/// Appends little-endian values to a byte buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new(magic: &[u8; 8]) -> Self {
        Self {
            buf: magic.to_vec(),
        }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    pub fn u32s(&mut self, v: impl ExactSizeIterator<Item = u32>) {
        self.u64(v.len() as u64);
        self.buf.reserve(v.len() * 4);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        self.buf.reserve(v.len() * 4);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
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

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::new(b"TESTMAG1");
        w.u8(7);
        w.u32(42);
        w.f32s(&[1.5, -2.0]);
        w.u32s([1u32, 2, 3].into_iter());
        let mut r = Reader::new(&w.buf, b"TESTMAG1").unwrap();
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 42);
        assert_eq!(r.f32s().unwrap(), vec![1.5, -2.0]);
        assert_eq!(r.u32s().unwrap(), vec![1, 2, 3]);
        r.finish().unwrap();
        let cut = &w.buf[..w.buf.len() - 2];
        let mut r = Reader::new(cut, b"TESTMAG1").unwrap();
        r.u8().unwrap();
        r.u32().unwrap();
        r.f32s().unwrap();
        assert!(matches!(r.u32s(), Err(IndexError::Corrupt(_))));
        assert!(Reader::new(&w.buf, b"OTHERMAG").is_err());
    }
}
