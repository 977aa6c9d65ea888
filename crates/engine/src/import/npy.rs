//! NumPy `.npy` files (format versions 1–3), as Milvus's bulk import takes them: one file
//! per field, named after it, holding one row per entity.
//!
//! ```text
//! \x93NUMPY  major minor  header_len (u16 LE in v1, u32 LE in v2/v3)
//! header: an ASCII Python dict literal, padded with spaces and a newline, e.g.
//!         {'descr': '<f4', 'fortran_order': False, 'shape': (1000, 128), }
//! data:   the array in C order, shape[0] rows
//! ```
//!
//! The reader takes the header apart by hand (it is a fixed, tiny grammar), checks that
//! the data the shape promises is exactly what the file holds, and reads rows straight
//! from the memory-mapped file. Only little-endian (or byte-sized) numeric types, bools
//! and fixed-width unicode strings are accepted; anything else (Python objects, Fortran
//! order, big-endian) is refused naming the file.

use memmap2::Mmap;
use serde_json::Value;

/// Largest header accepted (NumPy writes 64-byte-aligned headers of well under 1 KiB).
const MAX_HEADER: usize = 64 << 10;

/// Element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    F16,
    F32,
    F64,
    /// Fixed-width unicode (UTF-32LE code units), this many characters per element.
    Str(usize),
}

impl Dtype {
    fn parse(descr: &str) -> Result<Dtype, String> {
        // The byte-order mark is one character, which need not be one byte: a header
        // is any UTF-8 (splitting at byte 1 panicked on "ĕ4"; found by fuzzing).
        let mut chars = descr.chars();
        let order = chars.next();
        let code = chars.as_str();
        let little = matches!(order, Some('<' | '|' | '='));
        let t = match code {
            "b1" => Dtype::Bool,
            "i1" => Dtype::I8,
            "u1" => Dtype::U8,
            "i2" if little => Dtype::I16,
            "i4" if little => Dtype::I32,
            "i8" if little => Dtype::I64,
            "f2" if little => Dtype::F16,
            "f4" if little => Dtype::F32,
            "f8" if little => Dtype::F64,
            c if little && c.starts_with('U') => {
                let n: usize = c[1..]
                    .parse()
                    .map_err(|_| format!("unsupported dtype '{descr}'"))?;
                if n == 0 || n > 65_535 {
                    return Err(format!("unsupported string width in dtype '{descr}'"));
                }
                Dtype::Str(n)
            }
            _ => {
                return Err(format!(
                    "unsupported dtype '{descr}' (little-endian bool, int, float or unicode string arrays only)"
                ))
            }
        };
        Ok(t)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::I8 | Dtype::U8 => 1,
            Dtype::I16 | Dtype::F16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
            Dtype::Str(n) => 4 * n,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }
}

/// A memory-mapped `.npy` array.
pub struct Npy {
    map: Mmap,
    data: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Elements per row (the product of the shape after the first axis).
    pub per_row: usize,
}

impl Npy {
    /// Maps and checks a file; errors do not name the path (the caller adds it).
    pub fn open(file: &std::fs::File) -> Result<Npy, String> {
        // SAFETY: the mapping is read-only and the import reads it once; a file changed
        // underneath by another process can only yield wrong values, which are then
        // validated like any other input (never out-of-bounds reads: lengths are checked
        // against the mapping's own length below).
        let map = unsafe { Mmap::map(file) }.map_err(|e| format!("cannot map: {e}"))?;
        let (dtype, shape, data) = parse_header(&map)?;
        let per_row = shape[1..]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("shape too large")?;
        let total = shape[0]
            .checked_mul(per_row)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or("shape too large")?;
        if map.len() - data != total {
            return Err(format!(
                "shape {:?} of {} needs {total} bytes of data, the file holds {}",
                shape,
                describe(dtype),
                map.len() - data
            ));
        }
        Ok(Npy {
            map,
            data,
            dtype,
            shape,
            per_row,
        })
    }

    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    fn bytes(&self, row: usize) -> &[u8] {
        let w = self.per_row * self.dtype.size();
        &self.map[self.data + row * w..self.data + (row + 1) * w]
    }

