//! voicehub: a gRPC service that manages users' cloned voices.
//!
//! `main.rs` parses the command line and calls into this library;
//! [`server::Application`] is what both `voicehub serve` and the tests run.

pub mod auth;
pub mod config;
pub mod error;
pub mod events;
pub mod grpc;
pub mod health;
pub mod provider;
pub mod redis;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod voices;

/// Code generated from `proto/voicehub/v1/voice.proto`.
pub mod pb {
    tonic::include_proto!("voicehub.v1");

    /// The encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("voicehub_descriptor");
}

pub use server::Application;
