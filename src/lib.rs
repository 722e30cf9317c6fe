//! voicehub: a gRPC service that manages users' cloned voices.
//!
//! `main.rs` parses the command line and calls into this library;
//! [`server::Application`] is what both `voicehub serve` and the tests run.
//!
//! Layers: each module imports only modules listed after it here, so no
//! module imports one that imports it back (`tests/api/layering.rs` checks):
//! `server`, `config`, `health`, `grpc`, `connections`, `auth`, `write_path`,
//! `status_engine`, `webhooks`, `events`, `error`, `audio`, `pb`, `provider`, `store`, `quota`,
//! `redis`, `metrics`, `telemetry`, `allocator`. `config` turns flags into each component's own
//! settings type and builds the provider; only `main.rs` and `server` import it.

mod allocator;
pub mod audio;
pub mod auth;
pub mod config;
pub mod connections;
pub mod error;
pub mod events;
mod grpc;
mod health;
pub mod metrics;
pub mod pb;
pub mod provider;
mod quota;
pub mod redis;
pub mod server;
pub mod status_engine;
pub mod store;
pub mod telemetry;
pub mod webhooks;
mod write_path;

pub use server::Application;
