//! The process-wide decode memory budget (its own test binary, since the budget is
//! global): decodes beyond it wait, and one image larger than all of it is refused.

use image::{DynamicImage, ImageFormat, RgbImage};
use magpie_embed::image::{decode_budget_in_use, decode_bytes, set_decode_budget, DecodeLimits};
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(RgbImage::new(w, h))
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn decodes_share_one_memory_budget() {
    let lim = DecodeLimits::default();
    // 512×512 reserves 2 MiB (8 bytes a pixel); the budget holds one such decode.
    set_decode_budget(3 << 20);
    let img = png(512, 512);
    let first = decode_bytes(&img, "a.png", &lim).unwrap();
    assert_eq!(decode_budget_in_use(), 2 << 20);
    // A second decode waits until the first image is dropped.
    let done = Arc::new(AtomicBool::new(false));
    let t = {
        let (img, done) = (img.clone(), done.clone());
        std::thread::spawn(move || {
            let d = decode_bytes(&img, "b.png", &DecodeLimits::default()).unwrap();
            done.store(true, Ordering::SeqCst);
            drop(d);
        })
    };
    // Bounded wait for the second thread to block (it cannot finish while `first` lives).
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !done.load(Ordering::SeqCst),
        "second decode ran over the budget"
    );
    drop(first);
    t.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(decode_budget_in_use(), 0);
    // An image needing more than the whole budget is refused at once, naming the budget.
    let big = png(1024, 1024);
    let e = decode_bytes(&big, "big.png", &lim).unwrap_err().to_string();
    assert!(
        e.contains("big.png") && e.contains("decode budget of 3 MB"),
        "{e}"
    );
    assert_eq!(decode_budget_in_use(), 0);
}
