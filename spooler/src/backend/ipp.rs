//! `ipp://` and `ipps://`: an IPP client over HTTP/1.1 (hyper), TLS with rustls.
//!
//! A job goes out as Print-Job (one document), or Create-Job + Send-Document (several,
//! when the printer takes multi-document jobs; otherwise one Print-Job per document, as
//! CUPS does). Job template attributes the printer does not support are found with
//! Validate-Job first and left out. Then the remote job is followed with
//! Get-Job-Attributes until it ends, for the printer's own page counts.

use base64::Engine as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::{HeaderValue, Request, StatusCode as HttpStatus, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use ipp::attribute::{IppAttribute, IppAttributes};
use ipp::model::{DelimiterTag, IppVersion, Operation};
use ipp::operation::IppOperation;
use ipp::operation::builder::IppOperationBuilder;
use ipp::parser::AsyncIppParser;
use ipp::request::IppRequestResponse;
use ipp::value::{IppName, IppValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::{
    Backend, BackendError, Delivery, OutgoingDocument, OutgoingJob, PrinterHealth, host_and_port,
    unavailable,
};
use crate::job::{Job, JobTicket};

/// IPP and IPPS both default to port 631 (RFC 8010, RFC 7472).
const DEFAULT_PORT: u16 = 631;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Operations without a document answer quickly or not at all.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses carry attributes only; a printer sending more is broken.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Following the remote job: first look soon, then at most every second.
const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(1);
/// Consecutive failed looks at a job the printer already accepted before giving up on
/// its page counts (the job is not sent again: that would print it twice).
const MAX_FOLLOW_FAILURES: u32 = 30;

/// What the Printer resource says beyond its URI.
#[derive(Clone, Debug, Default)]
pub struct IppOptions {
    /// `user:password` for HTTP Basic.
    pub credentials: Option<String>,
    /// PEM CA certificates trusted for `ipps://`, on top of the web PKI roots.
    pub ca_bundle: Option<String>,
    pub insecure_skip_tls_verify: bool,
}

/// An IPP printer.
pub struct IppBackend {
    client: Arc<IppClient>,
}

/// Everything needed to send one IPP request; shared with the task that cancels a remote
/// job whose transmission was abandoned.
struct IppClient {
    printer_uri: Uri,
    host: String,
    port: u16,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    authorization: Option<HeaderValue>,
}

impl IppBackend {
    pub fn new(uri: &str, options: IppOptions) -> Result<IppBackend, BackendError> {
        let bad = |why: &str| BackendError::Config(format!("printer URI {uri:?}: {why}"));
        let printer_uri: Uri = uri.parse().map_err(|_| bad("not a URI"))?;
        let secure = match printer_uri
            .scheme_str()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("ipp") => false,
            Some("ipps") => true,
            _ => return Err(bad("scheme must be ipp or ipps")),
        };
        let authority = printer_uri.authority().ok_or_else(|| bad("no host"))?;
        let (host, port) = host_and_port(authority.as_str(), DEFAULT_PORT)?;
        let path = printer_uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        let tls = if secure {
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| bad("host is not a valid TLS server name"))?;
            Some((
                tls_connector(
                    options.ca_bundle.as_deref(),
                    options.insecure_skip_tls_verify,
                )?,
                server_name,
            ))
        } else {
            None
        };
        let authorization = options
            .credentials
            .map(|credentials| {
                if !credentials.contains(':') {
                    return Err(BackendError::Config(
                        "printer credentials must be user:password".into(),
                    ));
                }
                HeaderValue::try_from(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes())
                ))
                .map_err(|_| BackendError::Config("printer credentials are not valid".into()))
            })
            .transpose()?;
        Ok(IppBackend {
            client: Arc::new(IppClient {
                printer_uri,
                host,
                port,
                path,
                tls,
                authorization,
            }),
        })
    }
}

