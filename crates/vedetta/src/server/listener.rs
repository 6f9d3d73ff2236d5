//! The accept loop and what a connection may hold: our own loop rather than `axum::serve`,
//! because a slow or stuck client must not be able to hold the server, and `axum::serve`
//! has no bound to set.
//!
//! What it promises:
//! - At most `max_connections` connections are served at once. Past that, a new connection
//!   gets a minimal `503 Service Unavailable` with `Retry-After` and is closed: a client
//!   learns why, rather than waiting on a silent socket.
//! - A client that connects and does not finish a request head within the header timeout is
//!   dropped; so is one that starts a new head on a kept-alive connection and does not finish
//!   it. A kept-alive connection with no request for the idle timeout is closed. A client that
//!   reads none of its response (a full socket buffer) for the idle timeout is dropped.
//!   Request bodies have their own timeout, in intake, which answers 408.
//! - Shutdown: stop accepting, tell every connection to finish its request and close, wait
//!   until the deadline, then drop what is left (stalled uploads, unread streams). Only then
//!   does `serve` flush the writer and snapshot the processor.
//!
//! HTTP/1.1 only: every client of the API speaks it.

use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

/// The bounds on connections (validated configuration).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The answer to a connection over the cap. Written by hand: no request has been read, and
/// none will be.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 52\r\n\
\r\n\
{\"error\":\"too many open connections; retry shortly\"}";

/// Connections over the cap being answered at once; past this, they are answered with one
/// non-blocking write and closed at once.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is kept to let the client read the 503 before the close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// After an accept error (out of file descriptors, most likely), wait before the next
/// accept rather than spinning on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// How a shutdown went: connections that finished in time, and those dropped at the deadline.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    pub finished: usize,
    pub dropped: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves to the deadline by which open
/// connections must be done; then returns, every connection closed.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = Instant>,
) -> ShutdownReport {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusals = JoinSet::new();
    let mut refused_since_warning = 0u64;
    let mut last_warning: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    let deadline = loop {
        tokio::select! {
            biased;
            deadline = &mut shutdown => break deadline,
            // Reap finished connections, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match open.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(serve_connection(
                            stream,
                            peer,
                            router.clone(),
                            limits,
                            stop_rx.clone(),
                            permit,
                        ));
                    }
                    Err(_) => {
                        refuse(stream, &refusing, &mut refusals);
                        refused_since_warning += 1;
                        // One line per ten seconds at most: a flood must not flood the log.
                        if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            tracing::warn!(
                                max_connections = limits.max_connections,
                                refused = refused_since_warning,
                                "connections over the cap answered with 503"
                            );
                            refused_since_warning = 0;
                            last_warning = Some(Instant::now());
                        }
                    }
                },
                Err(error) => {
                    if !is_connection_error(&error) {
                        tracing::error!(%error, "accept failed; pausing before the next accept");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                }
            },
        }
    };
    drop(listener);
    // Every connection finishes the request it is on and closes; idle ones close at once.
    let _ = stop_tx.send(true);
    let mut report = ShutdownReport::default();
    loop {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(Some(_)) => report.finished += 1,
            Ok(None) => break,
            Err(_) => {
                report.dropped = connections.len();
                tracing::warn!(
                    connections = report.dropped,
                    "shutdown deadline reached; dropping connections still open"
                );
                connections.abort_all();
                // Wait for the aborted tasks to let go of the state (their handlers).
                while connections.join_next().await.is_some() {}
                break;
            }
        }
    }
    refusals.abort_all();
    while refusals.join_next().await.is_some() {}
    report
}

/// Errors of one connection that do not say anything about the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the cap with a 503 and closes it. The answer is written, the
/// sending side shut, and what the client sent read and dropped for a moment: closing a
/// socket with unread input resets it, and the reset can destroy the 503 before the client
/// reads it.
fn refuse(mut stream: TcpStream, refusing: &Arc<Semaphore>, tasks: &mut JoinSet<()>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        // Too many being refused already: one try, then close.
        let _ = stream.try_write(OVER_CAPACITY);
        return;
    };
    tasks.spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(OVER_CAPACITY).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut drained = 0usize;
            while drained < 64 * 1024 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// The address of the connection's other end, set on every request (handlers that need
