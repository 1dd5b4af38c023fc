//! The HTTP front door: one listener serving IPP (`POST` with `application/ipp`),
//! `/healthz`, `/readyz` and `/metrics`, with timeouts against slow clients and a
//! graceful shutdown that finishes requests in flight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use crate::accounting;
use crate::app::App;
use crate::ipp;

mod icon;

/// How long in-flight requests may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Connections the kernel may complete before the spooler accepts them (the kernel caps it
/// at `net.core.somaxconn`). The standard library's 128 overflows when a few hundred
/// clients connect at once, a room pressing Print together: the kernel then drops their
/// handshakes, and each of those clients waits a second or more to retry. CUPS's default
/// (`ListenBackLog`) is `SOMAXCONN`.
const LISTEN_BACKLOG: u32 = 4096;

/// The listening socket for `address`.
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted spooler binds again while its old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve until `shutdown` resolves, then stop accepting and let requests in flight finish
/// (uploads included) for up to `SHUTDOWN_GRACE`. With `tls`, every connection is IPPS.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            draining: draining.clone(),
            peer,
        };
        let watcher = graceful.watcher();
        match tls.clone() {
            None => {
                tokio::spawn(connection.serve(stream, watcher));
            }
            Some(acceptor) => {
                let handshake_timeout = app.settings.idle_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection.serve(stream, watcher).await,
                        Ok(Err(error)) => tracing::warn!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    draining.store(true, Ordering::SeqCst);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period were cut off");
    }
    Ok(())
}

/// Load a PEM certificate chain and private key for IPPS.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| TlsError(format!("{}: {e}", path.display())));
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| {
        builder
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
    })
    .map_err(|e| TlsError(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// One client connection and what its requests need.
struct Connection {
    app: Arc<App>,
    draining: Arc<AtomicBool>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<S>(self, stream: S, watcher: Watcher)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            app,
            draining,
            peer,
        } = self;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(app.settings.idle_timeout)
            .keep_alive(true);
        let tls = app.settings.tls;
        let service = service_fn(move |request| {
            let app = app.clone();
            let draining = draining.clone();
            async move { Ok::<_, Infallible>(route(app, request, peer, tls, &draining).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%peer, %error, "connection closed with an error");
        }
    }
}

async fn route(
    app: Arc<App>,
    request: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    draining: &AtomicBool,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readiness(&app, draining).await,
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, app.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/") => text(StatusCode::OK, overview(&app, &request)),
        (&Method::GET, icon) if icon.starts_with("/icons/") => queue_icon(&app, icon),
        (&Method::GET, reports) if reports.starts_with(accounting::report::HTTP_PREFIX) => {
            let answer = accounting::report::http(&app, reports, request.uri().query()).await;
            let mut response = text(
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                answer.body,
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(answer.content_type),
            );
            response
        }
        (&Method::POST, _) => {
            let is_ipp = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/ipp"));
            if !is_ipp {
                tracing::warn!(%peer, %path, "POST without Content-Type application/ipp");
                return text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected application/ipp\n",
                );
            }
            if draining.load(Ordering::SeqCst) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            let context = ipp::RequestContext {
                host: host_of(&request, &app),
                authorization: request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
                tls,
                peer,
                path,
                app,
            };
            ipp::serve(context, request.into_body()).await
        }
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/icons/<queue>.png`, the URI `printer-icons` advertises.
fn queue_icon(app: &App, path: &str) -> Response<Full<Bytes>> {
    let queue = path.trim_start_matches("/icons/").strip_suffix(".png");
    if !queue.is_some_and(|queue| app.config().queues.contains_key(queue)) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let mut response = Response::new(Full::new(icon::png()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("image/png"),
    );
    response
}

/// Ready when not draining and the job store answers.
async fn readiness(app: &App, draining: &AtomicBool) -> Response<Full<Bytes>> {
    if draining.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match app.store.ready().await {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(error) => {
            tracing::warn!(%error, "not ready: job store unavailable");
            text(StatusCode::SERVICE_UNAVAILABLE, "job store unavailable\n")
        }
    }
}

/// A short page for humans who open the server in a browser: the queues and their URIs.
fn overview(app: &App, request: &Request<Incoming>) -> String {
    let host = host_of(request, app);
    let scheme = if app.settings.tls { "ipps" } else { "ipp" };
    let config = app.config();
    let mut page = String::from("printfleet spooler\n\nqueues:\n");
    for name in config.queues.keys() {
        page.push_str(&format!("  {name}: {scheme}://{host}/ipp/print/{name}\n"));
    }
    page
}

/// The authority clients used to reach us (for URIs in responses).
fn host_of<B>(request: &Request<B>, app: &App) -> String {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(String::from)
        .unwrap_or_else(|| app.settings.listen.to_string())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More clients than the standard library's backlog connect while the spooler is busy
    /// (nothing accepts): every one of them completes its handshake at once.
    #[tokio::test]
    async fn a_crowd_connecting_at_once_is_not_turned_away() {
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let address = listener.local_addr().expect("local address");
        let clients = (0..300).map(|_| {
            // A dropped handshake is retried after a second: well past this.
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(address),
            )
        });
        let connected = futures_util::future::join_all(clients).await;
        let refused = connected
            .iter()
            .filter(|outcome| !matches!(outcome, Ok(Ok(_))))
            .count();
        assert_eq!(refused, 0, "clients that could not connect");
    }
}
