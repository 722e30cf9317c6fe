//! Behaviour tests: the real server in-process on 127.0.0.1:0, called with
//! the generated tonic clients, on SQLite and on PostgreSQL.
//!
//! One test binary (modules below) so the suite links once.

mod fake_elevenlabs;
mod helpers;

mod abuse;
mod auth;
mod chaos;
mod cli;
mod cluster;
mod connections;
mod consent;
mod contract;
mod crash;
mod create_voice_clone;
mod docs;
mod event_gaps;
mod faults;
mod get_voice;
mod grpcurl;
mod health;
mod hostile_audio;
mod layering;
mod limits;
mod list_user_voices;
mod migrations;
mod operations;
mod outbox;
mod pg_server;
mod provider_faults;
mod provider_safety;
mod public_events;
mod redis_server;
mod replicas;
mod sample_quality;
mod shutdown;
mod soak;
mod status_engine;
mod storms;
mod sweep;
mod transport;
mod update_delete_voice;
mod updates_converge;
mod watch_voice_status;
mod webhook_deliveries;
mod webhooks;
