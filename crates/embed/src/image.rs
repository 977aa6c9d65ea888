//! Image decoding with limits: JPEG, PNG, WebP and GIF (first frame), EXIF orientation
//! applied. A corrupt file, an empty file, or a decompression bomb (dimensions or memory
//! beyond the limits) is an [`EmbedError`] naming the file, never a panic or an
//! out-of-memory.

use crate::{EmbedError, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// What a decode may cost.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest encoded file, bytes.
    pub max_file_bytes: u64,
    /// Largest width or height, pixels.
    pub max_side: u32,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Largest decoder allocation, bytes.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_side: 20_000,
            max_pixels: 100_000_000,
            max_alloc: 512 << 20,
        }
    }
}

/// A decoded image, upright, in RGB.
#[derive(Debug)]
pub struct Decoded {
    pub rgb: RgbImage,
    /// Encoded format ("jpeg", "png", "webp", "gif").
    pub format: &'static str,
    /// Width and height as stored, before the EXIF orientation was applied.
    pub stored_size: (u32, u32),
    /// This image's share of the process-wide decode budget, returned when it is dropped.
    _permit: Permit,
}

/// Peak bytes a decode of one pixel may hold: the decoder's RGBA output (4) plus the
/// RGB copy made from it (3), rounded up.
const BYTES_PER_PIXEL: u64 = 8;

/// The memory that decoded pixels may take in the whole process at once. Every decode
/// reserves `width × height × 8` bytes from it (read from the header, before any pixel
/// is decoded) and holds them until its [`Decoded`] is dropped; a decode that does not
/// fit waits for others to finish, and one larger than the whole budget is refused. So
/// many concurrent uploads of large images queue instead of exhausting memory.
struct Budget {
    used: parking_lot::Mutex<u64>,
    freed: parking_lot::Condvar,
    total: std::sync::atomic::AtomicU64,
}

static BUDGET: Budget = Budget {
    used: parking_lot::Mutex::new(0),
    freed: parking_lot::Condvar::new(),
    total: std::sync::atomic::AtomicU64::new(DEFAULT_DECODE_BUDGET),
};

/// Default of [`set_decode_budget`]: 1 GiB.
pub const DEFAULT_DECODE_BUDGET: u64 = 1 << 30;

/// Sets the process-wide decode memory budget in bytes (see `Budget`).
pub fn set_decode_budget(bytes: u64) {
    BUDGET
        .total
        .store(bytes.max(1 << 20), std::sync::atomic::Ordering::Relaxed);
    BUDGET.freed.notify_all();
}

/// Bytes of the decode budget held right now (for tests and metrics).
pub fn decode_budget_in_use() -> u64 {
    *BUDGET.used.lock()
}

#[derive(Debug)]
struct Permit(u64);

impl Permit {
    fn acquire(bytes: u64) -> std::result::Result<Permit, String> {
        let total = BUDGET.total.load(std::sync::atomic::Ordering::Relaxed);
        if bytes > total {
            return Err(format!(
                "decoding needs {} MB, more than the server's whole decode budget of {} MB",
                bytes >> 20,
                total >> 20
            ));
        }
        let mut used = BUDGET.used.lock();
        while *used + bytes > BUDGET.total.load(std::sync::atomic::Ordering::Relaxed) {
            BUDGET.freed.wait(&mut used);
        }
        *used += bytes;
        Ok(Permit(bytes))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *BUDGET.used.lock() -= self.0;
        BUDGET.freed.notify_all();
    }
}

fn format_name(f: image::ImageFormat) -> Option<&'static str> {
    use image::ImageFormat::*;
    Some(match f {
        Jpeg => "jpeg",
        Png => "png",
        WebP => "webp",
        Gif => "gif",
        _ => return None,
    })
}

