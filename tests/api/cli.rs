//! The `voicehub` command line: migrate, token, and start-up validation.

use uuid::Uuid;
use voicehub::{
    auth::Authenticator,
    config::{AuthArgs, DEV_SECRET_FILE},
};

use crate::helpers::voicehub;

#[test]
fn migrate_creates_the_default_sqlite_database_and_prints_its_installation_id() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = || {
        voicehub(dir.path())
            .args(["--log-format", "json", "migrate"])
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("voicehub.db").exists());
    let again = migrate();
    assert!(again.status.success());
    // The installation id is made once and printed every time.
    let printed = |out: &std::process::Output| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let key = "\"installation\":\"";
        let at = text.find(key).expect("the installation id is printed");
        text[at + key.len()..][..36].to_owned()
    };
    let id = printed(&out);
    assert!(Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(printed(&again), id, "the same installation, migrated twice");
}

#[test]
fn token_is_signed_with_the_configured_secret_and_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-production-secret-of-enough-length!";
    let user = Uuid::new_v4();
    let out = voicehub(dir.path())
        .args(["token", "--user", &user.to_string(), "--ttl", "5m"])
        .env("VOICEHUB_JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = AuthArgs {
        jwt_secret: Some(secret.into()),
        jwt_issuer: None,
        jwt_audience: None,
    }
    .into_config(dir.path())
    .unwrap();
    let verified = Authenticator::new(&auth)
        .verify(Some(&format!("Bearer {}", token.trim())))
        .unwrap();
    assert_eq!(verified.0, user);
    assert!(
        !dir.path().join(DEV_SECRET_FILE).exists(),
        "no dev secret with a configured one"
    );
}

#[test]
fn token_refuses_a_user_that_is_not_a_uuid_or_is_nil() {
    let dir = tempfile::tempdir().unwrap();
    for (user, reason) in [
        ("alice", "invalid"),
        ("00000000-0000-0000-0000-000000000000", "nil UUID"),
    ] {
        let out = voicehub(dir.path())
            .args(["token", "--user", user])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{user}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--user") && stderr.contains(reason),
            "{user}: {stderr}"
        );
    }
}

