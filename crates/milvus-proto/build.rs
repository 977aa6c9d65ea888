//! Compiles the vendored Milvus protocol (proto/, see proto/ORIGIN.md) with the protoc
//! binary of the protoc-bin-vendored crate, so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // prost-build reads PROTOC; a build script is single-threaded.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/common.proto",
        "proto/schema.proto",
        "proto/milvus.proto",
        "proto/rg.proto",
        "proto/feder.proto",
        "proto/msg.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The generated `connect` constructor would clash with the Connect RPC; clients
        // build a `Channel` and call `MilvusServiceClient::new`.
        .build_transport(false)
        .generate_default_stubs(true)
        .compile_protos(
            &files.map(std::path::PathBuf::from),
            &[std::path::PathBuf::from("proto"), include],
        )?;
    name_unimplemented_rpcs()?;
    Ok(())
}

/// The default stubs answer every RPC Magpie does not implement with
/// UNIMPLEMENTED "Not yet implemented"; this names the RPC in that message so a client's
/// error says what is missing.
fn name_unimplemented_rpcs() -> std::io::Result<()> {
    let path = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"))
        .join("milvus.proto.milvus.rs");
    let src = std::fs::read_to_string(&path)?;
    let mut out = String::with_capacity(src.len() + 16 * 1024);
    let mut rpc = String::new();
    for line in src.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("async fn ") {
            let snake = rest.split('(').next().unwrap_or("");
            rpc = snake
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
        }
        if line.contains("\"Not yet implemented\"") {
            out.push_str(&line.replace(
                "\"Not yet implemented\"",
                &format!(
                    "\"Magpie does not implement the Milvus RPC {rpc} (docs/MILVUS_COMPAT.md lists what it does)\""
                ),
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    std::fs::write(&path, out)
}
