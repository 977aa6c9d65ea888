//! Plain-words descriptions of flat graphics (flags, logos, icons) read off their
//! pixels: the colours, horizontal or vertical bands and stripes, and the shapes a
//! person would name first (a circle, stars, a canton, a cross, a triangle at the
//! hoist). The demo's flags get such a description in their caption, next to the
//! country's name, so that text search can find a flag by what it looks like ("red
//! circle on white", "stars and stripes") and not only by the name.
//!
//! **How it reads an image.** Every pixel is named by its hue, saturation and value
//! ([`Colour::of`]); pixels mostly transparent are left out. Connected areas of one
//! name (4-connectivity) are the regions. Then:
//! - *bands*: when 90 % of the rows (over the right half, beyond a canton) are one
//!   colour each, the runs of row colours from top to bottom are horizontal bands (2–4)
//!   or stripes (5 or more); the same with columns over the full height for vertical
//!   bands;
//! - *shapes*, from a region's bounding box and how much of it the region fills: a
//!   round region inside the image that fills π/4 of its box is a circle; one that fills
//!   a quarter to a half of a square-ish box is a star (a five-pointed star fills
//!   about a third), as are groups of five or more small specks of one colour; a
//!   region in the top-left corner is a canton; one that reaches all four edges through
//!   a full row and a full column is a cross, through the corners only a diagonal cross;
//!   one on the hoist side reaching top and bottom that fills about half its box is a
//!   triangle.
//!
//! The rules are thresholds, not a learned model: they name what is plainly there on
//! flat colours and say nothing of photos (a photo's description is its colours only).

use image::RgbaImage;
use std::fmt::Write;

/// Writes a caption file (`<stem>.txt`, see [`crate::images`]) beside every image
/// directly in `dir` that has none: `title(stem)` when it gives one (e.g. "Flag of
/// Japan."), then [`describe`] of the image. Returns how many were written; images that
/// cannot be decoded are passed over (indexing reports them).
pub fn write_captions(
    dir: &std::path::Path,
    title: &dyn Fn(&str) -> Option<String>,
) -> std::io::Result<usize> {
    let mut n = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    crate::images::EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())
                })
        })
        .collect();
    files.sort();
    for p in files {
        let txt = p.with_extension("txt");
        if txt.exists() {
            continue;
        }
        let Ok(img) = image::open(&p) else { continue };
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let mut caption = title(stem).unwrap_or_default();
        let d = describe(&img);
        if !caption.is_empty() && !d.is_empty() {
            caption.push(' ');
        }
        caption.push_str(&d);
        std::fs::write(&txt, caption + "\n")?;
        n += 1;
    }
    Ok(n)
}

/// The colour names pixels get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Maroon,
    Orange,
    Brown,
    Yellow,
    Green,
    LightBlue,
    Blue,
    Purple,
    Pink,
    White,
    Grey,
    Black,
}

const COLOURS: usize = 13;
const ALL: [Colour; COLOURS] = [
    Colour::Red,
    Colour::Maroon,
    Colour::Orange,
    Colour::Brown,
    Colour::Yellow,
    Colour::Green,
    Colour::LightBlue,
    Colour::Blue,
    Colour::Purple,
    Colour::Pink,
    Colour::White,
    Colour::Grey,
    Colour::Black,
];
const NONE: u8 = u8::MAX;

