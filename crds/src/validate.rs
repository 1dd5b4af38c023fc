//! Validation that spans fields, shared by the spooler (at config load) and the operator.
//!
//! Every rule here also lives in the CRD schema (a `pattern`, `enum`, `minItems`, range, or a
//! CEL rule in `x-kubernetes-validations`, see `schema.rs`), so an object the apiserver accepts
//! is one the spooler accepts. The tests check both sides against the same cases.

use std::collections::BTreeSet;
use std::fmt;

use crate::common::SecretKeyRef;
use crate::policy::{AccountingPolicySpec, Quota};
use crate::printer::PrinterSpec;
use crate::queue::{AuthenticationMode, PrintQueueSpec};

/// A Kubernetes object name (DNS-1123 subdomain), as Printer, PrintQueue, AccountingPolicy and
/// Secret names are.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key inside a Secret.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// A printer URI in one of the five supported schemes; `file://` paths are absolute.
pub const PRINTER_URI_PATTERN: &str = r"^(ipps?://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/\S*)?|socket://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?|lpd://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/[^/\s]+|file:///\S+)$";
/// A non-negative decimal string: money (`"0.05"`) and factors (`"0.8"`).
pub const DECIMAL_PATTERN: &str = r"^[0-9]{1,12}(\.[0-9]{1,4})?$";
/// An ISO 4217 alphabetic currency code.
pub const CURRENCY_PATTERN: &str = r"^[A-Z]{3}$";
/// A PWG 5101.1 self-describing media name, e.g. `iso_a4_210x297mm`, `na_letter_8.5x11in`.
pub const MEDIA_PATTERN: &str = r"^[a-z0-9-]+_[a-z0-9.-]+_[0-9.]+x[0-9.]+(mm|in)$";
/// An IANA time zone name, e.g. `Europe/Berlin`, `UTC`.
pub const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";
/// The `sides` values a queue may default to.
pub const SIDES_VALUES: [&str; 3] = ["one-sided", "two-sided-long-edge", "two-sided-short-edge"];
/// The `print-color-mode` values a queue may default to.
pub const COLOR_MODE_VALUES: [&str; 3] = ["monochrome", "color", "auto"];
/// Largest number of integer digits a decimal string may have (keeps minor units in an i64).
pub const DECIMAL_MAX_INTEGER_DIGITS: usize = 12;
/// Most decimal places a decimal string may have (the largest ISO 4217 exponent).
pub const DECIMAL_MAX_PLACES: u32 = 4;
/// Resolutions a printer may advertise, in dots per inch.
pub const RESOLUTION_DPI_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

/// ISO 4217 currencies without minor units.
pub const ZERO_DECIMAL_CURRENCIES: [&str; 17] = [
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
/// ISO 4217 currencies with three decimal places.
pub const THREE_DECIMAL_CURRENCIES: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
/// ISO 4217 currencies with four decimal places.
pub const FOUR_DECIMAL_CURRENCIES: [&str; 2] = ["CLF", "UYW"];

/// One rule an object breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field as it appears in YAML, e.g. `spec.prices.monoImpression`.
    pub field: String,
    /// What is wrong, for a human.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a decimal string cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not digits with an optional fraction (`"1"`, `"0.05"`).
    #[error(
        "{text:?} is not a decimal number such as \"0.05\" (up to {DECIMAL_MAX_INTEGER_DIGITS} digits before the point and {DECIMAL_MAX_PLACES} after)"
    )]
    Malformed { text: String },
    /// More fraction digits than the unit has.
    #[error("{text:?} has more than {places} decimal places")]
    TooPrecise { text: String, places: u32 },
}

/// The number of decimal places of an ISO 4217 currency (2 unless listed otherwise).
pub fn currency_exponent(currency: &str) -> u32 {
    if ZERO_DECIMAL_CURRENCIES.contains(&currency) {
        0
    } else if THREE_DECIMAL_CURRENCIES.contains(&currency) {
        3
    } else if FOUR_DECIMAL_CURRENCIES.contains(&currency) {
        4
    } else {
        2
    }
}

/// Reads a decimal string as an integer count of `10^-places` units: `("0.8", 4)` is 8000.
pub fn parse_decimal(text: &str, places: u32) -> Result<i64, DecimalError> {
    let malformed = || DecimalError::Malformed {
        text: text.to_owned(),
    };
    let (integer, fraction) = match text.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || integer.len() > DECIMAL_MAX_INTEGER_DIGITS {
        return Err(malformed());
    }
    let fraction = fraction.unwrap_or("");
    if text.contains('.') && (!all_digits(fraction) || fraction.len() > DECIMAL_MAX_PLACES as usize)
    {
        return Err(malformed());
    }
    if fraction.len() > places as usize {
        return Err(DecimalError::TooPrecise {
            text: text.to_owned(),
            places,
        });
    }
    // At most 12 + 4 digits: always fits in an i64.
    let scale = 10_i64.pow(places);
    let integer: i64 = integer.parse().map_err(|_| malformed())?;
    let fraction_units: i64 = if fraction.is_empty() {
        0
    } else {
        let digits: i64 = fraction.parse().map_err(|_| malformed())?;
        digits * 10_i64.pow(places - fraction.len() as u32)
    };
    Ok(integer * scale + fraction_units)
}

