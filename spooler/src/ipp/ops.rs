//! IPP operations: the checks every request gets (RFC 8011 section 4.1), the target and
//! the requester, then one handler per operation.
//!
//! Who may do what:
//! - The requester is the authenticated user when the queue authenticates, otherwise the
//!   `requesting-user-name` (or `anonymous`).
//! - Submitting needs `auth::may_print`. Cancel/Hold/Release, Send-Document and
//!   Get-Job-Attributes need the job's owner or a queue operator; Get-Jobs shows everyone's
//!   jobs but withholds the names of other users' jobs.
//! - Pause-Printer / Resume-Printer need an operator. A queue with no operators configured
//!   allows them only from loopback addresses (the local administrator), as CUPS does for
//!   its default policy.
//! - Printer attributes are public, so clients can learn that a queue wants
//!   authentication (`uri-authentication-supported`) before sending credentials.
//!
//! The default queue (for CUPS-Get-Default and requests addressed to the server) is the
//! first queue by name.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ipp::attribute::IppAttribute;
use ipp::model::{DelimiterTag, StatusCode};
use ipp::value::IppValue;
use printfleet_crds::PrintQueueSpec;
use printfleet_crds::queue::AccessRules;

use super::codec::{self, Request, Response, string_of, values};
use super::job_attributes::{self, Visibility, job_attributes, job_status, parse_submission};
use super::printer_attributes::{
    PrinterView, QueueProfile, QueueState, Requested, printer_attributes,
};
use super::{BodyChunks, Failure, RequestContext};
use crate::accounting::admission as accounting;
use crate::auth::{self, AuthError, Identity};
use crate::config::Config;
use crate::document::{OCTET_STREAM, detect_format};
use crate::job::{DocumentBody, Job, JobId, NewDocument, NewJob};
use crate::store::spool::{SpoolError, SpoolLimits, spool_document};
use crate::store::{JobQuery, QueueDepth, REASON_ACCOUNT_LIMIT, StoreError, UserAction, WhichJobs};

mod admission;

/// What the HTTP layer sends back.
pub enum Reply {
    Ipp(Response),
    /// HTTP 401 with a Basic challenge.
    Unauthorized,
}

/// Why an operation did not succeed.
enum Refusal {
    Failure(Failure),
    Unauthorized,
}

impl From<Failure> for Refusal {
    fn from(failure: Failure) -> Refusal {
        Refusal::Failure(failure)
    }
}

type Outcome = Result<Response, Refusal>;

/// The operations this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    PrintJob,
    ValidateJob,
    CreateJob,
    SendDocument,
    CancelJob,
    GetJobAttributes,
    GetJobs,
    GetPrinterAttributes,
    HoldJob,
    ReleaseJob,
    PausePrinter,
    ResumePrinter,
    CancelMyJobs,
    CancelJobs,
    CloseJob,
    IdentifyPrinter,
    CupsGetDefault,
    CupsGetPrinters,
}