impl Colour {
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Maroon => "maroon",
            Colour::Orange => "orange",
            Colour::Brown => "brown",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::LightBlue => "light blue",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::White => "white",
            Colour::Grey => "grey",
            Colour::Black => "black",
        }
    }

    /// The name of an sRGB colour, by hue, saturation and value (HSV).
    pub fn of(r: u8, g: u8, b: u8) -> Colour {
        let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let v = max;
        let s = if max > 0.0 { (max - min) / max } else { 0.0 };
        if v < 0.2 {
            return Colour::Black;
        }
        if s < 0.2 {
            return if v > 0.75 {
                Colour::White
            } else if v > 0.4 {
                Colour::Grey
            } else {
                Colour::Black
            };
        }
        let d = max - min;
        let mut h = if max == r {
            60.0 * ((g - b) / d)
        } else if max == g {
            60.0 * ((b - r) / d + 2.0)
        } else {
            60.0 * ((r - g) / d + 4.0)
        };
        if h < 0.0 {
            h += 360.0;
        }
        match h {
            h if !(14.0..335.0).contains(&h) => {
                if v < 0.5 {
                    Colour::Maroon
                } else {
                    Colour::Red
                }
            }
            h if h < 42.0 => {
                if v < 0.6 {
                    Colour::Brown
                } else {
                    Colour::Orange
                }
            }
            h if h < 70.0 => Colour::Yellow,
            h if h < 170.0 => Colour::Green,
            h if h < 200.0 => Colour::LightBlue,
            h if h < 255.0 => {
                if v > 0.75 && s < 0.62 {
                    Colour::LightBlue
                } else {
                    Colour::Blue
                }
            }
            h if h < 290.0 => Colour::Purple,
            _ => Colour::Pink,
        }
    }
}

/// One connected region of a colour.
#[derive(Debug, Clone)]
struct Region {
    colour: Colour,
    area: usize,
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    /// Left, right, top, bottom edge touched.
    edges: [bool; 4],
    /// Most pixels of the region in one row / one column.
    widest_row: usize,
    tallest_col: usize,
    /// Area over the area of the convex hull (1 for convex shapes, about 0.47 for a
    /// five-pointed star).
    solidity: f32,
    /// Pixels of the region on the left, right, top and bottom pixel lines.
    edge_cover: [usize; 4],
    /// Rows (columns) that the region fills across 95 % of its box.
    full_rows: usize,
    full_cols: usize,
}

impl Region {
    fn w(&self) -> usize {
        self.x1 - self.x0 + 1
    }
    fn h(&self) -> usize {
        self.y1 - self.y0 + 1
    }
    fn fill(&self) -> f32 {
        self.area as f32 / (self.w() * self.h()) as f32
    }
    fn aspect(&self) -> f32 {
        self.w() as f32 / self.h() as f32
    }
    fn inside(&self) -> bool {
        !self.edges.iter().any(|&e| e)
    }
}

/// The largest image side a description reads; larger images are scaled down first,
/// so the work is bounded whatever the input.
const MAX_SIDE: u32 = 512;

/// A description of `img` in a few short sentences (see the module docs); empty when
/// the image is empty or fully transparent.
pub fn describe(img: &image::DynamicImage) -> String {
    let img = if img.width().max(img.height()) > MAX_SIDE {
        img.resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle)
    } else {
        img.clone()
    };
    describe_rgba(&img.to_rgba8())
}

