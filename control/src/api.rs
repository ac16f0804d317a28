//! The daemon's HTTP API: `GET /metrics` (Prometheus text), `GET /status` (JSON, see
//! [`crate::status`]) and `GET /healthz`, on 127.0.0.1:9180 by default.
//!
//! The server is a small HTTP/1.1 handler on std sockets, with `httparse` doing the
//! parsing. No async runtime, and nothing an off-the-shelf blocking server (tiny_http)
//! would not let us bound: the request head is limited to [`MAX_HEAD`] bytes and
//! [`REQUEST_TIMEOUT`], the response must be taken within another [`REQUEST_TIMEOUT`]
//! (an absolute deadline, not a per-`send` timeout, so a client that reads a few bytes
//! at a time cannot stretch it), at most [`MAX_CONNECTIONS`] requests are handled at once
//! (one short-lived thread each), every response closes its connection, and a malformed
//! request gets a 4xx answer without affecting anything else. Only GET and HEAD exist.
//! Stopping the server takes at most about [`SHUTDOWN_GRACE`], whatever the clients do.
//!
//! [`Metrics`] defines the daemon's metric families. State that the control loop already
//! holds as running totals (dataplane counters, BGP message counts, health, announce
//! state) is read from the latest [`Status`] at each scrape by a collector, so a scrape
//! always sees one consistent tick and removed VIPs or backends disappear from the output
//! with no bookkeeping. Events (health and announce transitions, config reloads, publish
//! latency) are ordinary prometheus-client counters and a histogram.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::status::{Health, SharedStatus, Status, VipStatus};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head, and then again, from when the answer
/// is ready, to take the whole response: a connection lasts at most about twice this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping the server lets requests in flight finish before it shuts their
/// sockets down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Requests handled at once; more connections are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 32;

/// The running API server. Dropping it (or [`ApiServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    /// What it serves, and its request timeout: to start it again elsewhere
    /// ([`ApiServer::move_to`]).
    registry: Arc<Registry>,
    status: SharedStatus,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    /// A second handle on the listening socket, used to wake the blocked `accept`.
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

/// What the connection threads share.
struct Shared {
    handler: Handler,
    /// [`REQUEST_TIMEOUT`]; shorter in tests.
    timeout: Duration,
    /// Set once the server stops and the grace for requests in flight is over.
    stopping: AtomicBool,
    active: AtomicUsize,
    /// A second handle on the socket of each connection in flight, by connection number,
    /// so that stopping the server can end connections whose clients are stuck.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        // A panicking connection thread leaves the map itself intact.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The request path apart from the socket: request bytes in, response bytes out. The
/// server feeds it what a client has sent so far after every read, so the fuzz target
/// and the property tests exercise exactly what a client reaches.
#[derive(Debug)]
pub struct Handler {
    registry: Arc<Registry>,
    status: SharedStatus,
}

impl Handler {
    /// Serves `/metrics` from `registry` and `/status` from `status`.
    pub fn new(registry: Arc<Registry>, status: SharedStatus) -> Handler {
        Handler { registry, status }
    }

    /// The whole response (head and body) to `received`, the bytes a client has sent so
    /// far, or `None` while they are the start of a request head that may still complete.
    /// Only the first [`MAX_HEAD`] bytes count, as the server reads no more: a head that
    /// does not end within them is answered 431. Bytes after the head (a body, a second
    /// request) are ignored, so once there is an answer, more bytes do not change it.
    pub fn answer(&self, received: &[u8]) -> Option<Vec<u8>> {
        let received = &received[..received.len().min(MAX_HEAD)];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let response = match req.parse(received) {
            Ok(httparse::Status::Complete(_)) => {
                let head_only = req.method == Some("HEAD");
                return Some(self.route(&req).encode(head_only));
            }
            Ok(httparse::Status::Partial) if received.len() < MAX_HEAD => return None,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                Response::text(431, "request head too large\n")
            }
            Err(_) => Response::text(400, "bad request\n"),
        };
        Some(response.encode(false))
    }

    fn route(&self, req: &httparse::Request) -> Response {
        let method = req.method.unwrap_or_default();
        let path = req.path.unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        if !matches!(path, "/metrics" | "/status" | "/healthz") {
            return Response::text(404, "not found; try /metrics, /status or /healthz\n");
        }
        if method != "GET" && method != "HEAD" {
            return Response {
                extra: "Allow: GET, HEAD\r\n",
                ..Response::text(405, "only GET and HEAD\n")
            };
        }
        match path {
            "/metrics" => metrics(req, &self.registry),
            "/status" => {
                let status = self.status.load();
                match serde_json::to_vec_pretty(&**status) {
                    Ok(mut body) => {
                        body.push(b'\n');
                        Response {
                            status: 200,
                            content_type: "application/json",
                            body,
                            extra: "",
                        }
                    }
                    Err(e) => Response::text(500, &format!("cannot encode status: {e}\n")),
                }
            }
            _ => Response::text(200, "ok\n"),
        }
    }
}

impl ApiServer {
    /// Binds `listen` (so an address in use fails here, at startup) and serves on a thread
    /// named `api`.
    pub fn start(
        listen: SocketAddr,
        registry: Arc<Registry>,
        status: SharedStatus,
    ) -> io::Result<ApiServer> {
        ApiServer::start_with_timeout(listen, registry, status, REQUEST_TIMEOUT)
    }