impl Operation {
    pub fn from_code(code: u16) -> Option<Operation> {
        use Operation::*;
        Some(match code {
            0x0002 => PrintJob,
            0x0004 => ValidateJob,
            0x0005 => CreateJob,
            0x0006 => SendDocument,
            0x0008 => CancelJob,
            0x0009 => GetJobAttributes,
            0x000A => GetJobs,
            0x000B => GetPrinterAttributes,
            0x000C => HoldJob,
            0x000D => ReleaseJob,
            0x0010 => PausePrinter,
            0x0011 => ResumePrinter,
            0x0038 => CancelJobs,
            0x0039 => CancelMyJobs,
            0x003B => CloseJob,
            0x003C => IdentifyPrinter,
            0x4001 => CupsGetDefault,
            0x4002 => CupsGetPrinters,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Operation::*;
        match self {
            PrintJob => "Print-Job",
            ValidateJob => "Validate-Job",
            CreateJob => "Create-Job",
            SendDocument => "Send-Document",
            CancelJob => "Cancel-Job",
            GetJobAttributes => "Get-Job-Attributes",
            GetJobs => "Get-Jobs",
            GetPrinterAttributes => "Get-Printer-Attributes",
            HoldJob => "Hold-Job",
            ReleaseJob => "Release-Job",
            PausePrinter => "Pause-Printer",
            ResumePrinter => "Resume-Printer",
            CancelMyJobs => "Cancel-My-Jobs",
            CancelJobs => "Cancel-Jobs",
            CloseJob => "Close-Job",
            IdentifyPrinter => "Identify-Printer",
            CupsGetDefault => "CUPS-Get-Default",
            CupsGetPrinters => "CUPS-Get-Printers",
        }
    }
}

/// The metrics label of an operation code (`unknown` for codes we do not implement).
pub fn operation_name(code: u16) -> &'static str {
    Operation::from_code(code).map_or("unknown", Operation::name)
}

/// IPP/1.0 to IPP/2.2.
pub fn version_supported(version: u16) -> bool {
    matches!(version, 0x0100 | 0x0101 | 0x0200 | 0x0201 | 0x0202)
}

/// The checks every request gets before its operation runs (RFC 8011 section 4.1):
/// version, request-id, the charset and natural language first in the operation group,
/// and an operation we implement.
pub fn check_request(request: &Request) -> Result<Operation, Failure> {
    let header = request.header;
    if !version_supported(header.version) {
        return Err(Failure::new(
            StatusCode::ServerErrorVersionNotSupported,
            format!(
                "IPP version {}.{} is not supported",
                header.version >> 8,
                header.version & 0xff
            ),
        ));
    }
    if header.request_id == 0 {
        return Err(Failure::bad_request("request-id must not be 0"));
    }
    let group = request
        .operation_group()
        .ok_or_else(|| Failure::bad_request("missing operation attributes group"))?;
    let mut first_two = group.attributes().iter();
    let charset = match first_two.next() {
        Some(attribute) if attribute.name().as_str() == "attributes-charset" => attribute.value(),
        _ => {
            return Err(Failure::bad_request(
                "attributes-charset must be the first operation attribute",
            ));
        }
    };
    match first_two.next() {
        Some(attribute)
            if attribute.name().as_str() == "attributes-natural-language"
                && matches!(attribute.value(), IppValue::NaturalLanguage(_)) => {}
        _ => {
            return Err(Failure::bad_request(
                "attributes-natural-language must be the second operation attribute",
            ));
        }
    }
    match charset {
        IppValue::Charset(name)
            if name.eq_ignore_ascii_case("utf-8") || name.eq_ignore_ascii_case("us-ascii") => {}
        IppValue::Charset(name) => {
            return Err(Failure::new(
                StatusCode::ClientErrorCharsetNotSupported,
                format!("charset {name} is not supported"),
            )
            .with_unsupported(codec::attribute("attributes-charset", charset.clone())));
        }
        _ => return Err(Failure::bad_request("attributes-charset is not a charset")),
    }
    Operation::from_code(header.operation).ok_or_else(|| {
        Failure::new(
            StatusCode::ServerErrorOperationNotSupported,
            format!("operation 0x{:04x} is not supported", header.operation),
        )
    })
}

/// Run one request to its reply. Every refusal is logged (warn) with its reason.
pub async fn handle(
    ctx: &RequestContext,
    request: Request,
    first: Bytes,
    rest: BodyChunks,
) -> Reply {
    let mut body = Body(Some((first, rest)));
    let outcome = match check_request(&request) {
        Ok(operation) => run(ctx, &request, operation, &mut body).await,
        Err(failure) => Err(failure.into()),
    };
    // HTTP/1.1 clients (CUPS's among them) fail when the answer comes before they finished
    // sending: read what is left of a body no operation consumed.
    if let Some((_, rest)) = body.0.take() {
        drain(
            rest,
            ctx.app.settings.idle_timeout,
            ctx.app.settings.max_document_bytes,
        )
        .await;
    }
    match outcome {
        Ok(response) => Reply::Ipp(response),
        Err(Refusal::Unauthorized) => Reply::Unauthorized,
        Err(Refusal::Failure(failure)) => {
            tracing::warn!(
                peer = %ctx.peer,
                path = %ctx.path,
                operation = operation_name(request.header.operation),
                status = failure
                    .account_status
                    .map_or_else(|| super::status_keyword(failure.status), |a| a.keyword()),
                reason = %failure.message,
                "IPP request refused"
            );
            let mut response = Response::new(failure.status);
            response.message = Some(failure.message);
            response.unsupported = failure.unsupported;
            response.account_status = failure.account_status;
            Reply::Ipp(response)
        }
    }
}

/// The document part of a request body, until an operation takes it.
struct Body(Option<(Bytes, BodyChunks)>);

impl Body {
    fn take(&mut self) -> Result<(Bytes, BodyChunks), Failure> {
        self.0.take().ok_or_else(|| {
            Failure::new(StatusCode::ServerErrorInternalError, "document read twice")
        })
    }
}

/// Read and drop the rest of a body, up to `limit` bytes and while it keeps coming.
async fn drain(mut rest: BodyChunks, idle_timeout: std::time::Duration, limit: u64) {
    use futures_util::StreamExt;
    let mut seen: u64 = 0;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(idle_timeout, rest.next()).await {
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            break;
        }
    }
}

async fn run(
    ctx: &RequestContext,
    request: &Request,
    operation: Operation,
    body: &mut Body,
) -> Outcome {
    use Operation::*;
    let config = ctx.app.config();
    match operation {
        PrintJob | ValidateJob | CreateJob => submit(ctx, &config, request, operation, body).await,
        SendDocument | CloseJob => send_document(ctx, &config, request, operation, body).await,
        CancelJob | HoldJob | ReleaseJob => job_action(ctx, &config, request, operation).await,
        GetJobAttributes => get_job_attributes(ctx, &config, request).await,
        GetJobs => get_jobs(ctx, &config, request).await,
        CancelMyJobs | CancelJobs => cancel_jobs(ctx, &config, request, operation).await,
        GetPrinterAttributes => get_printer_attributes(ctx, &config, request).await,
        PausePrinter | ResumePrinter => pause_or_resume(ctx, &config, request, operation).await,
        IdentifyPrinter => identify_printer(ctx, &config, request),
        CupsGetDefault => cups_get_default(ctx, &config, request).await,
        CupsGetPrinters => cups_get_printers(ctx, &config, request).await,
    }
}

