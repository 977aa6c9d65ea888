//! Reader for PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, enough to load a
//! state dict of dense tensors without Python.
//!
//! Layout of such a file: three small pickles (a magic number, the protocol version, a
//! dict of system info), then the pickled state dict, whose tensors are
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls with
//! storages given as persistent ids `('storage', <type>, key, location, numel)`; then a
//! pickled list of storage keys, and for each key, in that order, an int64 element count
//! followed by the raw little-endian elements.
//!
//! The pickle machine below implements the opcodes that format uses (protocol 2) plus
//! their common siblings; anything else is an error naming the opcode and its offset.

use std::collections::HashMap;

/// A tensor read from the file: shape and row-major `f32` values (integer tensors are
/// converted; state dicts only hold counters in them).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Clone, Debug)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (the file's magic number is 80 bits).
    Big(i128),
    Float,
    Str(String),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(String, String),
    /// A storage reference: (dtype name, key, element count).
    Storage(String, String, usize),
    Tensor(TensorRef),
    Mark,
}

#[derive(Clone, Debug)]
struct TensorRef {
    dtype: String,
    key: String,
    /// Elements in the whole storage (from its persistent id).
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;

struct Pickle<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Pickle<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.pos + n > self.buf.len() {
            return Err(format!("truncated at byte {}", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        let end = self.buf[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("unterminated line at byte {start}"))?;
        self.pos = start + end + 1;
        Ok(String::from_utf8_lossy(&self.buf[start..start + end]).into_owned())
    }

    /// Runs one pickle to its STOP and returns the value left on the stack.
    fn load(&mut self) -> Result<Val, String> {
        let mut stack: Vec<Val> = Vec::new();
        let mut memo: HashMap<u32, Val> = HashMap::new();
        fn pop_mark(stack: &mut Vec<Val>) -> Result<Vec<Val>, String> {
            let m = stack
                .iter()
                .rposition(|v| matches!(v, Val::Mark))
                .ok_or("no MARK on the stack")?;
            let items = stack.split_off(m + 1);
            stack.pop();
            Ok(items)
        }
        fn pop(stack: &mut Vec<Val>) -> Result<Val, String> {
            stack.pop().ok_or_else(|| "stack underflow".to_string())
        }
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return pop(&mut stack),
                b'(' => stack.push(Val::Mark),
                b'N' => stack.push(Val::None),
                0x88 => stack.push(Val::Bool(true)),
                0x89 => stack.push(Val::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    stack.push(Val::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    stack.push(Val::Int(v))
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    stack.push(Val::Int(v))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 16 {
                        return Err(format!("integer of {n} bytes at byte {at}"));
                    }
                    let mut v: i128 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    stack.push(match i64::try_from(v) {
                        Ok(v) => Val::Int(v),
                        Err(_) => Val::Big(v),
                    })
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    let _ = v;
                    stack.push(Val::Float)
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    stack.push(Val::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    stack.push(Val::Str(s))
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    stack.push(Val::Str(s))
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    stack.push(Val::Str(s))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    stack.push(Val::Global(module, name))
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = pop(&mut stack)?;
                    let module = pop(&mut stack)?;
                    match (module, name) {
                        (Val::Str(m), Val::Str(n)) => stack.push(Val::Global(m, n)),
                        _ => return Err(format!("STACK_GLOBAL without names at byte {at}")),
                    }
                }
                b')' => stack.push(Val::Tuple(Vec::new())),
                b']' => stack.push(Val::List(Vec::new())),
                b'}' => stack.push(Val::Dict(Vec::new())),
                b't' => {
                    let items = pop_mark(&mut stack)?;
                    stack.push(Val::Tuple(items))
                }
                b'l' => {
                    let items = pop_mark(&mut stack)?;
                    stack.push(Val::List(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Val::Tuple(items))
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
                }
                b'r' => {
                    let k = self.u32()?;
                    memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
                }
                0x94 => {
                    let k = memo.len() as u32;
                    memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    stack.push(memo.get(&k).cloned().ok_or("unknown memo key")?)
                }
                b'j' => {
                    let k = self.u32()?;
                    stack.push(memo.get(&k).cloned().ok_or("unknown memo key")?)
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Val::List(l)) => l.push(v),
                        _ => return Err(format!("APPEND to a non-list at byte {at}")),
                    }
                }
                b'e' => {
                    let items = pop_mark(&mut stack)?;
                    match stack.last_mut() {
                        Some(Val::List(l)) => l.extend(items),
                        _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                    }
                }
                b's' => {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Val::Dict(d)) => d.push((k, v)),
                        _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                    }
                }
                b'u' => {
                    let items = pop_mark(&mut stack)?;
                    if items.len() % 2 != 0 {
                        return Err(format!("SETITEMS with an odd count at byte {at}"));
                    }
                    match stack.last_mut() {
                        Some(Val::Dict(d)) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        _ => return Err(format!("SETITEMS on a non-dict at byte {at}")),
                    }
                }
                b'b' => {
                    // BUILD: object state (e.g. the state dict's `_metadata`); not needed.
                    pop(&mut stack)?;
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    stack.push(persistent(pid).map_err(|e| format!("{e} at byte {at}"))?)
                }
                b'R' | 0x81 => {
                    let args = pop(&mut stack)?;
                    let f = pop(&mut stack)?;
                    stack.push(reduce(f, args).map_err(|e| format!("{e} at byte {at}"))?)
                }
                _ => return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
            }
        }
    }
}