    /// [`ApiServer::start`] with `timeout` in place of [`REQUEST_TIMEOUT`].
    fn start_with_timeout(
        listen: SocketAddr,
        registry: Arc<Registry>,
        status: SharedStatus,
        timeout: Duration,
    ) -> io::Result<ApiServer> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let waker = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            handler: Handler::new(registry.clone(), status.clone()),
            timeout,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let thread = std::thread::Builder::new().name("api".into()).spawn({
            let stop = stop.clone();
            move || accept_loop(listener, &stop, &shared)
        })?;
        tracing::info!(%addr, "API listening (/metrics, /status, /healthz)");
        Ok(ApiServer {
            addr,
            registry,
            status,
            timeout,
            stop,
            listener: waker,
            thread: Some(thread),
        })
    }

    /// Whether a server on `listen` cannot start beside this one only because their
    /// addresses overlap: Linux refuses to bind a listening port again on an address that
    /// covers or is covered by a bound one (`0.0.0.0:9180` and `127.0.0.1:9180`), even with
    /// `SO_REUSEADDR`. `err` is what [`ApiServer::start`] on `listen` failed with.
    pub fn overlaps(&self, listen: SocketAddr, err: &io::Error) -> bool {
        err.kind() == io::ErrorKind::AddrInUse && listen.port() == self.addr.port()
    }

    /// Moves the server to `listen` when it cannot start there beside this one
    /// ([`ApiServer::overlaps`]): stops this one, then binds `listen`. If that fails, this
    /// one's address is bound again, and the error comes back with that server (`None` if
    /// even that failed, which is logged).
    pub fn move_to(
        mut self,
        listen: SocketAddr,
    ) -> Result<ApiServer, (io::Error, Option<ApiServer>)> {
        self.stop_and_join();
        let (registry, status, timeout) =
            (self.registry.clone(), self.status.clone(), self.timeout);
        let back = self.addr;
        drop(self);
        tracing::info!(from = %back, to = %listen, "moving the API: the old address stops before the new one binds");
        match ApiServer::start_with_timeout(listen, registry.clone(), status.clone(), timeout) {
            Ok(api) => Ok(api),
            Err(e) => match ApiServer::start_with_timeout(back, registry, status, timeout) {
                Ok(api) => Err((e, Some(api))),
                Err(again) => {
                    tracing::error!(addr = %back, error = %again, "cannot bind the API's address again; no API until the next reload");
                    Err((e, None))
                }
            },
        }
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish for up to [`SHUTDOWN_GRACE`], shuts
    /// down the sockets of those still open (their clients are stuck), waits for their
    /// threads and closes the listening socket. Returns within about [`SHUTDOWN_GRACE`].
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Release: the accept loop's Acquire load sees the flag once accept returns.
        self.stop.store(true, Ordering::Release);
        // shutdown(2) on a listening socket makes a blocked accept(2) fail at once (Linux).
        // SAFETY: plain shutdown(2) on a socket fd we own for as long as `self` lives.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if thread.join().is_err() {
            tracing::error!("API thread panicked");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    // Whether the last accept failed: a lasting failure (EMFILE while descriptors run
    // out) is warned of once, not twenty times a second.
    let mut failing = false;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            break;
        }
        handlers.retain(|h| !h.is_finished());
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // ECONNABORTED, EMFILE and the like: nothing to do but try again, gently.
                if failing {
                    tracing::debug!(error = %e, "API accept still fails");
                } else {
                    tracing::warn!(error = %e, "API accept failed; trying again every 50ms");
                }
                failing = true;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!("API accepting connections again");
        }
        // Relaxed is enough: the count only bounds concurrency, it orders no other memory.
        if shared.active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        }
        let id = next_id;
        next_id += 1;
        match stream.try_clone() {
            Ok(handle) => {
                shared.conns().insert(id, handle);
            }
            Err(e) => {
                shared.active.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot clone an API connection's socket");
                continue;
            }
        }
        let shared2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                serve(stream, &shared2);
                // Dropping the second handle closes the socket for good.
                shared2.conns().remove(&id);
                shared2.active.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(h) => handlers.push(h),
            Err(e) => {
                shared.conns().remove(&id);
                shared.active.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot spawn an API connection thread");
            }
        }
    }
    finish(handlers, shared);
}

/// Ends the connections in flight once the server stops: those that finish within
/// [`SHUTDOWN_GRACE`] (or the request timeout, if shorter) do so undisturbed; the sockets
/// of the rest are shut down, which wakes their threads from any read or write at once,
/// and `stopping` ends their wait for the client to take the response.
fn finish(handlers: Vec<JoinHandle<()>>, shared: &Shared) {
    let grace_end = Instant::now() + SHUTDOWN_GRACE.min(shared.timeout);
    while handlers.iter().any(|h| !h.is_finished()) && Instant::now() < grace_end {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Relaxed: the flag orders no other memory; the threads poll it.
    shared.stopping.store(true, Ordering::Relaxed);
    for conn in shared.conns().values() {
        let _ = conn.shutdown(Shutdown::Both);
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Answers 503 without blocking the accept loop: whatever the client has sent already is
/// read first, so that closing does not reset the connection before the answer arrives.
fn refuse(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    if stream.set_nonblocking(true).is_ok() {
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }
    // Non-blocking: a client that does not take the short answer at once loses it.
    let _ = respond(
        &mut stream,
        &Response::text(503, "too many connections\n").encode(false),
        Instant::now() + REQUEST_TIMEOUT,
    );
    let _ = stream.shutdown(Shutdown::Write);
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// One response: status, content type, body, extra headers.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: &'static str,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            extra: "",
        }
    }

    /// Status line, headers and, unless answering a HEAD request, the body.
    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Handles one connection: one request, one response, close. The request head must arrive
/// within the request timeout and the whole response be taken (acknowledged by the client)
/// within the request timeout after that; a client too slow to take it gets a reset
/// instead, so that neither this thread nor the kernel keeps sending to it.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let timeout = shared.timeout;
    let Some(response) = read_and_answer(&mut stream, &shared.handler, Instant::now() + timeout)
    else {
        return;
    };
    let deadline = Instant::now() + timeout;
    if respond(&mut stream, &response, deadline).is_err()
        || !delivered(&mut stream, deadline, &shared.stopping)
    {
        abort(stream);
        return;
    }
    linger(stream, deadline);
}

/// Waits until the client has acknowledged everything written to `stream` (the kernel's
/// send queue is empty), reading (and dropping) what it still sends meanwhile. False if
/// `deadline` passes first or the server stops; true also when the queue cannot be read.
fn delivered(stream: &mut TcpStream, deadline: Instant, stopping: &AtomicBool) -> bool {
    let mut sink = [0u8; 4096];
    let mut eof = false;
    while unsent(stream) > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stopping.load(Ordering::Relaxed) {
            return false;
        }
        let step = left.min(Duration::from_millis(10));
        if eof || stream.set_read_timeout(Some(step)).is_err() {
            std::thread::sleep(step);
            continue;
        }
        match stream.read(&mut sink) {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // Reset: nothing more will be delivered, and nothing is left to wait for.
            Err(_) => return true,
        }
    }
    true
}