// ---------------------------------------------------------------------------------------
// Targets

/// What a request path, or the path of a URI, addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// The whole server (`/`, `/jobs`, `/printers`).
    Server,
    Queue(String),
    Job(JobId),
}

/// Parse `/ipp/print/<queue>`, `/printers/<queue>`, `/`, `/jobs`, `/jobs/<id>` (and
/// `/ipp/print/<queue>/<id>` job URIs).
pub fn parse_path(path: &str) -> Option<Address> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        // `/admin` is where CUPS clients send Cancel-Jobs (`cancel -a`).
        [] | ["admin"] | ["jobs"] | ["printers"] | ["ipp"] | ["ipp", "print"] => {
            Some(Address::Server)
        }
        ["jobs", id] => parse_job_id(id).map(Address::Job),
        ["ipp", "print", queue] | ["printers", queue] => Some(Address::Queue(queue.to_string())),
        ["ipp", "print", _, id] | ["printers", _, id] => parse_job_id(id).map(Address::Job),
        _ => None,
    }
}

fn parse_job_id(text: &str) -> Option<JobId> {
    text.parse().ok().filter(|id| *id > 0)
}

/// The path of an `ipp://host[:port]/path` URI.
pub fn uri_path(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once("://")?;
    if !["ipp", "ipps", "http", "https"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return None;
    }
    Some(rest.find('/').map_or("/", |at| &rest[at..]))
}

fn not_found(what: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::ClientErrorNotFound,
        format!("{what} does not exist"),
    )
}

/// The address of the `printer-uri` operation attribute, required by printer operations.
fn printer_uri_address(request: &Request) -> Result<Address, Failure> {
    let value = request
        .operation("printer-uri")
        .ok_or_else(|| Failure::bad_request("missing printer-uri"))?;
    let IppValue::Uri(uri) = value else {
        return Err(Failure::bad_request("printer-uri is not a uri"));
    };
    uri_path(uri)
        .and_then(parse_path)
        .ok_or_else(|| not_found(format_args!("printer {uri}")))
}

/// The queue a printer operation addresses: the request path when it names one, else the
/// `printer-uri`. `None` addresses the server as a whole.
fn printer_target(ctx: &RequestContext, request: &Request) -> Result<Option<String>, Failure> {
    let from_uri = printer_uri_address(request)?;
    let path = parse_path(&ctx.path).ok_or_else(|| not_found(format_args!("path {}", ctx.path)))?;
    Ok(match (path, from_uri) {
        (Address::Queue(queue), _) | (_, Address::Queue(queue)) => Some(queue),
        _ => None,
    })
}

/// The queue named `name`.
fn queue_named<'c>(config: &'c Config, name: &str) -> Result<&'c PrintQueueSpec, Failure> {
    config
        .queues
        .get(name)
        .ok_or_else(|| not_found(format_args!("queue {name}")))
}

/// The queue a request for a single printer targets; the server address means the
/// default queue (the first by name).
fn single_queue(
    config: &Config,
    target: Option<String>,
) -> Result<(String, &PrintQueueSpec), Failure> {
    match target {
        Some(name) => queue_named(config, &name).map(|queue| (name, queue)),
        None => config
            .queues
            .iter()
            .next()
            .map(|(name, queue)| (name.clone(), queue))
            .ok_or_else(|| not_found("a default queue")),
    }
}

/// The job a job operation addresses (by `job-uri`, or `printer-uri` + `job-id`, or a
/// `/jobs/<id>` path), and the queue the request restricts it to.
fn job_target(ctx: &RequestContext, request: &Request) -> Result<(Option<String>, JobId), Failure> {
    if let Some(value) = request.operation("job-uri") {
        let IppValue::Uri(uri) = value else {
            return Err(Failure::bad_request("job-uri is not a uri"));
        };
        return match uri_path(uri).and_then(parse_path) {
            Some(Address::Job(id)) => Ok((None, id)),
            _ => Err(not_found(format_args!("job {uri}"))),
        };
    }
    let path = parse_path(&ctx.path).ok_or_else(|| not_found(format_args!("path {}", ctx.path)))?;
    let id = match (request.operation("job-id"), &path) {
        (Some(IppValue::Integer(id)), _) if *id > 0 => *id,
        (Some(_), _) => return Err(Failure::bad_request("job-id must be a positive integer")),
        (None, Address::Job(id)) => *id,
        (None, _) => return Err(Failure::bad_request("missing job-id or job-uri")),
    };
    let scope = match (path, printer_uri_address(request)?) {
        (Address::Queue(queue), _) | (_, Address::Queue(queue)) => Some(queue),
        _ => None,
    };
    Ok((scope, id))
}

