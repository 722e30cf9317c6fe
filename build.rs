//! Generates the gRPC code and the descriptor set (for reflection) from `proto/`.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so a fresh machine needs
//! nothing installed; set `PROTOC` to use another one.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    // Samples (up to 50 MiB) as `Bytes`: sliced from the request buffer and
    // shared with the provider's upload (and its retries) without copying.
    config.bytes([".voicehub.v1.AudioSample.data"]);
    let mut includes = vec![PathBuf::from("proto")];
    if env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        includes.push(protoc_bin_vendored::include_path()?);
    }
    // tonic-prost-build prints no rerun-if-changed itself, and any rerun line we
    // print replaces cargo's default, so name every input.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("voicehub_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/voicehub/v1/voice.proto")],
            &includes,
        )?;
    Ok(())
}
