//! The tables as SeaORM entities, one file per table, named for one row.
//! The schema itself is made by the `migration` crate.

pub mod provider_orphan;
pub mod voice;
pub mod voice_event;
pub mod voice_intake;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_endpoint;