fn store_failure(error: StoreError) -> Failure {
    match error {
        StoreError::NotFound(id) => not_found(format_args!("job {id}")),
        StoreError::NotPossible { .. } => {
            Failure::new(StatusCode::ClientErrorNotPossible, error.to_string())
        }
        StoreError::Unavailable(_) => {
            Failure::new(StatusCode::ServerErrorServiceUnavailable, error.to_string())
        }
        StoreError::Fenced(_)
        | StoreError::NotLeader { .. }
        | StoreError::Document(_)
        | StoreError::Internal(_) => {
            Failure::new(StatusCode::ServerErrorInternalError, error.to_string())
        }
        StoreError::QuotaExceeded(tripped) => admission::quota_refusal(&tripped),
    }
}

/// The job `id`, when it exists (and is on `scope` when a queue was named).
async fn load_job(ctx: &RequestContext, scope: Option<&str>, id: JobId) -> Result<Job, Failure> {
    let job = ctx
        .app
        .store
        .job(id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| not_found(format_args!("job {id}")))?;
    match scope {
        Some(queue) if queue != job.queue => {
            Err(not_found(format_args!("job {id} on queue {queue}")))
        }
        _ => Ok(job),
    }
}

/// The access rules of a queue; a queue removed from the configuration has none.
fn access_of<'c>(config: &'c Config, queue: &str) -> std::borrow::Cow<'c, AccessRules> {
    match config.queues.get(queue) {
        Some(spec) => std::borrow::Cow::Borrowed(&spec.access),
        None => std::borrow::Cow::Owned(AccessRules::default()),
    }
}

// ---------------------------------------------------------------------------------------
// Requesters

/// Who is asking, under a queue's access rules.
fn requester(
    ctx: &RequestContext,
    request: &Request,
    access: &AccessRules,
) -> Result<Identity, Refusal> {
    match ctx
        .app
        .auth
        .authenticate(access, ctx.authorization.as_deref())
    {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) => Ok(Identity {
            user: requesting_user_name(request),
            groups: Vec::new(),
            authenticated: false,
        }),
        Err(AuthError::Unauthorized) => Err(Refusal::Unauthorized),
        Err(AuthError::Unavailable(reason)) => Err(Failure::new(
            StatusCode::ServerErrorInternalError,
            format!("cannot check credentials: {reason}"),
        )
        .into()),
    }
}

fn requesting_user_name(request: &Request) -> String {
    match request.operation("requesting-user-name") {
        Some(value @ (IppValue::NameWithoutLanguage(_) | IppValue::NameWithLanguage { .. })) => {
            string_of(value)
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .unwrap_or("anonymous")
                .to_string()
        }
        _ => "anonymous".to_string(),
    }
}

/// The owner and the queue's operators manage a job.
fn may_manage(access: &AccessRules, identity: &Identity, job: &Job) -> bool {
    job.owner == identity.user || auth::is_operator(access, identity)
}

fn not_authorized(what: &str, identity: &Identity) -> Failure {
    Failure::new(
        StatusCode::ClientErrorNotAuthorized,
        format!("{} may not {what}", identity.user),
    )
}

// ---------------------------------------------------------------------------------------
// Documents

