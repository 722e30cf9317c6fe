//! What an operator sees: the metrics endpoint and the RPC log.

use std::time::Duration;

use tonic::Code;
use uuid::Uuid;
use voicehub::{
    auth::Authenticator,
    pb::{self, GetVoiceRequest, ListUserVoicesRequest, voice_service_client::VoiceServiceClient},
};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{
        Backend, Bearer, JWT_SECRET, auth_config, create_voice, metric, next, serve,
        spawn_app_with_fake, watch,
    },
    redis_server::RedisServer,
};

async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// The series one create, one retried 429, one NOT_FOUND read, one
/// completion and one open watch stream leave, with their values.
fn series_after_one_create() -> Vec<(String, u64)> {
    let create = "method=\"voicehub.v1.VoiceService/CreateVoiceClone\"";
    vec![
        // RPCs by method and code, with latency.
        (format!("voicehub_rpc_requests_total{{{create},code=\"OK\"}}"), 1),
        (
            "voicehub_rpc_requests_total{method=\"voicehub.v1.VoiceService/GetVoice\",code=\"NOT_FOUND\"}".to_owned(),
            1,
        ),
        (format!("voicehub_rpc_duration_seconds_count{{{create}}}"), 1),
        // Watch streams and events.
        ("voicehub_watch_streams".to_owned(), 1),
        ("voicehub_outbox_backlog".to_owned(), 0),
        // The due-queue.
        ("voicehub_sync_claimed_per_step_count".to_owned(), 2),
        ("voicehub_sync_queue_depth".to_owned(), 0),
        // The provider, by endpoint and outcome, with latency and retries.
        (
            "voicehub_provider_calls_total{endpoint=\"voices.add\",outcome=\"ok\"}".to_owned(),
            1,
        ),
        (
            "voicehub_provider_call_duration_seconds_count{endpoint=\"voices.add\"}".to_owned(),
            1,
        ),
        (
            "voicehub_provider_retries_total{endpoint=\"voices.add\"}".to_owned(),
            1,
        ),
        // Voices by transition.
        (
            "voicehub_voice_transitions_total{to=\"processing\"}".to_owned(),
            1,
        ),
        (
            "voicehub_voice_transitions_total{to=\"completed\"}".to_owned(),
            1,
        ),
    ]
}

#[tokio::test]
async fn the_metrics_endpoint_shows_every_family_after_a_create_completes() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.redis_url = Some(url.into());
    })
    .await;
    let addr = app.metrics_addr.expect("metrics are served");
    // One 429 at the clone: retried once, then the voice is made.
    fake.inject(Route::Add, 1, Fault::too_many_concurrent());
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Observed").await;
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    assert_eq!(
        next(&mut stream).await.unwrap().voice.unwrap().status(),
        pb::VoiceStatus::Processing
    );
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.completed, 1, "{step:?}");
    assert_eq!(
        next(&mut stream).await.unwrap().voice.unwrap().status(),
        pb::VoiceStatus::Completed
    );
    // A second step finds the queue empty: the depth says so.
    assert_eq!(app.worker.run_once().await.unwrap().claimed, 0);
    let missing = client
        .get_voice(GetVoiceRequest {
            voice_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The single voice's stream ended with its terminal state; one that
    // watches all the user's voices stays open.
    assert!(next(&mut stream).await.is_none());
    let all = watch(&mut client, &[]).await;

    // Redis restarts: the replica's connections come back, and say so.
    redis.restart();
    let mut text = String::new();
    for _ in 0..300 {
        text = scrape(addr).await.1;
        if metric(
            &text,
            "voicehub_redis_reconnects_total{connection=\"commands\"}",
        ) > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (content_type, text) = (scrape(addr).await.0, text);
    println!("{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let series = series_after_one_create();
    for (name, value) in &series {
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "{name} missing"
        );
        assert_eq!(metric(&text, name), *value, "{name}");
    }
    // Counted, at least once each: their exact number is not this test's point.
    for name in [
        "voicehub_events_published_total",
        "voicehub_events_delivered_total",
        "voicehub_queue_round_trips_total",
        "voicehub_sql_statements_total{kind=\"read\"}",
        "voicehub_sql_statements_total{kind=\"write\"}",
        "voicehub_sql_statements_total{kind=\"outbox\"}",
        "voicehub_redis_reconnects_total{connection=\"commands\"}",
    ] {
        assert!(metric(&text, name) >= 1, "{name} in\n{text}");
    }
    for family in [
        "voicehub_events_coalesced",
        "voicehub_db_connections",
        "voicehub_provider_calls",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert!(
        text.contains("voicehub_db_connections{state=\"in_use\"}")
            && text.contains("voicehub_db_connections{state=\"idle\"}"),
        "pool connections"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    drop(all);
}

#[tokio::test]
async fn each_finished_rpc_is_one_json_log_line_with_method_code_latency_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[("VOICEHUB_JWT_SECRET", JWT_SECRET)]);
    let user = Uuid::new_v4();
    // The token itself, to show that it never reaches the log.
    let token = Authenticator::new(&auth_config())
        .mint(user, Duration::from_hours(1))
        .unwrap();
    let mut client =
        VoiceServiceClient::with_interceptor(server.channel(), Bearer(format!("Bearer {token}")));
    client
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .unwrap();
    let refused = client
        .get_voice(GetVoiceRequest {
            voice_id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let anonymous = VoiceServiceClient::new(server.channel())
        .get_voice(GetVoiceRequest {
            voice_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = server
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["target"] == "voicehub::rpc")
            .collect::<Vec<_>>();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let user = user.to_string();
    let expected = [
        ("ListUserVoices", "OK", Some(user.as_str())),
        ("GetVoice", "INVALID_ARGUMENT", Some(user.as_str())),
        ("GetVoice", "UNAUTHENTICATED", None),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (method, code, user)) in lines.iter().zip(expected) {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["message"], "rpc finished", "{line}");
        assert_eq!(
            line["method"],
            format!("voicehub.v1.VoiceService/{method}"),
            "{line}"
        );
        assert_eq!(line["code"], code, "{line}");
        assert!(line["latency_ms"].as_f64().unwrap() >= 0.0, "{line}");
        assert_eq!(line["user"].as_str(), user, "{line}");
    }
    let all = server.logs.lock().unwrap().join("\n");
    assert!(!all.contains(&token), "a token reached the log");
}
