//! voicehub: a gRPC service that manages users' cloned voices.
//!
//! `main.rs` parses the command line and calls into this library;
//! [`server::Application`] is what both `voicehub serve` and the tests run.
//!
//! Layers, each importing only the ones below it:
//! `server` → `grpc` → `write_path` → `status_engine`, `events` → `pb`,
//! `provider`, `store` → `error`, `metrics`. `config` sits above them all: it
//! turns flags into each component's settings and is imported by `main.rs`
//! and `server` alone.

pub mod auth;
pub mod config;
pub mod error;
pub mod events;
mod grpc;
mod health;
pub mod metrics;
pub mod pb;
pub mod provider;
pub mod redis;
pub mod server;
pub mod status_engine;
pub mod store;
pub mod telemetry;
mod write_path;

pub use server::Application;
