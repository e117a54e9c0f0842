//! Generates the envd protocol types (E2B's `process` and `filesystem` packages) from `proto/envd`
//! with prost, and their protobuf JSON mapping (what the Connect protocol's JSON encoding carries)
//! with pbjson. protox parses the files, so no `protoc` is needed.

use std::path::PathBuf;

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
