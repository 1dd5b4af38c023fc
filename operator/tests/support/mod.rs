//! Test-only helpers: the Kubernetes API double, the operator binary run against it, and
//! fixtures.
//! Each test target (and the benchmark) uses a different part of them.

pub use printfleet_e2e::apiserver;
#[allow(dead_code)]
pub mod operator_process;

use printfleet_crds::{Printer, PrinterSpec};

/// A Printer writing to `file:///var/spool/<name>`: reconciled without anything to reach.
#[allow(dead_code)]
pub fn file_printer(name: &str) -> Printer {
    Printer::new(
        name,
        PrinterSpec {
            uri: format!("file:///var/spool/{name}"),
            ..PrinterSpec::default()
        },
    )
}
