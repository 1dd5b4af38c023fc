//! What a queue advertises: its capabilities derived from its printers, and the IPP
//! Everywhere (PWG 5100.12) printer attribute set built from them.
//!
//! A queue is a pool: a job may land on any member, so the queue advertises what every
//! member can do. Color and duplex are offered only when ALL members have them; media,
//! resolutions and document formats are the intersection of what the members list
//! (members that list nothing impose no limit; when nothing is left, a sensible default
//! set is used).

use std::collections::BTreeSet;

use ipp::attribute::IppAttribute;
use ipp::value::IppValue;
use printfleet_crds::PrintQueueSpec;
use printfleet_crds::queue::AuthenticationMode;

use super::codec::{self, collection, keyword_value};
use crate::config::Config;

/// Media offered when no member lists any.
pub const DEFAULT_MEDIA: [&str; 2] = ["iso_a4_210x297mm", "na_letter_8.5x11in"];
/// Formats offered when no member lists any; `application/octet-stream` means "detect".
pub const DEFAULT_FORMATS: [&str; 7] = [
    "application/pdf",
    "application/postscript",
    "image/jpeg",
    "image/pwg-raster",
    "image/urf",
    "text/plain",
    "application/octet-stream",
];
const DEFAULT_RESOLUTIONS: [i32; 2] = [300, 600];
/// Kinds of `job-hold-until` accepted; every value but `no-hold` holds until released.
pub const HOLD_UNTIL_SUPPORTED: [&str; 8] = [
    "no-hold",
    "indefinite",
    "day-time",
    "evening",
    "night",
    "second-shift",
    "third-shift",
    "weekend",
];
pub const MAX_COPIES: i32 = 999;
/// Printable-area margin advertised on every edge, in hundredths of millimetres.
const MARGIN: i32 = 423;

/// IPP operations this spooler implements (advertised in `operations-supported`).
pub const OPERATIONS_SUPPORTED: [i32; 18] = [
    0x0002, // Print-Job
    0x0004, // Validate-Job
    0x0005, // Create-Job
    0x0006, // Send-Document
    0x0008, // Cancel-Job
    0x0009, // Get-Job-Attributes
    0x000A, // Get-Jobs
    0x000B, // Get-Printer-Attributes
    0x000C, // Hold-Job
    0x000D, // Release-Job
    0x0010, // Pause-Printer
    0x0011, // Resume-Printer
    0x0038, // Cancel-Jobs
    0x0039, // Cancel-My-Jobs
    0x003B, // Close-Job
    0x003C, // Identify-Printer
    0x4001, // CUPS-Get-Default
    0x4002, // CUPS-Get-Printers
];

/// What a queue can do and its defaults, derived from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProfile {
    pub color: bool,
    pub duplex: bool,
    /// PWG media names; the first is the default unless the queue says otherwise.
    pub media: Vec<String>,
    pub formats: Vec<String>,
    pub resolutions: Vec<i32>,
    pub default_media: String,
    pub default_sides: String,
    pub default_color_mode: String,
    pub authentication: AuthenticationMode,
}

impl QueueProfile {
    /// The profile of `queue` given the printers in `config`.
    pub fn derive(config: &Config, queue: &PrintQueueSpec) -> QueueProfile {
        let capabilities: Vec<_> = queue
            .printers
            .iter()
            .map(|name| {
                config
                    .printers
                    .get(name)
                    .and_then(|printer| printer.capabilities.clone())
                    .unwrap_or_default()
            })
            .collect();
        let all = |has: fn(&printfleet_crds::printer::PrinterCapabilities) -> bool| {
            !capabilities.is_empty() && capabilities.iter().all(has)
        };
        let color = all(|c| c.color);
        let duplex = all(|c| c.duplex);
        let media = intersection(capabilities.iter().map(|c| c.media.clone()))
            .unwrap_or_else(|| DEFAULT_MEDIA.map(String::from).to_vec());
        let mut formats = intersection(capabilities.iter().map(|c| c.document_formats.clone()))
            .unwrap_or_else(|| DEFAULT_FORMATS.map(String::from).to_vec());
        if !formats.iter().any(|f| f == crate::document::OCTET_STREAM) {
            formats.push(crate::document::OCTET_STREAM.to_string());
        }
        let resolutions = intersection(capabilities.iter().map(|c| {
            c.resolutions_dpi
                .iter()
                .filter_map(|dpi| i32::try_from(*dpi).ok())
                .collect()
        }))
        .unwrap_or_else(|| DEFAULT_RESOLUTIONS.to_vec());
        let sides = sides_supported(duplex);
        let color_modes = color_modes_supported(color);
        let defaults = &queue.defaults;
        let pick = |wanted: &Option<String>, supported: &[&str], fallback: &str| match wanted {
            Some(value) if supported.contains(&value.as_str()) => value.clone(),
            _ => fallback.to_string(),
        };
        let media_names: Vec<&str> = media.iter().map(String::as_str).collect();
        QueueProfile {
            default_media: pick(&defaults.media, &media_names, &media[0]),
            default_sides: pick(&defaults.sides, sides, "one-sided"),
            default_color_mode: pick(
                &defaults.color_mode,
                color_modes,
                if color { "auto" } else { "monochrome" },
            ),
            color,
            duplex,
            media,
            formats,
            resolutions,
            authentication: queue.access.authentication,
        }
    }

