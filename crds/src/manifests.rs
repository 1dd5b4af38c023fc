//! The CRD manifests as YAML, shared by the `crdgen` bin and the drift test.

use kube::CustomResourceExt;

use crate::{AccountingPolicy, PrintQueue, Printer};

/// Each manifest's file name under `crds/manifests/` with its YAML.
pub fn all() -> Vec<(&'static str, Result<String, serde_yaml::Error>)> {
    vec![
        ("printers.yaml", serde_yaml::to_string(&Printer::crd())),
        (
            "printqueues.yaml",
            serde_yaml::to_string(&PrintQueue::crd()),
        ),
        (
            "accountingpolicies.yaml",
            serde_yaml::to_string(&AccountingPolicy::crd()),
        ),
    ]
}

/// The `openAPIV3Schema` of a kind (`"Printer"`, ...), as an apiserver would check objects
/// against it; `None` for other kinds.
pub fn schema(kind: &str) -> Option<serde_json::Value> {
    let crd = match kind {
        "Printer" => Printer::crd(),
        "PrintQueue" => PrintQueue::crd(),
        "AccountingPolicy" => AccountingPolicy::crd(),
        _ => return None,
    };
    let version = crd.spec.versions.into_iter().next()?;
    serde_json::to_value(version.schema?.open_api_v3_schema?).ok()
}