/// Bytes written to `stream` that the client has not acknowledged yet (SIOCOUTQ), 0 if
/// that cannot be read.
fn unsent(stream: &TcpStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: ioctl(2) SIOCOUTQ (TIOCOUTQ) on a socket fd `stream` owns, writing one c_int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// Reads until the handler has an answer, by `deadline`: the answer, a 408 to a client
/// that stalled mid-request, or `None` for one that closed (or reset) first or connected
/// and sent nothing (like a port scan), which gets no answer.
fn read_and_answer(
    stream: &mut TcpStream,
    handler: &Handler,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    let timed_out = |len| (len > 0).then(|| Response::text(408, "request timeout\n").encode(false));
    loop {
        // `answer` is Some once `buf` is full, so there is always room to read into.
        if let Some(response) = handler.answer(&buf[..len]) {
            return Some(response);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return timed_out(len);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return None,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return timed_out(len);
            }
            Err(_) => return None,
        }
    }
}

/// Prometheus text format 0.0.4, or OpenMetrics text when the scraper prefers it.
fn metrics(req: &httparse::Request, registry: &Registry) -> Response {
    let openmetrics = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("accept")
            && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
    });
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (
            prometheus_client::encoding::text::encode(&mut body, registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut body, registry),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    match encoded {
        Ok(()) => Response {
            status: 200,
            content_type,
            body: body.into_bytes(),
            extra: "",
        },
        Err(_) => Response::text(500, "cannot encode metrics\n"),
    }
}

/// The time left until `deadline`, or a `TimedOut` error saying `what` once it has passed.
fn time_left(deadline: Instant, what: &'static str) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, what));
    }
    Ok(left)
}

/// Writes all of `response` by `deadline`. Each write may block only until the deadline,
/// so a client that takes a few bytes at a time cannot stretch it (as it could a timeout
/// per `send`); an error once it passes, or once the socket is shut down.
fn respond(stream: &mut TcpStream, mut response: &[u8], deadline: Instant) -> io::Result<()> {
    while !response.is_empty() {
        stream.set_write_timeout(Some(time_left(
            deadline,
            "client too slow to take the response",
        )?))?;
        match stream.write(response) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => response = &response[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Closes gracefully once the client has the response: stop sending, then drain what the
/// client still sends for a moment (at most until `deadline`), so that unread request
/// bytes do not turn the close into a reset that destroys the response before the client
/// has read it.
fn linger(mut stream: TcpStream, deadline: Instant) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Closes with a reset (SO_LINGER 0): for a client that did not take its response in time,
/// whose unsent bytes the kernel would otherwise keep trying to deliver after the close.
fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a socket fd `stream` owns, reading a `linger` of the size
    // passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A response as [`get`] returns it.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Largest response [`get`] reads.
const MAX_RESPONSE: usize = 64 << 20;

/// What [`get`] fails with when the server accepted the connection but did not answer in
/// time: it was reached, unlike a refused or timed-out connect.
#[derive(Debug)]
pub struct NoAnswer(pub Duration);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connected, but no complete answer within {:?}", self.0)
    }
}

impl std::error::Error for NoAnswer {}

/// `GET path` from the API at `addr` (one connection, `Connection: close`), all within
/// `timeout`. The client side of this module, for `dsrgate status` and the tests.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dsrgate\r\nConnection: close\r\n\r\n"
    )?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let no_answer = || io::Error::new(io::ErrorKind::TimedOut, NoAnswer(timeout));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_answer());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout shows as EAGAIN on Linux ("Resource temporarily unavailable").
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(no_answer())
            }
            Err(e) => return Err(e),
        }
        if data.len() > MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response too large",
            ));
        }
    }
    parse_response(&data)
}

/// A whole response as read until the server closed: the head, and the body cut at its
/// `Content-Length` (an error if shorter). Whatever the server sent, an error or a
/// response, never a panic: `dsrgate status` may be pointed at anything.
pub fn parse_response(data: &[u8]) -> io::Result<HttpResponse> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let body_at = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("truncated HTTP response")),
        Err(e) => return Err(bad(&format!("bad HTTP response: {e}"))),
    };
    let status = resp.code.ok_or_else(|| bad("no status code"))?;
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut body = data[body_at..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if let Some(length) = length {
        if body.len() < length {
            return Err(bad("HTTP body shorter than Content-Length"));
        }
        body.truncate(length);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------
// Metrics.

/// Labels of `dsrgate_health_transitions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthTransitionLabels {
    /// The probed backend address.
    pub backend: String,
    /// `up` or `down`.
    pub to: String,
    /// Why: the probe result label (`passed`, `refused`, `timeout`, ...).
    pub reason: String,
}

/// Labels of `dsrgate_announce_transitions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnounceTransitionLabels {
    /// The VIP address (the announced prefix).
    pub vip: String,
    /// `announce` or `withdraw`.
    pub to: String,
    /// Why, as a short label: `healthy`, `too_few_healthy_backends`, `dataplane`,
    /// `shutting_down`, `removed`, `health_pending`.
    pub reason: String,
}