/// Rustls with the ring provider, verifying against the web PKI roots plus the Printer's
/// CA bundle, or not at all when the Printer says so.
fn tls_connector(ca_bundle: Option<&str>, insecure: bool) -> Result<TlsConnector, BackendError> {
    let tls_error = |error: rustls::Error| BackendError::Config(format!("TLS setup: {error}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = ca_bundle {
            let mut added = 0;
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let certificate = certificate
                    .map_err(|error| BackendError::Config(format!("CA bundle: {error}")))?;
                roots.add(certificate).map_err(tls_error)?;
                added += 1;
            }
            if added == 0 {
                return Err(BackendError::Config(
                    "CA bundle holds no PEM certificate".into(),
                ));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `insecureSkipTlsVerify`: any certificate is accepted, but the handshake signatures are
/// still checked so the session itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The job template attributes of a ticket, as the printer should see them.
fn template_attributes(ticket: &JobTicket) -> Vec<IppAttribute> {
    let mut attributes = Vec::new();
    let mut add = |name: &str, value: IppValue| {
        if let Ok(attribute) = IppAttribute::with_name(name, value) {
            attributes.push(attribute);
        }
    };
    if let Some(copies) = ticket.copies {
        add("copies", IppValue::Integer(copies));
    }
    let keywords = [
        ("sides", &ticket.sides),
        ("media", &ticket.media),
        ("print-color-mode", &ticket.print_color_mode),
    ];
    for (name, value) in keywords {
        if let Some(keyword) = value.as_deref().and_then(|v| IppValue::new_keyword(v).ok()) {
            add(name, keyword);
        }
    }
    if let Some(quality) = ticket.print_quality {
        add("print-quality", IppValue::Enum(quality));
    }
    if let Some(orientation) = ticket.orientation_requested {
        add("orientation-requested", IppValue::Enum(orientation));
    }
    if let Some(number_up) = ticket.number_up {
        add("number-up", IppValue::Integer(number_up));
    }
    let ranges: Vec<IppValue> = ticket
        .page_ranges
        .iter()
        .map(|&(min, max)| IppValue::RangeOfInteger { min, max })
        .collect();
    match ranges.len() {
        0 => {}
        1 => add("page-ranges", ranges[0].clone()),
        _ => add("page-ranges", IppValue::Array(ranges)),
    }
    attributes
}

/// An IPP response: status code and attribute groups (responses carry no document).
struct Response {
    status: u16,
    attributes: IppAttributes,
}

impl Response {
    fn is_success(&self) -> bool {
        self.status < 0x0100
    }

    fn attribute(&self, group: DelimiterTag, name: &str) -> Option<&IppValue> {
        self.attributes
            .groups_of(group)
            .find_map(|g| g.get(name))
            .map(IppAttribute::value)
    }

    fn integer(&self, group: DelimiterTag, name: &str) -> Option<i32> {
        match self.attribute(group, name)? {
            IppValue::Integer(n) | IppValue::Enum(n) => Some(*n),
            _ => None,
        }
    }

    fn keywords(&self, group: DelimiterTag, name: &str) -> Vec<String> {
        match self.attribute(group, name) {
            Some(IppValue::Array(values)) => values.iter().map(ToString::to_string).collect(),
            Some(value) => vec![value.to_string()],
            None => Vec::new(),
        }
    }

    /// Names the printer listed in the unsupported-attributes group.
    fn unsupported_names(&self) -> Vec<String> {
        self.attributes
            .groups_of(DelimiterTag::UnsupportedAttributes)
            .flat_map(|g| g.attributes().iter().map(|a| a.name().to_string()))
            .collect()
    }

    fn message(&self) -> String {
        let text = self
            .attribute(DelimiterTag::OperationAttributes, "status-message")
            .map(ToString::to_string)
            .unwrap_or_default();
        format!("IPP status 0x{:04x} {text}", self.status)
            .trim_end()
            .to_owned()
    }

    /// The error a failed operation means for the job.
    fn error(&self) -> BackendError {
        classify_status(self.status, self.message())
    }
}

/// What a failed IPP status means: the printer cannot be used as configured (`Config`),
/// will never take this job (`Refused`), or cannot now (`Unavailable`).
fn classify_status(status: u16, message: String) -> BackendError {
    match status {
        // forbidden, not-authenticated, not-authorized
        0x0401..=0x0403 => BackendError::Config(message),
        // uri-scheme-not-supported, charset-not-supported
        0x040C | 0x040D => BackendError::Config(message),
        0x0400..=0x04FF => BackendError::Refused(message),
        // operation-not-supported, version-not-supported
        0x0501 | 0x0503 => BackendError::Config(message),
        _ => BackendError::Unavailable(message),
    }
}

fn is_terminal_job_state(state: i32) -> bool {
    (7..=9).contains(&state)
}

type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Aborts the connection task when the request is dropped, so an abandoned transmission
/// stops at once.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl IppClient {
    /// Send one IPP request, the document (if any) streamed after its attributes with
    /// chunked transfer encoding.
    async fn send(
        &self,
        request: IppRequestResponse,
        document: Option<BoxStream<'static, std::io::Result<Bytes>>>,
        timeout: Duration,
    ) -> Result<Response, BackendError> {
        let head = request.to_bytes();
        let body: RequestBody = match document {
            None => Full::new(head)
                .map_err(|never| match never {})
                .boxed_unsync(),
            Some(document) => {
                let frames = stream::once(async move { Ok(head) })
                    .chain(document)
                    .map(|chunk| chunk.map(Frame::data));
                StreamBody::new(frames).boxed_unsync()
            }
        };
        let mut builder = Request::post(&self.path)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::CONTENT_TYPE, "application/ipp");
        if let Some(authorization) = &self.authorization {
            builder = builder.header(http::header::AUTHORIZATION, authorization.clone());
        }
        let http_request = builder
            .body(body)
            .map_err(|error| BackendError::Config(format!("building the request: {error}")))?;
        tokio::time::timeout(timeout, self.exchange(http_request))
            .await
            .map_err(|_| unavailable("talking to the printer", "timed out"))?
    }

    async fn exchange(&self, request: Request<RequestBody>) -> Result<Response, BackendError> {
        let context = format!("connecting to {}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unavailable(&context, "timed out"))?
        .map_err(|error| unavailable(&context, error))?;
        match &self.tls {
            None => http_exchange(tcp, request).await,
            Some((connector, server_name)) => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|error| {
                        // A certificate the spooler does not trust is a configuration
                        // problem; a dropped handshake is a transient one.
                        let is_tls = error
                            .get_ref()
                            .is_some_and(|inner| inner.is::<rustls::Error>());
                        if is_tls {
                            BackendError::Config(format!("TLS handshake: {error}"))
                        } else {
                            unavailable("TLS handshake", error)
                        }
                    })?;
                http_exchange(tls, request).await
            }
        }
    }

    async fn cancel_job(&self, job_id: i32, user: &str) -> Result<(), BackendError> {
        let operation = IppOperationBuilder::cancel_job(self.printer_uri.clone(), job_id)
            .user_name(user)
            .build()
            .map_err(ipp_encoding_error)?;
        let response = self
            .send(operation.into_ipp_request(), None, OPERATION_TIMEOUT)
            .await?;
        if response.is_success() {
            Ok(())
        } else {
            Err(response.error())
        }
    }
}