fn as_int(v: &Val) -> Result<i64, String> {
    match v {
        Val::Int(i) => Ok(*i),
        Val::Bool(b) => Ok(*b as i64),
        _ => Err(format!("expected an integer, got {v:?}")),
    }
}

fn as_usizes(v: &Val) -> Result<Vec<usize>, String> {
    match v {
        Val::Tuple(t) | Val::List(t) => t
            .iter()
            .map(|x| as_int(x).and_then(|i| usize::try_from(i).map_err(|e| e.to_string())))
            .collect(),
        _ => Err(format!("expected a tuple of integers, got {v:?}")),
    }
}

fn persistent(pid: Val) -> Result<Val, String> {
    let Val::Tuple(t) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match t.as_slice() {
        [Val::Str(tag), Val::Global(_, dtype), Val::Str(key), _loc, n, ..] if tag == "storage" => {
            Ok(Val::Storage(
                dtype.clone(),
                key.clone(),
                as_int(n)? as usize,
            ))
        }
        _ => Err(format!("unsupported persistent id {t:?}")),
    }
}

fn reduce(f: Val, args: Val) -> Result<Val, String> {
    let Val::Global(module, name) = &f else {
        return Err(format!("call of a non-global {f:?}"));
    };
    let Val::Tuple(a) = args else {
        return Err("call arguments are not a tuple".into());
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Val::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let (Some(Val::Storage(dtype, key, numel)), Some(off), Some(size), Some(stride)) =
                (a.first(), a.get(1), a.get(2), a.get(3))
            else {
                return Err(format!("unexpected {name} arguments"));
            };
            Ok(Val::Tensor(TensorRef {
                dtype: dtype.clone(),
                key: key.clone(),
                numel: *numel,
                offset: as_int(off)? as usize,
                size: as_usizes(size)?,
                stride: as_usizes(stride)?,
            }))
        }
        _ => Err(format!("unsupported call {module}.{name}")),
    }
}

fn elem_size(dtype: &str) -> Result<usize, String> {
    Ok(match dtype {
        "FloatStorage" | "IntStorage" => 4,
        "LongStorage" | "DoubleStorage" => 8,
        "HalfStorage" | "ShortStorage" | "BFloat16Storage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        _ => return Err(format!("unsupported storage type {dtype}")),
    })
}

fn to_f32(dtype: &str, raw: &[u8]) -> Result<Vec<f32>, String> {
    Ok(match dtype {
        "FloatStorage" => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "DoubleStorage" => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "LongStorage" => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "IntStorage" => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        _ => return Err(format!("unsupported storage type {dtype} for f32")),
    })
}

/// Parses a legacy `torch.save` state dict. Errors are messages; the caller adds the
/// file's path.
pub fn read_legacy_state_dict(buf: &[u8]) -> Result<Vec<(String, TensorF32)>, String> {
    let mut p = Pickle { buf, pos: 0 };
    let magic = p.load()?;
    match magic {
        Val::Big(m) if m as u128 == LEGACY_MAGIC => {}
        _ => {
            if buf.starts_with(b"PK") {
                return Err("this is a zip-format torch file, not the legacy format".into());
            }
            return Err("not a legacy torch.save file (bad magic number)".into());
        }
    }
    let _protocol = p.load()?;
    let _sys = p.load()?;
    let Val::Dict(entries) = p.load()? else {
        return Err("the saved object is not a state dict".into());
    };
    let Val::List(keys) = p.load()? else {
        return Err("missing the storage key list".into());
    };
    // The storages follow in key order: an int64 element count, then the raw data.
    let mut dtypes: HashMap<String, (String, usize)> = HashMap::new();
    for (_, v) in &entries {
        if let Val::Tensor(t) = v {
            dtypes.insert(t.key.clone(), (t.dtype.clone(), t.numel));
        }
    }
    let mut storages: HashMap<String, Vec<f32>> = HashMap::new();
    for k in keys {
        let Val::Str(k) = k else {
            return Err("storage key is not a string".into());
        };
        let n = u64::from_le_bytes(p.take(8)?.try_into().unwrap()) as usize;
        let (dtype, want) = dtypes
            .get(&k)
            .ok_or_else(|| format!("storage {k} is not used by any tensor"))?;
        if n != *want {
            return Err(format!(
                "storage {k} holds {n} elements, its header says {want}"
            ));
        }
        let bytes = n
            .checked_mul(elem_size(dtype)?)
            .ok_or("storage size overflows")?;
        let raw = p.take(bytes)?;
        storages.insert(k, to_f32(dtype, raw)?);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let (Val::Str(name), Val::Tensor(t)) = (k, v) else {
            continue;
        };
        let s = storages
            .get(&t.key)
            .ok_or_else(|| format!("{name}: storage {} is missing", t.key))?;
        if t.stride.len() != t.size.len() {
            return Err(format!("{name}: stride and size ranks differ"));
        }
        // A weight has no more elements than its storage holds (no broadcast views):
        // this bounds the allocation below by the file's size (an unchecked product of
        // the sizes once asked for 9.9 GB; found by fuzzing).
        let numel = t
            .size
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= s.len())
            .ok_or_else(|| {
                format!(
                    "{name}: shape {:?} has more elements than its storage ({})",
                    t.size,
                    s.len()
                )
            })?;
        // Gather through the strides (contiguous tensors are the common case).
        let mut data = Vec::with_capacity(numel);
        let mut idx = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let off = idx
                .iter()
                .zip(&t.stride)
                .fold(t.offset, |a, (i, s)| a.saturating_add(i.saturating_mul(*s)));
            data.push(
                *s.get(off)
                    .ok_or_else(|| format!("{name}: element {off} is outside its storage"))?,
            );
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out.push((
            name,
            TensorF32 {
                shape: t.size,
                data,
            },
        ));
    }
    Ok(out)
}

