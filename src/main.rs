//! The `voicehub` command: `serve`, `migrate`, `token` (and `check-audio`,
//! which `serve` runs as its child). Parses the command
//! line, installs logging, and runs the library's [`Application`].

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use voicehub::{
    Application,
    auth::Authenticator,
    config::{Cli, Command},
    metrics::Metrics,
    store::Store,
    telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse_naming_variables();
    if let Command::CheckAudio = cli.command {
        // A child of `serve`: no runtime, no threads, no logging.
        return voicehub::audio::child::main();
    }
    let _log_writer = telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "voicehub failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let app = Application::build((*args).into_config()?).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            // Boxed: serving is a large future (every service and task it owns).
            Box::pin(app.run_until_stopped(shutdown)).await
        }
        Command::Migrate(args) => {
            let store = Store::connect(
                &args.into_config()?,
                &Metrics::new(),
                voicehub::events::encode_stored,
            )
            .await?;
            store.migrate().await?;
            let installation = store.installation_id().await?;
            tracing::info!(%installation, "migrations applied; this database's installation id");
            store.close().await;
            Ok(())
        }
        Command::Token(args) => {
            let auth = args.auth.into_config(std::path::Path::new("."))?;
            println!("{}", Authenticator::new(&auth).mint(args.user, args.ttl)?);
            Ok(())
        }
        Command::CheckAudio => unreachable!("handled before the runtime starts"),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM: the one signal every task listens to.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