/// Labels of `dsrgate_maglev_slots_changed_total`: one service port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipPortLabels {
    pub vip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub port: String,
}

/// Labels of `dsrgate_config_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// The daemon's metrics, all named `dsrgate_*`. See the module docs for which are read
/// from the [`Status`] and which are counted here.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub health_transitions: Family<HealthTransitionLabels, Counter>,
    pub announce_transitions: Family<AnnounceTransitionLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// Per service port, Maglev slots that changed backend over its table rebuilds.
    pub maglev_slots_changed: Family<VipPortLabels, Counter>,
    /// Seconds from a backend-set change to the new snapshot being live in the workers.
    pub snapshot_publish_seconds: Histogram,
}

impl Metrics {
    /// Registers every family in `registry` under the `dsrgate_` prefix, the sampled ones
    /// reading from `status`.
    pub fn register(registry: &mut Registry, status: SharedStatus) -> Metrics {
        let r = registry.sub_registry_with_prefix("dsrgate");
        let m = Metrics {
            health_transitions: Family::default(),
            announce_transitions: Family::default(),
            config_reloads: Family::default(),
            maglev_slots_changed: Family::default(),
            // 50 µs .. ~1.6 s.
            snapshot_publish_seconds: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
        };
        r.register(
            "health_transitions",
            "Backend health state changes, by new state and reason",
            m.health_transitions.clone(),
        );
        r.register(
            "announce_transitions",
            "VIP announce and withdraw decisions, by reason",
            m.announce_transitions.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result",
            m.config_reloads.clone(),
        );
        r.register(
            "maglev_slots_changed",
            "Maglev table slots that changed backend when the service port's backends changed: \
             the flows that move to another backend on a gateway without their state",
            m.maglev_slots_changed.clone(),
        );
        r.register(
            "snapshot_publish_seconds",
            "Time from a backend change to the new dataplane snapshot being live",
            m.snapshot_publish_seconds.clone(),
        );
        r.register_collector(Box::new(StatusCollector { status }));
        m
    }

