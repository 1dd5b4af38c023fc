//! The IPP server: reads a request from an HTTP body, runs the operation, answers.
//!
//! The wire encoding is the `ipp` crate's (behind `codec`, which bounds and pre-checks what
//! the crate sees); the semantics (RFC 8011, PWG 5100.12 IPP Everywhere, PWG 5100.3, and
//! the CUPS operations CUPS's own clients send) are in `ops`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyStream, Full};
use ipp::attribute::IppAttribute;
use ipp::model::StatusCode;

pub mod codec;
pub mod job_attributes;
pub mod ops;
pub mod printer_attributes;

use codec::{Header, MAX_ATTRIBUTE_SECTION, Request, Response, Scan, SectionScanner};

/// What the HTTP layer knows about a request.
pub struct RequestContext {
    pub app: Arc<crate::app::App>,
    /// Request path, e.g. `/ipp/print/demo`, `/printers/demo`, `/`, `/jobs`, `/jobs/12`.
    pub path: String,
    /// `Host` header, for the URIs in responses, e.g. `127.0.0.1:8631`.
    pub host: String,
    /// `ipps` rather than `ipp` in generated URIs.
    pub tls: bool,
    /// The raw `Authorization` header.
    pub authorization: Option<String>,
    pub peer: std::net::SocketAddr,
}

impl RequestContext {
    /// `ipp://host` or `ipps://host`: the prefix of every URI we generate.
    pub fn base_uri(&self) -> String {
        let scheme = if self.tls { "ipps" } else { "ipp" };
        let host = if self.host.is_empty() {
            self.app.settings.listen.to_string()
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}")
    }
}

/// A request body as a stream of chunks.
pub type BodyChunks = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// An IPP error status with a message for `status-message` and the log.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
    pub unsupported: Vec<IppAttribute>,
    /// Replaces `status` on the wire (see [`AccountStatus`]).
    pub account_status: Option<AccountStatus>,
}

/// The PWG 5100.3 account status codes, which the `ipp` crate's `StatusCode` lacks. A
/// failure or response carrying one sends it instead of its `status` (kept as the nearest
/// RFC 8011 code, `client-error-not-authorized`, for anything that only knows those).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum AccountStatus {
    InfoNeeded = 0x041C,
    Closed = 0x041D,
    LimitReached = 0x041E,
    AuthorizationFailed = 0x041F,
}

impl AccountStatus {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn keyword(self) -> &'static str {
        match self {
            AccountStatus::InfoNeeded => "client-error-account-info-needed",
            AccountStatus::Closed => "client-error-account-closed",
            AccountStatus::LimitReached => "client-error-account-limit-reached",
            AccountStatus::AuthorizationFailed => "client-error-account-authorization-failed",
        }
    }
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            unsupported: Vec::new(),
            account_status: None,
        }
    }

    /// A refusal with one of the account status codes.
    pub fn account(status: AccountStatus, message: impl Into<String>) -> Failure {
        Failure {
            account_status: Some(status),
            ..Failure::new(StatusCode::ClientErrorNotAuthorized, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::ClientErrorBadRequest, message)
    }

    pub fn with_unsupported(mut self, attribute: IppAttribute) -> Failure {
        self.unsupported.push(attribute);
        self
    }
}

/// Serve one IPP request whose body arrives from hyper.
pub async fn serve(
    ctx: RequestContext,
    body: hyper::body::Incoming,
) -> http::Response<Full<Bytes>> {
    let chunks = BodyStream::new(body)
        .map_err(io::Error::other)
        .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())));
    serve_stream(ctx, Box::pin(chunks)).await
}

