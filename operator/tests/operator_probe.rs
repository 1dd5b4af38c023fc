//! Printer probing against a real IPP Everywhere printer (CUPS's `ippeveprinter`).

use std::time::Duration;

use printfleet_crds::PrinterSpec;
use printfleet_e2e::ippeve::IppEvePrinter;
use printfleet_operator::probe::probe;
use printfleet_operator::status::ProbeOutcome;

#[tokio::test]
async fn probing_ippeveprinter_reads_its_state_and_notices_when_it_stops() {
    let mut printer = IppEvePrinter::start("probe").expect("ippeveprinter starts");
    let spec = PrinterSpec {
        uri: printer.uri(),
        ..PrinterSpec::default()
    };
    match probe(&spec, Duration::from_secs(10)).await {
        ProbeOutcome::Ipp { state, reasons, .. } => {
            assert_eq!(state, "idle");
            assert!(
                !reasons.is_empty(),
                "printer-state-reasons is always present"
            );
        }
        other => panic!("expected an IPP answer, got {other:?}"),
    }
    printer.stop();
    let outcome = probe(&spec, Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, ProbeOutcome::Unreachable(_)),
        "{outcome:?}"
    );
}
