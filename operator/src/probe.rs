//! Printer probing: IPP Get-Printer-Attributes for `ipp://` printers, a TCP connection for
//! the others. The outcome becomes the Printer's status (see [`crate::status`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use ipp::attribute::IppAttributes;
use ipp::model::DelimiterTag;
use ipp::operation::IppOperation;
use ipp::operation::builder::IppOperationBuilder;
use ipp::parser::IppParser;
use ipp::value::IppValue;
use printfleet_crds::PrinterSpec;
use printfleet_crds::printer::SupplyLevel;
use printfleet_crds::validate::{UriScheme, parse_printer_uri, validate_printer};
use tokio::net::TcpStream;

use crate::desired::join_errors;
use crate::status::ProbeOutcome;

/// Largest Get-Printer-Attributes response read (the attributes asked for are small).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const REQUESTED_ATTRIBUTES: [&str; 5] = [
    "printer-state",
    "printer-state-reasons",
    "marker-names",
    "marker-levels",
    "queued-job-count",
];

/// Probes a printer, giving up after `timeout`.
pub async fn probe(spec: &PrinterSpec, timeout: Duration) -> ProbeOutcome {
    if let Err(errors) = validate_printer(spec) {
        return ProbeOutcome::InvalidSpec(join_errors(&errors));
    }
    let uri = match parse_printer_uri(&spec.uri) {
        Ok(uri) => uri,
        Err(reason) => return ProbeOutcome::InvalidSpec(reason),
    };
    let work = async {
        match uri.scheme {
            UriScheme::File => ProbeOutcome::LocalDirectory,
            UriScheme::Ipp => {
                let path = if uri.path.is_empty() { "/" } else { uri.path };
                ipp_probe(
                    &spec.uri,
                    uri.host,
                    uri.port.unwrap_or(631),
                    path,
                    spec.credentials.is_some(),
                )
                .await
            }
            // TLS printers and the raw protocols are checked for reachability only.
            UriScheme::Ipps => tcp_probe(uri.host, uri.port.unwrap_or(631)).await,
            UriScheme::Socket => tcp_probe(uri.host, uri.port.unwrap_or(9100)).await,
            UriScheme::Lpd => tcp_probe(uri.host, uri.port.unwrap_or(515)).await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| ProbeOutcome::Unreachable(format!("no answer within {timeout:?}")))
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeOutcome> {
    TcpStream::connect((host, port))
        .await
        .map_err(|error| ProbeOutcome::Unreachable(format!("connecting to {host}:{port}: {error}")))
}

async fn tcp_probe(host: &str, port: u16) -> ProbeOutcome {
    match connect(host, port).await {
        Ok(_) => ProbeOutcome::Connected,
        Err(outcome) => outcome,
    }
}

async fn ipp_probe(
    uri: &str,
    host: &str,
    port: u16,
    path: &str,
    has_credentials: bool,
) -> ProbeOutcome {
    match ipp_exchange(uri, host, port, path).await {
        Ok(attributes) => outcome_from_attributes(&attributes),
        // The operator does not read Secrets: a printer asking for the credentials the
        // spec provides is reachable, and the spooler uses them.
        Err(ProbeOutcome::Unauthorized(_)) if has_credentials => ProbeOutcome::Connected,
        Err(outcome) => outcome,
    }
}

async fn ipp_exchange(
    uri: &str,
    host: &str,
    port: u16,
    path: &str,
) -> Result<IppAttributes, ProbeOutcome> {
    let printer_uri = uri
        .parse()
        .map_err(|error| ProbeOutcome::InvalidSpec(format!("{uri}: {error}")))?;
    let request = IppOperationBuilder::get_printer_attributes(printer_uri)
        .attributes(REQUESTED_ATTRIBUTES)
        .build()
        .map_err(|error| ProbeOutcome::ProtocolError(format!("encoding the request: {error}")))?
        .into_ipp_request();
    let http_request = http::Request::post(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/ipp")
        .body(Full::new(request.to_bytes()))
        .map_err(|error| ProbeOutcome::InvalidSpec(format!("{uri}: {error}")))?;
    let stream = connect(host, port).await?;
    let protocol_error = |what: &str, error: &dyn std::fmt::Display| {
        ProbeOutcome::ProtocolError(format!("{what} {host}:{port}: {error}"))
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| protocol_error("HTTP handshake with", &error))?;
    let connection = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|error| protocol_error("HTTP exchange with", &error))?;
        match response.status() {
            http::StatusCode::OK => {}
            status @ (http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN) => {
                return Err(ProbeOutcome::Unauthorized(format!(
                    "{uri} answered HTTP {status}"
                )));
            }
            status => {
                return Err(ProbeOutcome::ProtocolError(format!(
                    "{uri} answered HTTP {status}"
                )));
            }
        }
        let body: Bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| protocol_error("reading the answer of", &error))?
            .to_bytes();
        let parsed = IppParser::new(std::io::Cursor::new(body))
            .parse()
            .map_err(|error| protocol_error("parsing the IPP answer of", &error))?;
        if !parsed.header().status_code().is_success() {
            return Err(ProbeOutcome::ProtocolError(format!(
                "{uri} refused Get-Printer-Attributes: {}",
                parsed.header().status_code()
            )));
        }
        Ok(parsed.attributes().clone())
    }
    .await;
    connection.abort();
    result
}

