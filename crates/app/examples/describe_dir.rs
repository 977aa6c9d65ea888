fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    for p in v {
        let im = image::open(&p).unwrap();
        println!(
            "{}\t{}",
            p.file_stem().unwrap().to_string_lossy(),
            magpie_app::describe::describe(&im)
        );
    }
}