/// A unique document key: time, host, process and a counter ([A-Za-z0-9._-] only).
fn document_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Host and process do not change while the process runs: read once, not per document.
    static HOST_AND_PROCESS: OnceLock<String> = OnceLock::new();
    let host_and_process = HOST_AND_PROCESS.get_or_init(|| {
        let host: String = std::env::var("HOSTNAME")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(63)
            .collect();
        format!("{host}-{}", std::process::id())
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("doc-{nanos}-{host_and_process}-{count}")
}

fn spool_failure(error: SpoolError) -> Failure {
    let status = match &error {
        SpoolError::TooLarge => StatusCode::ClientErrorRequestEntityTooLong,
        SpoolError::Timeout => StatusCode::ClientErrorTimeout,
        SpoolError::Client(_) => StatusCode::ClientErrorBadRequest,
        SpoolError::Store(_) => StatusCode::ServerErrorInternalError,
    };
    Failure::new(status, error.to_string())
}

async fn discard(ctx: &RequestContext, body: &DocumentBody) {
    if let DocumentBody::Stored { key } = body
        && let Err(error) = ctx.app.documents.delete(key).await
    {
        tracing::warn!(%key, %error, "could not delete an unused document");
    }
}

/// Receive the document that follows the attributes; `None` when there is none.
/// `application/octet-stream` (or no format) is replaced by what the data looks like.
async fn receive_document(
    ctx: &RequestContext,
    queue: &PrintQueueSpec,
    profile: &QueueProfile,
    first: Bytes,
    rest: BodyChunks,
    format: Option<&str>,
    name: Option<String>,
) -> Result<Option<NewDocument>, Failure> {
    let settings = &ctx.app.settings;
    let limits = SpoolLimits {
        max_bytes: queue
            .max_document_bytes
            .unwrap_or(settings.max_document_bytes),
        inline_max: settings.inline_document_bytes,
        idle_timeout: settings.idle_timeout,
    };
    let key = document_key();
    let spooled = spool_document(ctx.app.documents.as_ref(), &key, first, rest, limits)
        .await
        .map_err(spool_failure)?;
    if spooled.size == 0 {
        discard(ctx, &spooled.body).await;
        return Ok(None);
    }
    let format = match format {
        Some(format) if format != OCTET_STREAM => format.to_string(),
        _ => detect_format(&spooled.head).to_string(),
    };
    if !profile.supports_format(&format) {
        discard(ctx, &spooled.body).await;
        return Err(Failure::new(
            StatusCode::ClientErrorDocumentFormatNotSupported,
            format!("the document is {format}, which this queue does not accept"),
        )
        .with_unsupported(codec::mime("document-format", &format)));
    }
    Ok(Some(NewDocument {
        format,
        name,
        size: spooled.size,
        body: spooled.body,
    }))
}

// ---------------------------------------------------------------------------------------
// Job operations

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn job_summary(ctx: &RequestContext, job: &Job) -> Vec<IppAttribute> {
    job_status(job, &ctx.base_uri()).into()
}

fn ok_status(unsupported: &[IppAttribute]) -> StatusCode {
    if unsupported.is_empty() {
        StatusCode::SuccessfulOk
    } else {
        StatusCode::SuccessfulOkIgnoredOrSubstitutedAttributes
    }
}

/// Print-Job, Validate-Job and Create-Job.
async fn submit(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
    operation: Operation,
    body: &mut Body,
) -> Outcome {
    let (queue_name, queue) = match printer_target(ctx, request)? {
        Some(name) => (name.clone(), queue_named(config, &name)?),
        None => return Err(not_found("a queue at this URI").into()),
    };
    let identity = requester(ctx, request, &queue.access)?;
    if !auth::may_print(&queue.access, &identity) {
        let status = if identity.authenticated {
            StatusCode::ClientErrorNotAuthorized
        } else {
            StatusCode::ClientErrorForbidden
        };
        return Err(Failure::new(
            status,
            format!("{} may not print to {queue_name}", identity.user),
        )
        .into());
    }
    let profile = QueueProfile::derive(config, queue);
    let submission = parse_submission(request, &profile, &queue.defaults)?;
    let policy = accounting::policy_of_queue(config, &queue_name);
    admission::check_billing_code(policy.as_deref(), &submission.ticket)?;
    let mut response = Response::new(ok_status(&submission.unsupported));
    if operation == Operation::ValidateJob {
        response.unsupported = submission.unsupported;
        return Ok(response);
    }
    let document = if operation == Operation::PrintJob {
        let (first, rest) = body.take()?;
        let document = receive_document(
            ctx,
            queue,
            &profile,
            first,
            rest,
            submission.format.as_deref(),
            submission.document_name.clone(),
        )
        .await?;
        Some(document.ok_or_else(|| Failure::bad_request("Print-Job without document data"))?)
    } else {
        None
    };
    let stored_body = document.as_ref().map(|d| d.body.clone());
    // Create-Job is admitted with its last document.
    let job_admission = match &document {
        Some(document) => Some(admission::admission(
            policy.as_deref(),
            &identity,
            &submission.ticket,
            &[admission::pages_of_new(ctx, document).await],
        )),
        None => None,
    };
    let job = NewJob {
        queue: queue_name.clone(),
        owner: identity.user.clone(),
        name: submission
            .job_name
            .clone()
            .or(submission.document_name.clone())
            .unwrap_or_else(|| "Untitled".to_string()),
        originating_host: Some(ctx.peer.ip().to_string()),
        priority: submission.priority,
        held: queue.hold_until_release || submission.held,
        ticket: submission.ticket,
        documents_complete: operation == Operation::PrintJob,
        document,
        admission: job_admission,
    };
    let job = match ctx.app.store.create_job(job).await {
        Ok(job) => job,
        Err(error) => {
            if let Some(body) = &stored_body {
                discard(ctx, body).await;
            }
            return Err(store_failure(error).into());
        }
    };
    ctx.app
        .metrics
        .jobs_accepted
        .with_label_values(&[queue_name.as_str()])
        .inc();
    ctx.app.dispatch.wake();
    tracing::info!(job = job.id, queue = %queue_name, owner = %job.owner, operation = operation.name(), "job accepted");
    response.unsupported = submission.unsupported;
    response.push_group(DelimiterTag::JobAttributes, job_summary(ctx, &job));
    Ok(response)
}

/// A job addressed by the request, its queue's access rules and the requester, who must
/// be allowed to manage it.
async fn managed_job<'c>(
    ctx: &RequestContext,
    config: &'c Config,
    request: &Request,
    what: &str,
) -> Result<(Job, std::borrow::Cow<'c, AccessRules>, Identity), Refusal> {
    let (scope, id) = job_target(ctx, request)?;
    let job = load_job(ctx, scope.as_deref(), id).await?;
    let access = access_of(config, &job.queue);
    let identity = requester(ctx, request, &access)?;
    if !may_manage(&access, &identity, &job) {
        return Err(not_authorized(&format!("{what} job {}", job.id), &identity).into());
    }
    Ok((job, access, identity))
}

