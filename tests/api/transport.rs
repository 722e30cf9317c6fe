//! The transport: socket options of the connections the server accepts.
//! Checked on the real server's own sockets, not by timing.

use std::{fs, net::SocketAddr, os::fd::OwnedFd, time::Duration};

use rustix::{
    net::{getpeername, getsockname, sockopt},
    process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open},
};
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{Backend, spawn_app};

/// Copies of every connection this process has accepted on `server`: the
/// server runs in-process, so its accepted sockets are among our own file
/// descriptors (`pidfd_getfd` duplicates one without touching the original).
fn accepted_on(server: SocketAddr) -> Vec<OwnedFd> {
    let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open");
    let mut accepted = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let is_socket = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed since the listing: skip it then.
        let Ok(copy) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let local = getsockname(&copy)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok());
        // A listener has no peer; an accepted connection on `server` has one.
        let connected = getpeername(&copy).is_ok_and(|peer| peer.is_some());
        if local == Some(server) && connected {
            accepted.push(copy);
        }
    }
    accepted
}

#[tokio::test]
async fn every_accepted_connection_has_tcp_nodelay_and_keepalive() {
    let app = spawn_app(Backend::Sqlite).await;
    // A call that the server has answered proves it accepted the connection.
    app.health()
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    let accepted = accepted_on(app.addr);
    assert!(
        !accepted.is_empty(),
        "no accepted connection found on {}",
        app.addr
    );
    for socket in accepted {
        assert!(
            sockopt::tcp_nodelay(&socket).unwrap(),
            "TCP_NODELAY is off: trailers would wait for the client's delayed ACK"
        );
        assert!(
            sockopt::socket_keepalive(&socket).unwrap(),
            "SO_KEEPALIVE is off"
        );
        assert_eq!(
            sockopt::tcp_keepidle(&socket).unwrap(),
            Duration::from_mins(1)
        );
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made by openssl.
fn generated_pair(dir: &std::path::Path) -> (Vec<u8>, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA: rustls refuses a CA as end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    (fs::read(cert).unwrap(), fs::read_to_string(key).unwrap())
}

#[tokio::test]
async fn with_a_certificate_the_listener_speaks_tls_and_refuses_plaintext() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = generated_pair(dir.path());
    let files = voicehub::config::TlsFiles {
        cert: cert.clone(),
        key: key.into(),
    };
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |c| c.tls = Some(files)).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    assert_eq!(
        crate::helpers::serving_status(&mut health).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let mut client = voicehub::pb::voice_service_client::VoiceServiceClient::new(channel);
    let mut request = tonic::Request::new(voicehub::pb::ListUserVoicesRequest::default());
    let token = app
        .auth
        .mint(uuid::Uuid::new_v4(), Duration::from_mins(5))
        .unwrap();
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(client.list_user_voices(request).await.is_ok());
    // The plaintext channel of the helper gets no answer over TLS.
    let plaintext = app.health().check(HealthCheckRequest::default()).await;
    assert!(plaintext.is_err(), "{plaintext:?}");
}

#[tokio::test]
async fn a_key_that_is_not_a_key_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = generated_pair(dir.path());
    let db = crate::helpers::TestDatabase::new(Backend::Sqlite).await;
    let mut config = crate::helpers::test_config(Backend::Sqlite, &db);
    config.tls = Some(voicehub::config::TlsFiles {
        cert,
        key: "not a key".to_owned().into(),
    });
    let err = voicehub::Application::build(config)
        .await
        .err()
        .expect("start-up refuses it");
    assert!(format!("{err:#}").contains("VOICEHUB_TLS_KEY"), "{err:#}");
}

/// User plus system CPU time of process `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name's closing parenthesis: fields 3 onwards.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_pauses_accepts_and_keeps_serving_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::serve(dir.path(), &[]);
    let pid = server.child.id();
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let check = HealthCheckRequest {
        service: String::new(),
    };
    health.check(check.clone()).await.unwrap();
    // A few descriptors above what it holds now; then many more clients
    // than that, which the kernel queues for accept.
    let open = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = open + 8;
    assert!(
        std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                &format!("--nofile={limit}:{limit}")
            ])
            .status()
            .unwrap()
            .success()
    );
    let clients: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    let failed = || {
        server
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("accepting a connection failed"))
            .count()
    };
    crate::helpers::wait_for(Duration::from_secs(10), || failed() > 0).await;
    assert_eq!(failed(), 1, "logged once per run of failures");
    // While accepts keep failing, the server pauses instead of spinning, and
    // the connection it already has is served at once.
    let before = cpu_ticks(pid);
    for _ in 0..10 {
        let answer = tokio::time::timeout(Duration::from_secs(1), health.check(check.clone()))
            .await
            .expect("Health/Check within a second")
            .unwrap();
        assert_eq!(answer.into_inner().status, 1, "SERVING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spent = cpu_ticks(pid) - before;
    println!(
        "{} clients beyond a limit of {limit} descriptors: {spent} ticks of CPU in about 2 s",
        clients.len()
    );
    assert!(spent < 100, "{spent} ticks: the accept loop spins");
    assert_eq!(failed(), 1);
    drop(clients);
}