    pub fn sides(&self) -> &'static [&'static str] {
        sides_supported(self.duplex)
    }

    pub fn color_modes(&self) -> &'static [&'static str] {
        color_modes_supported(self.color)
    }

    pub fn supports_media(&self, media: &str) -> bool {
        self.media.iter().any(|m| m == media)
    }

    pub fn supports_format(&self, format: &str) -> bool {
        self.formats.iter().any(|f| f.eq_ignore_ascii_case(format))
    }
}

fn sides_supported(duplex: bool) -> &'static [&'static str] {
    if duplex {
        &["one-sided", "two-sided-long-edge", "two-sided-short-edge"]
    } else {
        &["one-sided"]
    }
}

fn color_modes_supported(color: bool) -> &'static [&'static str] {
    if color {
        &["auto", "monochrome", "color"]
    } else {
        &["auto", "monochrome"]
    }
}

/// The values every non-empty list shares, in the first list's order; `None` when no
/// list is non-empty or nothing is shared.
fn intersection<T: PartialEq>(lists: impl Iterator<Item = Vec<T>>) -> Option<Vec<T>> {
    let mut lists = lists.filter(|list| !list.is_empty());
    let mut common = lists.next()?;
    for list in lists {
        common.retain(|value| list.contains(value));
    }
    (!common.is_empty()).then_some(common)
}

/// Width and height in hundredths of millimetres of a PWG self-describing media name
/// (`iso_a4_210x297mm`, `na_letter_8.5x11in`).
pub fn media_size(name: &str) -> Option<(i32, i32)> {
    let dimensions = name.rsplit('_').next()?;
    let (numbers, per_unit) = if let Some(numbers) = dimensions.strip_suffix("mm") {
        (numbers, 100.0)
    } else if let Some(numbers) = dimensions.strip_suffix("in") {
        (numbers, 2540.0)
    } else {
        return None;
    };
    let (width, height) = numbers.split_once('x')?;
    let convert = |value: &str| -> Option<i32> {
        let value: f64 = value.parse().ok()?;
        let hundredths = (value * per_unit).round();
        (value > 0.0 && hundredths < f64::from(i32::MAX)).then_some(hundredths as i32)
    };
    Some((convert(width)?, convert(height)?))
}

/// Which attribute group an attribute belongs to, for `requested-attributes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeGroup {
    Description,
    JobTemplate,
    /// Only sent when asked for by name (it can be large), as CUPS does.
    MediaColDatabase,
}

/// A `requested-attributes` list resolved into groups and names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    all: bool,
    description: bool,
    template: bool,
    names: BTreeSet<String>,
}

impl Requested {
    /// Everything (the default for Get-Printer-Attributes and Get-Job-Attributes).
    pub fn all() -> Requested {
        Requested {
            all: true,
            ..Requested::default()
        }
    }

    /// Just these names (the Get-Jobs default is `job-uri`, `job-id`).
    pub fn names(names: &[&str]) -> Requested {
        Requested {
            names: names.iter().map(|n| n.to_string()).collect(),
            ..Requested::default()
        }
    }

