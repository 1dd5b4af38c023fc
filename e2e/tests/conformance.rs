//! CUPS's own conformance suites (ipp-1.1, ipp-2.0, ipp-everywhere from cups-ipp-utils)
//! against a spooler queue that prints to a directory. Every test must pass, except those
//! listed with a reason in e2e/conformance/known-inapplicable.txt; a listed test that
//! passes or disappears fails the run too, so the list stays honest.

use printfleet_e2e::Spooler;
use printfleet_e2e::conformance::{
    SUITES, SuiteDir, judge, parse_known_inapplicable, parse_report,
};
use printfleet_e2e::cups_cli::ipptool;
use printfleet_e2e::spooler::{config_yaml, queue_yaml};

const KNOWN_INAPPLICABLE: &str = include_str!("../conformance/known-inapplicable.txt");

/// A queue whose printer writes to `dir` and says it can do what IPP Everywhere asks of a
/// printer (so the suite's capability-dependent tests run rather than skip).
fn config(dir: &std::path::Path) -> String {
    let printer = format!(
        "apiVersion: printfleet.io/v1alpha1\nkind: Printer\nmetadata:\n  name: conformance-printer\nspec:\n  uri: file://{}\n  makeAndModel: printfleet conformance printer\n  capabilities:\n    color: true\n    duplex: true\n    media: [iso_a4_210x297mm, na_letter_8.5x11in, na_index-4x6_4x6in]\n    documentFormats: [application/pdf, application/postscript, image/jpeg, image/pwg-raster, image/urf, text/plain]\n    resolutionsDpi: [300, 600]\n",
        dir.display()
    );
    config_yaml(&[
        printer,
        queue_yaml(
            "demo",
            &["conformance-printer"],
            "  description: Conformance queue\n",
        ),
    ])
}

fn run_suite(suite: &str) {
    let (_, version) = SUITES
        .iter()
        .find(|(name, _)| *name == suite)
        .expect("a known suite");
    let known = parse_known_inapplicable(KNOWN_INAPPLICABLE).unwrap();
    for entry in &known {
        assert!(
            SUITES.iter().any(|(name, _)| *name == entry.suite),
            "known-inapplicable.txt names an unknown suite `{}`",
            entry.suite
        );
    }
    let output_dir = tempfile::tempdir().unwrap();
    let spooler = Spooler::start(&config(output_dir.path())).unwrap();
    let suites = SuiteDir::prepare().unwrap();
    let output = ipptool(
        suites.path(),
        &spooler.queue_uri("demo"),
        version,
        &suites.default_document(),
        &suites.test_file(suite),
    )
    .unwrap();
    let report = parse_report(&output);
    let problems = judge(suite, &report, &known);
    assert!(
        problems.is_empty(),
        "{suite}: {} problem(s):\n{}\n\n--- full ipptool report ---\n{output}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn ipp_1_1() {
    run_suite("ipp-1.1");
}

#[test]
fn ipp_2_0() {
    run_suite("ipp-2.0");
}

#[test]
fn ipp_everywhere() {
    run_suite("ipp-everywhere");
}