/// Settings `serve` must refuse, and what its error must name.
#[allow(clippy::too_many_lines)] // a table, one entry per case
fn bad_configurations() -> Vec<(&'static [(&'static str, &'static str)], &'static str)> {
    vec![
        (&[("VOICEHUB_JWT_SECRET", "short")], "VOICEHUB_JWT_SECRET"),
        (&[("DATABASE_URL", "mysql://localhost/x")], "DATABASE_URL"),
        // Refused by the parser: named by their variables too.
        (&[("VOICEHUB_LISTEN", "not-an-address")], "VOICEHUB_LISTEN"),
        (
            &[("VOICEHUB_MAX_VOICES_PER_USER", "-1")],
            "VOICEHUB_MAX_VOICES_PER_USER",
        ),
        (
            &[("VOICEHUB_SWEEP_INTERVAL", "soon")],
            "VOICEHUB_SWEEP_INTERVAL",
        ),
        (&[("VOICEHUB_LOG_FORMAT", "xml")], "VOICEHUB_LOG_FORMAT"),
        (
            &[("VOICEHUB_SHUTDOWN_GRACE", "forever")],
            "VOICEHUB_SHUTDOWN_GRACE",
        ),
        (
            &[("VOICEHUB_TLS_CERT", "/nowhere/cert.pem")],
            "VOICEHUB_TLS_KEY",
        ),
        // A pool the event relay's LISTEN would take whole.
        (
            &[
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
                ("VOICEHUB_DB_MAX_CONNECTIONS", "1"),
            ],
            "VOICEHUB_DB_MAX_CONNECTIONS must be at least 2",
        ),
        (&[("REDIS_URL", "http://localhost")], "REDIS_URL"),
        // voicehub's own hash tags must stay its own.
        (
            &[("VOICEHUB_REDIS_PREFIX", "{voicehub}")],
            "VOICEHUB_REDIS_PREFIX must not contain braces",
        ),
        (
            &[("VOICEHUB_EVENTS_STREAM", "events{1}")],
            "VOICEHUB_EVENTS_STREAM must not contain braces",
        ),
        // Sample quality thresholds that cannot work (issue 22).
        (
            &[("VOICEHUB_SAMPLE_MIN_LOUDNESS_LUFS", "-10")],
            "VOICEHUB_SAMPLE_MIN_LOUDNESS_LUFS must be below",
        ),
        (
            &[("VOICEHUB_SAMPLE_MAX_CLIPPED_FRACTION", "2")],
            "VOICEHUB_SAMPLE_MAX_CLIPPED_FRACTION",
        ),
        // The bounds of issue 19's hostile clients.
        (
            &[("VOICEHUB_WATCH_RECHECK_INTERVAL", "10ms")],
            "VOICEHUB_WATCH_RECHECK_INTERVAL must be at least 1s",
        ),
        (
            &[("VOICEHUB_REQUEST_ARRIVAL_TIMEOUT", "0s")],
            "VOICEHUB_REQUEST_ARRIVAL_TIMEOUT",
        ),
        (
            &[("VOICEHUB_CONNECTION_IDLE_TIMEOUT", "a while")],
            "VOICEHUB_CONNECTION_IDLE_TIMEOUT",
        ),
        (
            &[("VOICEHUB_MAX_CONNECTIONS", "many")],
            "VOICEHUB_MAX_CONNECTIONS",
        ),
        (
            &[("VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", "-2")],
            "VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER",
        ),
        (
            &[("VOICEHUB_MAX_VOICES_PER_USER", "0")],
            "VOICEHUB_MAX_VOICES_PER_USER",
        ),
        (&[("VOICEHUB_PROVIDER", "elevenlabs")], "ELEVENLABS_API_KEY"),
        (&[("VOICEHUB_PROVIDER", "acme")], "VOICEHUB_PROVIDER"),
        (
            &[
                ("ELEVENLABS_API_KEY", "k"),
                ("ELEVENLABS_BASE_URL", "ftp://files.example"),
            ],
            "ELEVENLABS_BASE_URL",
        ),
        // A real provider with a generated development secret.
        (
            &[
                ("VOICEHUB_PROVIDER", "elevenlabs"),
                ("ELEVENLABS_API_KEY", "k"),
            ],
            "VOICEHUB_JWT_SECRET must be set with the ElevenLabs provider",
        ),
        (
            &[
                ("VOICEHUB_PROVIDER", "elevenlabs"),
                ("ELEVENLABS_API_KEY", "k"),
                (
                    "VOICEHUB_JWT_SECRET",
                    "a-production-secret-of-enough-length!",
                ),
                ("ELEVENLABS_TIMEOUT", "60s"),
                ("ELEVENLABS_RETRY_BUDGET", "90s"),
                ("VOICEHUB_SYNC_ADOPT_AFTER", "2m"),
            ],
            "VOICEHUB_SYNC_ADOPT_AFTER",
        ),
    ]
}

#[test]
fn serve_refuses_bad_configuration_with_the_variable_named() {
    let dir = tempfile::tempdir().unwrap();
    for (env, needle) in bad_configurations() {
        let out = voicehub(dir.path())
            .arg("serve")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{env:?}: {stderr}");
    }
}

#[test]
fn serve_reports_an_address_in_use_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = voicehub(dir.path())
        .arg("serve")
        .env("VOICEHUB_LISTEN", &addr)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("VOICEHUB_LISTEN"),
        "{stderr}"
    );
}

#[test]
fn a_renamed_setting_or_one_that_did_two_jobs_warns_and_still_works_for_now() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::serve(
        dir.path(),
        &[
            ("VOICEHUB_SYNC_ADOPT_AFTER", "4m"),
            ("VOICEHUB_SYNC_RECONCILE_INTERVAL", "20m"),
            ("VOICEHUB_SYNC_LEASE", "20s"),
        ],
    );
    let logs = server.logs.lock().unwrap().join("\n");
    for (old, new) in [
        ("VOICEHUB_SYNC_ADOPT_AFTER", "VOICEHUB_SYNC_PUSH_LEASE"),
        (
            "VOICEHUB_SYNC_RECONCILE_INTERVAL",
            "VOICEHUB_OUTBOX_RECHECK_INTERVAL",
        ),
    ] {
        assert!(
            logs.contains(&format!("{old} no longer sets what {new} sets")),
            "{old} → {new}: {logs}"
        );
    }
    assert!(
        logs.contains("VOICEHUB_SYNC_LEASE is now VOICEHUB_SYNC_CLAIM_LEASE"),
        "{logs}"
    );
    drop(server);
    // Set apart, each does its own job and nothing warns.
    let server = crate::helpers::serve(
        dir.path(),
        &[
            ("VOICEHUB_SYNC_ADOPT_AFTER", "4m"),
            ("VOICEHUB_SYNC_PUSH_LEASE", "3m"),
        ],
    );
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("no longer sets") && !logs.contains("is now"),
        "{logs}"
    );
}
