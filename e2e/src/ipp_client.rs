//! A small IPP client over one keep-alive HTTP/1.1 connection (hyper), with requests
//! encoded by the `ipp` crate: what the crash test and the load generator submit with.

use std::io::Cursor;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ipp::model::StatusCode;
use ipp::operation::IppOperation;
use ipp::operation::builder::IppOperationBuilder;
use ipp::parser::IppParser;
use ipp::payload::IppPayload;
use ipp::reader::IppReader;
use ipp::request::IppRequestResponse;
use tokio::net::TcpStream;

use crate::error::{HarnessError, Result};

/// The parts of an IPP response the tests look at.
pub struct IppResponse {
    pub status: StatusCode,
    pub raw_status: i16,
    pub response: IppRequestResponse,
}

impl IppResponse {
    pub fn is_success(&self) -> bool {
        (0..0x100).contains(&self.raw_status)
    }

    /// The first integer or enum value of `name` in any group.
    pub fn integer(&self, name: &str) -> Option<i32> {
        self.response
            .attributes()
            .groups()
            .iter()
            .find_map(|group| group.get(name))
            .and_then(|attribute| match attribute.value() {
                ipp::value::IppValue::Integer(value) | ipp::value::IppValue::Enum(value) => {
                    Some(*value)
                }
                _ => None,
            })
    }

    /// Every keyword value of `name`, in all groups (e.g. one per job of Get-Jobs).
    pub fn keywords(&self, name: &str) -> Vec<String> {
        self.response
            .attributes()
            .groups()
            .iter()
            .filter_map(|group| group.get(name))
            .flat_map(|attribute| attribute.value().into_iter())
            .filter_map(|value| match value {
                ipp::value::IppValue::Keyword(keyword) => Some(keyword.to_string()),
                _ => None,
            })
            .collect()
    }
}

/// One HTTP/1.1 connection to an IPP server; reconnects after a failure.
pub struct IppConnection {
    port: u16,
    path: String,
    printer_uri: http::Uri,
    sender: Option<SendRequest<Full<Bytes>>>,
    next_request_id: i32,
}