/// Reads an amount of money as minor units of its currency: `("0.05", "EUR")` is 5 cents,
/// `("500", "JPY")` is 500 yen.
pub fn parse_money(text: &str, currency: &str) -> Result<i64, DecimalError> {
    parse_decimal(text, currency_exponent(currency))
}

/// The scheme of a printer URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriScheme {
    Ipp,
    Ipps,
    Socket,
    Lpd,
    File,
}

/// A printer URI taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterUri<'a> {
    pub scheme: UriScheme,
    /// Host name or address (IPv6 without brackets); empty for `file://`.
    pub host: &'a str,
    /// The port as written, if any.
    pub port: Option<u16>,
    /// Everything from the first `/` after the authority; the directory for `file://`.
    pub path: &'a str,
}

/// Takes a printer URI apart, accepting exactly what [`PRINTER_URI_PATTERN`] accepts.
pub fn parse_printer_uri(uri: &str) -> Result<PrinterUri<'_>, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("{uri:?} is not a URI (scheme://...)"))?;
    let scheme = match scheme {
        "ipp" => UriScheme::Ipp,
        "ipps" => UriScheme::Ipps,
        "socket" => UriScheme::Socket,
        "lpd" => UriScheme::Lpd,
        "file" => UriScheme::File,
        other => {
            return Err(format!(
                "scheme {other:?} is not one of ipp, ipps, socket, lpd, file"
            ));
        }
    };
    if rest.chars().any(char::is_whitespace) {
        return Err(format!("{uri:?} contains whitespace"));
    }
    if scheme == UriScheme::File {
        return if rest.len() > 1 && rest.starts_with('/') {
            Ok(PrinterUri {
                scheme,
                host: "",
                port: None,
                path: rest,
            })
        } else {
            Err(format!(
                "{uri:?} must name an absolute directory, as file:///var/spool/out"
            ))
        };
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) =
        split_host_port(authority).ok_or_else(|| format!("{uri:?} has no valid host[:port]"))?;
    match scheme {
        UriScheme::Socket if path.len() > 1 => Err(format!(
            "{uri:?}: socket:// URIs take no path, as socket://host:9100"
        )),
        UriScheme::Lpd if path.len() < 2 || path[1..].contains('/') => Err(format!(
            "{uri:?}: lpd:// URIs name one queue, as lpd://host/queue"
        )),
        _ => Ok(PrinterUri {
            scheme,
            host,
            port,
            path,
        }),
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']')?;
        let valid = !address.is_empty()
            && address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !valid {
            return None;
        }
        (address, after)
    } else {
        let end = authority.find(':').unwrap_or(authority.len());
        let host = &authority[..end];
        let bytes = host.as_bytes();
        let valid = !host.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.');
        if !valid {
            return None;
        }
        (host, &authority[end..])
    };
    if port.is_empty() {
        return Some((host, None));
    }
    let digits = port.strip_prefix(':')?;
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Five digits pass the pattern; ports above 65535 are refused by the backend when dialing.
    Some((host, digits.parse().ok()))
}

/// Collects the errors of one object.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn check_name(&mut self, field: impl Into<String>, name: &str) {
        if !is_name(name) {
            self.push(
                field,
                format!("{name:?} is not a valid name (lowercase letters, digits, '-' and '.')"),
            );
        }
    }

    fn check_secret_ref(&mut self, field: &str, secret: &SecretKeyRef) {
        self.check_name(format!("{field}.name"), &secret.name);
        if secret.key.is_empty()
            || !secret
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            self.push(
                format!("{field}.key"),
                format!("{:?} is not a valid Secret key", secret.key),
            );
        }
    }

    fn check_media(&mut self, field: impl Into<String>, media: &str) {
        if !is_media_name(media) {
            self.push(
                field,
                format!("{media:?} is not a PWG media name such as iso_a4_210x297mm"),
            );
        }
    }

    fn check_unique<'a>(&mut self, field: &str, items: impl IntoIterator<Item = &'a str>) {
        let mut seen = BTreeSet::new();
        for (index, item) in items.into_iter().enumerate() {
            if !seen.insert(item) {
                self.push(
                    format!("{field}[{index}]"),
                    format!("{item:?} is listed twice"),
                );
            }
        }
    }

    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Whether `name` is a DNS-1123 subdomain ([`NAME_PATTERN`]).
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        })
}

