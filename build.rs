//! Generates the gRPC code and the descriptor set (for reflection) from
//! `proto/voicehub/v1`, and the inter-replica event messages from
//! `proto/voicehub/events/v1` (kept out of the descriptor set: they are not
//! part of the served contract).
//!
//! protoc comes from the `protoc-bin-vendored` crate, so a fresh machine needs
//! nothing installed; set `PROTOC` to use another one.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut api = prost_build::Config::new();
    let mut events = prost_build::Config::new();
    let mut includes = vec![PathBuf::from("proto")];
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        api.protoc_executable(&protoc);
        events.protoc_executable(&protoc);
        includes.push(protoc_bin_vendored::include_path()?);
    }
    // tonic-prost-build prints no rerun-if-changed itself, and any rerun line we
    // print replaces cargo's default, so name every input.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");

    // Samples (up to 50 MiB) as `Bytes`: sliced from the request buffer and
    // shared with the provider's upload (and its retries) without copying.
    api.bytes([".voicehub.v1.AudioSample.data"]);
    // Written by hand, so a change going to many watchers is encoded once
    // (see `pb::status_event`).
    api.extern_path(
        ".voicehub.v1.VoiceStatusEvent",
        "crate::pb::VoiceStatusEvent",
    );
    tonic_prost_build::configure()
        // Small first buffers for long-lived response streams (see `pb::Codec`).
        .codec_path("crate::pb::Codec")
        .file_descriptor_set_path(out_dir.join("voicehub_descriptor.bin"))
        .compile_with_config(
            api,
            &[
                PathBuf::from("proto/voicehub/v1/voice.proto"),
                PathBuf::from("proto/voicehub/v1/webhooks.proto"),
            ],
            &includes,
        )?;

    // The events embed `voicehub.v1.Voice`: use the type generated above.
    events.extern_path(".voicehub.v1", "crate::pb");
    events.compile_protos(
        &[PathBuf::from("proto/voicehub/events/v1/events.proto")],
        &includes,
    )?;
    Ok(())
}