/// One HTTP/1.1 request on a fresh connection, and its IPP response.
async fn http_exchange<S>(io: S, request: Request<RequestBody>) -> Result<Response, BackendError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| unavailable("HTTP handshake", error))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "IPP connection ended");
        }
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| unavailable("sending to the printer", error))?;
    let status = response.status();
    match status {
        HttpStatus::OK => {}
        HttpStatus::UNAUTHORIZED | HttpStatus::FORBIDDEN => {
            return Err(BackendError::Config(format!(
                "printer refused our credentials (HTTP {status})"
            )));
        }
        HttpStatus::NOT_FOUND | HttpStatus::UPGRADE_REQUIRED => {
            return Err(BackendError::Config(format!(
                "printer answered HTTP {status}: check the URI"
            )));
        }
        _ => return Err(unavailable("printer", format!("HTTP {status}"))),
    }
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|error| unavailable("reading the response", error))?
        .to_bytes();
    let (header, attributes, _) = AsyncIppParser::new(futures_util::io::Cursor::new(body))
        .parse_parts()
        .await
        .map_err(|error| unavailable("parsing the IPP response", error))?;
    Ok(Response {
        status: header.operation_or_status as u16,
        attributes,
    })
}

fn ipp_encoding_error(error: impl std::fmt::Display) -> BackendError {
    BackendError::Refused(format!("cannot encode the request: {error}"))
}