fn describe_rgba(img: &RgbaImage) -> String {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return String::new();
    }
    let mut label = vec![NONE; w * h];
    let mut counts = [0usize; COLOURS];
    for (i, p) in img.pixels().enumerate() {
        if p[3] < 128 {
            continue;
        }
        let c = Colour::of(p[0], p[1], p[2]);
        label[i] = c as u8;
        counts[c as usize] += 1;
    }
    let total: usize = counts.iter().sum();
    if total == 0 {
        return String::new();
    }
    let regions = regions(&label, w, h);
    let mut out = String::new();

    // Colours, most area first.
    let mut cols: Vec<(Colour, usize)> = ALL
        .iter()
        .map(|&c| (c, counts[c as usize]))
        .filter(|&(_, n)| n * 100 >= total * 3)
        .collect();
    cols.sort_by_key(|c| std::cmp::Reverse(c.1));
    let names: Vec<&str> = cols.iter().map(|(c, _)| c.name()).collect();
    let _ = write!(out, "{}.", capitalise(&list(&names)));

    let area = w * h;
    // Crosses: through all four edges, by a full row and a full column (upright) or by
    // the corners (diagonal).
    let mut crosses = String::new();
    for r in &regions {
        // A cross covers a part of each edge (its arms); a border covers whole edges.
        let arms = r.edge_cover[0] * 2 < h
            && r.edge_cover[1] * 2 < h
            && r.edge_cover[2] * 2 < w
            && r.edge_cover[3] * 2 < w;
        if r.edges.iter().all(|&e| e) && arms && r.area * 2 <= area && r.fill() < 0.6 {
            if r.widest_row * 10 >= w * 9 && r.tallest_col * 10 >= h * 9 {
                let _ = write!(crosses, " {} cross.", cap_a(r.colour.name()));
            } else if corners(&label, w, h, r.colour) {
                let _ = write!(
                    crosses,
                    " {} diagonal cross (saltire).",
                    cap_a(r.colour.name())
                );
            }
        }
    }
    let mut banded = false;
    if crosses.is_empty() {
        let hbands = bands(&label, w, h, true, (h / 40).max(1));
        let vbands = bands(&label, w, h, false, (w / 40).max(1));
        if let Some(b) = hbands.filter(|b| b.len() >= 2) {
            let _ = write!(out, " {}", band_words(&b, "horizontal"));
            banded = true;
        } else if let Some(b) = vbands.filter(|b| b.len() >= 2) {
            let _ = write!(out, " {}", band_words(&b, "vertical"));
            banded = true;
        }
    }
    out.push_str(&crosses);

    // The field: the largest region reaching three edges or more that fills most of
    // its box (what is not the shapes on it).
    let field = regions
        .iter()
        .filter(|r| {
            r.edges.iter().filter(|&&e| e).count() >= 3
                && r.area * 10 >= area * 3
                && r.fill() >= 0.6
        })
        .max_by_key(|r| r.area)
        .filter(|_| !banded);
    // What a shape lies on: the colour around its box, named as the field when it is.
    let on = |out: &mut String, what: &str, r: &Region| match surround(&label, w, h, r) {
        Some(c) if field.is_some_and(|f| f.colour == c) => {
            let _ = write!(out, " {} on {} field.", cap_a(what), a(c.name()));
        }
        Some(c) if c != r.colour => {
            let _ = write!(out, " {} on {}.", cap_a(what), c.name());
        }
        _ => {
            let _ = write!(out, " {}.", cap_a(what));
        }
    };

    // Cantons: a block in the top-left corner (not the quarters of a cross).
    if crosses.is_empty() {
        for r in &regions {
            if r.edges[0]
                && r.edges[2]
                && !r.edges[1]
                && !r.edges[3]
                && r.w() * 10 <= w * 6
                && r.h() * 10 <= h * 7
                && r.area * 100 >= area * 4
                && r.fill() >= 0.5
            {
                let _ = write!(out, " {} canton.", cap_a(r.colour.name()));
            }
        }
    }
    // Triangles at the hoist (left edge), top to bottom.
    for r in &regions {
        if r.edges[0]
            && r.edges[2]
            && r.edges[3]
            && !r.edges[1]
            && r.w() * 10 <= w * 6
            && r.w() * 20 >= w * 3
            && (0.35..=0.65).contains(&r.fill())
        {
            let _ = write!(out, " {} triangle at the hoist.", cap_a(r.colour.name()));
        }
    }
    // Shapes inside the image.
    let mut stars: Vec<(Colour, usize, &Region)> = Vec::new();
    let mut specks = [0usize; COLOURS];
    for r in regions.iter().filter(|r| r.inside()) {
        let squareish = (0.7..=1.4).contains(&r.aspect());
        if !squareish {
            continue;
        }
        let big = r.area * 100 >= area * 2;
        if big && (0.68..=0.86).contains(&r.fill()) && r.solidity >= 0.9 {
            on(&mut out, &format!("{} circle", r.colour.name()), r);
        } else if big
            && r.full_rows * 7 >= r.h()
            && r.full_cols * 7 >= r.w()
            && r.fill() < 0.75
            && r.solidity < 0.8
        {
            // Full width and full height through the middle: a plus-shaped cross.
            on(&mut out, &format!("{} cross", r.colour.name()), r);
        } else if r.area >= 40
            && (0.35..=0.66).contains(&r.solidity)
            && (0.2..=0.6).contains(&r.fill())
        {
            match stars.iter_mut().find(|(c, _, _)| *c == r.colour) {
                Some((_, n, _)) => *n += 1,
                None => stars.push((r.colour, 1, r)),
            }
        } else if (4..40).contains(&r.area) {
            specks[r.colour as usize] += 1;
        }
    }
    for (c, n, r) in &stars {
        if *n == 1 {
            on(&mut out, &format!("{} star", c.name()), r);
        } else {
            let _ = write!(out, " {} {} stars.", capitalise(number(*n)), c.name());
        }
    }
    for c in ALL {
        if specks[c as usize] >= 5 && !stars.iter().any(|(s, _, _)| *s == c) {
            let _ = write!(out, " Many small {} stars.", c.name());
        }
    }
    out
}

