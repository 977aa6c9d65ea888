//! Readers for vector files: .fvecs (per vector an int32 dimension then float32s) and
//! NumPy .npy (2-D little-endian float32, C order).

use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn read_fvecs(path: &Path) -> Result<(usize, Vec<f32>)> {
    let b = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if b.len() < 4 {
        bail!("{}: empty or truncated .fvecs file", path.display());
    }
    let dim = i32::from_le_bytes(b[0..4].try_into().unwrap());
    if dim <= 0 || dim > 32768 {
        bail!(
            "{}: invalid dimension {dim} in the first record",
            path.display()
        );
    }
    let dim = dim as usize;
    let rec = 4 + dim * 4;
    if b.len() % rec != 0 {
        bail!(
            "{}: size {} is not a multiple of the record size {rec} (dim {dim})",
            path.display(),
            b.len()
        );
    }
    let mut out = Vec::with_capacity(b.len() / rec * dim);
    for (i, r) in b.chunks_exact(rec).enumerate() {
        if i32::from_le_bytes(r[0..4].try_into().unwrap()) as usize != dim {
            bail!("{}: record {i} has a different dimension", path.display());
        }
        out.extend(
            r[4..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        );
    }
    Ok((dim, out))
}

pub fn read_npy(path: &Path) -> Result<(usize, Vec<f32>)> {
    let b = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if b.len() < 10 || &b[0..6] != b"\x93NUMPY" {
        bail!("{}: not a .npy file", path.display());
    }
    let (hlen, hstart) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                bail!("{}: truncated header", path.display());
            }
            (
                u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
                12,
            )
        }
        v => bail!("{}: unsupported .npy version {v}", path.display()),
    };
    let header = std::str::from_utf8(b.get(hstart..hstart + hlen).context("truncated header")?)?;
    if !header.contains("'descr': '<f4'") {
        bail!(
            "{}: only little-endian float32 arrays are supported (header: {header})",
            path.display()
        );
    }
    if header.contains("'fortran_order': True") {
        bail!(
            "{}: Fortran-ordered arrays are not supported",
            path.display()
        );
    }
    let shape = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .context("no shape in header")?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    if dims.len() != 2 {
        bail!(
            "{}: expected a 2-D array, got shape {dims:?}",
            path.display()
        );
    }
    let data = &b[hstart + hlen..];
    if data.len() != dims[0] * dims[1] * 4 {
        bail!(
            "{}: data size does not match shape {dims:?}",
            path.display()
        );
    }
    Ok((
        dims[1],
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fvecs_and_npy_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.fvecs");
        let mut b = Vec::new();
        for i in 0..3 {
            b.extend_from_slice(&2i32.to_le_bytes());
            b.extend_from_slice(&(i as f32).to_le_bytes());
            b.extend_from_slice(&(i as f32 + 0.5).to_le_bytes());
        }
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            read_fvecs(&p).unwrap(),
            (2, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
        );
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        assert!(read_fvecs(&p).unwrap_err().to_string().contains("multiple"));
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        for i in 0..6 {
            npy.extend_from_slice(&(i as f32).to_le_bytes());
        }
        let p = d.path().join("a.npy");
        std::fs::write(&p, &npy).unwrap();
        assert_eq!(
            read_npy(&p).unwrap(),
            (3, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
        );
    }
}
