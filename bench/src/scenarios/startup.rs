//! **startup**: from `exec` to a Health/Check that answers SERVING, and the
//! resident memory of the idle server a second later, on the embedded
//! default (SQLite, no Redis). Ceiling, measured in the same run: `exec` to
//! exit of `voicehub --version` (the process and runtime start-up alone).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    report::{Panel, Series, Table, write_chart, write_json},
    server::Server,
};

/// The settings of one `startup` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StartupArgs {
    /// How many starts to measure.
    #[arg(long, default_value_t = 20)]
    pub(crate) runs: usize,
}

#[derive(Debug, Serialize)]
struct Start {
    run: usize,
    serving_ms: f64,
    version_ms: f64,
    idle_rss_mib: f64,
}

/// Runs the scenario and writes `startup.json` and `startup.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: StartupArgs) -> anyhow::Result<()> {
    let mut starts = Vec::new();
    for run in 0..args.runs {
        let exec = Instant::now();
        let status = Command::new(binary).arg("--version").output()?.status;
        let version = exec.elapsed();
        anyhow::ensure!(status.success(), "voicehub --version failed");
        let dir = tempfile::tempdir()?;
        let server = Server::start(binary, dir.path(), &[]).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        starts.push(Start {
            run,
            serving_ms: server.started_in.as_secs_f64() * 1e3,
            version_ms: version.as_secs_f64() * 1e3,
            idle_rss_mib: server.rss()? as f64 / (1024.0 * 1024.0),
        });
    }
    let median = |f: fn(&Start) -> f64| {
        let mut v: Vec<f64> = starts.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let worst = |f: fn(&Start) -> f64| starts.iter().map(f).fold(0.0, f64::max);
    let (serving, version, rss) = (
        median(|s| s.serving_ms),
        median(|s| s.version_ms),
        median(|s| s.idle_rss_mib),
    );
    let mut table = Table::new(&[
        "figure",
        "median",
        "worst",
        "ceiling (median)",
        "ratio",
        "guard",
        "met",
    ]);
    table.row(vec![
        "exec → SERVING".into(),
        format!("{serving:.1} ms"),
        format!("{:.1} ms", worst(|s| s.serving_ms)),
        format!("{version:.1} ms (exec → exit of --version)"),
        format!("{:.1}", serving / version.max(f64::EPSILON)),
        "≤ 50 ms".into(),
        if serving <= 50.0 { "yes" } else { "NO" }.into(),
    ]);
    table.row(vec![
        "idle RSS".into(),
        format!("{rss:.1} MiB"),
        format!("{:.1} MiB", worst(|s| s.idle_rss_mib)),
        "—".into(),
        "—".into(),
        "≤ 20 MiB".into(),
        if rss <= 20.0 { "yes" } else { "NO" }.into(),
    ]);
    table.print();
    let json = serde_json::json!({
        "scenario": "startup",
        "median_serving_ms": serving,
        "median_version_ms": version,
        "median_idle_rss_mib": rss,
        "guards": {"serving_ms": 50, "idle_rss_mib": 20},
        "runs": starts,
    });
    println!("wrote {}", write_json(out, "startup", &json)?.display());
    let series = |name: &str, f: fn(&Start) -> f64, ceiling| Series {
        name: name.into(),
        points: starts.iter().map(|s| ((s.run + 1) as f64, f(s))).collect(),
        ceiling,
    };
    let panels = [
        Panel {
            title: "startup: exec → SERVING".into(),
            x_label: "run".into(),
            y_label: "ms".into(),
            log_x: false,
            series: vec![
                series("exec → SERVING", |s| s.serving_ms, false),
                series("exec → exit of --version (ceiling)", |s| s.version_ms, true),
            ],
        },
        Panel {
            title: "startup: idle RSS".into(),
            x_label: "run".into(),
            y_label: "MiB".into(),
            log_x: false,
            series: vec![series("idle RSS", |s| s.idle_rss_mib, false)],
        },
    ];
    println!(
        "wrote {}",
        write_chart(out, "startup", 2, &panels)?.display()
    );
    Ok(())
}