/// The runs of row (or column) colours when 90 % of the rows (columns) are one colour
/// each. Runs
/// shorter than `min_run` (anti-aliased edges, thin fimbriations) are left out.
fn bands(label: &[u8], w: usize, h: usize, rows: bool, min_run: usize) -> Option<Vec<Colour>> {
    // Rows are read over the right 40 % (past a canton or a central emblem), columns
    // over the top and bottom fifths (past a central emblem).
    let n = if rows { h } else { w };
    let span: Vec<usize> = if rows {
        (w * 6 / 10..w).collect()
    } else {
        (0..h / 5).chain(h - h / 5..h).collect()
    };
    let len = span.len().max(1);
    let mut runs: Vec<(u8, usize)> = Vec::new();
    let mut pure = 0;
    for i in 0..n {
        let mut count = [0usize; COLOURS + 1];
        for &j in &span {
            let l = if rows {
                label[i * w + j]
            } else {
                label[j * w + i]
            };
            count[(l as usize).min(COLOURS)] += 1;
        }
        let (best, m) = count[..COLOURS]
            .iter()
            .enumerate()
            .max_by_key(|(_, &c)| c)
            .map(|(i, &c)| (i as u8, c))
            .unwrap();
        if m * 100 < len * 95 {
            continue;
        }
        pure += 1;
        match runs.last_mut() {
            Some((c, k)) if *c == best => *k += 1,
            _ => runs.push((best, 1)),
        }
    }
    if pure * 10 < n * 9 {
        return None;
    }
    let mut out: Vec<Colour> = Vec::new();
    for (c, k) in runs {
        if k < min_run {
            continue;
        }
        let c = ALL[c as usize];
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
    Some(out)
}

fn band_words(b: &[Colour], dir: &str) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for c in b {
        if !distinct.contains(&c.name()) {
            distinct.push(c.name());
        }
    }
    // Stripes alternate two colours; other runs of five or more are bands.
    if b.len() >= 5 && distinct.len() == 2 {
        format!(
            "{} {dir} stripes of {}.",
            capitalise(number(b.len())),
            list(&distinct)
        )
    } else {
        let names: Vec<&str> = b.iter().map(|c| c.name()).collect();
        format!(
            "{} {dir} bands: {}.",
            capitalise(number(b.len())),
            list(&names)
        )
    }
}

/// The most common colour on a ring two pixels outside `r`'s box, if the box is not at
/// the image's edge.
fn surround(label: &[u8], w: usize, h: usize, r: &Region) -> Option<Colour> {
    if r.x0 < 2 || r.y0 < 2 || r.x1 + 2 >= w || r.y1 + 2 >= h {
        return None;
    }
    let mut count = [0usize; COLOURS];
    let (x0, x1, y0, y1) = (r.x0 - 2, r.x1 + 2, r.y0 - 2, r.y1 + 2);
    let mut add = |x: usize, y: usize| {
        let l = label[y * w + x];
        if l != NONE {
            count[l as usize] += 1;
        }
    };
    for x in x0..=x1 {
        add(x, y0);
        add(x, y1);
    }
    for y in y0..=y1 {
        add(x0, y);
        add(x1, y);
    }
    let (best, n) = count.iter().enumerate().max_by_key(|(_, &n)| n)?;
    (*n > 0).then_some(ALL[best])
}

