//! The shim's HTTP server: one accept loop that keeps slow, idle and excess clients from
//! exhausting the process, and drains without dropping anyone at shutdown (CONTRACT §7, "a service
//! that stays up for everyone").
//!
//! - **Connection cap** (`http.max_connections`): past it a new connection gets one request
//!   answered only if it is `/healthz` or `/readyz` (a few such slots, a 300 ms head timeout),
//!   else `503` JSON with `Connection: close`; past those, `503` without reading the request;
//!   past a bound on those too, an immediate close. Probes keep answering under any flood.
//! - **Header read timeout** (`http.header_read_timeout`): a client must send a request's whole
//!   head within it. The wait for the *next* request on a kept-alive connection starts when the
//!   previous response was written, so the same bound closes idle keep-alive connections.
//! - **Body read timeout** (`http.body_read_timeout`): a body trickling slower is cut off (408).
//! - **Oversized bodies** with a `Content-Length` over `http.body_limit_bytes` get their 413 after
//!   the body is read and discarded (up to `http.max_drain_bytes`), so a client that writes its
//!   whole body before reading still receives the answer instead of a reset.
//! - **Every error is JSON**, also the ones hyper answers by itself for requests it cannot parse
//!   (see [`JsonErrors`]).
//! - **Shutdown**: requests in flight are answered; a request that arrives while draining gets
//!   `503` with `Connection: close`; once nothing is in flight the listener closes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle on the connection a request came on, in the request's extensions: cancelling it
/// closes the connection (the live alert feed cuts off a client that stopped reading; hyper
/// would otherwise wait on its full socket for good).
#[derive(Debug, Clone)]
pub struct ConnectionClose(pub CancellationToken);

/// What the server bounds.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_limit: usize,
    pub max_drain_bytes: usize,
    /// How long a drain may wait for requests in flight before closing what is left.
    pub shutdown_timeout: Duration,
}

/// Requests in flight and whether the server is draining, shared by the accept loop and the
/// middleware.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Serves `app` on `listener` until `shutdown`, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let drain = Arc::new(Drain::default());
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            (Arc::clone(&drain), limits),
            guard,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_read_timeout,
        ));
    let connections = Arc::new(Semaphore::new(connection_cap(limits.max_connections)));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let refusing = Arc::new(Semaphore::new(REFUSING_CONNECTIONS));
    let tracker = TaskTracker::new();
    let close = CancellationToken::new();
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain.draining.store(true, Ordering::SeqCst);
                drain_deadline = Some(tokio::time::Instant::now() + limits.shutdown_timeout);
                tracing::info!(in_flight = drain.in_flight.load(Ordering::SeqCst), "http draining: answering requests in flight, 503 for new ones");
                continue;
            }
            () = drained(&drain), if drain_deadline.is_some() => break,
            () = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                tracing::warn!(in_flight = drain.in_flight.load(Ordering::SeqCst), "http drain deadline passed; closing the remaining connections");
                break;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: never a busy loop, and keep serving the open ones.
                if refused_logged.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(error = %e, "accept failed");
                    refused_logged = std::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = Arc::clone(&connections).try_acquire_owned() {
            let app = app.clone();
            let close = close.clone();
            tracker.spawn(async move {
                serve_connection(stream, app, limits, close).await;
                drop(permit);
            });
        } else if let Ok(permit) = Arc::clone(&overflow).try_acquire_owned() {
            // Over the cap: probes still get their answer, everything else a 503.
            let app = app.clone();
            tracker.spawn(async move {
                serve_overflow(stream, app).await;
                drop(permit);
            });
        } else if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
            tracker.spawn(async move {
                refuse(stream).await;
                drop(permit);
            });
        } else {
            drop(stream); // a flood beyond every bound: closed at once
        }
    }
    drop(listener);
    close.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(2), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some http connections did not close in time");
    }
    Ok(())
}

/// Descriptors kept for everything but client connections (Kafka clients, files, the listener,
/// the overflow and refusal bounds below).
const RESERVED_DESCRIPTORS: u64 = 512 + (OVERFLOW_CONNECTIONS + REFUSING_CONNECTIONS) as u64;

/// Connections past the cap served briefly (one request, a one-second head timeout) so that
/// `/healthz` and `/readyz` still answer while idle clients hold every regular slot.
const OVERFLOW_CONNECTIONS: usize = 128;

/// How long an overflow connection may take to send its request head: probes send at once, an
/// idle flood must not hold these few slots.
const OVERFLOW_HEAD_TIMEOUT: Duration = Duration::from_millis(300);

/// Connections past both being answered 503 at the same time; beyond, closed at once.
const REFUSING_CONNECTIONS: usize = 1024;

