//! Arbitrary bytes through IPP request reading and validation: the incremental scanner
//! (in chunks and in one piece, which must agree), decoding, the RFC 8011 checks, job
//! template validation against a queue, `requested-attributes`, target addresses, and
//! encoding a response carrying what was unsupported. None of it may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use printfleet_crds::PrintQueueSpec;
use printfleet_spooler::config::Config;
use printfleet_spooler::ipp::codec::{self, Response, Scan, SectionScanner};
use printfleet_spooler::ipp::job_attributes::parse_submission;
use printfleet_spooler::ipp::ops::{check_request, parse_path, uri_path};
use printfleet_spooler::ipp::parse_request;
use printfleet_spooler::ipp::printer_attributes::{QueueProfile, Requested};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let whole = SectionScanner::default().scan(body);
    let chunk = usize::from(chunk).max(1);
    let mut scanner = SectionScanner::default();
    let mut seen = 0;
    let chunked = loop {
        seen = (seen + chunk).min(body.len());
        match scanner.scan(&body[..seen]) {
            Scan::NeedMore if seen < body.len() => continue,
            other => break other,
        }
    };
    assert_eq!(whole, chunked, "chunking changed the scan");

    let Ok((request, _)) = parse_request(body) else {
        return;
    };
    let _ = check_request(&request);
    let profile = QueueProfile::derive(
        &Config::default(),
        &PrintQueueSpec {
            printers: vec!["p".into()],
            ..PrintQueueSpec::default()
        },
    );
    let mut response = Response::new(ipp::model::StatusCode::SuccessfulOk);
    if let Err(failure) = parse_submission(&request, &profile, &Default::default()) {
        response.unsupported = failure.unsupported;
    }
    let _ = Requested::parse(request.operation("requested-attributes"), Requested::all());
    for name in ["printer-uri", "job-uri"] {
        if let Some(uri) = request.operation(name).and_then(codec::string_of) {
            let _ = uri_path(uri).and_then(parse_path);
        }
    }
    let encoded = response.encode(request.header.version, request.header.request_id);
    assert!(
        codec::decode(encoded).is_ok(),
        "our own response must decode"
    );
});