/// Whether `media` is a PWG self-describing media name ([`MEDIA_PATTERN`]).
fn is_media_name(media: &str) -> bool {
    let Some(rest) = media
        .strip_suffix("mm")
        .or_else(|| media.strip_suffix("in"))
    else {
        return false;
    };
    // class _ size-name _ WxH: the class has no '.', the dimensions no '_'.
    let Some((class, rest)) = rest.split_once('_') else {
        return false;
    };
    let Some((size_name, dimensions)) = rest.rsplit_once('_') else {
        return false;
    };
    let Some((width, height)) = dimensions.split_once('x') else {
        return false;
    };
    let charset = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    charset(class, b"-") && charset(size_name, b".-") && number(width) && number(height)
}

fn is_time_zone(name: &str) -> bool {
    let extra = |b: u8| b.is_ascii_alphanumeric() || b"_+-".contains(&b);
    let mut parts = name.split('/');
    let first_ok = parts.next().is_some_and(|first| {
        first
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphabetic)
            && first.bytes().all(extra)
    });
    first_ok && parts.all(|part| !part.is_empty() && part.bytes().all(extra))
}

/// Checks a Printer's spec.
pub fn validate_printer(spec: &PrinterSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Errors::default();
    let scheme = match parse_printer_uri(&spec.uri) {
        Ok(uri) => Some(uri.scheme),
        Err(reason) => {
            errors.push("spec.uri", reason);
            None
        }
    };
    let is_ipp = matches!(scheme, Some(UriScheme::Ipp | UriScheme::Ipps));
    let is_ipps = scheme == Some(UriScheme::Ipps);
    if let Some(credentials) = &spec.credentials {
        errors.check_secret_ref("spec.credentials", credentials);
        if scheme.is_some() && !is_ipp {
            errors.push(
                "spec.credentials",
                "credentials apply only to ipp:// and ipps:// printers",
            );
        }
    }
    if let Some(ca_bundle) = &spec.ca_bundle {
        errors.check_secret_ref("spec.caBundle", ca_bundle);
        if scheme.is_some() && !is_ipps {
            errors.push("spec.caBundle", "caBundle applies only to ipps:// printers");
        }
    }
    if spec.insecure_skip_tls_verify {
        if scheme.is_some() && !is_ipps {
            errors.push(
                "spec.insecureSkipTlsVerify",
                "insecureSkipTlsVerify applies only to ipps:// printers",
            );
        }
        if spec.ca_bundle.is_some() {
            errors.push(
                "spec.insecureSkipTlsVerify",
                "caBundle and insecureSkipTlsVerify are mutually exclusive",
            );
        }
    }
    if let Some(capabilities) = &spec.capabilities {
        for (index, media) in capabilities.media.iter().enumerate() {
            errors.check_media(format!("spec.capabilities.media[{index}]"), media);
        }
        for (index, dpi) in capabilities.resolutions_dpi.iter().enumerate() {
            if !RESOLUTION_DPI_RANGE.contains(dpi) {
                errors.push(
                    format!("spec.capabilities.resolutionsDpi[{index}]"),
                    format!(
                        "{dpi} is outside {}..={}",
                        RESOLUTION_DPI_RANGE.start(),
                        RESOLUTION_DPI_RANGE.end()
                    ),
                );
            }
        }
    }
    errors.finish()
}

/// Checks a PrintQueue's spec (not whether its printers and policy exist: that needs the
/// other objects, see the spooler's config and the operator).
pub fn validate_queue(spec: &PrintQueueSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Errors::default();
    if spec.printers.is_empty() {
        errors.push("spec.printers", "a queue needs at least one printer");
    }
    for (index, printer) in spec.printers.iter().enumerate() {
        errors.check_name(format!("spec.printers[{index}]"), printer);
    }
    errors.check_unique("spec.printers", spec.printers.iter().map(String::as_str));
    if let Some(policy) = &spec.accounting_policy {
        errors.check_name("spec.accountingPolicy", policy);
    }
    let access = &spec.access;
    if let Some(credentials) = &access.credentials {
        errors.check_secret_ref("spec.access.credentials", credentials);
    }
    if access.authentication == AuthenticationMode::Basic && access.credentials.is_none() {
        errors.push(
            "spec.access.credentials",
            "basic authentication requires credentials",
        );
    }
    let defaults = &spec.defaults;
    if let Some(sides) = &defaults.sides
        && !SIDES_VALUES.contains(&sides.as_str())
    {
        errors.push(
            "spec.defaults.sides",
            format!("{sides:?} is not one of {SIDES_VALUES:?}"),
        );
    }
    if let Some(mode) = &defaults.color_mode
        && !COLOR_MODE_VALUES.contains(&mode.as_str())
    {
        errors.push(
            "spec.defaults.colorMode",
            format!("{mode:?} is not one of {COLOR_MODE_VALUES:?}"),
        );
    }
    if let Some(media) = &defaults.media {
        errors.check_media("spec.defaults.media", media);
    }
    if spec.retention.max_jobs == Some(0) {
        errors.push("spec.retention.maxJobs", "must be at least 1");
    }
    if spec.max_document_bytes == Some(0) {
        errors.push("spec.maxDocumentBytes", "must be at least 1");
    }
    errors.finish()
}

