//! Memory of scalar data: the values a format-1 (or growing) segment holds against the
//! sealed typed columns of format 2, measured by counting this thread's live heap bytes.
//! `cargo test -p magpie-engine --test memory -- --nocapture` prints the figures that
//! docs/BENCHMARKS.md quotes.

use magpie_engine::column::Column;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + n));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local Cell with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            add(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        add(-(l.size() as isize));
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.with(|c| c.get())
}

/// Live heap bytes of what `make` returns (kept alive while measuring).
fn measure<T>(make: impl FnOnce() -> T) -> (T, usize) {
    let before = live();
    let t = make();
    (t, (live() - before) as usize)
}

const N: usize = 100_000;

fn per_row(label: &str, values: Vec<Vec<Value>>) -> (f64, f64) {
    let (v1, f1) = measure(|| values.clone());
    let (v2, f2) = measure(|| {
        values
            .iter()
            .map(|v| {
                // Sealing consumes this copy; only the typed column stays live.
                let mut c = Column::Values(v.clone());
                c.seal();
                c
            })
            .collect::<Vec<_>>()
    });
    // The typed columns read back the same values.
    for (a, b) in v1.iter().zip(&v2) {
        for i in (0..N).step_by(997) {
            assert_eq!(&a[i], &*b.get(i));
        }
    }
    let (a, b) = (f1 as f64 / N as f64, f2 as f64 / N as f64);
    println!(
        "{label}: values (format 1 / growing) {a:.1} B/row, typed (format 2) {b:.1} B/row, {:.1}x smaller",
        a / b
    );
    (a, b)
}

#[test]
fn typed_columns_take_at_most_a_third_of_the_memory_of_values() {
    let colors = ["red", "green", "blue", "yellow", "purple"];
    // The README quickstart: everything but id and vector lands in the dynamic field.
    let quickstart: Vec<Value> = (0..N)
        .map(|i| json!({"color": colors[i * 7 % 5], "age": (i * 37) % 90 + 5}))
        .collect();
    let (a, b) = per_row("quickstart (dynamic color, age)", vec![quickstart]);
    assert!(b * 3.0 <= a, "{b} vs {a} bytes per row");
    // A typed schema: Int64, Double, VarChar (distinct titles), Bool.
    let typed = vec![
        (0..N).map(|i| json!(i as i64 * 13 % 1000)).collect(),
        (0..N).map(|i| json!(i as f64 * 0.25)).collect(),
        (0..N).map(|i| json!(format!("item {i}"))).collect(),
        (0..N).map(|i| json!(i % 3 == 0)).collect(),
    ];
    let (a, b) = per_row("price Int64, score Double, title VarChar, ok Bool", typed);
    assert!(b * 3.0 <= a, "{b} vs {a} bytes per row");
}