/// Send-Document and Close-Job.
async fn send_document(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
    operation: Operation,
    body: &mut Body,
) -> Outcome {
    let (job, _, identity) = managed_job(ctx, config, request, "add documents to").await?;
    let last = match (operation, request.operation("last-document")) {
        (Operation::CloseJob, _) => true,
        (_, Some(IppValue::Boolean(last))) => *last,
        (_, Some(_)) => return Err(Failure::bad_request("last-document is not a boolean").into()),
        (_, None) => return Err(Failure::bad_request("missing last-document").into()),
    };
    if job.state.is_terminal() || job.documents_complete {
        return Err(Failure::new(
            StatusCode::ClientErrorNotPossible,
            format!("job {} accepts no more documents", job.id),
        )
        .into());
    }
    let queue = queue_named(config, &job.queue)?;
    let profile = QueueProfile::derive(config, queue);
    let document = if operation == Operation::SendDocument {
        job_attributes::check_compression(request)?;
        let format = job_attributes::check_format(request, &profile)?;
        let name = request
            .operation("document-name")
            .and_then(string_of)
            .map(str::to_string);
        let (first, rest) = body.take()?;
        receive_document(ctx, queue, &profile, first, rest, format.as_deref(), name).await?
    } else {
        None
    };
    if document.is_none() && !last {
        return Err(Failure::bad_request("Send-Document without document data").into());
    }
    let stored_body = document.as_ref().map(|d| d.body.clone());
    let added = if last {
        let mut pages = admission::pages_of_job(ctx, &job).await;
        if let Some(document) = &document {
            pages.push(admission::pages_of_new(ctx, document).await);
        }
        // The job's owner pays; their groups are known when they are the requester.
        let payer = if identity.user == job.owner {
            identity
        } else {
            Identity {
                user: job.owner.clone(),
                groups: Vec::new(),
                authenticated: false,
            }
        };
        let policy = accounting::policy_of_queue(config, &job.queue);
        let job_admission = admission::admission(policy.as_deref(), &payer, &job.ticket, &pages);
        ctx.app
            .store
            .add_last_document(job.id, document, job_admission)
            .await
    } else {
        ctx.app.store.add_document(job.id, document, last).await
    };
    let job = match added {
        Ok(job) => job,
        Err(error) => {
            if let Some(body) = &stored_body {
                discard(ctx, body).await;
            }
            if matches!(error, StoreError::QuotaExceeded(_)) {
                // The job can never be admitted: do not leave it waiting for documents.
                if let Err(error) = ctx.app.store.apply(job.id, UserAction::Cancel).await {
                    tracing::warn!(job = job.id, %error, "canceling a job over quota");
                }
            }
            return Err(store_failure(error).into());
        }
    };
    ctx.app.dispatch.wake();
    let mut response = Response::new(StatusCode::SuccessfulOk);
    response.push_group(DelimiterTag::JobAttributes, job_summary(ctx, &job));
    Ok(response)
}

/// Cancel-Job, Hold-Job and Release-Job.
async fn job_action(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
    operation: Operation,
) -> Outcome {
    let (action, verb) = match operation {
        Operation::HoldJob => (UserAction::Hold, "hold"),
        Operation::ReleaseJob => (UserAction::Release, "release"),
        _ => (UserAction::Cancel, "cancel"),
    };
    let (job, access, identity) = managed_job(ctx, config, request, verb).await?;
    // A job held over a quota is released by an operator only (it was already charged).
    if action == UserAction::Release
        && job
            .reasons
            .iter()
            .any(|reason| reason == REASON_ACCOUNT_LIMIT)
        && !auth::is_operator(&access, &identity)
    {
        return Err(
            not_authorized(&format!("release job {} (over quota)", job.id), &identity).into(),
        );
    }
    let purge = matches!(
        request.operation("purge-job"),
        Some(IppValue::Boolean(true))
    );
    // `cancel -x` purges finished jobs too: they are already gone from the queue's point
    // of view, and history retention removes them.
    if action == UserAction::Cancel && purge && job.state.is_terminal() {
        return Ok(Response::new(StatusCode::SuccessfulOk));
    }
    let job = ctx
        .app
        .store
        .apply(job.id, action)
        .await
        .map_err(store_failure)?;
    match action {
        UserAction::Cancel => ctx.app.dispatch.cancel(job.id),
        UserAction::Release => ctx.app.dispatch.wake(),
        UserAction::Hold => {}
    }
    tracing::info!(job = job.id, user = %identity.user, action = verb, "job changed");
    Ok(Response::new(StatusCode::SuccessfulOk))
}