    /// Row `row` as floats (float arrays only).
    pub fn floats_into(&self, row: usize, out: &mut Vec<f32>) {
        let b = self.bytes(row);
        match self.dtype {
            Dtype::F32 => out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
            ),
            Dtype::F64 => out.extend(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32),
            ),
            Dtype::F16 => out.extend(b.chunks_exact(2).map(|c| {
                magpie_linalg::half_to_f32(u16::from_le_bytes(c.try_into().unwrap()), false)
            })),
            _ => unreachable!("floats_into on a {:?} array", self.dtype),
        }
    }

    /// Row `row` as raw bytes (u8 arrays: binary vectors).
    pub fn raw(&self, row: usize) -> &[u8] {
        self.bytes(row)
    }

    /// Element `row` of a one-value-per-row array as a JSON value.
    pub fn value(&self, row: usize) -> Value {
        let b = self.bytes(row);
        match self.dtype {
            Dtype::Bool => Value::Bool(b[0] != 0),
            Dtype::I8 => Value::from(b[0] as i8),
            Dtype::U8 => Value::from(b[0]),
            Dtype::I16 => Value::from(i16::from_le_bytes(b.try_into().unwrap())),
            Dtype::I32 => Value::from(i32::from_le_bytes(b.try_into().unwrap())),
            Dtype::I64 => Value::from(i64::from_le_bytes(b.try_into().unwrap())),
            Dtype::F16 => Value::from(magpie_linalg::half_to_f32(
                u16::from_le_bytes(b.try_into().unwrap()),
                false,
            ) as f64),
            Dtype::F32 => Value::from(f32::from_le_bytes(b.try_into().unwrap()) as f64),
            Dtype::F64 => Value::from(f64::from_le_bytes(b.try_into().unwrap())),
            Dtype::Str(_) => {
                let s: String = b
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .take_while(|&u| u != 0)
                    .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect();
                Value::String(s)
            }
        }
    }
}

/// How an array's type reads in an error message.
pub fn describe(t: Dtype) -> String {
    match t {
        Dtype::Str(n) => format!("unicode strings of {n} characters"),
        t => format!("{t:?}").to_lowercase(),
    }
}

/// Parses the magic, version and header dict; returns the dtype, the shape (at least one
/// axis) and the offset of the data.
pub fn parse_header(b: &[u8]) -> Result<(Dtype, Vec<usize>, usize), String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a NumPy .npy file (bad magic)".into());
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    if len > MAX_HEADER || start + len > b.len() {
        return Err(format!("bad .npy header length {len}"));
    }
    let h = std::str::from_utf8(&b[start..start + len]).map_err(|_| "header is not text")?;
    let descr = quoted_after(h, "'descr'").ok_or("header has no 'descr'")?;
    let dtype = Dtype::parse(descr)?;
    let fortran = after(h, "'fortran_order'")
        .ok_or("header has no 'fortran_order'")?
        .trim_start();
    if fortran.starts_with("True") {
        return Err("Fortran-order arrays are not supported; save with C order".into());
    }
    if !fortran.starts_with("False") {
        return Err("bad 'fortran_order' in header".into());
    }
    let shape = after(h, "'shape'")
        .ok_or("header has no 'shape'")?
        .trim_start();
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("bad 'shape' in header")?;
    let dims = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("bad 'shape' ({shape}) in header"))?;
    if dims.is_empty() {
        return Err("a 0-dimensional array holds no rows".into());
    }
    if dims.len() > 2 {
        return Err(format!(
            "arrays of {} dimensions are not supported (one row per entity: 1 or 2)",
            dims.len()
        ));
    }
    Ok((dtype, dims, start + len))
}