/// Decodes `bytes`; `name` (a path or "upload") appears in every error.
pub fn decode_bytes(bytes: &[u8], name: &str, lim: &DecodeLimits) -> Result<Decoded> {
    let bad = |msg: String| EmbedError::Image {
        name: name.to_string(),
        msg,
    };
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    if bytes.len() as u64 > lim.max_file_bytes {
        return Err(bad(format!(
            "{} bytes is over the {}-byte limit",
            bytes.len(),
            lim.max_file_bytes
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let fmt = reader
        .format()
        .ok_or_else(|| bad("not a recognised image format (JPEG, PNG, WebP or GIF)".into()))?;
    let format = format_name(fmt).ok_or_else(|| {
        bad(format!(
            "{fmt:?} images are not supported; use JPEG, PNG, WebP or GIF"
        ))
    })?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(lim.max_side);
    limits.max_image_height = Some(lim.max_side);
    limits.max_alloc = Some(lim.max_alloc);
    reader.limits(limits);
    let mut dec = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(bad(format!("{w}×{h} image has no pixels")));
    }
    if w as u64 * h as u64 > lim.max_pixels {
        return Err(bad(format!(
            "{w}×{h} is over the {}-pixel limit",
            lim.max_pixels
        )));
    }
    let permit = Permit::acquire(w as u64 * h as u64 * BYTES_PER_PIXEL).map_err(bad)?;
    // An unreadable EXIF block is not fatal: the image is used as stored.
    let orientation = dec
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).map_err(|e| bad(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(Decoded {
        rgb: img.into_rgb8(),
        format,
        stored_size: (w, h),
        _permit: permit,
    })
}

/// Reads and decodes a file (size checked before reading).
pub fn decode_file(path: &Path, lim: &DecodeLimits) -> Result<Decoded> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| EmbedError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if meta.len() > lim.max_file_bytes {
        return Err(EmbedError::Image {
            name,
            msg: format!(
                "{} bytes is over the {}-byte limit",
                meta.len(),
                lim.max_file_bytes
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| EmbedError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    decode_bytes(&bytes, &name, lim)
}

/// What the image app stores about a file without decoding its pixels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageMeta {
    /// Width and height as displayed (EXIF orientation applied).
    pub width: u32,
    pub height: u32,
    /// EXIF DateTimeOriginal (else DateTime) as "YYYY-MM-DD HH:MM:SS".
    pub taken: Option<String>,
    /// EXIF GPS position in decimal degrees (latitude, longitude).
    pub gps: Option<(f64, f64)>,
    /// EXIF camera make and model, joined.
    pub camera: Option<String>,
}

impl ImageMeta {
    /// How many EXIF facts the file carries (the duplicate finder prefers richer copies).
    pub fn exif_richness(&self) -> usize {
        self.taken.is_some() as usize + self.gps.is_some() as usize + self.camera.is_some() as usize
    }
}

/// Reads an image's dimensions from its header and its EXIF block, without decoding the
/// pixels. A missing or unreadable EXIF block is not an error; an unreadable header is.
pub fn read_meta(path: &Path) -> Result<ImageMeta> {
    let name = path.display().to_string();
    let bad = |msg: String| EmbedError::Image {
        name: name.clone(),
        msg,
    };
    let io = |e: std::io::Error| EmbedError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let (mut width, mut height) = ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?
        .into_dimensions()
        .map_err(|e| bad(e.to_string()))?;
    let mut meta = ImageMeta::default();
    let file = std::fs::File::open(path).map_err(io)?;
    if let Ok(ex) = exif::Reader::new().read_from_container(&mut std::io::BufReader::new(file)) {
        use exif::{In, Tag, Value};
        let ascii = |tag: Tag| -> Option<String> {
            match &ex.get_field(tag, In::PRIMARY)?.value {
                Value::Ascii(v) => v
                    .first()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .trim()
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .filter(|s| !s.is_empty()),
                _ => None,
            }
        };
        meta.taken = ascii(Tag::DateTimeOriginal)
            .or_else(|| ascii(Tag::DateTime))
            .and_then(|d| exif_date(&d));
        let make = ascii(Tag::Make);
        let model = ascii(Tag::Model);
        meta.camera = match (make, model) {
            (Some(a), Some(b)) if b.starts_with(&a) => Some(b),
            (Some(a), Some(b)) => Some(format!("{a} {b}")),
            (a, b) => a.or(b),
        };
        let dms = |tag: Tag, reft: Tag, neg: &str| -> Option<f64> {
            let Value::Rational(v) = &ex.get_field(tag, In::PRIMARY)?.value else {
                return None;
            };
            if v.len() < 3 || v.iter().any(|r| r.denom == 0) {
                return None;
            }
            let deg = v[0].to_f64() + v[1].to_f64() / 60.0 + v[2].to_f64() / 3600.0;
            let sign = match ascii(reft) {
                Some(r) if r.eq_ignore_ascii_case(neg) => -1.0,
                _ => 1.0,
            };
            Some(sign * deg)
        };
        if let (Some(lat), Some(lon)) = (
            dms(Tag::GPSLatitude, Tag::GPSLatitudeRef, "S"),
            dms(Tag::GPSLongitude, Tag::GPSLongitudeRef, "W"),
        ) {
            meta.gps = Some((lat, lon));
        }
        if let Some(o) = ex
            .get_field(Tag::Orientation, In::PRIMARY)
            .and_then(|f| f.value.get_uint(0))
        {
            if (5..=8).contains(&o) {
                std::mem::swap(&mut width, &mut height);
            }
        }
    }
    meta.width = width;
    meta.height = height;
    Ok(meta)
}

/// "YYYY:MM:DD HH:MM:SS" (EXIF) → "YYYY-MM-DD HH:MM:SS"; None when malformed or zero.
fn exif_date(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 19
        || !b[..19].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b':' || *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
    {
        return None;
    }
    if &s[..4] == "0000" {
        return None;
    }
    Some(format!(
        "{}-{}-{}{}",
        &s[..4],
        &s[5..7],
        &s[8..10],
        &s[10..19]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb};

    fn encode(img: &RgbImage, f: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut out, f)
            .unwrap();
        out.into_inner()
    }

    fn sample(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 40) as u8, (y * 40) as u8, 200]))
    }

    #[test]
    fn decodes_each_format() {
        let img = sample(6, 4);
        for (f, name) in [
            (ImageFormat::Png, "png"),
            (ImageFormat::Jpeg, "jpeg"),
            (ImageFormat::Gif, "gif"),
            (ImageFormat::WebP, "webp"),
        ] {
            let d = decode_bytes(&encode(&img, f), "x", &DecodeLimits::default()).unwrap();
            assert_eq!(d.format, name);
            assert_eq!(d.rgb.dimensions(), (6, 4));
        }
    }

    /// A JPEG with an EXIF APP1 segment carrying orientation 6 (rotate 90° clockwise).
    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let jpeg = encode(img, ImageFormat::Jpeg);
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let img = sample(8, 2);
        let d = decode_bytes(
            &jpeg_with_orientation(&img, 6),
            "rotated.jpg",
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(d.stored_size, (8, 2));
        assert_eq!(d.rgb.dimensions(), (2, 8), "rotated upright");
        let d = decode_bytes(
            &jpeg_with_orientation(&img, 1),
            "x",
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(d.rgb.dimensions(), (8, 2));
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let lim = DecodeLimits::default();
        let e = decode_bytes(&[], "empty.png", &lim)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.png") && e.contains("empty"), "{e}");
        let png = encode(&sample(40, 40), ImageFormat::Png);
        let e = decode_bytes(&png[..png.len() / 2], "cut.png", &lim)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.png"), "{e}");
        let e = decode_bytes(b"hello, not an image", "notes.txt", &lim)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notes.txt") && e.contains("not a recognised"),
            "{e}"
        );
        // Decompression bomb: a valid PNG header claiming 60000 × 60000 pixels.
        let mut bomb = png.clone();
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode_bytes(&bomb, "bomb.png", &lim)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bomb.png") && e.contains("limit"), "{e}");
        let small = DecodeLimits {
            max_file_bytes: 10,
            ..lim
        };
        let e = decode_bytes(&png, "big.png", &small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the 10-byte limit"), "{e}");
        let e = decode_file(Path::new("/nonexistent/x.png"), &lim)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.png"), "{e}");
    }

    /// CRC-32 (PNG chunk checksum), for crafting the bomb header.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn exif_dates_are_normalised() {
        assert_eq!(
            exif_date("2021:07:04 12:30:00").as_deref(),
            Some("2021-07-04 12:30:00")
        );
        assert_eq!(exif_date("0000:00:00 00:00:00"), None);
        assert_eq!(exif_date("July 4th"), None);
    }

    /// The fixtures are written by Pillow (`tests/fixtures/exif/make.py`), a writer
    /// independent of our reader; the expected values are the ones make.py put in.
    #[test]
    fn meta_reads_exif_written_by_pillow() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exif");
        let se = read_meta(&dir.join("gps-south-east.jpg")).unwrap();
        assert_eq!(
            (se.width, se.height),
            (20, 40),
            "orientation 6 swaps the sides"
        );
        assert_eq!(se.taken.as_deref(), Some("2024-03-09 14:05:33"));
        assert_eq!(
            se.camera.as_deref(),
            Some("Canon EOS R6"),
            "make not repeated"
        );
        let (lat, lon) = se.gps.unwrap();
        assert!(
            (lat - -(33.0 + 51.0 / 60.0 + 24.6 / 3600.0)).abs() < 1e-6,
            "{lat}"
        );
        assert!(
            (lon - (151.0 + 12.0 / 60.0 + 54.4 / 3600.0)).abs() < 1e-6,
            "{lon}"
        );
        assert_eq!(se.exif_richness(), 3);
        let d = decode_file(&dir.join("gps-south-east.jpg"), &DecodeLimits::default()).unwrap();
        assert_eq!(d.rgb.dimensions(), (20, 40), "pixels rotated upright too");

        let nw = read_meta(&dir.join("gps-north-west.jpg")).unwrap();
        assert_eq!((nw.width, nw.height), (16, 16));
        assert_eq!(
            nw.taken.as_deref(),
            Some("2021-07-04 09:30:00"),
            "DateTime fallback"
        );
        assert_eq!(nw.camera.as_deref(), Some("Pixel 7"));
        let (lat, lon) = nw.gps.unwrap();
        assert!(
            (lat - (40.0 + 41.0 / 60.0 + 21.4 / 3600.0)).abs() < 1e-6,
            "{lat}"
        );
        assert!(
            (lon - -(74.0 + 2.0 / 60.0 + 40.2 / 3600.0)).abs() < 1e-6,
            "{lon}"
        );
    }

    #[test]
    fn meta_reads_dimensions_without_exif() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.png");
        image::RgbImage::new(30, 20).save(&p).unwrap();
        let m = read_meta(&p).unwrap();
        assert_eq!(
            (m.width, m.height, m.taken.clone(), m.gps),
            (30, 20, None, None)
        );
        assert_eq!(m.exif_richness(), 0);
        let bad = d.path().join("bad.jpg");
        std::fs::write(&bad, b"\xff\xd8 not really").unwrap();
        let e = read_meta(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jpg"), "{e}");
    }
}
