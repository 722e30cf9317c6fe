//! The gRPC listener's connections, bounded.
//!
//! Role: everything between `accept` and HTTP/2. Each accepted connection
//! is a [`Connection`], which counts against [`ConnectionLimits::max`] until
//! it closes, knows how many calls it carries (a request holds a
//! [`CallOnConnection`] until its response ends), and closes itself:
//!
//! - when no call has been in progress on it for
//!   [`ConnectionLimits::idle`]: a client that connects and sends nothing,
//!   or only the HTTP/2 preface, or stopped using its channel, frees its
//!   place (an honest client reconnects on its next call);
//! - at [`ConnectionLimits::age`] plus [`ConnectionLimits::age_grace`]:
//!   tonic sends GOAWAY at the age (new calls go to a new connection, and
//!   through the load balancer, perhaps another replica); what is still open
//!   after the grace, such as a watch stream, is cut, and its client
//!   reconnects (the snapshot makes that lossless).
//!
//! A connection beyond the limit is closed as soon as it is accepted. A
//! failed accept (EMFILE) is logged once per run of failures, counted, and
//! followed by a pause that doubles up to [`ACCEPT_PAUSE_MAX`]: tonic's loop
//! accepts again at once, which under EMFILE spins a core and starves the
//! connections already open.
//!
//! Closing is the end of the byte stream as hyper reads it: no GOAWAY for
//! an idle connection, as a load balancer's idle timeout would do it.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpIncoming};

use crate::metrics::Metrics;

/// The first pause after a failed accept.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);

/// The longest pause between accepts while they fail.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How long an accepted connection may sit idle before the kernel starts
/// probing whether its peer is still there.
const TCP_KEEPALIVE: Duration = Duration::from_mins(1);

/// The bounds on one replica's connections (`0`/zero turns one off).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// How long a connection may go without a call in progress.
    pub idle: Duration,
    /// When a connection is asked to go away (GOAWAY).
    pub age: Duration,
    /// How long after its age a connection is cut, calls or not.
    pub age_grace: Duration,
}

impl ConnectionLimits {
    /// The defaults, which the flags' defaults are.
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        max: 10_000,
        idle: Duration::from_mins(5),
        age: Duration::from_mins(30),
        age_grace: Duration::from_mins(5),
    };
}

/// What one connection shares with the calls it carries.
#[derive(Debug)]
struct Activity {
    /// Calls in progress.
    calls: AtomicUsize,
    /// When the last call ended (or the connection opened), in ms since `born`.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl Activity {
    fn idle_since(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
    }
}

/// The connect info tonic attaches to every request of a [`Connection`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    activity: Arc<Activity>,
    /// The peer's address, as accepted (a load balancer's, behind one).
    peer: Option<std::net::SocketAddr>,
}

impl ConnectionInfo {
    /// Marks a call in progress on this connection until the guard drops.
    pub(crate) fn call(&self) -> CallOnConnection {
        self.activity.calls.fetch_add(1, Ordering::Relaxed);
        CallOnConnection(self.activity.clone())
    }
}

/// A call in progress on a connection: it is not idle while one lives.
#[derive(Debug)]
pub(crate) struct CallOnConnection(Arc<Activity>);