impl IppConnection {
    /// A client for `ipp://127.0.0.1:PORT/PATH` (no connection is made yet).
    pub fn new(printer_uri: &str) -> Result<IppConnection> {
        let uri: http::Uri = printer_uri
            .parse()
            .map_err(|error| HarnessError::Ipp(format!("{printer_uri}: {error}")))?;
        let port = uri
            .port_u16()
            .ok_or_else(|| HarnessError::Ipp(format!("{printer_uri} has no port")))?;
        Ok(IppConnection {
            port,
            path: uri.path().to_string(),
            printer_uri: uri,
            sender: None,
            next_request_id: 1,
        })
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let usable = self
            .sender
            .as_ref()
            .is_some_and(|sender| !sender.is_closed());
        if !usable {
            let stream =
                TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .map_err(HarnessError::io(format!(
                        "connecting to 127.0.0.1:{}",
                        self.port
                    )))?;
            // Small requests must not wait for Nagle.
            stream
                .set_nodelay(true)
                .map_err(HarnessError::io("setting TCP_NODELAY"))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|error| HarnessError::Ipp(format!("HTTP handshake: {error}")))?;
            // The connection task ends with the connection; errors surface on send.
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| HarnessError::Ipp("no connection".into()))
    }

    /// Sends one IPP request (`document` appended after the attributes) and parses the reply.
    pub async fn send(
        &mut self,
        operation: impl IppOperation,
        document: Option<Bytes>,
    ) -> Result<IppResponse> {
        self.send_request(operation.into_ipp_request(), document)
            .await
    }

    /// Sends one IPP request as it is (with a new request id) and parses the reply.
    pub async fn send_request(
        &mut self,
        mut request: IppRequestResponse,
        document: Option<Bytes>,
    ) -> Result<IppResponse> {
        request.header_mut().request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut body = request.to_bytes().to_vec();
        if let Some(document) = document {
            body.extend_from_slice(&document);
        }
        let body = Bytes::from(body);
        let host = format!("127.0.0.1:{}", self.port);
        let build = || {
            http::Request::post(&self.path)
                .header(http::header::HOST, &host)
                .header(http::header::CONTENT_TYPE, "application/ipp")
                .body(Full::new(body.clone()))
                .map_err(|error| HarnessError::Ipp(error.to_string()))
        };
        let (first, retry) = (build()?, build()?);
        // A kept-alive connection the server closed meanwhile fails the request before
        // anything is sent (`is_canceled`): only then is sending again safe.
        let response = match self.sender().await?.send_request(first).await {
            Err(error) if error.is_canceled() => {
                self.sender = None;
                self.sender().await?.send_request(retry).await
            }
            sent => sent,
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                self.sender = None;
                return Err(HarnessError::Ipp(format!("HTTP: {error}")));
            }
        };
        let http_status = response.status();
        let body = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                self.sender = None;
                return Err(HarnessError::Ipp(format!("reading the response: {error}")));
            }
        };
        if !http_status.is_success() {
            return Err(HarnessError::Ipp(format!("HTTP {http_status}")));
        }
        let parsed = IppParser::new(IppReader::new(Cursor::new(body)))
            .parse()
            .map_err(|error| HarnessError::Ipp(format!("bad IPP response: {error}")))?;
        let raw_status = parsed.header().operation_or_status;
        Ok(IppResponse {
            status: parsed.header().status_code(),
            raw_status,
            response: parsed,
        })
    }

    /// Print-Job of `document` as `user`; the response's `job-id` on success.
    pub async fn print_job(
        &mut self,
        user: &str,
        job_name: &str,
        format: &str,
        document: Bytes,
    ) -> Result<IppResponse> {
        let operation =
            IppOperationBuilder::print_job(self.printer_uri.clone(), IppPayload::empty())
                .user_name(user)
                .job_title(job_name)
                .document_format(format)
                .build()
                .map_err(|error| HarnessError::Ipp(error.to_string()))?;
        self.send(operation, Some(document)).await
    }

    /// Get-Job-Attributes as `user` (the owner sees everything about a job).
    pub async fn get_job_attributes(&mut self, job_id: i32, user: &str) -> Result<IppResponse> {
        let operation = IppOperationBuilder::get_job_attributes(self.printer_uri.clone(), job_id)
            .user_name(user)
            .build()
            .map_err(|error| HarnessError::Ipp(error.to_string()))?;
        self.send(operation, None).await
    }

    /// Waits until every job (by submission number) reads `completed` (job-state 9),
    /// allowing `timeout` for each; the error names the first job that did not and what
    /// it read instead.
    pub async fn wait_until_completed(
        &mut self,
        jobs: &std::collections::BTreeMap<usize, i32>,
        user: &str,
        timeout: std::time::Duration,
    ) -> std::result::Result<(), String> {
        for (submission, job_id) in jobs {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let response = self
                    .get_job_attributes(*job_id, user)
                    .await
                    .map_err(|error| format!("submission {submission} (job {job_id}): {error}"))?;
                let state = response.integer("job-state");
                if state == Some(9) {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(format!(
                        "submission {submission} (job {job_id}) is not completed: status {:#06x}, job-state {state:?}",
                        response.raw_status
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Get-Jobs of every user's completed jobs, with the named job attributes.
    pub async fn get_completed_jobs(&mut self, names: &[&str]) -> Result<IppResponse> {
        use ipp::attribute::IppAttribute;
        use ipp::model::DelimiterTag;
        use ipp::value::{BoundedString, IppValue};
        let operation = IppOperationBuilder::get_jobs(self.printer_uri.clone())
            .build()
            .map_err(|error| HarnessError::Ipp(error.to_string()))?;
        let mut request = operation.into_ipp_request();
        let keywords = |values: &[&str]| {
            IppValue::Array(
                values
                    .iter()
                    .map(|value| IppValue::Keyword(BoundedString::new_truncated(*value)))
                    .collect(),
            )
        };
        for attribute in [
            IppAttribute::new(
                BoundedString::new_truncated("which-jobs"),
                keywords(&["completed"]),
            ),
            IppAttribute::new(
                BoundedString::new_truncated("requested-attributes"),
                keywords(names),
            ),
        ] {
            request
                .attributes_mut()
                .add(DelimiterTag::OperationAttributes, attribute);
        }
        self.send_request(request, None).await
    }

    /// Get-Printer-Attributes for the named attributes.
    pub async fn get_printer_attributes(&mut self, names: &[&str]) -> Result<IppResponse> {
        let operation = IppOperationBuilder::get_printer_attributes(self.printer_uri.clone())
            .attributes(names.iter().copied())
            .build()
            .map_err(|error| HarnessError::Ipp(error.to_string()))?;
        self.send(operation, None).await
    }
}