/// Writes a legacy torch file the way `torch.save` (protocol 2) lays it out, for
/// tensors of f32 data: the inverse of [`read_legacy_state_dict`], for tests and fuzz
/// seeds.
pub fn write_legacy_state_dict(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    let mut b = Vec::new();
    let long1 = |b: &mut Vec<u8>, v: u128| {
        let bytes = v.to_le_bytes();
        let mut n = 16;
        while n > 1 && bytes[n - 1] == 0 {
            n -= 1;
        }
        if bytes[n - 1] & 0x80 != 0 {
            n += 1;
        }
        b.extend([0x80, 2, 0x8a, n as u8]);
        b.extend(&bytes[..n]);
        b.push(b'.');
    };
    long1(&mut b, LEGACY_MAGIC);
    b.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']); // protocol 1001
    b.extend([0x80, 2, b'}', b'.']); // sys info
    b.extend([0x80, 2, b'c']);
    b.extend(b"collections\nOrderedDict\n");
    b.extend([b')', b'R', b'(']);
    let s = |b: &mut Vec<u8>, x: &str| {
        b.push(b'X');
        b.extend((x.len() as u32).to_le_bytes());
        b.extend(x.as_bytes());
    };
    for (i, (name, shape, _)) in tensors.iter().enumerate() {
        s(&mut b, name);
        b.push(b'c');
        b.extend(b"torch._utils\n_rebuild_tensor_v2\n");
        b.extend([b'(', b'(']);
        s(&mut b, "storage");
        b.push(b'c');
        b.extend(b"torch\nFloatStorage\n");
        s(&mut b, &format!("k{i}"));
        s(&mut b, "cpu");
        b.extend([b'J']);
        b.extend((shape.iter().product::<usize>() as u32).to_le_bytes());
        b.extend([b'N', b't', b'Q', b'K', 0, b'(']);
        for d in shape.iter() {
            b.extend([b'J']);
            b.extend((*d as u32).to_le_bytes());
        }
        b.extend([b't', b'(']);
        let mut st = 1usize;
        let mut strides = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            strides[d] = st;
            st *= shape[d];
        }
        for d in strides {
            b.extend([b'J']);
            b.extend((d as u32).to_le_bytes());
        }
        b.extend([b't', 0x89, b'c']);
        b.extend(b"collections\nOrderedDict\n");
        b.extend([b')', b'R', b't', b'R']);
    }
    b.extend([b'u', b'.']);
    b.extend([0x80, 2, b'(']);
    for i in 0..tensors.len() {
        s(&mut b, &format!("k{i}"));
    }
    b.extend([b'l', b'.']);
    for (_, _, data) in tensors {
        b.extend((data.len() as u64).to_le_bytes());
        for x in data.iter() {
            b.extend(x.to_le_bytes());
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_legacy_state_dict() {
        let file = write_legacy_state_dict(&[
            ("a.weight", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("b", &[1], &[-0.5]),
        ]);
        let sd = read_legacy_state_dict(&file).unwrap();
        assert_eq!(sd.len(), 2);
        assert_eq!(sd[0].0, "a.weight");
        assert_eq!(sd[0].1.shape, vec![2, 3]);
        assert_eq!(sd[0].1.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(sd[1].1.data, vec![-0.5]);
    }

    #[test]
    fn rejects_bad_files_with_a_reason() {
        assert!(read_legacy_state_dict(b"")
            .unwrap_err()
            .contains("truncated"));
        assert!(read_legacy_state_dict(b"PK\x03\x04....")
            .unwrap_err()
            .contains("opcode"));
        let mut f = write_legacy_state_dict(&[("w", &[4], &[1.0, 2.0, 3.0, 4.0])]);
        f.truncate(f.len() - 3);
        let e = read_legacy_state_dict(&f).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // Not the magic number.
        let e = read_legacy_state_dict(&[0x80, 2, b'K', 7, b'.']).unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }
}
