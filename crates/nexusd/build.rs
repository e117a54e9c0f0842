//! Embeds the web UI's third-party files (xterm.js and its fit addon, installed from npm into
//! `ui/node_modules` by `npm ci --prefix ui`, which scripts/setup.sh runs) when they are there.
//! Without them nexusd still builds and serves the UI; its terminal tab then says the terminal
//! assets were not installed and how to install them. Writes `$OUT_DIR/ui_vendor.rs`.

use std::path::{Path, PathBuf};

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

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ui = manifest.join("../../ui");
    // The directory always exists (package.json is committed); cargo scans it recursively, so
    // an `npm ci` that adds or changes node_modules reruns this script.
    println!("cargo:rerun-if-changed={}", ui.display());
    println!("cargo:rerun-if-changed=build.rs");
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