/// How many jobs the spooler serving `uri` (an `ipp://` queue of ours) holds for it and has
/// not finished (`queued-job-count`); `None` when it cannot tell within `timeout`.
pub async fn queued_jobs(uri: &str, timeout: Duration) -> Option<i64> {
    let parsed = parse_printer_uri(uri).ok()?;
    let port = parsed.port.unwrap_or(631);
    let exchange = ipp_exchange(uri, parsed.host, port, parsed.path);
    let attributes = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(attributes)) => attributes,
        Ok(Err(outcome)) => {
            tracing::debug!(?outcome, uri, "cannot read the queue's depth");
            return None;
        }
        Err(_) => return None,
    };
    attributes
        .groups_of(DelimiterTag::PrinterAttributes)
        .find_map(|group| group.get("queued-job-count"))
        .and_then(|attribute| match attribute.value() {
            IppValue::Integer(count) => Some(i64::from(*count)),
            _ => None,
        })
}

/// Reads state, reasons and supply levels from a Get-Printer-Attributes response.
pub fn outcome_from_attributes(attributes: &IppAttributes) -> ProbeOutcome {
    let printer = |name: &str| {
        attributes
            .groups_of(DelimiterTag::PrinterAttributes)
            .find_map(|group| group.get(name))
            .map(|attribute| attribute.value().clone())
    };
    let state = match printer("printer-state") {
        Some(IppValue::Enum(3)) => "idle",
        Some(IppValue::Enum(4)) => "processing",
        Some(IppValue::Enum(5)) => "stopped",
        _ => "unknown",
    };
    let strings = |value: Option<IppValue>| -> Vec<String> {
        match value {
            Some(IppValue::Array(values)) => values.iter().map(ToString::to_string).collect(),
            Some(value) => vec![value.to_string()],
            None => Vec::new(),
        }
    };
    let levels: Vec<i32> = match printer("marker-levels") {
        Some(IppValue::Array(values)) => values
            .iter()
            .map(|v| {
                if let IppValue::Integer(level) = v {
                    *level
                } else {
                    -1
                }
            })
            .collect(),
        Some(IppValue::Integer(level)) => vec![level],
        _ => Vec::new(),
    };
    let supplies = strings(printer("marker-names"))
        .into_iter()
        .zip(levels)
        .map(|(name, level)| SupplyLevel {
            name,
            // -1 "unknown", -2 "unknown but some", -3 "unknown but not empty": all unknown.
            level: if (0..=100).contains(&level) {
                level
            } else {
                -1
            },
        })
        .collect();
    ProbeOutcome::Ipp {
        state: state.into(),
        reasons: strings(printer("printer-state-reasons")),
        supplies,
    }
}

#[cfg(test)]
mod tests {
    use ipp::attribute::{IppAttribute, IppAttributeGroup};
    use ipp::value::{IppKeyword, IppName};

    use super::*;

    #[test]
    fn reads_state_reasons_and_supplies() {
        let mut group = IppAttributeGroup::new(DelimiterTag::PrinterAttributes);
        let keyword = |k: &str| IppValue::Keyword(IppKeyword::new_truncated(k.to_owned()));
        let name = |n: &str| IppValue::NameWithoutLanguage(IppName::new_truncated(n.to_owned()));
        let attribute = |n: &str, value| IppAttribute::with_name(n, value).expect("attribute name");
        group.attributes_mut().extend([
            attribute("printer-state", IppValue::Enum(5)),
            attribute(
                "printer-state-reasons",
                IppValue::Array(vec![
                    keyword("media-empty-error"),
                    keyword("toner-low-warning"),
                ]),
            ),
            attribute(
                "marker-names",
                IppValue::Array(vec![name("black"), name("cyan")]),
            ),
            attribute(
                "marker-levels",
                IppValue::Array(vec![IppValue::Integer(7), IppValue::Integer(-3)]),
            ),
        ]);
        let mut attributes = IppAttributes::new();
        attributes.groups_mut().push(group);
        assert_eq!(
            outcome_from_attributes(&attributes),
            ProbeOutcome::Ipp {
                state: "stopped".into(),
                reasons: vec!["media-empty-error".into(), "toner-low-warning".into()],
                supplies: vec![
                    SupplyLevel {
                        name: "black".into(),
                        level: 7
                    },
                    SupplyLevel {
                        name: "cyan".into(),
                        level: -1
                    },
                ],
            }
        );
    }

    #[tokio::test]
    async fn closed_port_is_unreachable_and_listening_port_is_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let spec = |uri: String| PrinterSpec {
            uri,
            ..PrinterSpec::default()
        };
        let open = probe(
            &spec(format!("socket://127.0.0.1:{port}")),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(open, ProbeOutcome::Connected);
        drop(listener);
        let closed = probe(
            &spec(format!("socket://127.0.0.1:{port}")),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(closed, ProbeOutcome::Unreachable(_)), "{closed:?}");
        let file = probe(
            &spec("file:///var/spool/out".into()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(file, ProbeOutcome::LocalDirectory);
        let invalid = probe(&spec("gopher://x".into()), Duration::from_secs(5)).await;
        assert!(
            matches!(invalid, ProbeOutcome::InvalidSpec(_)),
            "{invalid:?}"
        );
    }
}