/// Checks an AccountingPolicy's spec.
pub fn validate_policy(spec: &AccountingPolicySpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Errors::default();
    let currency = spec.currency.as_str();
    let currency_ok = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
    if !currency_ok {
        errors.push(
            "spec.currency",
            format!("{currency:?} is not an ISO 4217 code such as EUR"),
        );
    }
    if let Some(zone) = &spec.time_zone
        && !is_time_zone(zone)
    {
        errors.push(
            "spec.timeZone",
            format!("{zone:?} is not an IANA time zone such as Europe/Berlin"),
        );
    }
    let mut check_money = |field: String, amount: &Option<String>| {
        if let Some(amount) = amount
            && let Err(error) = parse_money(amount, currency)
        {
            let reason = match error {
                DecimalError::TooPrecise { places, .. } => {
                    format!("{amount:?} has more decimal places than {currency} has ({places})")
                }
                malformed => malformed.to_string(),
            };
            errors.push(field, reason);
        }
    };
    let prices = &spec.prices;
    check_money("spec.prices.monoImpression".into(), &prices.mono_impression);
    check_money(
        "spec.prices.colorImpression".into(),
        &prices.color_impression,
    );
    check_money("spec.prices.perJob".into(), &prices.per_job);
    for (index, media) in prices.media.iter().enumerate() {
        let field = format!("spec.prices.media[{index}]");
        check_money(format!("{field}.monoImpression"), &media.mono_impression);
        check_money(format!("{field}.colorImpression"), &media.color_impression);
    }
    for (index, quota) in spec.quotas.iter().enumerate() {
        check_money(format!("spec.quotas[{index}].maxAmount"), &quota.max_amount);
    }
    if let Some(factor) = &prices.duplex_factor
        && let Err(error) = parse_decimal(factor, DECIMAL_MAX_PLACES)
    {
        errors.push("spec.prices.duplexFactor", error.to_string());
    }
    for (index, media) in prices.media.iter().enumerate() {
        errors.check_media(format!("spec.prices.media[{index}].media"), &media.media);
    }
    errors.check_unique(
        "spec.prices.media",
        prices.media.iter().map(|m| m.media.as_str()),
    );
    for (index, quota) in spec.quotas.iter().enumerate() {
        check_quota(&mut errors, &format!("spec.quotas[{index}]"), quota);
    }
    errors.check_unique(
        "spec.billingCodes.allowed",
        spec.billing_codes.allowed.iter().map(String::as_str),
    );
    errors.finish()
}