async fn get_job_attributes(ctx: &RequestContext, config: &Config, request: &Request) -> Outcome {
    let (job, _, _) = managed_job(ctx, config, request, "see").await?;
    let requested = Requested::parse(request.operation("requested-attributes"), Requested::all());
    let mut response = Response::new(StatusCode::SuccessfulOk);
    response.push_group(
        DelimiterTag::JobAttributes,
        requested.filter(job_attributes(
            &job,
            &ctx.base_uri(),
            now(),
            Visibility::Full,
        )),
    );
    Ok(response)
}

/// `which-jobs`, `my-jobs` and `limit` of a Get-Jobs request.
fn job_query(request: &Request, queue: Option<String>, user: &str) -> Result<JobQuery, Failure> {
    let unsupported = |name: &str, value: &IppValue| {
        Failure::new(
            StatusCode::ClientErrorAttributesOrValuesNotSupported,
            format!("{name} {value} is not supported"),
        )
        .with_unsupported(codec::attribute(name, value.clone()))
    };
    let which = match request.operation("which-jobs") {
        None => WhichJobs::NotCompleted,
        Some(value) => match string_of(value) {
            Some("not-completed") => WhichJobs::NotCompleted,
            Some("completed") => WhichJobs::Completed,
            Some("all") => WhichJobs::All,
            _ => return Err(unsupported("which-jobs", value)),
        },
    };
    let owner = match request.operation("my-jobs") {
        Some(IppValue::Boolean(true)) => Some(user.to_string()),
        Some(IppValue::Boolean(false)) | None => None,
        Some(value) => return Err(unsupported("my-jobs", value)),
    };
    let limit = match request.operation("limit") {
        None => None,
        Some(IppValue::Integer(limit)) if *limit > 0 => usize::try_from(*limit).ok(),
        Some(value) => return Err(unsupported("limit", value)),
    };
    Ok(JobQuery {
        queue,
        which,
        owner,
        limit,
    })
}

async fn get_jobs(ctx: &RequestContext, config: &Config, request: &Request) -> Outcome {
    let queue = printer_target(ctx, request)?;
    let access = match &queue {
        Some(name) => std::borrow::Cow::Borrowed(&queue_named(config, name)?.access),
        None => std::borrow::Cow::Owned(AccessRules::default()),
    };
    let identity = requester(ctx, request, &access)?;
    let query = job_query(request, queue, &identity.user)?;
    let requested = Requested::parse(
        request.operation("requested-attributes"),
        Requested::names(&["job-id", "job-uri"]),
    );
    let jobs = ctx
        .app
        .store
        .list_jobs(&query)
        .await
        .map_err(store_failure)?;
    let base_uri = ctx.base_uri();
    let now = now();
    let mut response = Response::new(StatusCode::SuccessfulOk);
    for job in &jobs {
        let visibility = if may_manage(&access_of(config, &job.queue), &identity, job) {
            Visibility::Full
        } else {
            Visibility::Private
        };
        response.push_group(
            DelimiterTag::JobAttributes,
            requested.filter(job_attributes(job, &base_uri, now, visibility)),
        );
    }
    Ok(response)
}

/// Whether the requester may act on the whole queue: an operator, or anyone on loopback
/// when the queue names no operators.
fn is_queue_operator(ctx: &RequestContext, access: &AccessRules, identity: &Identity) -> bool {
    if access.operators.is_empty() {
        ctx.peer.ip().is_loopback()
    } else {
        auth::is_operator(access, identity)
    }
}

/// Cancel-My-Jobs, and Cancel-Jobs (`cancel -a`): an operator's Cancel-Jobs cancels
/// everyone's jobs, anyone else's only their own.
async fn cancel_jobs(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
    operation: Operation,
) -> Outcome {
    let queue = printer_target(ctx, request)?;
    let access = match &queue {
        Some(name) => std::borrow::Cow::Borrowed(&queue_named(config, name)?.access),
        None => std::borrow::Cow::Owned(AccessRules::default()),
    };
    let identity = requester(ctx, request, &access)?;
    let everyone = operation == Operation::CancelJobs && is_queue_operator(ctx, &access, &identity);
    let only: Option<Vec<i32>> = request.operation("job-ids").map(|ids| {
        values(ids)
            .iter()
            .filter_map(|id| id.as_integer().copied())
            .collect()
    });
    let query = JobQuery {
        queue,
        which: WhichJobs::NotCompleted,
        owner: (!everyone).then(|| identity.user.clone()),
        limit: None,
    };
    let jobs = ctx
        .app
        .store
        .list_jobs(&query)
        .await
        .map_err(store_failure)?;
    for job in jobs {
        if only.as_ref().is_some_and(|ids| !ids.contains(&job.id)) {
            continue;
        }
        match ctx.app.store.apply(job.id, UserAction::Cancel).await {
            Ok(_) => ctx.app.dispatch.cancel(job.id),
            // Finished meanwhile: nothing left to cancel.
            Err(StoreError::NotPossible { .. } | StoreError::NotFound(_)) => {}
            Err(error) => return Err(store_failure(error).into()),
        }
    }
    Ok(Response::new(StatusCode::SuccessfulOk))
}

// ---------------------------------------------------------------------------------------
// Printer operations