/// Serve one IPP request whose body is any stream of chunks.
pub async fn serve_stream(ctx: RequestContext, body: BodyChunks) -> http::Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let mut reader = BodyReader {
        chunks: body,
        idle_timeout: ctx.app.settings.idle_timeout,
    };
    let (request, first) = match read_request(&mut reader).await {
        Ok(parts) => parts,
        Err(error) => return reading_failed(&ctx, error),
    };
    let header = request.header;
    let outcome = ops::handle(&ctx, request, first, reader.chunks).await;
    let operation = ops::operation_name(header.operation);
    let response = match outcome {
        ops::Reply::Unauthorized => {
            ctx.app
                .metrics
                .ipp_requests
                .with_label_values(&[operation, "http-unauthorized"])
                .inc();
            tracing::warn!(peer = %ctx.peer, path = %ctx.path, operation, "authentication required");
            let mut response = http::Response::new(Full::new(Bytes::new()));
            *response.status_mut() = http::StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"printfleet\""),
            );
            return response;
        }
        ops::Reply::Ipp(response) => response,
    };
    ctx.app
        .metrics
        .ipp_requests
        .with_label_values(&[operation, response.status_keyword()])
        .inc();
    ctx.app
        .metrics
        .submission_seconds
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    ipp_http_response(response.encode(response_version(header.version), header.request_id))
}

/// The version a response carries: the request's when we speak it, else 1.1.
fn response_version(requested: u16) -> u16 {
    if ops::version_supported(requested) {
        requested
    } else {
        0x0101
    }
}

fn ipp_http_response(body: Bytes) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/ipp"),
    );
    response
}

fn plain_http_response(status: http::StatusCode, text: &str) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Reads chunks, each wait bounded by the idle timeout.
struct BodyReader {
    chunks: BodyChunks,
    idle_timeout: Duration,
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("the client sent nothing for too long")]
    Timeout,
    #[error("reading the request body: {0}")]
    Io(io::Error),
    #[error("the body ended inside the IPP attributes")]
    Truncated(Option<Header>),
    #[error("malformed IPP request: {1}")]
    Malformed(Option<Header>, String),
    #[error("the IPP attributes exceed {MAX_ATTRIBUTE_SECTION} bytes")]
    TooLarge(Header),
}

impl BodyReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        match tokio::time::timeout(self.idle_timeout, self.chunks.next()).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(None) => Ok(None),
            Ok(Some(Err(error))) => Err(ReadError::Io(error)),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        }
    }
}

/// Read the header and attribute groups; returns the request and the document bytes that
/// arrived with them.
async fn read_request(reader: &mut BodyReader) -> Result<(Request, Bytes), ReadError> {
    let mut received = Received::default();
    let mut scanner = SectionScanner::default();
    loop {
        match scanner.scan(received.bytes()) {
            Scan::Complete(end) => {
                let received = received.into_bytes();
                let section = received.slice(..end);
                let header = Header::read(&section);
                let request = codec::decode(section)
                    .map_err(|error| ReadError::Malformed(header, error.to_string()))?;
                return Ok((request, received.slice(end..)));
            }
            Scan::Malformed(reason) => {
                return Err(ReadError::Malformed(
                    Header::read(received.bytes()),
                    reason.into(),
                ));
            }
            Scan::NeedMore => {
                if let Some(header) = Header::read(received.bytes())
                    && received.bytes().len() > MAX_ATTRIBUTE_SECTION
                {
                    return Err(ReadError::TooLarge(header));
                }
                match reader.next_chunk().await? {
                    Some(chunk) => received.push(chunk),
                    None => return Err(ReadError::Truncated(Header::read(received.bytes()))),
                }
            }
        }
    }
}

/// The chunks of a body received so far. Usually the first chunk holds the whole attribute
/// section, and often the start of the document: it is kept as it came, and only a section
/// spread over several chunks is copied into one buffer.
enum Received {
    One(Bytes),
    Joined(BytesMut),
}

impl Default for Received {
    fn default() -> Self {
        Received::One(Bytes::new())
    }
}

impl Received {
    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Received::One(first) if first.is_empty() => Received::One(chunk),
            Received::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                Received::Joined(joined)
            }
            Received::Joined(mut joined) => {
                joined.extend_from_slice(&chunk);
                Received::Joined(joined)
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Received::One(chunk) => chunk,
            Received::Joined(joined) => joined,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Received::One(chunk) => chunk,
            Received::Joined(joined) => joined.freeze(),
        }
    }
}