fn check_quota(errors: &mut Errors, field: &str, quota: &Quota) {
    let subjects = [quota.user.is_some(), quota.group.is_some(), quota.all_users];
    if subjects.iter().filter(|present| **present).count() != 1 {
        errors.push(
            field,
            "a quota names exactly one of user, group or allUsers",
        );
    }
    for (name, value) in [("user", &quota.user), ("group", &quota.group)] {
        if value.as_deref() == Some("") {
            errors.push(format!("{field}.{name}"), "must not be empty");
        }
    }
    if quota.max_amount.is_none() && quota.max_impressions.is_none() {
        errors.push(field, "a quota sets maxAmount, maxImpressions or both");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MediaPrice, Prices};
    use crate::printer::PrinterCapabilities;
    use crate::schema::apiserver;
    use crate::{AccountingPolicy, PrintQueue, Printer};

    // Each helper runs the Rust rules and the apiserver's (schema + CEL) on the same spec,
    // fails when they disagree, and returns the Rust verdict.

    fn printer_verdict(spec: PrinterSpec) -> Result<(), Vec<FieldError>> {
        let rust = validate_printer(&spec);
        let server = apiserver::verdict(&Printer::new("p", spec.clone()));
        assert_eq!(
            rust.is_ok(),
            server.is_ok(),
            "{spec:?}\nrust: {rust:?}\napiserver: {server:?}"
        );
        rust
    }

    fn queue_verdict(spec: PrintQueueSpec) -> Result<(), Vec<FieldError>> {
        let rust = validate_queue(&spec);
        let server = apiserver::verdict(&PrintQueue::new("q", spec.clone()));
        assert_eq!(
            rust.is_ok(),
            server.is_ok(),
            "{spec:?}\nrust: {rust:?}\napiserver: {server:?}"
        );
        rust
    }

    fn policy_verdict(spec: AccountingPolicySpec) -> Result<(), Vec<FieldError>> {
        let rust = validate_policy(&spec);
        let server = apiserver::verdict(&AccountingPolicy::new("a", spec.clone()));
        assert_eq!(
            rust.is_ok(),
            server.is_ok(),
            "{spec:?}\nrust: {rust:?}\napiserver: {server:?}"
        );
        rust
    }

    /// The verdict is an error on exactly `field`.
    fn assert_rejects(verdict: Result<(), Vec<FieldError>>, field: &str) {
        let errors = verdict.expect_err("should be rejected");
        assert!(
            errors.iter().all(|e| e.field == field),
            "expected only {field}: {errors:?}"
        );
    }

    fn printer(uri: &str) -> PrinterSpec {
        PrinterSpec {
            uri: uri.into(),
            ..Default::default()
        }
    }

    fn secret(name: &str, key: &str) -> Option<SecretKeyRef> {
        Some(SecretKeyRef {
            name: name.into(),
            key: key.into(),
        })
    }

    fn queue(printers: &[&str]) -> PrintQueueSpec {
        PrintQueueSpec {
            printers: printers.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn policy(currency: &str) -> AccountingPolicySpec {
        AccountingPolicySpec {
            currency: currency.into(),
            ..Default::default()
        }
    }

    fn mono_price(currency: &str, amount: &str) -> AccountingPolicySpec {
        AccountingPolicySpec {
            prices: Prices {
                mono_impression: Some(amount.into()),
                ..Default::default()
            },
            ..policy(currency)
        }
    }

    fn quota(user: Option<&str>, group: Option<&str>, all_users: bool) -> Quota {
        Quota {
            user: user.map(Into::into),
            group: group.map(Into::into),
            all_users,
            max_impressions: Some(100),
            ..Default::default()
        }
    }

    fn with_quota(quota: Quota) -> AccountingPolicySpec {
        AccountingPolicySpec {
            quotas: vec![quota],
            ..policy("EUR")
        }
    }

    #[test]
    fn printer_uri_accepts_the_five_schemes() {
        for uri in [
            "ipp://printer.example.com/ipp/print",
            "ipp://127.0.0.1:8631/ipp/print",
            "ipps://[::1]:631/printers/lab",
            "ipp://host",
            "socket://10.0.0.5:9100",
            "socket://printer/",
            "lpd://printer.example.com/lp",
            "lpd://printer:515/queue1",
            "file:///tmp/printfleet-demo",
        ] {
            assert_eq!(printer_verdict(printer(uri)), Ok(()), "{uri}");
        }
    }

    #[test]
    fn printer_uri_rejects_other_schemes_and_shapes() {
        for uri in [
            "",
            "http://printer/ipp",
            "printer:9100",
            "ipp://",
            "ipp://-bad-/x",
            "ipp://host:/x",
            "ipp://host:123456/x",
            "ipp://host/with space",
            "socket://printer:9100/path",
            "lpd://printer",
            "lpd://printer/",
            "lpd://printer/a/b",
            "file://relative/dir",
            "file:///",
            "file:/tmp/x",
        ] {
            assert_rejects(printer_verdict(printer(uri)), "spec.uri");
        }
    }

    #[test]
    fn parse_printer_uri_takes_the_uri_apart() {
        let uri = parse_printer_uri("ipps://[::1]:631/printers/lab").expect("valid");
        assert_eq!(
            uri,
            PrinterUri {
                scheme: UriScheme::Ipps,
                host: "::1",
                port: Some(631),
                path: "/printers/lab"
            }
        );
        let file = parse_printer_uri("file:///var/spool/out").expect("valid");
        assert_eq!(file.path, "/var/spool/out");
        assert_eq!(parse_printer_uri("socket://p").expect("valid").port, None);
    }

    #[test]
    fn credentials_apply_only_to_ipp_printers() {
        let ok = PrinterSpec {
            credentials: secret("printer-auth", "basic"),
            ..printer("ipp://p/ipp/print")
        };
        assert_eq!(printer_verdict(ok), Ok(()));
        let bad = PrinterSpec {
            credentials: secret("printer-auth", "basic"),
            ..printer("socket://p:9100")
        };
        assert_rejects(printer_verdict(bad), "spec.credentials");
    }

    #[test]
    fn secret_references_need_valid_names_and_keys() {
        let bad_name = PrinterSpec {
            credentials: secret("Not_A_Name", "basic"),
            ..printer("ipp://p")
        };
        assert_rejects(printer_verdict(bad_name), "spec.credentials.name");
        let bad_key = PrinterSpec {
            credentials: secret("auth", "a/b"),
            ..printer("ipp://p")
        };
        assert_rejects(printer_verdict(bad_key), "spec.credentials.key");
    }

    #[test]
    fn ca_bundle_applies_only_to_ipps() {
        let ok = PrinterSpec {
            ca_bundle: secret("ca", "ca.pem"),
            ..printer("ipps://p/ipp/print")
        };
        assert_eq!(printer_verdict(ok), Ok(()));
        let bad = PrinterSpec {
            ca_bundle: secret("ca", "ca.pem"),
            ..printer("ipp://p/ipp/print")
        };
        assert_rejects(printer_verdict(bad), "spec.caBundle");
    }

    #[test]
    fn insecure_skip_tls_verify_applies_only_to_ipps() {
        let ok = PrinterSpec {
            insecure_skip_tls_verify: true,
            ..printer("ipps://p")
        };
        assert_eq!(printer_verdict(ok), Ok(()));
        let bad = PrinterSpec {
            insecure_skip_tls_verify: true,
            ..printer("lpd://p/q")
        };
        assert_rejects(printer_verdict(bad), "spec.insecureSkipTlsVerify");
    }

    #[test]
    fn ca_bundle_and_insecure_skip_tls_verify_are_exclusive() {
        let bad = PrinterSpec {
            insecure_skip_tls_verify: true,
            ca_bundle: secret("ca", "ca.pem"),
            ..printer("ipps://p")
        };
        assert_rejects(printer_verdict(bad), "spec.insecureSkipTlsVerify");
    }

    #[test]
    fn capabilities_media_are_pwg_names() {
        let with_media = |media: &str| PrinterSpec {
            capabilities: Some(PrinterCapabilities {
                media: vec![media.into()],
                ..Default::default()
            }),
            ..printer("ipp://p")
        };
        for media in [
            "iso_a4_210x297mm",
            "na_letter_8.5x11in",
            "na_legal_8.5x14in",
            "om_small-photo_100x150mm",
        ] {
            assert_eq!(printer_verdict(with_media(media)), Ok(()), "{media}");
        }
        for media in [
            "A4",
            "iso_a4_210x297",
            "iso_a4_210mm",
            "ISO_A4_210x297mm",
            "iso__210x297mm",
        ] {
            assert_rejects(
                printer_verdict(with_media(media)),
                "spec.capabilities.media[0]",
            );
        }
    }

    #[test]
    fn capabilities_resolutions_are_in_range() {
        let with_dpi = |dpi: u32| PrinterSpec {
            capabilities: Some(PrinterCapabilities {
                resolutions_dpi: vec![600, dpi],
                ..Default::default()
            }),
            ..printer("ipp://p")
        };
        assert_eq!(printer_verdict(with_dpi(10_000)), Ok(()));
        assert_rejects(
            printer_verdict(with_dpi(0)),
            "spec.capabilities.resolutionsDpi[1]",
        );
        assert_rejects(
            printer_verdict(with_dpi(10_001)),
            "spec.capabilities.resolutionsDpi[1]",
        );
    }

    #[test]
    fn a_queue_needs_a_printer() {
        assert_eq!(queue_verdict(queue(&["a"])), Ok(()));
        assert_rejects(queue_verdict(queue(&[])), "spec.printers");
    }

    #[test]
    fn queue_printers_and_policy_are_object_names() {
        assert_rejects(
            queue_verdict(queue(&["ok", "Bad_Name"])),
            "spec.printers[1]",
        );
        let bad_policy = PrintQueueSpec {
            accounting_policy: Some("-x".into()),
            ..queue(&["a"])
        };
        assert_rejects(queue_verdict(bad_policy), "spec.accountingPolicy");
    }

    #[test]
    fn queue_printers_are_a_set() {
        // The apiserver enforces this with x-kubernetes-list-type: set.
        assert_rejects(validate_queue(&queue(&["a", "b", "a"])), "spec.printers[2]");
        let crd =
            serde_json::to_value(<PrintQueue as kube::CustomResourceExt>::crd()).expect("json");
        let printers = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["printers"];
        assert_eq!(printers["x-kubernetes-list-type"], "set");
    }

    #[test]
    fn basic_authentication_requires_credentials() {
        let mut spec = queue(&["a"]);
        spec.access.authentication = AuthenticationMode::Basic;
        assert_rejects(queue_verdict(spec.clone()), "spec.access.credentials");
        spec.access.credentials = secret("users", "htpasswd");
        assert_eq!(queue_verdict(spec), Ok(()));
    }

    #[test]
    fn queue_defaults_are_known_values() {
        let mut spec = queue(&["a"]);
        spec.defaults.sides = Some("two-sided-long-edge".into());
        spec.defaults.color_mode = Some("monochrome".into());
        spec.defaults.media = Some("iso_a4_210x297mm".into());
        assert_eq!(queue_verdict(spec.clone()), Ok(()));
        let mut bad_sides = spec.clone();
        bad_sides.defaults.sides = Some("duplex".into());
        assert_rejects(queue_verdict(bad_sides), "spec.defaults.sides");
        let mut bad_color = spec.clone();
        bad_color.defaults.color_mode = Some("grey".into());
        assert_rejects(queue_verdict(bad_color), "spec.defaults.colorMode");
        let mut bad_media = spec;
        bad_media.defaults.media = Some("a4".into());
        assert_rejects(queue_verdict(bad_media), "spec.defaults.media");
    }

    #[test]
    fn queue_limits_are_at_least_one() {
        let mut max_jobs = queue(&["a"]);
        max_jobs.retention.max_jobs = Some(0);
        assert_rejects(queue_verdict(max_jobs), "spec.retention.maxJobs");
        let mut max_bytes = queue(&["a"]);
        max_bytes.max_document_bytes = Some(0);
        assert_rejects(queue_verdict(max_bytes), "spec.maxDocumentBytes");
        let mut ok = queue(&["a"]);
        ok.retention.max_jobs = Some(1);
        ok.max_document_bytes = Some(1);
        assert_eq!(queue_verdict(ok), Ok(()));
    }

    #[test]
    fn currency_is_an_iso_4217_code() {
        assert_eq!(policy_verdict(policy("EUR")), Ok(()));
        for currency in ["eur", "EURO", "E1R", ""] {
            assert_rejects(policy_verdict(policy(currency)), "spec.currency");
        }
    }

    #[test]
    fn time_zone_is_an_iana_name() {
        for zone in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            let spec = AccountingPolicySpec {
                time_zone: Some(zone.into()),
                ..policy("EUR")
            };
            assert_eq!(policy_verdict(spec), Ok(()), "{zone}");
        }
        for zone in ["", "/Berlin", "Europe//Berlin", "Europe/Ber lin"] {
            let spec = AccountingPolicySpec {
                time_zone: Some(zone.into()),
                ..policy("EUR")
            };
            assert_rejects(policy_verdict(spec), "spec.timeZone");
        }
    }

    #[test]
    fn prices_are_decimal_strings() {
        assert_eq!(policy_verdict(mono_price("EUR", "0.05")), Ok(()));
        assert_eq!(policy_verdict(mono_price("EUR", "12")), Ok(()));
        for amount in [
            "",
            ".5",
            "5.",
            "-1",
            "1,50",
            "1e3",
            "0.05 EUR",
            "1234567890123",
        ] {
            assert_rejects(
                policy_verdict(mono_price("EUR", amount)),
                "spec.prices.monoImpression",
            );
        }
    }

    #[test]
    fn prices_have_at_most_the_currency_decimal_places() {
        for (currency, amount) in [
            ("EUR", "0.10"),
            ("JPY", "5"),
            ("KWD", "0.125"),
            ("CLF", "0.1255"),
            ("XYZ", "1.5"),
        ] {
            assert_eq!(
                policy_verdict(mono_price(currency, amount)),
                Ok(()),
                "{amount} {currency}"
            );
        }
        for (currency, amount) in [
            ("EUR", "0.005"),
            ("JPY", "5.5"),
            ("KWD", "0.1255"),
            ("USD", "1.001"),
        ] {
            assert_rejects(
                policy_verdict(mono_price(currency, amount)),
                "spec.prices.monoImpression",
            );
        }
    }

    #[test]
    fn every_amount_is_checked_against_the_currency() {
        let media = AccountingPolicySpec {
            prices: Prices {
                media: vec![MediaPrice {
                    media: "iso_a3_297x420mm".into(),
                    color_impression: Some("0.125".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..policy("EUR")
        };
        assert_rejects(
            policy_verdict(media),
            "spec.prices.media[0].colorImpression",
        );
        let per_job = AccountingPolicySpec {
            prices: Prices {
                per_job: Some("1.5".into()),
                ..Default::default()
            },
            ..policy("JPY")
        };
        assert_rejects(policy_verdict(per_job), "spec.prices.perJob");
        let quota = Quota {
            max_amount: Some("9.999".into()),
            ..quota(None, None, true)
        };
        assert_rejects(
            policy_verdict(with_quota(quota)),
            "spec.quotas[0].maxAmount",
        );
    }

    #[test]
    fn duplex_factor_is_a_decimal() {
        let factor = |value: &str| AccountingPolicySpec {
            prices: Prices {
                duplex_factor: Some(value.into()),
                ..Default::default()
            },
            ..policy("JPY")
        };
        assert_eq!(policy_verdict(factor("0.8")), Ok(()));
        assert_eq!(policy_verdict(factor("0.8125")), Ok(()));
        assert_rejects(policy_verdict(factor("80%")), "spec.prices.duplexFactor");
        assert_rejects(
            policy_verdict(factor("0.81255")),
            "spec.prices.duplexFactor",
        );
    }

    #[test]
    fn media_prices_are_per_pwg_media_once() {
        let price = |media: &str| MediaPrice {
            media: media.into(),
            mono_impression: Some("0.10".into()),
            ..Default::default()
        };
        let spec = |media: Vec<MediaPrice>| AccountingPolicySpec {
            prices: Prices {
                media,
                ..Default::default()
            },
            ..policy("EUR")
        };
        assert_rejects(
            policy_verdict(spec(vec![price("A3")])),
            "spec.prices.media[0].media",
        );
        // The apiserver enforces uniqueness with x-kubernetes-list-type: map.
        let twice = spec(vec![price("iso_a3_297x420mm"), price("iso_a3_297x420mm")]);
        assert_rejects(validate_policy(&twice), "spec.prices.media[1]");
    }

    #[test]
    fn a_quota_names_exactly_one_subject() {
        assert_eq!(
            policy_verdict(with_quota(quota(Some("alice"), None, false))),
            Ok(())
        );
        assert_eq!(
            policy_verdict(with_quota(quota(None, Some("staff"), false))),
            Ok(())
        );
        assert_eq!(policy_verdict(with_quota(quota(None, None, true))), Ok(()));
        for bad in [
            quota(None, None, false),
            quota(Some("alice"), Some("staff"), false),
            quota(Some("alice"), None, true),
            quota(Some("alice"), Some("staff"), true),
        ] {
            assert_rejects(policy_verdict(with_quota(bad)), "spec.quotas[0]");
        }
    }

    #[test]
    fn a_quota_subject_is_not_empty() {
        assert_rejects(
            policy_verdict(with_quota(quota(Some(""), None, false))),
            "spec.quotas[0].user",
        );
        assert_rejects(
            policy_verdict(with_quota(quota(None, Some(""), false))),
            "spec.quotas[0].group",
        );
    }

    #[test]
    fn a_quota_sets_a_limit() {
        let amount_only = Quota {
            max_impressions: None,
            max_amount: Some("20".into()),
            ..quota(Some("a"), None, false)
        };
        assert_eq!(policy_verdict(with_quota(amount_only)), Ok(()));
        let neither = Quota {
            max_impressions: None,
            ..quota(Some("a"), None, false)
        };
        assert_rejects(policy_verdict(with_quota(neither)), "spec.quotas[0]");
    }

    #[test]
    fn billing_codes_are_a_set() {
        let mut spec = policy("EUR");
        spec.billing_codes.allowed = vec!["p-1".into(), "p-1".into()];
        assert_rejects(validate_policy(&spec), "spec.billingCodes.allowed[1]");
    }

    #[test]
    fn errors_are_collected_not_just_the_first() {
        let spec = AccountingPolicySpec {
            currency: "eur".into(),
            quotas: vec![quota(None, None, false)],
            ..Default::default()
        };
        let fields: Vec<String> = validate_policy(&spec)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["spec.currency", "spec.quotas[0]"]);
    }

    #[test]
    fn parse_money_uses_the_currency_exponent() {
        assert_eq!(parse_money("0.05", "EUR"), Ok(5));
        assert_eq!(parse_money("1.5", "EUR"), Ok(150));
        assert_eq!(parse_money("12", "USD"), Ok(1200));
        assert_eq!(parse_money("500", "JPY"), Ok(500));
        assert_eq!(parse_money("7", "KRW"), Ok(7));
        assert_eq!(parse_money("0.125", "KWD"), Ok(125));
        assert_eq!(parse_money("0.0001", "CLF"), Ok(1));
        assert_eq!(
            parse_money("999999999999.99", "EUR"),
            Ok(99_999_999_999_999)
        );
        assert_eq!(
            parse_money("0.005", "EUR"),
            Err(DecimalError::TooPrecise {
                text: "0.005".into(),
                places: 2
            })
        );
        assert_eq!(
            parse_money("1.5", "JPY"),
            Err(DecimalError::TooPrecise {
                text: "1.5".into(),
                places: 0
            })
        );
        for text in ["", "-1", "1.", ".1", "1.2.3", "1e2", "+1", " 1", "１"] {
            assert_eq!(
                parse_money(text, "EUR"),
                Err(DecimalError::Malformed { text: text.into() }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn parse_decimal_scales_factors() {
        assert_eq!(parse_decimal("0.8", 4), Ok(8000));
        assert_eq!(parse_decimal("1", 4), Ok(10_000));
        assert_eq!(parse_decimal("0.8125", 4), Ok(8125));
        assert_eq!(currency_exponent("EUR"), 2);
        assert_eq!(currency_exponent("JPY"), 0);
        assert_eq!(currency_exponent("BHD"), 3);
    }
}