    pub fn health_transition(&self, backend: std::net::IpAddr, up: bool, reason: &str) {
        self.health_transitions
            .get_or_create(&HealthTransitionLabels {
                backend: backend.to_string(),
                to: if up { "up" } else { "down" }.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn announce_transition(&self, vip: std::net::IpAddr, announce: bool, reason: &str) {
        self.announce_transitions
            .get_or_create(&AnnounceTransitionLabels {
                vip: vip.to_string(),
                to: if announce { "announce" } else { "withdraw" }.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn snapshot_published(&self, latency: Duration) {
        self.snapshot_publish_seconds.observe(latency.as_secs_f64());
    }

    pub fn maglev_rebuilt(&self, vip: dataplane::snapshot::VipKey, changed_slots: u32) {
        self.maglev_slots_changed
            .get_or_create(&VipPortLabels {
                vip: vip.addr.to_string(),
                protocol: vip.proto.name().into(),
                port: vip.port.to_string(),
            })
            .inc_by(u64::from(changed_slots));
    }
}

/// Encodes the sampled families from the latest [`Status`] at each scrape.
#[derive(Debug)]
struct StatusCollector {
    status: SharedStatus,
}

/// Writes one metric family: a descriptor, then one sample per label set.
fn family<L: EncodeLabelSet, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, V)>,
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, &V) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut sample = m.encode_family(&labels)?;
        write(&mut sample, &value)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (impl EncodeLabelSet, u64)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Counter, rows, |m, v| {
        m.encode_counter::<NoLabelSet, _, u64>(v, None)
    })
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (impl EncodeLabelSet, i64)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Gauge, rows, |m, v| {
        m.encode_gauge(v)
    })
}

type Labels = Vec<(&'static str, String)>;

fn vip_labels(v: &VipStatus) -> Labels {
    vec![
        ("vip", v.address.to_string()),
        ("protocol", v.protocol.to_string()),
        ("port", v.port.to_string()),
        ("name", v.name.clone()),
    ]
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s: Arc<Status> = self.status.load_full();
        let e = &mut enc;

        gauge(
            e,
            "build_info",
            "Version of the running daemon",
            [(vec![("version", s.version.clone())], 1)],
        )?;
        gauge(
            e,
            "snapshot_generation",
            "Generation of the snapshot the workers run",
            [(Labels::new(), s.generation as i64)],
        )?;
        gauge(
            e,
            "dataplane_healthy",
            "1 while the dataplane can forward",
            [(Labels::new(), i64::from(s.dataplane_problem.is_none()))],
        )?;

        // Per service.
        counter(
            e,
            "vip_packets",
            "Frames received for a VIP service",
            s.vips.iter().map(|v| (vip_labels(v), v.packets)),
        )?;
        counter(
            e,
            "vip_bytes",
            "Bytes received for a VIP service",
            s.vips.iter().map(|v| (vip_labels(v), v.bytes)),
        )?;
        gauge(
            e,
            "vip_healthy_backends",
            "Backends of a VIP service passing health checks",
            s.vips.iter().map(|v| {
                let up = v.backends.iter().filter(|b| b.health == Health::Up).count();
                (vip_labels(v), up as i64)
            }),
        )?;
        // Announcing is per address: one series per VIP address.
        let mut prefixes: Vec<(Labels, i64)> = Vec::new();
        for v in &s.vips {
            let labels = vec![("vip", v.address.to_string())];
            if !prefixes.iter().any(|(l, _)| *l == labels) {
                prefixes.push((labels, i64::from(v.announced)));
            }
        }
        gauge(
            e,
            "vip_announced",
            "1 while at least one Established BGP session carries the VIP address (the announce policy wanting it is not enough)",
            prefixes,
        )?;

        // Per backend of each service.
        let backends = || {
            s.vips.iter().flat_map(|v| {
                v.backends.iter().map(move |b| {
                    let mut l = vip_labels(v);
                    l.push(("backend", b.address.to_string()));
                    (l, b)
                })
            })
        };
        counter(
            e,
            "backend_packets",
            "Frames sent to a backend",
            backends().map(|(l, b)| (l, b.packets)),
        )?;
        counter(
            e,
            "backend_bytes",
            "Bytes sent to a backend, after encapsulation",
            backends().map(|(l, b)| (l, b.bytes)),
        )?;
        gauge(
            e,
            "untracked_backends",
            "Backend slots of the running snapshot left out of the backend packet and byte counters because a worker's per-backend table is full (the most on any worker); above 0 they under-count",
            [(
                Labels::new(),
                i64::try_from(s.untracked_backends).unwrap_or(i64::MAX),
            )],
        )?;
        gauge(
            e,
            "untracked_vips",
            "Service ports of the running snapshot left out of the VIP packet and byte counters because a worker's per-VIP table is full (the most on any worker); above 0 they under-count",
            [(
                Labels::new(),
                i64::try_from(s.untracked_vips).unwrap_or(i64::MAX),
            )],
        )?;
        gauge(
            e,
            "backend_up",
            "1 while a backend passes its health checks",
            backends().map(|(l, b)| (l, i64::from(b.health == Health::Up))),
        )?;
        gauge(
            e,
            "backend_weight",
            "Maglev weight of a backend",
            backends().map(|(l, b)| (l, i64::from(b.weight))),
        )?;
        gauge(
            e,
            "backend_maglev_slots",
            "Maglev table slots held by a backend",
            backends().map(|(l, b)| (l, i64::from(b.slots))),
        )?;
        gauge(
            e,
            "backend_next_hop_resolved",
            "1 while the next-hop MAC toward a backend is known",
            backends().map(|(l, b)| (l, i64::from(b.next_hop.resolved))),
        )?;

        // BGP.
        let peer = |p: &crate::status::PeerStatus| vec![("peer", p.address.to_string())];
        gauge(
            e,
            "bgp_session_state",
            "BGP session state (BGP4-MIB numbering: 1 idle .. 6 established)",
            s.peers.iter().map(|p| (peer(p), p.state.code())),
        )?;
        gauge(
            e,
            "bgp_session_established",
            "1 while the BGP session is established",
            s.peers.iter().map(|p| {
                (
                    peer(p),
                    i64::from(p.state == crate::status::PeerState::Established),
                )
            }),
        )?;
        gauge(
            e,
            "bgp_prefixes_announced",
            "Prefixes announced to the peer",
            s.peers
                .iter()
                .map(|p| (peer(p), i64::from(p.prefixes_announced))),
        )?;
        counter(
            e,
            "bgp_messages_received",
            "BGP messages received from the peer",
            s.peers.iter().map(|p| (peer(p), p.messages_in)),
        )?;
        counter(
            e,
            "bgp_messages_sent",
            "BGP messages sent to the peer",
            s.peers.iter().map(|p| (peer(p), p.messages_out)),
        )?;

        // The steering program, per uplink.
        counter(
            e,
            "steering_packets",
            "Packets the XDP steering program on an uplink handled, by verdict: redirected (VIP traffic handed to a worker's AF_XDP socket), no_socket (VIP traffic whose RX queue has no socket, passed to the kernel), passed (not VIP traffic, passed to the kernel), dropped (addressed to a VIP but malformed), shed (VIP traffic dropped because its queue's worker was overloaded)",
            s.steering.iter().flat_map(|st| {
                st.verdicts().into_iter().map(|(verdict, n)| {
                    (
                        vec![
                            ("interface", st.interface.clone()),
                            ("verdict", verdict.to_owned()),
                        ],
                        n,
                    )
                })
            }),
        )?;

        // The uplink's MTU against what the workers receive.
        let uplink = |m: &crate::status::UplinkMtu| vec![("interface", m.interface.clone())];
        gauge(
            e,
            "uplink_mtu",
            "MTU of the uplink interface, as last read",
            s.uplink_mtu.iter().map(|m| (uplink(m), i64::from(m.mtu))),
        )?;
        gauge(
            e,
            "uplink_mtu_limit",
            "Largest uplink MTU the AF_XDP workers receive whole; while dsrgate_uplink_mtu is above it, the kernel drops larger VIP packets (drops reason rx_dropped) with no \"too big\" reply",
            s.uplink_mtu.iter().map(|m| (uplink(m), i64::from(m.limit))),
        )?;

        // The Kubernetes watch (no series without `[kubernetes]`).
        let none = Labels::new;
        gauge(
            e,
            "kubernetes_synced",
            "1 while Services, EndpointSlices and Nodes have each been listed and none of their watches is failing; 0 while not yet listed, or while the watch fails and the last good Kubernetes VIPs are kept",
            s.kubernetes.iter().map(|k| (none(), i64::from(k.synced))),
        )?;
        gauge(
            e,
            "kubernetes_last_event_timestamp_seconds",
            "When a Kubernetes list or watch last brought objects, of any resource (Unix time)",
            s.kubernetes
                .iter()
                .filter_map(|k| k.last_event_unix)
                .map(|t| (none(), i64::try_from(t).unwrap_or(i64::MAX))),
        )?;
        counter(
            e,
            "kubernetes_errors",
            "Errors of the Kubernetes watch (or of building its client) since the watcher started; the last good Kubernetes VIPs stay meanwhile",
            s.kubernetes.iter().map(|k| (none(), k.errors)),
        )?;

        // Workers.
        let worker = |w: &crate::status::WorkerStatus| {
            vec![
                ("interface", w.interface.clone()),
                ("queue", w.queue.to_string()),
            ]
        };
        gauge(
            e,
            "worker_info",
            "AF_XDP worker modes obtained (value 1)",
            s.workers.iter().map(|w| {
                let mut l = worker(w);
                let xdp = serde_json::to_value(w.xdp_mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                let bind = serde_json::to_value(w.bind_mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                l.push(("xdp_mode", xdp.unwrap_or_default()));
                l.push(("bind_mode", bind.unwrap_or_default()));
                l.push(("core", w.core.map_or_else(String::new, |c| c.to_string())));
                (l, 1)
            }),
        )?;
        counter(
            e,
            "worker_rx_packets",
            "Frames a worker received from its AF_XDP socket",
            s.workers.iter().map(|w| (worker(w), w.rx_packets)),
        )?;
        counter(
            e,
            "worker_tx_packets",
            "Frames a worker put in a TX ring (toward the nodes, or replies out of the uplink)",
            s.workers.iter().map(|w| (worker(w), w.tx_packets)),
        )?;
        counter(
            e,
            "worker_completed_packets",
            "Frames the kernel finished transmitting for a worker (from its completion rings); dsrgate_worker_tx_packets_total less this is frames still queued in the kernel, or lost there",
            s.workers.iter().map(|w| (worker(w), w.completed_packets)),
        )?;
        counter(
            e,
            "drops",
            "Frames dropped at a worker's queue, by reason: the pipeline's, the worker loop's, and the kernel's for its socket (rx_ring_full: the RX ring was full; rx_dropped: no free frame or a frame larger than a chunk)",
            s.workers.iter().flat_map(|w| {
                w.drops.iter().map(move |(reason, n)| {
                    let mut l = worker(w);
                    l.push(("reason", reason.clone()));
                    (l, *n)
                })
            }),
        )?;
        counter(
            e,
            "worker_shed_starts",
            "Times a worker fell behind (RX ring over three-quarters full) and had the steering program shed its queue's VIP traffic",
            s.workers.iter().map(|w| (worker(w), w.shed_starts)),
        )?;
        counter(
            e,
            "worker_fill_ring_empty",
            "Times the kernel found a worker's fill ring empty when it needed a frame (in copy mode each drops a frame, also counted as reason rx_dropped)",
            s.workers.iter().map(|w| (worker(w), w.fill_ring_empty)),
        )?;
        gauge(
            e,
            "flow_table_entries",
            "Flows in a worker's flow table",
            s.workers.iter().map(|w| (worker(w), w.flow_entries as i64)),
        )?;
        gauge(
            e,
            "flow_table_capacity",
            "Slots of a worker's flow table",
            s.workers
                .iter()
                .map(|w| (worker(w), w.flow_capacity as i64)),
        )?;
        counter(
            e,
            "flow_table_evictions",
            "Live flows evicted from a full flow table",
            s.workers.iter().map(|w| (worker(w), w.flow_evictions)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn metric_names_and_values_from_status() {
        let status = crate::status::shared(sample());
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, status.clone());
        m.health_transition("198.51.100.13".parse().unwrap(), false, "refused");
        m.announce_transition("192.0.2.10".parse().unwrap(), true, "healthy");
        m.config_reload(false);
        m.snapshot_published(Duration::from_micros(300));
        let key = |port| dataplane::snapshot::VipKey {
            addr: "192.0.2.10".parse().unwrap(),
            proto: dataplane::snapshot::Proto::Tcp,
            port,
        };
        m.maglev_rebuilt(key(80), 651);
        m.maglev_rebuilt(key(80), 700);
        m.maglev_rebuilt(key(443), 0);
        let text = scrape(&registry);
        for line in [
            "dsrgate_build_info{version=\"0.1.0\"} 1",
            "dsrgate_snapshot_generation 42",
            "dsrgate_dataplane_healthy 1",
            "dsrgate_vip_packets_total{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\"} 123456",
            "dsrgate_vip_bytes_total{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\"} 98765432",
            "dsrgate_vip_healthy_backends{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\"} 2",
            "dsrgate_vip_announced{vip=\"192.0.2.10\"} 1",
            "dsrgate_vip_announced{vip=\"2001:db8:100::10\"} 0",
            "dsrgate_backend_packets_total{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\",backend=\"198.51.100.11\"} 61728",
            "dsrgate_backend_up{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\",backend=\"198.51.100.13\"} 0",
            "# HELP dsrgate_untracked_backends Backend slots of the running snapshot left out of the backend packet and byte counters because a worker's per-backend table is full (the most on any worker); above 0 they under-count",
            "# TYPE dsrgate_untracked_backends gauge",
            "dsrgate_untracked_backends 3",
            "dsrgate_untracked_vips 2",
            "dsrgate_backend_maglev_slots{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\",backend=\"198.51.100.11\"} 32769",
            "dsrgate_backend_next_hop_resolved{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\",backend=\"198.51.100.12\"} 0",
            "dsrgate_bgp_session_state{peer=\"198.51.100.1\"} 6",
            "dsrgate_bgp_session_state{peer=\"2001:db8:f::1\"} 3",
            "dsrgate_bgp_session_established{peer=\"2001:db8:f::1\"} 0",
            "dsrgate_bgp_messages_received_total{peer=\"198.51.100.1\"} 130",
            "dsrgate_worker_info{interface=\"eth0\",queue=\"1\",xdp_mode=\"generic\",bind_mode=\"zero-copy\",core=\"\"} 1",
            "dsrgate_drops_total{interface=\"eth0\",queue=\"0\",reason=\"no_next_hop\"} 7",
            "dsrgate_drops_total{interface=\"eth0\",queue=\"0\",reason=\"rx_ring_full\"} 11",
            "# TYPE dsrgate_steering_packets_total counter",
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"redirected\"} 123463",
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"no_socket\"} 2",
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"passed\"} 5012",
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"dropped\"} 1",
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"shed\"} 640",
            "dsrgate_worker_shed_starts_total{interface=\"eth0\",queue=\"0\"} 4",
            "dsrgate_worker_shed_starts_total{interface=\"eth0\",queue=\"1\"} 0",
            "dsrgate_worker_fill_ring_empty_total{interface=\"eth0\",queue=\"0\"} 9",
            "dsrgate_worker_completed_packets_total{interface=\"eth0\",queue=\"0\"} 99982",
            "dsrgate_worker_completed_packets_total{interface=\"eth0\",queue=\"1\"} 23456",
            "# TYPE dsrgate_worker_completed_packets_total counter",
            "dsrgate_uplink_mtu{interface=\"eth0\"} 4000",
            "dsrgate_uplink_mtu_limit{interface=\"eth0\"} 3758",
            "# TYPE dsrgate_uplink_mtu gauge",
            "dsrgate_flow_table_entries{interface=\"eth0\",queue=\"0\"} 812",
            "dsrgate_flow_table_evictions_total{interface=\"eth0\",queue=\"0\"} 2",
            "dsrgate_health_transitions_total{backend=\"198.51.100.13\",to=\"down\",reason=\"refused\"} 1",
            "dsrgate_announce_transitions_total{vip=\"192.0.2.10\",to=\"announce\",reason=\"healthy\"} 1",
            "dsrgate_config_reloads_total{result=\"error\"} 1",
            "dsrgate_maglev_slots_changed_total{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\"} 1351",
            "dsrgate_maglev_slots_changed_total{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"443\"} 0",
            "# TYPE dsrgate_maglev_slots_changed_total counter",
            "dsrgate_snapshot_publish_seconds_count 1",
            "# TYPE dsrgate_vip_packets_total counter",
            "# TYPE dsrgate_backend_up gauge",
            "# TYPE dsrgate_snapshot_publish_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }

        // A new tick replaces the sampled state whole: a removed VIP's series disappear.
        // So do the uplink MTU's, while it has not been read.
        let mut next = sample();
        next.vips.truncate(1);
        next.vips[0].packets += 10;
        next.uplink_mtu = None;
        status.store(Arc::new(next));
        let text = scrape(&registry);
        assert!(text.contains("dsrgate_vip_packets_total{vip=\"192.0.2.10\",protocol=\"tcp\",port=\"80\",name=\"web\"} 123466"));
        assert!(!text.contains("2001:db8:100::10"), "{text}");
        assert!(!text.contains("dsrgate_uplink_mtu{"), "{text}");
    }

    /// The Kubernetes watch's series, only with `[kubernetes]`.
    #[test]
    fn kubernetes_metrics() {
        let status = crate::status::shared(sample());
        let mut registry = Registry::default();
        Metrics::register(&mut registry, status.clone());
        let text = scrape(&registry);
        assert!(
            !text.lines().any(|l| l.starts_with("dsrgate_kubernetes")),
            "{text}"
        );
        let mut s = sample();
        s.kubernetes = Some(crate::status::KubernetesStatus {
            synced: false,
            last_event_unix: Some(1_800_000_000),
            error: Some("watching services: 403".into()),
            error_since_unix: Some(1_800_000_100),
            errors: 5,
        });
        status.store(Arc::new(s));
        let text = scrape(&registry);
        for line in [
            "# TYPE dsrgate_kubernetes_synced gauge",
            "dsrgate_kubernetes_synced 0",
            "# TYPE dsrgate_kubernetes_last_event_timestamp_seconds gauge",
            "dsrgate_kubernetes_last_event_timestamp_seconds 1800000000",
            "# TYPE dsrgate_kubernetes_errors_total counter",
            "dsrgate_kubernetes_errors_total 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    /// An API server for the slow-client tests, with request timeout `timeout`, whose
    /// /status is some megabytes: far more than the socket buffers between it and a client
    /// hold. Also returns the length of that /status response.
    fn big_status_server(timeout: Duration) -> (ApiServer, usize) {
        let mut s = sample();
        let vips = s.vips.clone();
        while s.vips.len() < 4_000 {
            s.vips.extend(vips.iter().cloned());
        }
        let status = crate::status::shared(s);
        let handler = Handler::new(Arc::new(Registry::default()), status.clone());
        let len = handler
            .answer(b"GET /status HTTP/1.1\r\n\r\n")
            .expect("a complete request")
            .len();
        let listen = "127.0.0.1:0".parse().unwrap();
        let server =
            ApiServer::start_with_timeout(listen, Arc::new(Registry::default()), status, timeout)
                .unwrap();
        (server, len)
    }

    /// What [`slow_reader`] saw.
    #[derive(Debug)]
    struct SlowRead {
        /// Response bytes received.
        got: usize,
        /// When the server closed (or reset) the connection, from the request; `None` if it
        /// had not by the time the reader gave up.
        closed_after: Option<Duration>,
    }

    /// Asks `addr` for /status and takes the answer slowly, through a small receive buffer:
    /// at most 1 KiB every 20 ms, always enough to keep a per-send timeout from firing.
    /// Reports on `progress` once the first bytes have arrived; gives up after `give_up`.
    fn slow_reader(
        addr: SocketAddr,
        give_up: Duration,
        progress: std::sync::mpsc::Sender<()>,
    ) -> SlowRead {
        let mut s = TcpStream::connect(addr).unwrap();
        let rcvbuf: libc::c_int = 4096;
        // SAFETY: setsockopt(2) on the fd `s` owns, reading a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const rcvbuf).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        s.write_all(b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        let mut got = 0;
        let mut chunk = [0u8; 1024];
        while start.elapsed() < give_up {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if got == 0 {
                        let _ = progress.send(());
                    }
                    got += n;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = start.elapsed();
        SlowRead {
            got,
            closed_after: (elapsed < give_up).then_some(elapsed),
        }
    }

    /// A client that takes its response a few bytes at a time loses the connection once
    /// the response deadline passes, however steadily it reads.
    #[test]
    fn slow_reader_cannot_hold_a_connection_past_the_deadline() {
        let (server, len) = big_status_server(Duration::from_millis(500));
        let (tx, _rx) = std::sync::mpsc::channel();
        let read = slow_reader(server.local_addr(), Duration::from_secs(8), tx);
        assert!(read.got > 0, "{read:?}");
        assert!(read.got < len, "the client was not slow: {read:?} of {len}");
        // The deadline is 0.5 s; the bound leaves room for a loaded machine.
        let closed = read.closed_after.expect("connection still open after 8 s");
        assert!(closed < Duration::from_secs(5), "{read:?}");
        // The server still answers.
        let r = get(server.local_addr(), "/healthz", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
    }

    fn healthz(addr: SocketAddr) -> io::Result<u16> {
        get(addr, "/healthz", Duration::from_secs(2)).map(|r| r.status)
    }

    /// `0.0.0.0:P` cannot be bound beside `127.0.0.1:P`: the server moves there instead,
    /// and back to where it was when the new address cannot be bound.
    #[test]
    fn a_server_moves_to_an_overlapping_address_or_stays() {
        let start = |listen: SocketAddr| {
            ApiServer::start(
                listen,
                Arc::new(Registry::default()),
                crate::status::shared(Status::default()),
            )
        };
        let loopback = start("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = loopback.local_addr().port();
        let any = SocketAddr::from(([0, 0, 0, 0], port));
        let err = start(any).unwrap_err();
        assert!(loopback.overlaps(any, &err), "{err}");
        assert!(!loopback.overlaps(SocketAddr::from(([0, 0, 0, 0], port ^ 1)), &err));

        let moved = loopback.move_to(any).unwrap();
        assert_eq!(moved.local_addr(), any);
        assert_eq!(
            healthz(SocketAddr::from(([127, 0, 0, 1], port))).unwrap(),
            200
        );

        // 192.0.2.1 (TEST-NET-1) is no address of this host: the bind fails, and the
        // server is back on its address.
        let (err, back) = moved
            .move_to(SocketAddr::from(([192, 0, 2, 1], port)))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable, "{err}");
        let back = back.expect("bound again");
        assert_eq!(back.local_addr(), any);
        assert_eq!(
            healthz(SocketAddr::from(([127, 0, 0, 1], port))).unwrap(),
            200
        );
    }

    /// Stopping the server ends connections in flight, however slowly their clients read
    /// or however long they idle, well before their own request timeout would.
    #[test]
    fn shutdown_ends_stuck_connections_promptly() {
        let (server, _) = big_status_server(Duration::from_secs(60));
        let addr = server.local_addr();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || slow_reader(addr, Duration::from_secs(15), tx));
        // A client that connected and sent nothing, and one that sent half a request.
        let _idle = TcpStream::connect(addr).unwrap();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /status HT").unwrap();
        // The slow client's response is under way.
        rx.recv_timeout(Duration::from_secs(5))
            .expect("no response bytes");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let start = Instant::now();
        std::thread::spawn(move || {
            server.shutdown();
            let _ = done_tx.send(());
        });
        // SHUTDOWN_GRACE is 1 s; the bound leaves room for a loaded machine.
        done_rx
            .recv_timeout(Duration::from_secs(6))
            .expect("shutdown still waiting on its clients after 6 s");
        let took = start.elapsed();
        let read = reader.join().unwrap();
        let closed = read.closed_after.expect("slow client never cut off");
        assert!(
            closed < Duration::from_secs(10),
            "{read:?}, shutdown took {took:?}"
        );
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after shutdown"
        );
    }

    /// Each steering verdict's HELP explains it; a daemon whose steering counters could not
    /// be read exports no steering series rather than zeros.
    #[test]
    fn steering_metrics_explain_each_verdict() {
        let status = crate::status::shared(sample());
        let mut registry = Registry::default();
        Metrics::register(&mut registry, status.clone());
        let text = scrape(&registry);
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP dsrgate_steering_packets_total "))
            .unwrap_or_else(|| panic!("no HELP in:\n{text}"));
        for verdict in ["redirected", "no_socket", "passed", "dropped", "shed"] {
            assert!(help.contains(&format!("{verdict} (")), "{verdict}: {help}");
        }
        let mut next = sample();
        next.steering.clear();
        status.store(Arc::new(next));
        let text = scrape(&registry);
        assert!(!text.contains("dsrgate_steering_packets_total{"), "{text}");
    }
}