/// the client's address read it; behind proxies see `server.trusted_proxy_hops`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddress(pub std::net::SocketAddr);

/// Serves one connection until it ends, a timeout drops it, or shutdown closes it.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let guard = activity.request_started();
            request.extensions_mut().insert(PeerAddress(peer));
            let router = router.clone();
            async move {
                let response = match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    _guard: guard,
                }))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Timeouts are ours (below): hyper's header timer also runs while a kept-alive
        // connection waits, so it cannot tell idle from slow.
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut stopping = false;
    loop {
        let check_at = activity.expiry(&limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                let _ = changed;
                // Nothing in progress: close now. Else let the request finish (up to the
                // shutdown deadline) and close after it.
                if activity.is_waiting_without_bytes() {
                    return;
                }
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(check_at.0) => {
                // The expiry may have moved (bytes arrived, a request started): look again.
                let (at, reason) = activity.expiry(&limits);
                if at <= Instant::now() {
                    tracing::debug!(reason, "closing a connection");
                    return;
                }
            }
        }
    }
}

/// `u64::MAX` in a time slot: not set.
const UNSET: u64 = u64::MAX;

/// What a connection is doing, as seen by its socket and its requests; read by the timer
/// that decides when to drop it. Times are milliseconds since the connection opened. One
/// task touches it (the connection's), so relaxed atomics suffice.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests whose head is parsed and whose response body has not ended.
    in_flight: AtomicU32,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// When the connection last became idle (opened, or the last response ended).
    idle_since: AtomicU64,
    /// When the first byte arrived since the connection became idle: a head has started.
    head_since: AtomicU64,
    /// Since when a write has been refused by a full socket buffer.
    write_blocked_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(UNSET),
            write_blocked_since: AtomicU64::new(UNSET),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn request_started(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(UNSET, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == UNSET
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        if !blocked {
            self.write_blocked_since.store(UNSET, Ordering::Relaxed);
        } else if self.write_blocked_since.load(Ordering::Relaxed) == UNSET {
            self.write_blocked_since
                .store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// No request in progress and no byte of a new one: safe to close at once.
    fn is_waiting_without_bytes(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == UNSET
    }

    /// When the connection is to be dropped if nothing changes, and why.
    fn expiry(&self, limits: &ConnectionLimits) -> (Instant, &'static str) {
        // Far enough to mean never, near enough not to overflow `Instant`.
        let mut earliest = (Instant::now() + Duration::from_secs(86_400), "none");
        let mut consider = |at: Instant, reason: &'static str| {
            if at < earliest.0 {
                earliest = (at, reason);
            }
        };
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != UNSET {
            consider(
                self.at(blocked) + limits.idle_timeout,
                "the client read nothing of its response",
            );
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let head = self.head_since.load(Ordering::Relaxed);
            let idle = self.idle_since.load(Ordering::Relaxed);
            if self.requests.load(Ordering::Relaxed) == 0 {
                // Connecting and saying nothing (or dribbling a head) is the first step of a
                // slow attack: on a new connection the header timeout runs from the connect.
                consider(
                    self.opened + limits.header_timeout,
                    "no request head in time after the connect",
                );
            } else if head != UNSET {
                consider(
                    self.at(head) + limits.header_timeout,
                    "request head not finished in time",
                );
            } else {
                consider(self.at(idle) + limits.idle_timeout, "idle keep-alive");
            }
        }
        earliest
    }
}

/// Counts a request out when its response body ends or is dropped.
#[derive(Debug)]
struct InFlightGuard(Arc<Activity>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            activity
                .idle_since
                .store(activity.now_ms(), Ordering::Relaxed);
            activity.head_since.store(UNSET, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted in flight until it ends.
#[derive(Debug)]
struct TrackedBody {
    inner: axum::body::Body,
    _guard: InFlightGuard,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling [`Activity`] when bytes arrive and when writes are refused.
#[derive(Debug)]
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write_blocked(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_blocked(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit on open files to the hard limit, logging both, and returns the
/// soft limit in force afterwards (`None` where it cannot be read, or is unlimited).
/// A server holds a descriptor per connection: the default soft limit (often 1,024) is
/// what a few hundred idle clients would exhaust.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let before = getrlimit(Resource::Nofile);
        if before.current != before.maximum {
            let raised = rustix::process::Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            };
            if let Err(error) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(%error, soft = ?before.current, hard = ?before.maximum,
                    "could not raise the open-file limit");
            }
        }
        let after = getrlimit(Resource::Nofile);
        tracing::info!(
            soft_before = ?before.current,
            soft = ?after.current,
            hard = ?after.maximum,
            "open-file limit"
        );
        after.current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Descriptors kept free of connections: the log, the KPI store, the data directory,
/// refusals being answered, and the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The default cap on connections for an open-file limit: the limit less what the rest of
/// the server needs, between 16 and 16,384 (beyond that, memory rather than descriptors is
/// the bound, and the operator should choose).
pub fn default_max_connections(open_file_limit: Option<u64>) -> usize {
    let limit = open_file_limit.unwrap_or(16_384 + RESERVED_DESCRIPTORS);
    limit.saturating_sub(RESERVED_DESCRIPTORS).clamp(16, 16_384) as usize
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn default_cap_leaves_descriptors_for_the_server() {
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(Some(1 << 20)), 16_384);
        assert_eq!(default_max_connections(None), 16_384);
    }

    #[test]
    fn over_capacity_answer_declares_its_exact_length() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn timeouts_follow_what_the_connection_is_doing() {
        let limits = limits();
        let never = || Instant::now() + Duration::from_secs(3600);
        let activity = Arc::new(Activity::new());
        // Connected, nothing sent: the header timeout from the connect.
        let from_connect = (
            activity.opened + limits.header_timeout,
            "no request head in time after the connect",
        );
        assert_eq!(activity.expiry(&limits), from_connect);
        assert!(activity.is_waiting_without_bytes());
        // Bytes of the first head do not move it: a dribbled head gains no time.
        activity.bytes_read();
        assert_eq!(activity.expiry(&limits), from_connect);
        assert!(!activity.is_waiting_without_bytes());
        // A request in flight: no connection timeout (its body has its own).
        let guard = activity.request_started();
        assert!(activity.expiry(&limits).0 > never());
        assert!(!activity.is_waiting_without_bytes());
        // Response done: idle keep-alive from then on.
        drop(guard);
        let idle = activity.idle_since.load(Ordering::Relaxed);
        assert_eq!(
            activity.expiry(&limits),
            (activity.at(idle) + limits.idle_timeout, "idle keep-alive")
        );
        // The first byte of a new head: the header timeout from that byte.
        activity.bytes_read();
        let head = activity.head_since.load(Ordering::Relaxed);
        assert_ne!(head, UNSET);
        assert_eq!(
            activity.expiry(&limits),
            (
                activity.at(head) + limits.header_timeout,
                "request head not finished in time"
            )
        );
        assert!(!activity.is_waiting_without_bytes());
        // A client that stops reading its response is dropped after the idle timeout.
        let _streaming = activity.request_started();
        assert!(activity.expiry(&limits).0 > never());
        activity.write_blocked(true);
        let blocked = activity.write_blocked_since.load(Ordering::Relaxed);
        assert_eq!(
            activity.expiry(&limits),
            (
                activity.at(blocked) + limits.idle_timeout,
                "the client read nothing of its response"
            )
        );
        activity.write_blocked(false);
        assert!(activity.expiry(&limits).0 > never());
    }
}