    /// Parse the keywords of a `requested-attributes` value; `None` when absent.
    pub fn parse(value: Option<&IppValue>, default: Requested) -> Requested {
        let Some(value) = value else {
            return default;
        };
        let mut requested = Requested::default();
        for keyword in codec::values(value).iter().filter_map(codec::string_of) {
            match keyword {
                "all" => requested.all = true,
                "printer-description" | "job-description" => requested.description = true,
                "job-template" => requested.template = true,
                name => {
                    requested.names.insert(name.to_string());
                }
            }
        }
        requested
    }

    pub fn wants(&self, name: &str, group: AttributeGroup) -> bool {
        if self.names.contains(name) {
            return true;
        }
        match group {
            AttributeGroup::Description => self.all || self.description,
            AttributeGroup::JobTemplate => self.all || self.template,
            AttributeGroup::MediaColDatabase => false,
        }
    }

    /// Keep the attributes asked for.
    pub fn filter(&self, attributes: Vec<(AttributeGroup, IppAttribute)>) -> Vec<IppAttribute> {
        attributes
            .into_iter()
            .filter(|(group, attribute)| self.wants(attribute.name().as_str(), *group))
            .map(|(_, attribute)| attribute)
            .collect()
    }
}

/// Prefixes of printer attributes in the `job-template` group.
const TEMPLATE_PREFIXES: [&str; 19] = [
    "copies-",
    "finishings-",
    "job-account-id-",
    "job-accounting-user-id-",
    "job-hold-until-",
    "job-priority-",
    "job-sheets-",
    "media-",
    "multiple-document-handling-",
    "number-up-",
    "orientation-requested-",
    "output-bin-",
    "page-ranges-",
    "print-color-mode-",
    "print-content-optimize-",
    "print-quality-",
    "printer-resolution-",
    "sides-",
    "print-scaling-",
];

fn group_of(name: &str) -> AttributeGroup {
    if name == "media-col-database" {
        AttributeGroup::MediaColDatabase
    } else if TEMPLATE_PREFIXES.iter().any(|p| name.starts_with(p)) {
        AttributeGroup::JobTemplate
    } else {
        AttributeGroup::Description
    }
}

/// The live state of a queue as its printer attributes report it.
#[derive(Clone, Debug)]
pub struct QueueState {
    pub paused: bool,
    /// Unfinished jobs.
    pub queued: i32,
    /// A job is being sent to a printer.
    pub processing: bool,
}

/// Everything the printer attributes of one queue are built from.
pub struct PrinterView<'a> {
    pub name: &'a str,
    pub queue: &'a PrintQueueSpec,
    pub config: &'a Config,
    pub profile: &'a QueueProfile,
    pub state: QueueState,
    /// `ipp://host:port` or `ipps://host:port`.
    pub base_uri: &'a str,
    pub now: i64,
}

/// The canonical URI of a queue.
pub fn printer_uri(base_uri: &str, queue: &str) -> String {
    format!("{base_uri}/ipp/print/{queue}")
}