/// Whether each corner of the image has a pixel of `c` within a few pixels.
fn corners(label: &[u8], w: usize, h: usize, c: Colour) -> bool {
    let m = (w.min(h) / 25).max(3).min(w.min(h));
    let near = |xs: std::ops::Range<usize>, ys: std::ops::Range<usize>| {
        ys.clone()
            .any(|y| xs.clone().any(|x| label[y * w + x] == c as u8))
    };
    near(0..m, 0..m) && near(w - m..w, 0..m) && near(0..m, h - m..h) && near(w - m..w, h - m..h)
}

fn regions(label: &[u8], w: usize, h: usize) -> Vec<Region> {
    let mut seen = vec![false; label.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let mut row_n = vec![0usize; h];
    let mut col_n = vec![0usize; w];
    let mut row_min = vec![usize::MAX; h];
    let mut row_max = vec![0usize; h];
    for start in 0..label.len() {
        if seen[start] || label[start] == NONE {
            continue;
        }
        let l = label[start];
        let mut r = Region {
            colour: ALL[l as usize],
            area: 0,
            x0: usize::MAX,
            y0: usize::MAX,
            x1: 0,
            y1: 0,
            edges: [false; 4],
            widest_row: 0,
            tallest_col: 0,
            solidity: 1.0,
            edge_cover: [0; 4],
            full_rows: 0,
            full_cols: 0,
        };
        let mut touched_rows = Vec::new();
        let mut touched_cols = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            r.area += 1;
            r.x0 = r.x0.min(x);
            r.x1 = r.x1.max(x);
            r.y0 = r.y0.min(y);
            r.y1 = r.y1.max(y);
            if row_n[y] == 0 {
                touched_rows.push(y);
            }
            row_n[y] += 1;
            if col_n[x] == 0 {
                touched_cols.push(x);
            }
            col_n[x] += 1;
            row_min[y] = row_min[y].min(x);
            row_max[y] = row_max[y].max(x);
            let mut push = |j: usize| {
                if !seen[j] && label[j] == l {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
        }
        // An edge is touched within a margin (anti-aliased borders).
        let (mx, my) = ((w / 100).max(2), (h / 100).max(2));
        r.edges = [r.x0 < mx, r.x1 + mx >= w, r.y0 < my, r.y1 + my >= h];
        r.edge_cover = [col_n[0], col_n[w - 1], row_n[0], row_n[h - 1]];
        let mut pts = Vec::with_capacity(4 * touched_rows.len());
        for &y in &touched_rows {
            r.widest_row = r.widest_row.max(row_n[y]);
            r.full_rows += (row_n[y] * 20 >= (r.x1 - r.x0 + 1) * 19) as usize;
            row_n[y] = 0;
            let (a, b) = (row_min[y] as f32, row_max[y] as f32 + 1.0);
            pts.extend([
                (a, y as f32),
                (a, y as f32 + 1.0),
                (b, y as f32),
                (b, y as f32 + 1.0),
            ]);
            row_min[y] = usize::MAX;
            row_max[y] = 0;
        }
        let hull = hull_area(&mut pts);
        if hull > 0.0 {
            r.solidity = (r.area as f32 / hull).min(1.0);
        }
        for x in touched_cols {
            r.tallest_col = r.tallest_col.max(col_n[x]);
            r.full_cols += (col_n[x] * 20 >= (r.y1 - r.y0 + 1) * 19) as usize;
            col_n[x] = 0;
        }
        out.push(r);
    }
    out
}

/// The area of the convex hull of `pts` (Andrew's monotone chain, then the shoelace
/// formula).
fn hull_area(pts: &mut [(f32, f32)]) -> f32 {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let cross = |o: (f32, f32), a: (f32, f32), b: (f32, f32)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f32, f32)> = Vec::with_capacity(pts.len() + 1);
    for pass in 0..2 {
        let start = hull.len();
        let it: Box<dyn Iterator<Item = &(f32, f32)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in it {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    let n = hull.len();
    if n < 3 {
        return 0.0;
    }
    (0..n)
        .map(|i| {
            let (a, b) = (hull[i], hull[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum::<f32>()
        .abs()
        / 2.0
}

fn number(n: usize) -> &'static str {
    const WORDS: [&str; 21] = [
        "no",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    WORDS.get(n).copied().unwrap_or("many")
}

fn list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [a] => a.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// `what` with its indefinite article ("a red circle", "an orange star").
fn a(what: &str) -> String {
    let vowel = what.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {what}", if vowel { "an" } else { "a" })
}

/// [`a`], capitalised.
fn cap_a(what: &str) -> String {
    capitalise(&a(what))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, Rgba};

    fn paint(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> DynamicImage {
        let mut im = RgbaImage::new(w, h);
        for (x, y, p) in im.enumerate_pixels_mut() {
            let [r, g, b] = f(x, y);
            *p = Rgba([r, g, b, 255]);
        }
        DynamicImage::ImageRgba8(im)
    }

    const RED: [u8; 3] = [200, 16, 46];
    const WHITE: [u8; 3] = [255, 255, 255];
    const BLUE: [u8; 3] = [0, 40, 120];

    #[test]
    fn colours_are_named_by_hue() {
        assert_eq!(Colour::of(178, 34, 52), Colour::Red);
        assert_eq!(Colour::of(60, 59, 110), Colour::Blue);
        assert_eq!(Colour::of(255, 153, 51), Colour::Orange);
        assert_eq!(Colour::of(254, 223, 0), Colour::Yellow);
        assert_eq!(Colour::of(0, 122, 61), Colour::Green);
        assert_eq!(Colour::of(116, 172, 223), Colour::LightBlue);
        assert_eq!(Colour::of(250, 250, 250), Colour::White);
        assert_eq!(Colour::of(10, 10, 10), Colour::Black);
    }

    #[test]
    fn a_disc_on_a_field_is_a_circle_on_that_field() {
        let im = paint(300, 200, |x, y| {
            let (dx, dy) = (x as f32 - 150.0, y as f32 - 100.0);
            if dx * dx + dy * dy < 60.0 * 60.0 {
                RED
            } else {
                WHITE
            }
        });
        let d = describe(&im);
        assert!(d.contains("A red circle on a white field."), "{d}");
        assert!(d.starts_with("White and red."), "{d}");
    }

    #[test]
    fn tricolours_and_stripes_are_told_apart() {
        let tri = paint(300, 200, |x, _| [BLUE, WHITE, RED][(x / 100) as usize]);
        let d = describe(&tri);
        assert!(
            d.contains("Three vertical bands: blue, white and red."),
            "{d}"
        );
        let stripes = paint(260, 130, |x, y| {
            if x < 100 && y < 70 {
                BLUE
            } else if (y / 10) % 2 == 0 {
                RED
            } else {
                WHITE
            }
        });
        let d = describe(&stripes);
        assert!(
            d.contains("Thirteen horizontal stripes of red and white."),
            "{d}"
        );
        assert!(d.contains("A blue canton."), "{d}");
    }

    #[test]
    fn crosses_reach_every_edge() {
        let im = paint(300, 200, |x, y| {
            if (120..150).contains(&x) || (85..115).contains(&y) {
                RED
            } else {
                WHITE
            }
        });
        let d = describe(&im);
        assert!(d.contains("A red cross."), "{d}");
    }

    proptest::proptest! {
        /// Any image, of any size down to one pixel and with any pixels (few colours,
        /// so that regions form), gets a description without panicking: sentences
        /// that each end with a full stop.
        #[test]
        fn any_image_is_described(w in 1u32..48, h in 1u32..48, seed in proptest::prelude::any::<u64>(), palette in 1usize..5) {
            let colours = [RED, WHITE, BLUE, [0, 0, 0], [250, 200, 0]];
            let im = paint(w, h, |x, y| {
                let v = (x as u64 * 31 + y as u64 * 17) ^ seed;
                colours[(v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % palette]
            });
            let d = describe(&im);
            proptest::prop_assert!(!d.is_empty());
            proptest::prop_assert!(d.ends_with('.'), "{}", d);
        }
    }

    #[test]
    fn empty_and_transparent_images_have_no_description() {
        let im = DynamicImage::ImageRgba8(RgbaImage::new(10, 10));
        assert_eq!(describe(&im), "");
        let big = paint(4000, 10, |_, _| WHITE);
        assert_eq!(describe(&big), "White.");
    }
}