/// A request with the operation attributes every job operation carries: the target job
/// (for operations on an existing remote job), the requesting user, and the job name when
/// the operation creates a job.
fn job_request(
    printer_uri: &Uri,
    operation: Operation,
    job: &Job,
    remote_job_id: Option<i32>,
) -> Result<IppRequestResponse, BackendError> {
    let mut request =
        IppRequestResponse::new(IppVersion::v1_1(), operation, Some(printer_uri.clone()))
            .map_err(ipp_encoding_error)?;
    // job-id must follow printer-uri directly (RFC 8011 section 4.1.5).
    if let Some(job_id) = remote_job_id {
        add_operation_attribute(&mut request, "job-id", IppValue::Integer(job_id));
    }
    let user =
        IppValue::new_name_without_language(job.owner.clone()).map_err(ipp_encoding_error)?;
    add_operation_attribute(&mut request, "requesting-user-name", user);
    if remote_job_id.is_none() {
        let name = IppValue::NameWithoutLanguage(IppName::new_truncated(job.name.clone()));
        add_operation_attribute(&mut request, "job-name", name);
    }
    Ok(request)
}

fn add_operation_attribute(request: &mut IppRequestResponse, name: &str, value: IppValue) {
    if let Ok(attribute) = IppAttribute::with_name(name, value) {
        request
            .attributes_mut()
            .add(DelimiterTag::OperationAttributes, attribute);
    }
}

fn add_document_attributes(request: &mut IppRequestResponse, document: &OutgoingDocument) {
    if let Ok(format) = IppValue::new_mime_media_type(document.format.clone()) {
        add_operation_attribute(request, "document-format", format);
    }
    if let Some(name) = &document.name {
        let name = IppValue::NameWithoutLanguage(IppName::new_truncated(name.clone()));
        add_operation_attribute(request, "document-name", name);
    }
}

fn add_template(request: &mut IppRequestResponse, template: &[IppAttribute]) {
    for attribute in template {
        request
            .attributes_mut()
            .add(DelimiterTag::JobAttributes, attribute.clone());
    }
}

/// Time for a request carrying `size` document bytes: a slow device still reads 64 KiB/s.
fn document_timeout(size: u64) -> Duration {
    OPERATION_TIMEOUT + Duration::from_secs(size / 65_536)
}

/// Sends Cancel-Job for a remote job unless disarmed: dropping the print future (the
/// spooler's job was canceled) must not leave the printer printing it.
struct RemoteJobGuard {
    client: Arc<IppClient>,
    job_id: Option<i32>,
    user: String,
}

impl RemoteJobGuard {
    fn disarm(&mut self) {
        self.job_id = None;
    }
}

impl Drop for RemoteJobGuard {
    fn drop(&mut self) {
        let Some(job_id) = self.job_id else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let user = std::mem::take(&mut self.user);
        runtime.spawn(async move {
            if let Err(error) = client.cancel_job(job_id, &user).await {
                tracing::warn!(%error, remote_job_id = job_id, "canceling the abandoned remote job");
            }
        });
    }
}

impl IppBackend {
    /// Validate-Job for each format: drops the template attributes the printer does not
    /// support (retried once without them); a format it does not take refuses the job.
    async fn supported_template(
        &self,
        job: &Job,
        formats: &[&str],
        mut template: Vec<IppAttribute>,
    ) -> Result<Vec<IppAttribute>, BackendError> {
        for format in formats {
            for attempt in 0..2 {
                let mut request =
                    job_request(&self.client.printer_uri, Operation::ValidateJob, job, None)?;
                if let Ok(value) = IppValue::new_mime_media_type(format.to_string()) {
                    add_operation_attribute(&mut request, "document-format", value);
                }
                add_template(&mut request, &template);
                let response = self.client.send(request, None, OPERATION_TIMEOUT).await?;
                match response.status {
                    status if status < 0x0100 => break,
                    // Validate-Job is optional in IPP/1.1: the real request will tell.
                    0x0501 => return Ok(template),
                    0x040B if attempt == 0 => {
                        let unsupported = response.unsupported_names();
                        let before = template.len();
                        template.retain(|a| !unsupported.iter().any(|n| n == a.name().as_str()));
                        if template.len() == before {
                            return Err(response.error());
                        }
                        tracing::info!(
                            ?unsupported,
                            "printer does not support these job attributes; sending without them"
                        );
                    }
                    _ => return Err(response.error()),
                }
            }
        }
        Ok(template)
    }