impl Drop for CallOnConnection {
    fn drop(&mut self) {
        let since = u64::try_from(self.0.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(since, Ordering::Relaxed);
        self.0.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The call guard of a request's connection, whether plaintext or TLS.
pub(crate) fn call_on_connection(extensions: &http::Extensions) -> Option<CallOnConnection> {
    info_of(extensions).map(ConnectionInfo::call)
}

/// The peer address of a request's connection, whether plaintext or TLS.
pub(crate) fn peer_of(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    info_of(extensions).and_then(|info| info.peer)
}

fn info_of(extensions: &http::Extensions) -> Option<&ConnectionInfo> {
    use tonic::transport::server::TlsConnectInfo;
    extensions.get::<ConnectionInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<ConnectionInfo>>()
            .map(TlsConnectInfo::get_ref)
    })
}

/// An accepted connection that closes itself when idle or too old.
pub(crate) struct Connection {
    io: TcpStream,
    info: ConnectionInfo,
    /// How long it may go without a call; `None`: for ever.
    idle: Option<Duration>,
    /// When it is cut whatever it carries; `None`: never.
    end: Option<Instant>,
    /// When to next judge whether to close (boxed: a connection must be `Unpin`).
    check: Pin<Box<Sleep>>,
    _place: Option<OwnedSemaphorePermit>,
    _open: OpenGuard,
}

/// The longest any bound is taken to be: beyond it, `Instant` arithmetic
/// is not worth the risk of overflowing.
const LONGEST: Duration = Duration::from_hours(365 * 24);

impl Connection {
    /// When to judge this connection next, or `None` if it should close now.
    fn next_check(
        info: &ConnectionInfo,
        idle: Option<Duration>,
        end: Option<Instant>,
    ) -> Option<Instant> {
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) {
            return None;
        }
        let activity = &info.activity;
        let idle_at = idle.map(|idle| {
            if activity.calls.load(Ordering::Relaxed) == 0 {
                activity.idle_since() + idle
            } else {
                now + idle
            }
        });
        if idle_at.is_some_and(|at| now >= at) {
            return None;
        }
        Some(
            [idle_at, end]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + LONGEST),
        )
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.check.as_mut().poll(cx).is_ready() {
            match Connection::next_check(&this.info, this.idle, this.end) {
                // The end of the stream, as if the peer had closed it.
                None => return Poll::Ready(Ok(())),
                Some(next) => this.check.as_mut().reset(next),
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

/// Keeps `voicehub_connections_open` while a connection lives.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The connections `listener` accepts, within `limits`, each with the
/// socket options tonic's own `serve` would set but `serve_with_incoming`
/// does not:
/// - `TCP_NODELAY`: a response's trailers leave in a second small write;
///   with Nagle's algorithm on, that write waits for the client's delayed
///   ACK (~40 ms on Linux), so nearly every unary call would take 40 ms more;
/// - TCP keepalive: a peer that vanished without a FIN (a NAT or load
///   balancer dropping the flow) is noticed instead of holding the
///   connection for ever.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: &Metrics,
) -> Pin<Box<dyn futures_util::Stream<Item = io::Result<Connection>> + Send>> {
    use futures_util::StreamExt;
    let mut accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let places = (limits.max > 0).then(|| Arc::new(Semaphore::new(limits.max)));
    let (accept_errors, refused, open): (Counter, Counter, Gauge) = (
        metrics.accept_errors.clone(),
        metrics.connections_refused.clone(),
        metrics.connections_open.clone(),
    );
    // Boxed: its state would otherwise sit inside the server's own future.
    Box::pin(async_stream::stream! {
        let mut pause = ACCEPT_PAUSE_MIN;
        let (mut failing, mut full) = (false, false);
        while let Some(next) = accepted.next().await {
            let stream = match next {
                Ok(stream) => stream,
                Err(e) => {
                    accept_errors.inc();
                    if !failing {
                        tracing::error!(error = %e, "accepting a connection failed (out of file descriptors?); pausing accepts, logged once per run of failures");
                        failing = true;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    yield Err(e);
                    continue;
                }
            };
            if failing {
                tracing::info!("accepting connections again");
            }
            (pause, failing) = (ACCEPT_PAUSE_MIN, false);
            let place = match &places {
                None => None,
                Some(places) => if let Ok(place) = places.clone().try_acquire_owned() {
                    full = false;
                    Some(place)
                } else {
                    refused.inc();
                    if !full {
                        tracing::warn!(max = limits.max, "a connection was refused: this replica has VOICEHUB_MAX_CONNECTIONS open; logged once per run of refusals");
                        full = true;
                    }
                    drop(stream);
                    continue;
                },
            };
            yield Ok(guard(stream, place, limits, &open));
        }
    })
}

/// Wraps an accepted stream in its bounds.
fn guard(
    stream: TcpStream,
    place: Option<OwnedSemaphorePermit>,
    limits: ConnectionLimits,
    open: &Gauge,
) -> Connection {
    let born = Instant::now();
    let idle = (!limits.idle.is_zero()).then(|| limits.idle.min(LONGEST));
    let end = (!limits.age.is_zero())
        .then(|| born + limits.age.min(LONGEST) + limits.age_grace.min(LONGEST));
    let first = [idle.map(|idle| born + idle), end]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(born + LONGEST);
    open.inc();
    let peer = stream.peer_addr().ok();
    Connection {
        io: stream,
        info: ConnectionInfo {
            peer,
            activity: Arc::new(Activity {
                calls: AtomicUsize::new(0),
                idle_since_ms: AtomicU64::new(0),
                born,
            }),
        },
        idle,
        end,
        check: Box::pin(tokio::time::sleep_until(first)),
        _place: place,
        _open: OpenGuard(open.clone()),
    }
}