/// The connection cap: `max_connections`, lowered when the process may not open that many files
/// (after raising its soft limit to the hard one), so the cap answers 503 before the process
/// runs out of descriptors.
fn connection_cap(max_connections: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS))
        .unwrap_or(usize::MAX)
        .max(1);
    if room < max_connections {
        tracing::warn!(
            max_connections,
            open_files_limit = limit,
            cap = room,
            "http.max_connections is above what the open-files limit allows; capping"
        );
    }
    max_connections.min(room)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves once nothing is in flight.
async fn drained(drain: &Drain) {
    loop {
        let notified = drain.idle.notified();
        if drain.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        notified.await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: HttpLimits,
    close: CancellationToken,
) {
    let cut = CancellationToken::new();
    let handle = ConnectionClose(cut.clone());
    let app =
        tower::ServiceExt::map_request(app, move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(handle.clone());
            request
        });
    let service = TowerToHyperService::new(app);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(JsonErrors::new(stream)), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        () = close.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
        () = cut.cancelled() => tracing::debug!("http connection cut off"),
    }
}

/// A connection past the cap: its one request is answered only if it is a health probe.
async fn serve_overflow(stream: TcpStream, app: Router) {
    let probes_only = tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
            let mut response = if probe {
                tower::ServiceExt::oneshot(app, request.map(Body::new))
                    .await
                    .unwrap_or_else(|never| match never {})
            } else {
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many open connections; retry later",
                )
            };
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(OVERFLOW_HEAD_TIMEOUT)
        .keep_alive(false)
        .serve_connection(
            TokioIo::new(JsonErrors::new(stream)),
            TowerToHyperService::new(probes_only),
        );
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
}

/// Past the cap and the overflow: a 503 without reading the request, then close.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":"too many open connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // A short lingering read, so a request already sent does not turn the close into a reset.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Counts requests in flight, answers 503 while draining, and drains oversized bodies before
/// their 413.
async fn guard(
    State((drain, limits)): State<(Arc<Drain>, HttpLimits)>,
    request: Request<Body>,
    next: Next,
) -> Response {
    if drain.draining.load(Ordering::SeqCst) {
        let mut response = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; retry on another instance",
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&l| l > limits.body_limit as u64) {
        return too_large(request, length, limits).await;
    }
    drain.in_flight.fetch_add(1, Ordering::SeqCst);
    let response = next.run(request).await;
    if drain.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
        drain.idle.notify_waiters();
    }
    response
}

/// The 413 of a body declared too large, sent after reading and discarding it (bounded).
async fn too_large(request: Request<Body>, length: u64, limits: HttpLimits) -> Response {
    let mut response = json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than {} bytes", limits.body_limit),
    );
    let drained = length <= limits.max_drain_bytes as u64
        && tokio::time::timeout(limits.body_read_timeout, async {
            let mut body = request.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
    if !drained {
        // Too much to read, or it did not arrive in time: answer and close.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The connection's socket, with one change on the way out: the error responses hyper writes by
/// itself for requests it cannot parse (400 for e.g. `Content-Length: abc`, 431 for a head too
/// large, 414, 505), which have an empty body, get a JSON `{"error"}` body like every other error
/// of the API. The application never answers these statuses with an empty body, so such a
/// response can only be hyper's.
struct JsonErrors<IO> {
    inner: IO,
    /// A rewritten response still being written.
    pending: Vec<u8>,
    written: usize,
}

impl<IO> JsonErrors<IO> {
    fn new(inner: IO) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The JSON rewrite of one of hyper's own empty error responses, or `None`.
fn rewrite_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let message = match status {
        "400" => "malformed HTTP request (e.g. an invalid Content-Length or header line)",
        "414" => "request URL too long",
        "431" => "request head too large (URL or headers over the limit)",
        "505" => "HTTP version not supported",
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || !lower.ends_with("\r\n\r\n") {
        return None;
    }
    let reason = text.lines().next()?.trim_end();
    let body = serde_json::json!({ "error": message }).to_string();
    Some(
        format!(
            "{reason}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrors<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> JsonErrors<IO> {
    /// Writes what is pending of a rewritten response.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.written < self.pending.len() {
            let rest = &self.pending[self.written..];
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrors<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if let Some(rewritten) = rewrite_parse_error(buf) {
            self.pending = rewritten;
            self.written = 0;
            // The original is consumed; the rewrite goes out in its place.
            let _ = self.poll_pending(cx);
            return Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_responses_are_rewritten_as_json() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 12:00:00 GMT\r\n\r\n";
        let rewritten = String::from_utf8(rewrite_parse_error(hyper_400).unwrap()).unwrap();
        assert!(
            rewritten.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{rewritten}"
        );
        assert!(rewritten.contains("content-type: application/json"));
        assert!(rewritten.ends_with(
            r#"{"error":"malformed HTTP request (e.g. an invalid Content-Length or header line)"}"#
        ));
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_parse_error(hyper_431).is_some());
        // The application's own answers (with bodies), and other statuses, pass unchanged.
        let app = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
        assert!(rewrite_parse_error(app).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_parse_error(ok).is_none());
    }
}