    async fn multiple_document_jobs_supported(&self) -> Result<bool, BackendError> {
        let response = self
            .get_printer_attributes(&["multiple-document-jobs-supported"])
            .await?;
        Ok(matches!(
            response.attribute(
                DelimiterTag::PrinterAttributes,
                "multiple-document-jobs-supported"
            ),
            Some(IppValue::Boolean(true))
        ))
    }

    async fn get_printer_attributes(&self, names: &[&str]) -> Result<Response, BackendError> {
        let operation =
            IppOperationBuilder::get_printer_attributes(self.client.printer_uri.clone())
                .attributes(names)
                .build()
                .map_err(ipp_encoding_error)?;
        let response = self
            .client
            .send(operation.into_ipp_request(), None, OPERATION_TIMEOUT)
            .await?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(response.error())
        }
    }

    /// The remote job id of a successful Print-Job or Create-Job.
    fn remote_job_id(response: &Response) -> Result<i32, BackendError> {
        if !response.is_success() {
            return Err(response.error());
        }
        response
            .integer(DelimiterTag::JobAttributes, "job-id")
            .ok_or_else(|| unavailable("printer", "accepted the job without a job-id"))
    }

    /// Print-Job: one document, one remote job.
    async fn print_job(
        &self,
        job: &Job,
        template: &[IppAttribute],
        document: OutgoingDocument,
        guard: &mut RemoteJobGuard,
    ) -> Result<i32, BackendError> {
        let mut request = job_request(&self.client.printer_uri, Operation::PrintJob, job, None)?;
        add_document_attributes(&mut request, &document);
        add_template(&mut request, template);
        let timeout = document_timeout(document.size);
        let response = self
            .client
            .send(request, Some(document.data), timeout)
            .await?;
        let job_id = Self::remote_job_id(&response)?;
        guard.job_id = Some(job_id);
        Ok(job_id)
    }

    /// Create-Job, then Send-Document per document: several documents, one remote job.
    async fn create_and_send(
        &self,
        job: &Job,
        template: &[IppAttribute],
        documents: Vec<OutgoingDocument>,
        guard: &mut RemoteJobGuard,
    ) -> Result<i32, BackendError> {
        let mut request = job_request(&self.client.printer_uri, Operation::CreateJob, job, None)?;
        add_template(&mut request, template);
        let response = self.client.send(request, None, OPERATION_TIMEOUT).await?;
        let job_id = Self::remote_job_id(&response)?;
        guard.job_id = Some(job_id);
        let count = documents.len();
        for (index, document) in documents.into_iter().enumerate() {
            let mut request = job_request(
                &self.client.printer_uri,
                Operation::SendDocument,
                job,
                Some(job_id),
            )?;
            add_operation_attribute(
                &mut request,
                "last-document",
                IppValue::Boolean(index + 1 == count),
            );
            add_document_attributes(&mut request, &document);
            let timeout = document_timeout(document.size);
            let response = self
                .client
                .send(request, Some(document.data), timeout)
                .await?;
            if !response.is_success() {
                return Err(response.error());
            }
        }
        Ok(job_id)
    }

    /// Get-Job-Attributes until the remote job ends; its page counts when it reports them.
    async fn follow(&self, job_id: i32, user: &str) -> Result<Delivery, BackendError> {
        let mut delay = FIRST_POLL;
        let mut failures = 0;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_POLL);
            let operation =
                IppOperationBuilder::get_job_attributes(self.client.printer_uri.clone(), job_id)
                    .user_name(user)
                    .build()
                    .map_err(ipp_encoding_error)?;
            let response = match self
                .client
                .send(operation.into_ipp_request(), None, OPERATION_TIMEOUT)
                .await
            {
                Ok(response) => response,
                Err(error) => {
                    failures += 1;
                    if failures >= MAX_FOLLOW_FAILURES {
                        tracing::warn!(%error, remote_job_id = job_id, "lost track of the remote job; counting it delivered");
                        return Ok(Delivery::default());
                    }
                    continue;
                }
            };
            if response.status == 0x0406 {
                // Purged already: it was accepted and is gone, so it ran.
                return Ok(Delivery::default());
            }
            if !response.is_success() {
                failures += 1;
                if failures >= MAX_FOLLOW_FAILURES {
                    return Ok(Delivery::default());
                }
                continue;
            }
            failures = 0;
            let state = response
                .integer(DelimiterTag::JobAttributes, "job-state")
                .unwrap_or(0);
            if !is_terminal_job_state(state) {
                continue;
            }
            let reasons = response.keywords(DelimiterTag::JobAttributes, "job-state-reasons");
            return match state {
                9 => Ok(Delivery {
                    impressions: response
                        .integer(DelimiterTag::JobAttributes, "job-impressions-completed")
                        .map(i64::from),
                    sheets: response
                        .integer(DelimiterTag::JobAttributes, "job-media-sheets-completed")
                        .map(i64::from),
                }),
                7 => Err(BackendError::Refused(format!(
                    "canceled at the printer ({})",
                    reasons.join(",")
                ))),
                _ => Err(BackendError::Refused(format!(
                    "aborted by the printer ({})",
                    reasons.join(",")
                ))),
            };
        }
    }
}