/// What the store says of the queues a printer operation answers for: which are paused,
/// and their unfinished and printing jobs. Read once per request, however many queues it
/// lists.
struct StoredQueues {
    paused: Vec<String>,
    depths: Vec<QueueDepth>,
}

impl StoredQueues {
    /// Depths of `queue` alone, or of every queue (`None`).
    async fn read(ctx: &RequestContext, queue: Option<&str>) -> Result<Self, Failure> {
        let store = &ctx.app.store;
        let (paused, depths) = tokio::try_join!(store.paused_queues(), store.queue_depths(queue))
            .map_err(store_failure)?;
        Ok(StoredQueues { paused, depths })
    }

    fn state(&self, queue: &str) -> QueueState {
        let depth = QueueDepth::of(&self.depths, queue);
        QueueState {
            paused: self.paused.iter().any(|p| p == queue),
            queued: depth.map_or(0, |depth| {
                i32::try_from(depth.unfinished).unwrap_or(i32::MAX)
            }),
            processing: depth.is_some_and(|depth| depth.processing > 0),
        }
    }
}

/// The printer attributes of one queue, filtered by `requested-attributes`.
fn queue_attributes(
    ctx: &RequestContext,
    config: &Config,
    name: &str,
    queue: &PrintQueueSpec,
    requested: &Requested,
    stored: &StoredQueues,
) -> Vec<IppAttribute> {
    let profile = QueueProfile::derive(config, queue);
    let base_uri = ctx.base_uri();
    let view = PrinterView {
        name,
        queue,
        config,
        profile: &profile,
        state: stored.state(name),
        base_uri: &base_uri,
        now: now(),
    };
    requested.filter(printer_attributes(&view))
}

async fn get_printer_attributes(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
) -> Outcome {
    let (name, queue) = single_queue(config, printer_target(ctx, request)?)?;
    printer_response(ctx, config, request, &name, queue).await
}

async fn printer_response(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
    name: &str,
    queue: &PrintQueueSpec,
) -> Outcome {
    let requested = Requested::parse(request.operation("requested-attributes"), Requested::all());
    let stored = StoredQueues::read(ctx, Some(name)).await?;
    let attributes = queue_attributes(ctx, config, name, queue, &requested, &stored);
    let mut response = Response::new(StatusCode::SuccessfulOk);
    response.push_group(DelimiterTag::PrinterAttributes, attributes);
    Ok(response)
}

async fn cups_get_default(ctx: &RequestContext, config: &Config, request: &Request) -> Outcome {
    let (name, queue) = single_queue(config, None)?;
    printer_response(ctx, config, request, &name, queue).await
}

async fn cups_get_printers(ctx: &RequestContext, config: &Config, request: &Request) -> Outcome {
    let requested = Requested::parse(request.operation("requested-attributes"), Requested::all());
    let limit = match request.operation("limit") {
        Some(IppValue::Integer(limit)) if *limit > 0 => {
            usize::try_from(*limit).unwrap_or(usize::MAX)
        }
        _ => usize::MAX,
    };
    let stored = StoredQueues::read(ctx, None).await?;
    let mut response = Response::new(StatusCode::SuccessfulOk);
    for (name, queue) in config.queues.iter().take(limit) {
        let attributes = queue_attributes(ctx, config, name, queue, &requested, &stored);
        response.push_group(DelimiterTag::PrinterAttributes, attributes);
    }
    Ok(response)
}

async fn pause_or_resume(
    ctx: &RequestContext,
    config: &Config,
    request: &Request,
    operation: Operation,
) -> Outcome {
    let (name, queue) = match printer_target(ctx, request)? {
        Some(name) => (name.clone(), queue_named(config, &name)?),
        None => return Err(not_found("a queue at this URI").into()),
    };
    let identity = requester(ctx, request, &queue.access)?;
    let allowed = is_queue_operator(ctx, &queue.access, &identity);
    let pause = operation == Operation::PausePrinter;
    if !allowed {
        let verb = if pause { "pause" } else { "resume" };
        return Err(not_authorized(&format!("{verb} queue {name}"), &identity).into());
    }
    ctx.app
        .store
        .set_queue_paused(&name, pause)
        .await
        .map_err(store_failure)?;
    if !pause {
        ctx.app.dispatch.wake();
    }
    tracing::info!(queue = %name, user = %identity.user, paused = pause, "queue state changed");
    Ok(Response::new(StatusCode::SuccessfulOk))
}

/// Identify-Printer: a queue has no lamp to flash; the request is logged so an
/// administrator watching the log sees which queue a user is looking for.
fn identify_printer(ctx: &RequestContext, config: &Config, request: &Request) -> Outcome {
    let (name, _) = match printer_target(ctx, request)? {
        Some(name) => (name.clone(), queue_named(config, &name)?),
        None => return Err(not_found("a queue at this URI").into()),
    };
    tracing::info!(queue = %name, peer = %ctx.peer, "Identify-Printer");
    Ok(Response::new(StatusCode::SuccessfulOk))
}

#[cfg(test)]
mod tests;
