//! The `/metrics` HTTP endpoint: one thread, blocking I/O (scrapes are rare and small).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
};

use anyhow::Context;

use super::MetricsState;

/// Serves `state` until dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (e.g. `127.0.0.1:9464`, `[::]:9464`; port 0 picks one).
    pub fn start(addr: &str, state: Arc<Mutex<MetricsState>>) -> anyhow::Result<Self> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .context("the metrics listener has no IP address")?;
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = thread::Builder::new()
            .name("synscope-metrics".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    respond(req, &state);
                }
            })
            .context("spawning the metrics thread")?;
        tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
        Ok(Self {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }
}

fn respond(req: tiny_http::Request, state: &Arc<Mutex<MetricsState>>) {
    let path = req.url().split('?').next().unwrap_or("");
    // Prometheus asks for OpenMetrics; everyone else gets the classic text format.
    let openmetrics = req.headers().iter().any(|h| {
        h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
    });
    let resp = match (req.method(), path) {
        (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
            match MetricsState::encode_text(state) {
                Ok(body) if openmetrics => {
                    tiny_http::Response::from_string(body).with_header(header(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ))
                }
                Ok(body) => tiny_http::Response::from_string(super::to_classic(&body)).with_header(
                    header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                ),
                Err(_) => {
                    tiny_http::Response::from_string("encoding failed\n").with_status_code(500)
                }
            }
        }
        (tiny_http::Method::Get, "/") => {
            tiny_http::Response::from_string("synscope: Prometheus metrics at /metrics\n")
        }
        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
    };
    // A client that went away is its own problem.
    let _ = req.respond(resp);
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes())
        .unwrap_or_else(|_| unreachable!("static header"))
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
