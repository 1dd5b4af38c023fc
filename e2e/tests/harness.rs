//! The harness's peers on their own, before any spooler is involved: the simulators and
//! CUPS start, take jobs, and stop; the ipptool report parser reads a real report.

use std::time::Duration;

use printfleet_e2e::conformance::{SuiteDir, Verdict, parse_report};
use printfleet_e2e::cups_cli::{ipptool, lp};
use printfleet_e2e::process::{port_open, wait_until};
use printfleet_e2e::{Cupsd, IppConnection, IppEvePrinter, RawSink};

#[test]
fn ippeveprinter_goes_down_and_comes_back_on_its_port() {
    let mut printer = IppEvePrinter::start("harness-updown").unwrap();
    let port = printer.port();
    assert!(port_open(port));
    printer.stop();
    assert!(
        !port_open(port),
        "a stopped printer must refuse connections"
    );
    printer.resume().unwrap();
    assert_eq!(printer.port(), port);
    assert!(port_open(port));
}

/// ipptool's own suite against CUPS's own printer simulator: the report parser must see
/// every test of the suite and the suite directory must let ipptool run it to the end.
#[test]
fn ipptool_report_of_ippeveprinter_parses_completely() {
    let printer = IppEvePrinter::start("harness-ipptool").unwrap();
    let suites = SuiteDir::prepare().unwrap();
    let output = ipptool(
        suites.path(),
        &printer.uri(),
        "1.1",
        &suites.default_document(),
        &suites.test_file("ipp-1.1"),
    )
    .unwrap();
    let report = parse_report(&output);
    assert!(report.errors.is_empty(), "{output}");
    let summary = output
        .lines()
        .find(|line| line.starts_with("Summary: "))
        .expect("a summary line");
    let total: usize = summary["Summary: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(report.tests.len(), total, "{output}");
    assert!(
        report
            .tests
            .iter()
            .filter(|test| test.verdict == Verdict::Pass)
            .count()
            > 20,
        "{output}"
    );
    assert!(printer.received_count() > 0, "the suite prints documents");
}

#[test]
fn ipp_client_prints_to_ippeveprinter() {
    let printer = IppEvePrinter::start("harness-client").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = IppConnection::new(&printer.uri()).unwrap();
        let document = printfleet_e2e::documents::pdf("harness", 2048);
        let response = client
            .print_job("alice", "harness", "application/pdf", document.into())
            .await
            .unwrap();
        assert!(response.is_success(), "{:?}", response.status);
        assert!(response.integer("job-id").is_some_and(|id| id > 0));
    });
    assert!(wait_until(Duration::from_secs(20), || printer
        .received_count()
        == 1));
}

#[test]
fn cupsd_accepts_jobs_on_its_null_queue() {
    let cupsd = Cupsd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, "hello").unwrap();
    let job = lp(
        &cupsd.host(),
        printfleet_e2e::cupsd::NULL_QUEUE,
        "alice",
        &file,
        &[],
    )
    .unwrap();
    assert!(job > 0);
}

#[tokio::test]
async fn raw_sink_counts_connections_and_bytes() {
    use tokio::io::AsyncWriteExt;
    let sink = RawSink::start(16).unwrap();
    for payload in [&b"first job bytes"[..], b"second"] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", sink.port()))
            .await
            .unwrap();
        stream.write_all(payload).await.unwrap();
    }
    for _ in 0..100 {
        if sink.completed_jobs() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.completed_jobs(), 2);
    assert_eq!(sink.total_bytes(), 21);
    assert_eq!(sink.deliveries()[0].head, b"first job bytes");
}
