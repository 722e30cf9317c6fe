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