fn add_delivery(total: &mut Delivery, one: Delivery) {
    let sum = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    total.impressions = sum(total.impressions, one.impressions);
    total.sheets = sum(total.sheets, one.sheets);
}

#[async_trait]
impl Backend for IppBackend {
    async fn probe(&self) -> Result<PrinterHealth, BackendError> {
        let response = self
            .get_printer_attributes(&[
                "printer-state",
                "printer-state-reasons",
                "printer-is-accepting-jobs",
            ])
            .await?;
        let state = response
            .integer(DelimiterTag::PrinterAttributes, "printer-state")
            .unwrap_or(3);
        let is_accepting = !matches!(
            response.attribute(DelimiterTag::PrinterAttributes, "printer-is-accepting-jobs"),
            Some(IppValue::Boolean(false))
        );
        Ok(PrinterHealth {
            state,
            reasons: response
                .keywords(DelimiterTag::PrinterAttributes, "printer-state-reasons")
                .into_iter()
                .filter(|reason| reason != "none")
                .collect(),
            accepting: is_accepting && state != 5,
        })
    }

    async fn print(
        &self,
        job: OutgoingJob<'_>,
        documents: Vec<OutgoingDocument>,
    ) -> Result<Delivery, BackendError> {
        if documents.is_empty() {
            return Err(BackendError::Refused("the job has no document".into()));
        }
        let mut formats: Vec<&str> = documents.iter().map(|d| d.format.as_str()).collect();
        formats.dedup();
        let template = self
            .supported_template(job.job, &formats, template_attributes(job.ticket))
            .await?;
        let mut guard = RemoteJobGuard {
            client: self.client.clone(),
            job_id: None,
            user: job.job.owner.clone(),
        };
        let mut total = Delivery::default();
        if documents.len() > 1 && self.multiple_document_jobs_supported().await? {
            let job_id = self
                .create_and_send(job.job, &template, documents, &mut guard)
                .await?;
            let delivery = self.follow(job_id, &job.job.owner).await;
            guard.disarm();
            add_delivery(&mut total, delivery?);
        } else {
            // One remote job per document, each followed before the next is sent so a
            // refusal stops the rest.
            for document in documents {
                let job_id = self
                    .print_job(job.job, &template, document, &mut guard)
                    .await?;
                let delivery = self.follow(job_id, &job.job.owner).await;
                guard.disarm();
                add_delivery(&mut total, delivery?);
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, Weak};

    use super::*;
    use crate::backend::file::tests::{document, sample_job};

    #[test]
    fn template_attributes_carry_the_ticket() {
        let ticket = JobTicket {
            copies: Some(2),
            sides: Some("two-sided-long-edge".into()),
            media: Some("iso_a4_210x297mm".into()),
            print_color_mode: Some("monochrome".into()),
            print_quality: Some(5),
            orientation_requested: Some(4),
            number_up: Some(2),
            page_ranges: vec![(1, 3), (7, 7)],
            ..JobTicket::default()
        };
        let attributes: Vec<(String, IppValue)> = template_attributes(&ticket)
            .into_iter()
            .map(|a| (a.name().to_string(), a.value().clone()))
            .collect();
        let keyword = |k: &str| IppValue::new_keyword(k).unwrap();
        assert_eq!(
            attributes,
            vec![
                ("copies".into(), IppValue::Integer(2)),
                ("sides".into(), keyword("two-sided-long-edge")),
                ("media".into(), keyword("iso_a4_210x297mm")),
                ("print-color-mode".into(), keyword("monochrome")),
                ("print-quality".into(), IppValue::Enum(5)),
                ("orientation-requested".into(), IppValue::Enum(4)),
                ("number-up".into(), IppValue::Integer(2)),
                (
                    "page-ranges".into(),
                    IppValue::Array(vec![
                        IppValue::RangeOfInteger { min: 1, max: 3 },
                        IppValue::RangeOfInteger { min: 7, max: 7 },
                    ])
                ),
            ]
        );
        assert!(template_attributes(&JobTicket::default()).is_empty());
    }

    #[test]
    fn statuses_map_to_what_the_dispatcher_does() {
        let kind = |status| match classify_status(status, String::new()) {
            BackendError::Config(_) => "config",
            BackendError::Refused(_) => "refused",
            BackendError::Unavailable(_) => "unavailable",
        };
        assert_eq!(kind(0x040A), "refused"); // document-format-not-supported
        assert_eq!(kind(0x040B), "refused"); // attributes-or-values-not-supported
        assert_eq!(kind(0x0402), "config"); // not-authenticated
        assert_eq!(kind(0x0502), "unavailable"); // service-unavailable
        assert_eq!(kind(0x0506), "unavailable"); // not-accepting-jobs
        assert_eq!(kind(0x0507), "unavailable"); // busy
    }

    #[test]
    fn tls_settings_are_checked_when_the_printer_is_configured() {
        let options = |ca_bundle: Option<&str>, credentials: Option<&str>| IppOptions {
            credentials: credentials.map(str::to_owned),
            ca_bundle: ca_bundle.map(str::to_owned),
            insecure_skip_tls_verify: false,
        };
        assert!(IppBackend::new("ipps://printer.example/ipp/print", options(None, None)).is_ok());
        assert!(matches!(
            IppBackend::new(
                "ipps://printer.example/ipp/print",
                options(Some("not a certificate"), None)
            ),
            Err(BackendError::Config(_))
        ));
        assert!(matches!(
            IppBackend::new(
                "ipp://printer.example/ipp/print",
                options(None, Some("nocolon"))
            ),
            Err(BackendError::Config(_))
        ));
        let insecure = IppOptions {
            insecure_skip_tls_verify: true,
            ..IppOptions::default()
        };
        assert!(IppBackend::new("ipps://127.0.0.1:8631/ipp/print", insecure).is_ok());
    }

    /// dbus and avahi, which ippeveprinter needs for DNS-SD. Started only when not
    /// already running, shared by the tests of this process, and stopped when the last
    /// test using them is done.
    struct DnsSd {
        started: Vec<Child>,
    }

    static DNS_SD: Mutex<Weak<DnsSd>> = Mutex::new(Weak::new());
    const DBUS_SOCKET: &str = "/run/dbus/system_bus_socket";

    fn dbus_is_live() -> bool {
        std::os::unix::net::UnixStream::connect(DBUS_SOCKET).is_ok()
    }

    fn avahi_is_live() -> bool {
        Command::new("avahi-daemon")
            .arg("--check")
            .status()
            .is_ok_and(|status| status.success())
    }

    fn wait_until(what: &str, ready: impl Fn() -> bool) {
        for _ in 0..100 {
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} did not come up");
    }

    fn dns_sd() -> Arc<DnsSd> {
        let mut shared = DNS_SD
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(running) = shared.upgrade() {
            return running;
        }
        let mut started = Vec::new();
        if !dbus_is_live() {
            std::fs::create_dir_all("/run/dbus").unwrap();
            let _ = std::fs::remove_file(DBUS_SOCKET);
            started.push(
                Command::new("dbus-daemon")
                    .args(["--system", "--nofork", "--nopidfile"])
                    .spawn()
                    .unwrap(),
            );
            wait_until("dbus", dbus_is_live);
        }
        if !avahi_is_live() {
            started.push(
                Command::new("avahi-daemon")
                    .args(["--no-drop-root", "--no-rlimits"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            wait_until("avahi", avahi_is_live);
        }
        let running = Arc::new(DnsSd { started });
        *shared = Arc::downgrade(&running);
        running
    }

    impl Drop for DnsSd {
        fn drop(&mut self) {
            // Avahi first: it is a client of dbus.
            for child in self.started.iter_mut().rev() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// A real IPP Everywhere printer simulator on a free port, killed on drop.
    pub(crate) struct EvePrinter {
        child: Child,
        pub(crate) port: u16,
        spool: tempfile::TempDir,
        _dns_sd: Arc<DnsSd>,
    }

    impl EvePrinter {
        pub(crate) fn start() -> EvePrinter {
            let dns_sd = dns_sd();
            let spool = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("ippeveprinter")
                .args(["-k", "-r", "off", "-p", &port.to_string(), "-d"])
                .arg(spool.path())
                .args([
                    "-f",
                    "application/pdf,application/postscript,image/pwg-raster,image/urf,text/plain,application/octet-stream",
                    &format!("printfleet-test-{port}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let printer = EvePrinter {
                child,
                port,
                spool,
                _dns_sd: dns_sd,
            };
            wait_until("ippeveprinter", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            printer
        }

        fn backend(&self) -> IppBackend {
            IppBackend::new(
                &format!("ipp://127.0.0.1:{}/ipp/print", self.port),
                IppOptions::default(),
            )
            .unwrap()
        }

        /// The documents ippeveprinter spooled, by file name.
        fn spooled(&self) -> Vec<(String, Vec<u8>)> {
            spooled_files(self.spool.path())
        }
    }

    fn spooled_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path: &PathBuf| path.is_file())
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    impl Drop for EvePrinter {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn ipp_probe_reports_a_live_printer_and_an_absent_one() {
        let printer = EvePrinter::start();
        let health = printer.backend().probe().await.unwrap();
        assert!(health.accepting, "{health:?}");
        assert!(matches!(health.state, 3 | 4), "{health:?}");
        let port = printer.port;
        drop(printer);
        let absent = IppBackend::new(
            &format!("ipp://127.0.0.1:{port}/ipp/print"),
            IppOptions::default(),
        )
        .unwrap();
        assert!(matches!(
            absent.probe().await,
            Err(BackendError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn ipp_print_job_arrives_and_completes() {
        let printer = EvePrinter::start();
        let mut job = sample_job(5);
        // ippeveprinter supports no such media: Validate-Job finds out, the job goes
        // without it.
        job.ticket.media = Some("na_nonexistent_1x1in".into());
        job.ticket.copies = Some(1);
        let text = b"printfleet says hello\n".repeat(500);
        let delivery = tokio::time::timeout(
            Duration::from_secs(90),
            printer.backend().print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![document("text/plain", &text)],
            ),
        )
        .await
        .expect("the remote job ends")
        .unwrap();
        assert!(delivery.impressions.is_none_or(|n| n >= 0), "{delivery:?}");
        let spooled = printer.spooled();
        assert_eq!(
            spooled.len(),
            1,
            "{:?}",
            spooled.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert_eq!(spooled[0].1, text);
    }

    #[tokio::test]
    async fn ipp_sends_each_document_when_the_printer_takes_one_per_job() {
        let printer = EvePrinter::start();
        let job = sample_job(6);
        tokio::time::timeout(
            Duration::from_secs(120),
            printer.backend().print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![
                    document("text/plain", b"first document\n"),
                    document("application/postscript", b"%!PS-Adobe-3.0\nshowpage\n"),
                ],
            ),
        )
        .await
        .expect("both remote jobs end")
        .unwrap();
        let mut contents: Vec<Vec<u8>> = printer.spooled().into_iter().map(|f| f.1).collect();
        contents.sort();
        assert_eq!(
            contents,
            vec![
                b"%!PS-Adobe-3.0\nshowpage\n".to_vec(),
                b"first document\n".to_vec()
            ]
        );
    }

    #[tokio::test]
    async fn ipp_refuses_a_format_the_printer_does_not_take() {
        let printer = EvePrinter::start();
        let job = sample_job(7);
        let result = printer
            .backend()
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![document("application/x-printfleet-unknown", b"??")],
            )
            .await;
        assert!(
            matches!(result, Err(BackendError::Refused(_))),
            "{result:?}"
        );
        assert!(printer.spooled().is_empty());
    }
}
