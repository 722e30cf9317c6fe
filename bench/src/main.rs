//! `voicehub-bench`: measures a release build of voicehub from outside, the
//! way a client and an operator see it, and compares every timed figure
//! with a ceiling measured in the same run (this machine is shared and
//! noisy, so only same-run ratios mean anything).
//!
//! Run it through `scripts/bench <scenario>`, which starts a private
//! PostgreSQL (and Redis) the way the test command does. Each scenario prints
//! a table and writes `docs/bench/<scenario>.json` and `.svg`.

// Figures are reported as f64: counts and durations far below 2^52 convert exactly.
#![allow(clippy::cast_precision_loss)]

mod fake_provider;
mod load;
mod report;
mod scenarios;
mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "voicehub-bench", about = "voicehub's benchmark scenarios")]
struct Cli {
    /// Where to write `<scenario>.json` and `.svg` (default: docs/bench of the checkout).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// The voicehub binary to measure (default: build the release binary of
    /// this checkout); for before/after comparisons of two builds.
    #[arg(long, global = true)]
    binary: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// GetVoice and ListUserVoices at several concurrencies, beside Health/Check and direct SQL.
    Read(scenarios::read::ReadArgs),
    /// exec → SERVING and idle memory, beside exec → exit of `voicehub --version`.
    Startup(scenarios::startup::StartupArgs),
    /// SQL and Redis commands of an idle server, beside the seed design's polling.
    Idle(scenarios::idle::IdleArgs),
    /// The status engine draining 100,000 PROCESSING voices, beside the fake provider's own rate.
    Sync(scenarios::sync::SyncArgs),
    /// Provider-ready → watcher-received for voices ready at random times in 1–60 s.
    Detect(scenarios::detect::DetectArgs),
    /// Memory per open WatchVoiceStatus stream and the latency of a burst of completions.
    Fanout(scenarios::fanout::FanoutArgs),
    /// CreateVoiceClone's latency and CPU (server and audio check), beside AnalyzeSamples.
    Create(scenarios::create::CreateArgs),
    /// The read path on 1, 2 and 3 replicas sharing one PostgreSQL: rate, ratio to one, CPU per call.
    Scale(scenarios::scale::ScaleArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = report::out_dir(cli.out)?;
    let binary = match cli.binary {
        Some(binary) => binary,
        None => server::build_binary()?,
    };
    match cli.scenario {
        Scenario::Read(args) => scenarios::read::run(&binary, &out, args).await,
        Scenario::Startup(args) => scenarios::startup::run(&binary, &out, args).await,
        Scenario::Idle(args) => scenarios::idle::run(&binary, &out, args).await,
        Scenario::Sync(args) => scenarios::sync::run(&binary, &out, args).await,
        Scenario::Detect(args) => scenarios::detect::run(&binary, &out, args).await,
        Scenario::Fanout(args) => scenarios::fanout::run(&binary, &out, args).await,
        Scenario::Create(args) => scenarios::create::run(&binary, &out, args).await,
        Scenario::Scale(args) => scenarios::scale::run(&binary, &out, args).await,
    }
}