/// Parse a whole request held in memory: the entry point the fuzz target drives.
pub fn parse_request(data: &[u8]) -> Result<(Request, usize), String> {
    match SectionScanner::default().scan(data) {
        Scan::Complete(end) => codec::decode(Bytes::copy_from_slice(&data[..end]))
            .map(|request| (request, end))
            .map_err(|error| error.to_string()),
        Scan::NeedMore => Err("truncated".into()),
        Scan::Malformed(reason) => Err(reason.into()),
    }
}

fn reading_failed(ctx: &RequestContext, error: ReadError) -> http::Response<Full<Bytes>> {
    tracing::warn!(peer = %ctx.peer, path = %ctx.path, %error, "bad IPP request");
    let header = match &error {
        ReadError::Timeout => {
            return plain_http_response(http::StatusCode::REQUEST_TIMEOUT, "request timeout");
        }
        ReadError::Io(_) => {
            return plain_http_response(http::StatusCode::BAD_REQUEST, "unreadable request body");
        }
        ReadError::Truncated(header) | ReadError::Malformed(header, _) => *header,
        ReadError::TooLarge(header) => Some(*header),
    };
    let Some(header) = header else {
        return plain_http_response(http::StatusCode::BAD_REQUEST, "not an IPP request");
    };
    let status = match error {
        ReadError::TooLarge(_) => StatusCode::ClientErrorRequestEntityTooLong,
        _ => StatusCode::ClientErrorBadRequest,
    };
    let operation = ops::operation_name(header.operation);
    ctx.app
        .metrics
        .ipp_requests
        .with_label_values(&[operation, status_keyword(status)])
        .inc();
    let mut response = Response::new(status);
    response.message = Some(error.to_string());
    ipp_http_response(response.encode(response_version(header.version), header.request_id))
}

/// The RFC 8011 keyword of a status code (a bounded label set for metrics).
pub fn status_keyword(status: StatusCode) -> &'static str {
    use StatusCode::*;
    match status {
        SuccessfulOk => "successful-ok",
        SuccessfulOkIgnoredOrSubstitutedAttributes => {
            "successful-ok-ignored-or-substituted-attributes"
        }
        SuccessfulOkConflictingAttributes => "successful-ok-conflicting-attributes",
        ClientErrorBadRequest => "client-error-bad-request",
        ClientErrorForbidden => "client-error-forbidden",
        ClientErrorNotAuthenticated => "client-error-not-authenticated",
        ClientErrorNotAuthorized => "client-error-not-authorized",
        ClientErrorNotPossible => "client-error-not-possible",
        ClientErrorTimeout => "client-error-timeout",
        ClientErrorNotFound => "client-error-not-found",
        ClientErrorGone => "client-error-gone",
        ClientErrorRequestEntityTooLong => "client-error-request-entity-too-large",
        ClientErrorRequestValueTooLong => "client-error-request-value-too-long",
        ClientErrorDocumentFormatNotSupported => "client-error-document-format-not-supported",
        ClientErrorAttributesOrValuesNotSupported => {
            "client-error-attributes-or-values-not-supported"
        }
        ClientErrorUriSchemeNotSupported => "client-error-uri-scheme-not-supported",
        ClientErrorCharsetNotSupported => "client-error-charset-not-supported",
        ClientErrorConflictingAttributes => "client-error-conflicting-attributes",
        ClientErrorCompressionNotSupported => "client-error-compression-not-supported",
        ClientErrorCompressionError => "client-error-compression-error",
        ClientErrorDocumentFormatError => "client-error-document-format-error",
        ClientErrorDocumentAccessError => "client-error-document-access-error",
        ServerErrorInternalError => "server-error-internal-error",
        ServerErrorOperationNotSupported => "server-error-operation-not-supported",
        ServerErrorServiceUnavailable => "server-error-service-unavailable",
        ServerErrorVersionNotSupported => "server-error-version-not-supported",
        ServerErrorDeviceError => "server-error-device-error",
        ServerErrorTemporaryError => "server-error-temporary-error",
        ServerErrorNotAcceptingJobs => "server-error-not-accepting-jobs",
        ServerErrorBusy => "server-error-busy",
        ServerErrorJobCanceled => "server-error-job-canceled",
        ServerErrorMultipleDocumentJobsNotSupported => {
            "server-error-multiple-document-jobs-not-supported"
        }
        UnknownStatusCode => "unknown",
    }
}