/// A stable name-based (version 5) UUID for a queue, as a `urn:uuid:` URI.
pub fn printer_uuid(queue: &str) -> String {
    // RFC 4122 appendix C: the URL namespace.
    const URL_NAMESPACE: [u8; 16] = [
        0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30,
        0xc8,
    ];
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(&URL_NAMESPACE);
    context.update(b"printfleet:queue:");
    context.update(queue.as_bytes());
    let digest = context.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn media_col(name: &str) -> Option<IppValue> {
    let (width, height) = media_size(name)?;
    Some(collection(vec![
        (
            "media-size",
            collection(vec![
                ("x-dimension", IppValue::Integer(width)),
                ("y-dimension", IppValue::Integer(height)),
            ]),
        ),
        ("media-size-name", keyword_value(name)),
        ("media-bottom-margin", IppValue::Integer(MARGIN)),
        ("media-left-margin", IppValue::Integer(MARGIN)),
        ("media-right-margin", IppValue::Integer(MARGIN)),
        ("media-top-margin", IppValue::Integer(MARGIN)),
        ("media-source", keyword_value("auto")),
        ("media-type", keyword_value("stationery")),
    ]))
}

/// The `urf-supported` keywords for a profile (Apple raster capabilities).
fn urf_keywords(profile: &QueueProfile) -> Vec<String> {
    let mut keywords = vec!["V1.4".to_string(), "CP1".to_string(), "W8".to_string()];
    if profile.color {
        keywords.push("SRGB24".to_string());
    }
    let resolutions: Vec<String> = profile.resolutions.iter().map(i32::to_string).collect();
    keywords.push(format!("RS{}", resolutions.join("-")));
    if profile.duplex {
        keywords.push("DM1".to_string());
    }
    keywords.push("IS1".to_string());
    keywords.push("MT1".to_string());
    keywords
}

fn make_and_model(view: &PrinterView) -> String {
    let models: BTreeSet<&str> = view
        .queue
        .printers
        .iter()
        .filter_map(|name| view.config.printers.get(name)?.make_and_model.as_deref())
        .collect();
    match (models.len(), models.iter().next()) {
        (1, Some(model)) if view.queue.printers.len() == 1 => model.to_string(),
        _ => format!("printfleet pool of {} printers", view.queue.printers.len()),
    }
}

fn location(view: &PrinterView) -> String {
    view.queue
        .location
        .clone()
        .or_else(|| {
            let first = view.queue.printers.first()?;
            view.config.printers.get(first)?.location.clone()
        })
        .unwrap_or_default()
}

/// The full printer attribute set of a queue, each tagged with its group.
pub fn printer_attributes(view: &PrinterView) -> Vec<(AttributeGroup, IppAttribute)> {
    use codec::*;
    let profile = view.profile;
    let own_uri = printer_uri(view.base_uri, view.name);
    let secure = view.base_uri.starts_with("ipps:");
    let http_base = view.base_uri.replacen("ipp", "http", 1);
    let state = if view.state.paused {
        5
    } else if view.state.processing {
        4
    } else {
        3
    };
    let (reasons, message) = if view.state.paused {
        ("paused", "Paused by an operator.")
    } else if view.state.processing {
        ("none", "Printing.")
    } else {
        ("none", "Ready.")
    };
    let media_collections: Vec<IppValue> =
        profile.media.iter().filter_map(|m| media_col(m)).collect();
    let media_sizes: Vec<IppValue> = profile
        .media
        .iter()
        .filter_map(|m| media_size(m))
        .map(|(width, height)| {
            collection(vec![
                ("x-dimension", IppValue::Integer(width)),
                ("y-dimension", IppValue::Integer(height)),
            ])
        })
        .collect();
    let raster_types: &[&str] = if profile.color {
        &["sgray_8", "srgb_8"]
    } else {
        &["sgray_8"]
    };
    let formats: Vec<&str> = profile.formats.iter().map(String::as_str).collect();
    let media: Vec<&str> = profile.media.iter().map(String::as_str).collect();
    let resolutions: Vec<IppValue> = profile
        .resolutions
        .iter()
        .map(|r| resolution_value(*r))
        .collect();
    let default_resolution = profile
        .resolutions
        .iter()
        .copied()
        .find(|r| *r == 600)
        .or(profile.resolutions.first().copied())
        .unwrap_or(600);
    let authentication = match profile.authentication {
        AuthenticationMode::None => "requesting-user-name",
        AuthenticationMode::Basic => "basic",
    };
    let up_time = i32::try_from(view.now).unwrap_or(i32::MAX).max(1);
    let mut attributes = vec![
        charset("charset-configured", "utf-8"),
        charset("charset-supported", "utf-8"),
        boolean("color-supported", profile.color),
        keywords("compression-supported", ["none"]),
        integer("copies-default", 1),
        range("copies-supported", 1, MAX_COPIES),
        mime("document-format-default", crate::document::OCTET_STREAM),
        set("document-format-supported", formats.iter().map(|f| mime_value(f)).collect()),
        enumeration("finishings-default", 3),
        enumerations("finishings-supported", &[3]),
        natural_language("generated-natural-language-supported", "en"),
        keyword("identify-actions-default", "flash"),
        keywords("identify-actions-supported", ["flash"]),
        keywords("ipp-features-supported", ["ipp-everywhere"]),
        keywords("ipp-versions-supported", ["1.0", "1.1", "2.0"]),
        no_value("job-account-id-default"),
        boolean("job-account-id-supported", true),
        no_value("job-accounting-user-id-default"),
        boolean("job-accounting-user-id-supported", true),
        keywords(
            "job-creation-attributes-supported",
            [
                "copies",
                "finishings",
                "ipp-attribute-fidelity",
                "job-account-id",
                "job-accounting-user-id",
                "job-hold-until",
                "job-name",
                "job-priority",
                "media",
                "media-col",
                "multiple-document-handling",
                "number-up",
                "orientation-requested",
                "output-bin",
                "page-ranges",
                "print-color-mode",
                "print-content-optimize",
                "print-quality",
                "printer-resolution",
                "sides",
            ],
        ),
        keyword("job-hold-until-default", "no-hold"),
        keywords("job-hold-until-supported", HOLD_UNTIL_SUPPORTED),
        boolean("job-ids-supported", true),
        range("job-k-octets-supported", 0, i32::MAX),
        integer("job-priority-default", 50),
        integer("job-priority-supported", 100),
        keyword("job-sheets-default", "none"),
        keywords("job-sheets-supported", ["none"]),
        integers("media-bottom-margin-supported", &[MARGIN]),
        set("media-col-database", media_collections.clone()),
        attribute(
            "media-col-default",
            media_col(&profile.default_media).unwrap_or(IppValue::NoValue),
        ),
        set("media-col-ready", media_collections),
        keywords(
            "media-col-supported",
            [
                "media-bottom-margin",
                "media-left-margin",
                "media-right-margin",
                "media-size",
                "media-size-name",
                "media-source",
                "media-top-margin",
                "media-type",
            ],
        ),
        keyword("media-default", &profile.default_media),
        integers("media-left-margin-supported", &[MARGIN]),
        keywords("media-ready", media.iter().copied()),
        integers("media-right-margin-supported", &[MARGIN]),
        set("media-size-supported", media_sizes),
        keywords("media-source-supported", ["auto"]),
        keywords("media-supported", media.iter().copied()),
        integers("media-top-margin-supported", &[MARGIN]),
        keywords("media-type-supported", ["stationery"]),
        keyword("multiple-document-handling-default", "separate-documents-uncollated-copies"),
        keywords(
            "multiple-document-handling-supported",
            ["separate-documents-uncollated-copies", "separate-documents-collated-copies"],
        ),
        boolean("multiple-document-jobs-supported", true),
        integer(
            "multiple-operation-time-out",
            crate::job::MULTIPLE_OPERATION_TIME_OUT_SECONDS,
        ),
        keyword("multiple-operation-time-out-action", "process-job"),
        natural_language("natural-language-configured", "en"),
        integer("number-up-default", 1),
        integers("number-up-supported", &[1]),
        enumerations("operations-supported", &OPERATIONS_SUPPORTED),
        enumeration("orientation-requested-default", 3),
        enumerations("orientation-requested-supported", &[3, 4, 5, 6]),
        keywords("overrides-supported", ["document-number", "pages"]),
        keyword("output-bin-default", "face-down"),
        keywords("output-bin-supported", ["face-down"]),
        boolean("page-ranges-supported", true),
        integer("pages-per-minute", 20),
        keyword("pdl-override-supported", "attempted"),
        boolean("preferred-attributes-supported", false),
        keyword("print-color-mode-default", &profile.default_color_mode),
        keywords("print-color-mode-supported", profile.color_modes().iter().copied()),
        keyword("print-content-optimize-default", "auto"),
        keywords("print-content-optimize-supported", ["auto"]),
        enumeration("print-quality-default", 4),
        keyword("print-rendering-intent-default", "auto"),
        keywords("print-rendering-intent-supported", ["auto"]),
        enumerations("print-quality-supported", &[3, 4, 5]),
        keyword("print-scaling-default", "auto"),
        keywords("print-scaling-supported", ["auto", "fit", "fill", "none"]),
        date_time("printer-config-change-date-time", view.now),
        integer("printer-config-change-time", up_time),
        date_time("printer-current-time", view.now),
        text(
            "printer-device-id",
            &format!(
                "MFG:printfleet;MDL:{};CMD:PDF,PS,JPEG,PWGRaster,URF;",
                view.name
            ),
        ),
        name_attribute("printer-dns-sd-name", view.name),
        text("printer-firmware-name", "printfleet"),
        text("printer-firmware-string-version", env!("CARGO_PKG_VERSION")),
        attribute(
            "printer-firmware-version",
            IppValue::OctetString(bytes::Bytes::from_static(env!("CARGO_PKG_VERSION").as_bytes())),
        ),
        attribute("printer-geo-location", IppValue::Other { tag: 0x12, data: bytes::Bytes::new() }),
        keywords("printer-get-attributes-supported", ["document-format"]),
        uri("printer-icons", &format!("{http_base}/icons/{}.png", view.name)),
        text(
            "printer-info",
            view.queue.description.as_deref().unwrap_or(view.name),
        ),
        boolean("printer-is-accepting-jobs", true),
        text("printer-location", &location(view)),
        text("printer-make-and-model", &make_and_model(view)),
        uri("printer-more-info", &format!("{http_base}/ipp/print/{}", view.name)),
        name_attribute("printer-name", view.name),
        text("printer-organization", ""),
        text("printer-organizational-unit", ""),
        attribute("printer-resolution-default", resolution_value(default_resolution)),
        set("printer-resolution-supported", resolutions.clone()),
        enumeration("printer-state", state),
        date_time("printer-state-change-date-time", view.now),
        integer("printer-state-change-time", up_time),
        text("printer-state-message", message),
        keywords("printer-state-reasons", [reasons]),
        // Levels of a pool's supplies are not known here: one entry saying so (RFC 3805 -2).
        attribute(
            "printer-supply",
            IppValue::OctetString(bytes::Bytes::from_static(
                b"index=1;class=unknown;type=other;unit=percent;maxcapacity=100;level=-2;colorantname=unknown;",
            )),
        ),
        text("printer-supply-description", "Supplies (levels unknown)"),
        uri("printer-supply-info-uri", &format!("{http_base}/ipp/print/{}", view.name)),
        integer("printer-up-time", up_time),
        uri("printer-uri-supported", &own_uri),
        uri("printer-uuid", &printer_uuid(view.name)),
        set("pwg-raster-document-resolution-supported", resolutions),
        keyword("pwg-raster-document-sheet-back", "normal"),
        keywords("pwg-raster-document-type-supported", raster_types.iter().copied()),
        integer("queued-job-count", view.state.queued),
        keyword("sides-default", &profile.default_sides),
        keywords("sides-supported", profile.sides().iter().copied()),
        keywords("uri-authentication-supported", [authentication]),
        keywords("uri-security-supported", [if secure { "tls" } else { "none" }]),
        keywords("urf-supported", urf_keywords(profile).iter().map(String::as_str)),
        keywords("which-jobs-supported", ["completed", "not-completed", "all"]),
    ];
    if profile.color {
        attributes.push(integer("pages-per-minute-color", 20));
    }
    attributes
        .into_iter()
        .map(|attribute| (group_of(attribute.name().as_str()), attribute))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use printfleet_crds::PrinterSpec;
    use printfleet_crds::printer::PrinterCapabilities;
    use printfleet_crds::queue::JobDefaults;

    fn printer(capabilities: Option<PrinterCapabilities>) -> PrinterSpec {
        PrinterSpec {
            uri: "file:///tmp/out".into(),
            capabilities,
            ..PrinterSpec::default()
        }
    }

    fn config(printers: Vec<(&str, PrinterSpec)>) -> Config {
        Config {
            printers: printers
                .into_iter()
                .map(|(name, spec)| (name.to_string(), spec))
                .collect(),
            ..Config::default()
        }
    }

    fn queue(printers: &[&str]) -> PrintQueueSpec {
        PrintQueueSpec {
            printers: printers.iter().map(|p| p.to_string()).collect(),
            ..PrintQueueSpec::default()
        }
    }

    #[test]
    fn a_pool_offers_color_and_duplex_only_when_every_member_has_them() {
        let color_duplex = PrinterCapabilities {
            color: true,
            duplex: true,
            media: vec!["iso_a4_210x297mm".into(), "iso_a3_297x420mm".into()],
            ..PrinterCapabilities::default()
        };
        let mono = PrinterCapabilities {
            duplex: true,
            media: vec!["iso_a3_297x420mm".into(), "iso_a4_210x297mm".into()],
            ..PrinterCapabilities::default()
        };
        let config = config(vec![
            ("a", printer(Some(color_duplex))),
            ("b", printer(Some(mono))),
        ]);
        let profile = QueueProfile::derive(&config, &queue(&["a", "b"]));
        assert!(!profile.color);
        assert!(profile.duplex);
        assert_eq!(profile.media, ["iso_a4_210x297mm", "iso_a3_297x420mm"]);
        assert_eq!(profile.default_media, "iso_a4_210x297mm");
        assert_eq!(profile.default_color_mode, "monochrome");
        assert_eq!(profile.color_modes(), ["auto", "monochrome"]);
    }

    #[test]
    fn printers_without_capabilities_get_the_default_set() {
        let config = config(vec![("a", printer(None))]);
        let profile = QueueProfile::derive(&config, &queue(&["a"]));
        assert_eq!(profile.media, DEFAULT_MEDIA);
        assert!(profile.supports_format("application/pdf"));
        assert!(profile.supports_format("application/octet-stream"));
        assert_eq!(profile.sides(), ["one-sided"]);
    }

    #[test]
    fn queue_defaults_apply_only_when_supported() {
        let config = config(vec![(
            "a",
            printer(Some(PrinterCapabilities {
                color: true,
                duplex: false,
                media: vec!["na_letter_8.5x11in".into(), "iso_a4_210x297mm".into()],
                ..PrinterCapabilities::default()
            })),
        )]);
        let mut spec = queue(&["a"]);
        spec.defaults = JobDefaults {
            sides: Some("two-sided-long-edge".into()),
            color_mode: Some("color".into()),
            media: Some("iso_a4_210x297mm".into()),
        };
        let profile = QueueProfile::derive(&config, &spec);
        assert_eq!(profile.default_sides, "one-sided");
        assert_eq!(profile.default_color_mode, "color");
        assert_eq!(profile.default_media, "iso_a4_210x297mm");
    }

    #[test]
    fn media_sizes_come_from_self_describing_names() {
        assert_eq!(media_size("iso_a4_210x297mm"), Some((21000, 29700)));
        assert_eq!(media_size("na_letter_8.5x11in"), Some((21590, 27940)));
        assert_eq!(media_size("a4"), None);
        assert_eq!(media_size("custom_x_0x0mm"), None);
    }

    #[test]
    fn printer_uuid_is_stable_and_distinct_per_queue() {
        let uuid = printer_uuid("demo");
        assert_eq!(uuid, printer_uuid("demo"));
        assert_ne!(uuid, printer_uuid("other"));
        assert!(uuid.starts_with("urn:uuid:"));
        assert_eq!(uuid.len(), "urn:uuid:".len() + 36);
        // Version 5, RFC 4122 variant.
        assert_eq!(&uuid[23..24], "5");
    }

    #[test]
    fn requested_groups_select_attributes() {
        let config = config(vec![("a", printer(None))]);
        let spec = queue(&["a"]);
        let profile = QueueProfile::derive(&config, &spec);
        let view = PrinterView {
            name: "demo",
            queue: &spec,
            config: &config,
            profile: &profile,
            state: QueueState {
                paused: true,
                queued: 2,
                processing: false,
            },
            base_uri: "ipp://127.0.0.1:631",
            now: 1_700_000_000,
        };
        let names = |requested: Requested| -> Vec<String> {
            requested
                .filter(printer_attributes(&view))
                .iter()
                .map(|a| a.name().to_string())
                .collect()
        };
        let template = names(Requested::parse(
            Some(&keyword_value("job-template")),
            Requested::all(),
        ));
        assert!(template.contains(&"copies-supported".to_string()));
        assert!(!template.contains(&"printer-name".to_string()));
        let all = names(Requested::all());
        assert!(all.contains(&"printer-name".to_string()));
        assert!(!all.contains(&"media-col-database".to_string()));
        let database = names(Requested::parse(
            Some(&keyword_value("media-col-database")),
            Requested::all(),
        ));
        assert_eq!(database, ["media-col-database"]);
        let state: Vec<IppAttribute> =
            Requested::names(&["printer-state", "printer-state-reasons"])
                .filter(printer_attributes(&view));
        assert_eq!(state[0].value(), &IppValue::Enum(5));
        assert_eq!(codec::string_of(state[1].value()), Some("paused"));
    }
}