/// The text after `key:` in the header.
fn after<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    let i = h.find(key)? + key.len();
    h[i..].trim_start().strip_prefix(':')
}

/// The single-quoted string after `key:`.
fn quoted_after<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    let s = after(h, key)?.trim_start().strip_prefix('\'')?;
    s.split('\'').next()
}

/// The header of a NumPy format-1.0 file (C order) holding `shape` elements of `descr`
/// (e.g. `<f4`), as `numpy.save` writes it: the data follows it directly.
pub fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

#[cfg(test)]
pub(crate) fn write(path: &std::path::Path, descr: &str, shape: &[usize], data: &[u8]) {
    let mut out = header(descr, shape);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(descr: &str, shape: &[usize], data: &[u8]) -> Result<Npy, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        write(&p, descr, shape, data);
        Npy::open(&std::fs::File::open(&p).unwrap())
    }

    #[test]
    fn reads_what_numpy_writes() {
        let f: Vec<u8> = [1.5f32, -2.0, 3.25, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = open("<f4", &[2, 3], &f).unwrap();
        assert_eq!((a.rows(), a.per_row, a.dtype), (2, 3, Dtype::F32));
        let mut v = Vec::new();
        a.floats_into(1, &mut v);
        assert_eq!(v, [4.0, 5.0, 6.0]);
        let i: Vec<u8> = [7i64, -9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = open("<i8", &[2], &i).unwrap();
        assert_eq!(a.value(1), Value::from(-9));
        // 'ab' and 'héllo' in a <U5 array (UTF-32LE, NUL-padded).
        let s: Vec<u8> = "ab\0\0\0héllo"
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        let a = open("<U5", &[2], &s).unwrap();
        assert_eq!(a.value(0), Value::from("ab"));
        assert_eq!(a.value(1), Value::from("héllo"));
        let a = open("|b1", &[3], &[1, 0, 1]).unwrap();
        assert_eq!(a.value(1), Value::Bool(false));
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        let e = |descr: &str, shape: &[usize], data: &[u8]| match open(descr, shape, data) {
            Ok(_) => panic!("{descr} {shape:?} accepted"),
            Err(e) => e,
        };
        assert!(e("<f4", &[2, 3], &[0; 20]).contains("needs 24 bytes"));
        assert!(e(">f4", &[1], &[0; 4]).contains("unsupported dtype"));
        assert!(e("|O", &[1], &[0; 8]).contains("unsupported dtype"));
        assert!(e("<f4", &[1, 2, 2], &[0; 16]).contains("3 dimensions"));
        assert!(parse_header(b"PK\x03\x04 not numpy")
            .unwrap_err()
            .contains("bad magic"));
        let mut b = b"\x93NUMPY\x01\x00\xff\xff".to_vec();
        b.extend_from_slice(&[b' '; 100]);
        assert!(parse_header(&b).unwrap_err().contains("header length"));
        let h = b"\x93NUMPY\x01\x00\x40\x00{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }          \n";
        assert!(parse_header(h).unwrap_err().contains("Fortran"));
        // A byte-order mark of more than one byte is an unsupported dtype, not a panic.
        assert!(e("\u{115}4", &[1], &[0; 4]).contains("unsupported dtype"));
        assert!(e("\u{115}", &[1], &[0; 4]).contains("unsupported dtype"));
        assert!(e("", &[1], &[0; 4]).contains("unsupported dtype"));
        // Shapes whose byte count overflows are refused, not allocated.
        let huge = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {}), }}\n",
            usize::MAX / 2,
            4
        );
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(huge.len() as u16).to_le_bytes());
        b.extend_from_slice(huge.as_bytes());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.npy");
        std::fs::write(&p, &b).unwrap();
        let e = Npy::open(&std::fs::File::open(&p).unwrap()).err().unwrap();
        assert!(e.contains("too large"), "{e}");
    }
}
