//! Build-time generation for nexusd:
//! - the envd protocol types (E2B's `process` and `filesystem` packages) from `proto/envd` with
//!   prost, and their protobuf JSON mapping (what the Connect protocol's JSON encoding carries)
//!   with pbjson; protox parses the files, so no `protoc` is needed;
//! - the web UI's third-party files (xterm.js and its fit addon, installed from npm into
//!   `ui/node_modules` by `npm ci --prefix ui`, which scripts/setup.sh runs), embedded when they
//!   are there. Without them nexusd still builds and serves the UI; its terminal tab then says the
//!   terminal assets were not installed and how to install them. Writes `$OUT_DIR/ui_vendor.rs`.

use std::path::{Path, PathBuf};

use protox::prost::Message;

/// (name served under `/ui/static/`, content type, path under `ui/node_modules/@xterm/`).
const VENDOR: &[(&str, &str, &str)] = &[
    (
        "xterm.mjs",
        "text/javascript; charset=utf-8",
        "xterm/lib/xterm.mjs",
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        "xterm/css/xterm.css",
    ),
    (
        "addon-fit.mjs",
        "text/javascript; charset=utf-8",
        "addon-fit/lib/addon-fit.mjs",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    envd_protos()?;
    ui_vendor();
    Ok(())
}

fn envd_protos() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/envd/process.proto", "proto/envd/filesystem.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto/envd"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let set_path = out.join("envd_descriptors.bin");
    std::fs::write(&set_path, descriptors.encode_to_vec())?;

    prost_build::Config::new()
        .file_descriptor_set_path(&set_path)
        .skip_protoc_run()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .bytes(["."])
        .compile_protos(&protos, &["proto/envd"])?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&set_path)?)?
        .build(&[".process", ".filesystem"])?;
    Ok(())
}

fn ui_vendor() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ui = manifest.join("../../ui");
    // The directory always exists (package.json is committed); cargo scans it recursively, so
    // an `npm ci` that adds or changes node_modules reruns this script.
    println!("cargo:rerun-if-changed={}", ui.display());
    let modules = ui.join("node_modules/@xterm");
    let found: Vec<(&str, &str, PathBuf)> = VENDOR
        .iter()
        .map(|(name, ty, rel)| (*name, *ty, modules.join(rel)))
        .filter(|(_, _, p)| p.is_file())
        .collect();
    let mut out =
        String::from("/// The xterm.js files embedded at build time (all of them, or none).\n");
    out.push_str("pub static VENDOR: &[(&str, &str, &[u8])] = &[\n");
    if found.len() == VENDOR.len() {
        for (name, ty, path) in &found {
            let path = path.canonicalize().expect("vendor file exists");
            out.push_str(&format!(
                "    ({name:?}, {ty:?}, include_bytes!({:?})),\n",
                path_str(&path)
            ));
        }
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("ui_vendor.rs");
    std::fs::write(&dest, out).expect("write ui_vendor.rs");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path to the UI's node_modules")
}
