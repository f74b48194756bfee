//! The `/metrics` HTTP endpoint on hyper, with the limits a listener facing a network needs:
//!
//! - request heads are bounded ([`MAX_HEAD`]): a client sending 10 MB of headers gets `431`
//!   and is closed, never buffered;
//! - a request head must arrive within [`HEAD_TIMEOUT`] and a connection lives at most
//!   [`CONN_LIFETIME`]: slowloris clients are cut off;
//! - at most [`MAX_CONNS`] connections are served at once; beyond that new ones are closed at
//!   once, so memory is bounded under any request pattern;
//! - `accept` errors (EMFILE at the fd limit, ENFILE, ENOBUFS) are logged (once a minute) and
//!   the listener waits and goes on: it never dies while the process runs.
//!
//! One thread runs a current-thread tokio runtime; scrapes are rare and small.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot};

use super::MetricsState;

/// Bytes of a request head (request line and headers) a connection may buffer.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open (keep-alive included).
pub const CONN_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once.
pub const MAX_CONNS: usize = 32;

/// Serves `state` until dropped.
pub struct MetricsServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (e.g. `127.0.0.1:9464`, `[::1]:9464`; port 0 picks one).
    pub fn start(addr: &str, state: Arc<Mutex<MetricsState>>) -> anyhow::Result<Self> {
        let std_listener =
            listen(addr).with_context(|| format!("cannot serve metrics on {addr}"))?;
        std_listener
            .set_nonblocking(true)
            .context("metrics listener")?;
        let bound = std_listener
            .local_addr()
            .context("the metrics listener has no address")?;
        let (stop, stopped) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the metrics runtime")?;
        let thread = thread::Builder::new()
            .name("synscope-metrics".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => {
                            tokio::select! {
                                () = serve(l, state) => {}
                                _ = stopped => {}
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "metrics listener"),
                    }
                });
            })
            .context("spawning the metrics thread")?;
        tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            addr: bound,
        })
    }
}

/// Binds `addr`. An unspecified IPv6 address (`[::]`, what `:PORT` means) takes IPv4 too,
/// whatever `net.ipv6.bindv6only` says, as node_exporter's `:PORT` does.
fn listen(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
        sockopt,
    };
    let sa: SocketAddr = match addr.parse() {
        Ok(sa) => sa,
        Err(_) => return std::net::TcpListener::bind(addr),
    };
    let SocketAddr::V6(v6) = sa else {
        return std::net::TcpListener::bind(sa);
    };
    if !v6.ip().is_unspecified() {
        return std::net::TcpListener::bind(sa);
    }
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?;
    listen(&fd, Backlog::new(128).map_err(std::io::Error::from)?)?;
    Ok(std::net::TcpListener::from(fd))
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<MetricsState>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    let mut last_log: Option<Instant> = None;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: the listener stays; try again shortly.
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_log = Some(Instant::now());
                    tracing::warn!(error = %e, "metrics: cannot accept a connection; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the connection limit: closed at once
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&req, &state)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            // A client that misbehaves or goes away is its own problem.
            let _ = tokio::time::timeout(CONN_LIFETIME, conn).await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn respond<B>(req: &Request<B>, state: &Arc<Mutex<MetricsState>>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    // Prometheus asks for OpenMetrics; everyone else gets the classic text format.
    let openmetrics = req.headers().get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("application/openmetrics-text"))
    });
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match MetricsState::encode_text(state) {
            Ok(body) if openmetrics => text(
                StatusCode::OK,
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            Ok(body) => text(
                StatusCode::OK,
                super::to_classic(&body),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n",
                PLAIN,
            ),
        },
        (&Method::GET | &Method::HEAD, "/") => text(
            StatusCode::OK,
            "synscope: Prometheus metrics at /metrics\n",
            PLAIN,
        ),
        (&Method::GET | &Method::HEAD, _) => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n", PLAIN),
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
