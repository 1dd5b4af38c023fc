//! `Printer`: one physical or virtual device.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef};

/// One physical (or virtual) printer and how to reach it.
// clippy takes the repeated `type_ = ...` of the printcolumns for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "printfleet.io",
    version = "v1alpha1",
    kind = "Printer",
    namespaced,
    status = "PrinterStatus",
    shortname = "prn",
    printcolumn(name = "URI", type_ = "string", json_path = ".spec.uri"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.printerState"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::printer_spec_rules)]
pub struct PrinterSpec {
    /// Where the printer is: `ipp://`, `ipps://`, `socket://host:9100`, `lpd://host/queue`
    /// or `file:///directory`.
    #[schemars(regex(pattern = crate::validate::PRINTER_URI_PATTERN))]
    pub uri: String,
    /// Human description, shown as `printer-info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the printer stands, shown as `printer-location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `printer-make-and-model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_and_model: Option<String>,
    /// Secret key holding `username:password` for printers that require HTTP Basic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretKeyRef>,
    /// Secret key holding a PEM CA bundle to verify an `ipps://` printer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretKeyRef>,
    /// Turn TLS certificate verification off for `ipps://` (on unless set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
    /// What the device can do; queues advertise what their printers share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<PrinterCapabilities>,
}

/// The capabilities of a printer, as IPP Everywhere advertises them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrinterCapabilities {
    /// Prints in color.
    #[serde(default)]
    pub color: bool,
    /// Prints on both sides.
    #[serde(default)]
    pub duplex: bool,
    /// PWG self-describing media names, e.g. `iso_a4_210x297mm`; the first is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = crate::validate::MEDIA_PATTERN)))]
    pub media: Vec<String>,
    /// MIME types the device accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub document_formats: Vec<String>,
    /// Resolutions in dots per inch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 10_000)))]
    pub resolutions_dpi: Vec<u32>,
}

/// What the operator or spooler last saw of the printer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrinterStatus {
    /// `Reachable` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `idle`, `processing` or `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printer_state: Option<String>,
    /// IPP `printer-state-reasons`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub printer_state_reasons: Vec<String>,
    /// Supply levels as the printer reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplies: Vec<SupplyLevel>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One marker supply (toner, ink).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SupplyLevel {
    /// `marker-names` entry.
    pub name: String,
    /// Percent full, 0..=100, or -1 when unknown.
    #[schemars(range(min = -1, max = 100))]
    pub level: i32,
}
