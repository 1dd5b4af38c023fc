//! IPP on the wire (RFC 8010): finding where a request's attribute section ends as its
//! bytes arrive, decoding it with the `ipp` crate, and encoding responses.
//!
//! The scanner walks tags and lengths itself before the `ipp` crate sees anything, so that
//! (a) the attribute section can be read incrementally in linear time whatever the chunk
//! sizes, (b) it is bounded, and (c) values the crate cannot decode safely (a
//! `textWithLanguage` whose inner lengths overrun the value) are refused up front.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use ipp::attribute::{IppAttribute, IppAttributeGroup};
use ipp::model::{DelimiterTag, StatusCode};
use ipp::parser::IppParser;
use ipp::reader::IppReader;
use ipp::value::{
    IppCharset, IppDateTime, IppKeyword, IppLanguage, IppMimeMediaType, IppName, IppString,
    IppTextValue, IppValue,
};

/// Largest attribute section (header and groups) accepted; the document is not counted.
pub const MAX_ATTRIBUTE_SECTION: usize = 1 << 20;

/// The 8-byte header of every IPP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `major << 8 | minor`.
    pub version: u16,
    pub operation: u16,
    pub request_id: i32,
}

impl Header {
    /// The header at the start of `buf`, once 8 bytes are there.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let bytes: &[u8; 8] = buf.get(..8)?.try_into().ok()?;
        Some(Header {
            version: u16::from_be_bytes([bytes[0], bytes[1]]),
            operation: u16::from_be_bytes([bytes[2], bytes[3]]),
            request_id: i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }
}

/// What the scanner knows about a buffer holding the start of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The attribute section (header included) is the first `n` bytes.
    Complete(usize),
    /// The section goes on beyond the bytes seen so far.
    NeedMore,
    /// The bytes cannot be an IPP request.
    Malformed(&'static str),
}

/// Finds the end of the attribute section, resuming where the previous call stopped.
#[derive(Debug, Default)]
pub struct SectionScanner {
    /// Start of the next unexamined tag (0 before the header is complete).
    offset: usize,
    in_group: bool,
}

impl SectionScanner {
    /// Scan `buf`, which must extend the buffer given to the previous call.
    pub fn scan(&mut self, buf: &[u8]) -> Scan {
        if self.offset == 0 {
            if buf.len() < 8 {
                return Scan::NeedMore;
            }
            self.offset = 8;
        }
        loop {
            let Some(&tag) = buf.get(self.offset) else {
                return Scan::NeedMore;
            };
            match tag {
                0x03 => return Scan::Complete(self.offset + 1),
                0x01..=0x0a => {
                    self.in_group = true;
                    self.offset += 1;
                }
                0x10..=0x4a => {
                    if !self.in_group {
                        return Scan::Malformed("attribute before the first group");
                    }
                    let name_at = self.offset + 1;
                    let Some(name_len) = read_u16(buf, name_at) else {
                        return Scan::NeedMore;
                    };
                    let value_len_at = name_at + 2 + name_len;
                    let Some(value_len) = read_u16(buf, value_len_at) else {
                        return Scan::NeedMore;
                    };
                    let value_at = value_len_at + 2;
                    let end = value_at + value_len;
                    let Some(value) = buf.get(value_at..end) else {
                        return Scan::NeedMore;
                    };
                    if matches!(tag, 0x35 | 0x36) && !with_language_is_well_formed(value) {
                        return Scan::Malformed("bad textWithLanguage/nameWithLanguage value");
                    }
                    self.offset = end;
                }
                0x00 | 0x0b..=0x0f => return Scan::Malformed("reserved delimiter tag"),
                _ => return Scan::Malformed("unsupported value tag"),
            }
        }
    }
}

fn read_u16(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
}

/// `textWithLanguage` / `nameWithLanguage`: two length-prefixed strings filling the value.
fn with_language_is_well_formed(value: &[u8]) -> bool {
    let Some(language_len) = read_u16(value, 0) else {
        return false;
    };
    let Some(text_len) = read_u16(value, 2 + language_len) else {
        return false;
    };
    4 + language_len + text_len == value.len()
}

/// A decoded request: its header and attribute groups in wire order.
#[derive(Clone, Debug)]
pub struct Request {
    pub header: Header,
    pub groups: Vec<IppAttributeGroup>,
}

/// Why an attribute section could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed IPP attributes: {0}")]
pub struct DecodeError(String);

/// Decode a complete attribute section (as `SectionScanner` delimited it).
pub fn decode(section: Bytes) -> Result<Request, DecodeError> {
    let header = Header::read(&section).ok_or_else(|| DecodeError("short header".into()))?;
    let parser = IppParser::new(IppReader::new(Cursor::new(section)));
    let (_, attributes, _) = parser
        .parse_parts()
        .map_err(|error| DecodeError(error.to_string()))?;
    Ok(Request {
        header,
        groups: attributes.into_groups(),
    })
}

impl Request {
    /// The operation attributes group, when it is the first group as RFC 8011 requires.
    pub fn operation_group(&self) -> Option<&IppAttributeGroup> {
        self.groups
            .first()
            .filter(|group| group.tag() == DelimiterTag::OperationAttributes)
    }

    /// An operation attribute's value.
    pub fn operation(&self, name: &str) -> Option<&IppValue> {
        self.operation_group()?.get(name).map(IppAttribute::value)
    }

    /// The job template attributes the client sent (the first job attributes group).
    pub fn job_attributes(&self) -> &[IppAttribute] {
        self.groups
            .iter()
            .find(|group| group.tag() == DelimiterTag::JobAttributes)
            .map(IppAttributeGroup::attributes)
            .unwrap_or_default()
    }
}

/// The values of an attribute: one, or the members of a `1setOf`.
pub fn values(value: &IppValue) -> &[IppValue] {
    match value {
        IppValue::Array(values) => values,
        single => std::slice::from_ref(single),
    }
}

/// A string value of any string syntax (keyword, name, text, uri, mimeMediaType...).
pub fn string_of(value: &IppValue) -> Option<&str> {
    Some(match value {
        IppValue::Keyword(s)
        | IppValue::NameWithoutLanguage(s)
        | IppValue::MimeMediaType(s)
        | IppValue::MemberAttrName(s) => s.as_str(),
        IppValue::NameWithLanguage { name, .. } => name.as_str(),
        IppValue::TextWithoutLanguage(text) | IppValue::TextWithLanguage { text, .. } => text,
        IppValue::Uri(s) | IppValue::UriScheme(s) => s.as_str(),
        IppValue::Charset(s) | IppValue::NaturalLanguage(s) => s.as_str(),
        _ => return None,
    })
}

/// An IPP response being built: status, message, and the groups after the operation group.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub message: Option<String>,
    /// Attributes or values the printer did not support (the unsupported group).
    pub unsupported: Vec<IppAttribute>,
    /// Job, printer... groups in order.
    pub groups: Vec<IppAttributeGroup>,
    /// Sent instead of `status` when set.
    pub account_status: Option<super::AccountStatus>,
}

impl Response {
    pub fn new(status: StatusCode) -> Response {
        Response {
            status,
            message: None,
            unsupported: Vec::new(),
            groups: Vec::new(),
            account_status: None,
        }
    }

    /// The keyword of the status sent (for logs and metrics).
    pub fn status_keyword(&self) -> &'static str {
        self.account_status
            .map_or_else(|| super::status_keyword(self.status), |a| a.keyword())
    }

    /// Add a group of attributes (several groups of one tag stay separate, as Get-Jobs needs).
    pub fn push_group(&mut self, tag: DelimiterTag, attributes: Vec<IppAttribute>) {
        let mut group = IppAttributeGroup::new(tag);
        *group.attributes_mut() = attributes;
        self.groups.push(group);
    }

    /// The wire encoding answering a request with this version and id.
    pub fn encode(&self, version: u16, request_id: i32) -> Bytes {
        let mut buffer = BytesMut::with_capacity(1024);
        buffer.put_u16(version);
        buffer.put_u16(
            self.account_status
                .map_or(self.status as u16, super::AccountStatus::code),
        );
        buffer.put_i32(request_id);
        buffer.put_u8(DelimiterTag::OperationAttributes as u8);
        buffer.put(charset("attributes-charset", "utf-8").to_bytes());
        buffer.put(natural_language("attributes-natural-language", "en").to_bytes());
        if let Some(message) = &self.message {
            buffer.put(text("status-message", clip(message, 255)).to_bytes());
        }
        if !self.unsupported.is_empty() {
            buffer.put_u8(DelimiterTag::UnsupportedAttributes as u8);
            for attribute in &self.unsupported {
                encode_attribute(&mut buffer, attribute);
            }
        }
        for group in &self.groups {
            buffer.put_u8(group.tag() as u8);
            for attribute in group.attributes() {
                encode_attribute(&mut buffer, attribute);
            }
        }
        buffer.put_u8(DelimiterTag::EndOfAttributes as u8);
        buffer.freeze()
    }
}

/// Encode one attribute. Unlike the crate's `to_bytes`, each value of a `1setOf` carries
/// its own tag, so sets of mixed syntaxes (echoed from a client's request in the
/// unsupported group) stay well-formed.
fn encode_attribute(buffer: &mut BytesMut, attribute: &IppAttribute) {
    let mut flat = Vec::new();
    flatten(attribute.value(), &mut flat);
    let name = attribute.name().as_bytes();
    for (index, value) in flat.into_iter().enumerate() {
        buffer.put_u8(value.to_tag());
        if index == 0 {
            buffer.put_u16(name.len() as u16);
            buffer.put_slice(name);
        } else {
            buffer.put_u16(0);
        }
        buffer.put(value.to_bytes());
    }
}

fn flatten<'a>(value: &'a IppValue, into: &mut Vec<&'a IppValue>) {
    match value {
        IppValue::Array(values) if values.is_empty() => into.push(&IppValue::NoValue),
        IppValue::Array(values) => values.iter().for_each(|v| flatten(v, into)),
        single => into.push(single),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// Attribute builders. Names are the crate's bounded strings; values longer than their
// syntax allows are clipped (never on input a client controls alone: ours are short).

fn named(name: &str, value: IppValue) -> IppAttribute {
    IppAttribute::new(IppName::new_truncated(clip(name, 255)), value)
}

pub fn keyword_value(value: &str) -> IppValue {
    IppValue::Keyword(IppKeyword::new_truncated(clip(value, 255)))
}

pub fn keyword(name: &str, value: &str) -> IppAttribute {
    named(name, keyword_value(value))
}

pub fn keywords<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> IppAttribute {
    set(name, values.into_iter().map(keyword_value).collect())
}

/// A `1setOf` attribute (a single value is sent as such).
pub fn set(name: &str, mut values: Vec<IppValue>) -> IppAttribute {
    let value = match values.len() {
        0 => IppValue::NoValue,
        1 => values.remove(0),
        _ => IppValue::Array(values),
    };
    named(name, value)
}

pub fn text_value(value: &str) -> IppValue {
    // Cannot fail after clipping to the longest text.
    IppTextValue::new(clip(value, 1023))
        .map(IppValue::TextWithoutLanguage)
        .unwrap_or(IppValue::NoValue)
}

pub fn text(name: &str, value: &str) -> IppAttribute {
    named(name, text_value(value))
}

pub fn name_value(value: &str) -> IppValue {
    IppValue::NameWithoutLanguage(IppName::new_truncated(clip(value, 255)))
}

pub fn name_attribute(name: &str, value: &str) -> IppAttribute {
    named(name, name_value(value))
}

pub fn uri_value(value: &str) -> IppValue {
    IppValue::Uri(IppString::new_truncated(clip(value, 1023)))
}

pub fn uri(name: &str, value: &str) -> IppAttribute {
    named(name, uri_value(value))
}

pub fn uri_scheme(name: &str, value: &str) -> IppAttribute {
    named(
        name,
        IppValue::UriScheme(IppString::new_truncated(clip(value, 1023))),
    )
}

pub fn mime_value(value: &str) -> IppValue {
    IppValue::MimeMediaType(IppMimeMediaType::new_truncated(clip(value, 255)))
}

pub fn mime(name: &str, value: &str) -> IppAttribute {
    named(name, mime_value(value))
}

pub fn charset(name: &str, value: &str) -> IppAttribute {
    named(
        name,
        IppValue::Charset(IppCharset::new_truncated(clip(value, 63))),
    )
}

pub fn natural_language(name: &str, value: &str) -> IppAttribute {
    named(
        name,
        IppValue::NaturalLanguage(IppLanguage::new_truncated(clip(value, 63))),
    )
}

pub fn integer(name: &str, value: i32) -> IppAttribute {
    named(name, IppValue::Integer(value))
}

pub fn integers(name: &str, values: &[i32]) -> IppAttribute {
    set(
        name,
        values.iter().copied().map(IppValue::Integer).collect(),
    )
}

pub fn enumeration(name: &str, value: i32) -> IppAttribute {
    named(name, IppValue::Enum(value))
}

pub fn enumerations(name: &str, values: &[i32]) -> IppAttribute {
    set(name, values.iter().copied().map(IppValue::Enum).collect())
}

pub fn boolean(name: &str, value: bool) -> IppAttribute {
    named(name, IppValue::Boolean(value))
}

pub fn range(name: &str, min: i32, max: i32) -> IppAttribute {
    named(name, IppValue::RangeOfInteger { min, max })
}

pub fn no_value(name: &str) -> IppAttribute {
    named(name, IppValue::NoValue)
}

/// `resolution` in dots per inch.
pub fn resolution_value(dpi: i32) -> IppValue {
    IppValue::Resolution {
        cross_feed: dpi,
        feed: dpi,
        units: 3,
    }
}

pub fn date_time(name: &str, unix_seconds: i64) -> IppAttribute {
    named(name, IppValue::DateTime(date_time_value(unix_seconds)))
}

/// An RFC 2579 DateAndTime in UTC.
pub fn date_time_value(unix_seconds: i64) -> IppDateTime {
    let civil = jiff::Timestamp::from_second(unix_seconds)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .datetime();
    IppDateTime {
        year: u16::try_from(civil.year()).unwrap_or(1970),
        month: civil.month().unsigned_abs(),
        day: civil.day().unsigned_abs(),
        hour: civil.hour().unsigned_abs(),
        minutes: civil.minute().unsigned_abs(),
        seconds: civil.second().unsigned_abs(),
        deci_seconds: 0,
        utc_dir: '+',
        utc_hours: 0,
        utc_mins: 0,
    }
}

/// A collection value from `(member, value)` pairs.
pub fn collection(members: Vec<(&str, IppValue)>) -> IppValue {
    IppValue::Collection(
        members
            .into_iter()
            .map(|(name, value)| (IppName::new_truncated(clip(name, 255)), value))
            .collect(),
    )
}

pub fn attribute(name: &str, value: IppValue) -> IppAttribute {
    named(name, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Get-Printer-Attributes request with the given operation attributes.
    fn request(attributes: &[(u8, &str, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![2, 0, 0, 0x0b, 0, 0, 0, 7, 0x01];
        for (tag, name, value) in attributes {
            bytes.push(*tag);
            bytes.extend((name.len() as u16).to_be_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend((value.len() as u16).to_be_bytes());
            bytes.extend(*value);
        }
        bytes.push(0x03);
        bytes
    }

    #[test]
    fn scanner_finds_the_section_end_whatever_the_chunking() {
        let mut bytes = request(&[
            (0x47, "attributes-charset", b"utf-8"),
            (0x48, "attributes-natural-language", b"en"),
            (0x45, "printer-uri", b"ipp://h/ipp/print/q"),
        ]);
        let section_len = bytes.len();
        bytes.extend(b"%PDF-1.4 document data");
        for chunk in [1, 2, 3, 7, 64] {
            let mut scanner = SectionScanner::default();
            let mut seen = 0;
            let result = loop {
                seen = (seen + chunk).min(bytes.len());
                match scanner.scan(&bytes[..seen]) {
                    Scan::NeedMore if seen < bytes.len() => continue,
                    other => break other,
                }
            };
            assert_eq!(result, Scan::Complete(section_len), "chunk size {chunk}");
        }
    }

    #[test]
    fn scanner_rejects_reserved_tags_and_orphan_values() {
        let mut bytes = vec![1, 1, 0, 0x0b, 0, 0, 0, 1, 0x0f];
        assert!(matches!(
            SectionScanner::default().scan(&bytes),
            Scan::Malformed(_)
        ));
        bytes[8] = 0x21;
        assert!(matches!(
            SectionScanner::default().scan(&bytes),
            Scan::Malformed(_)
        ));
    }

    #[test]
    fn scanner_rejects_text_with_language_overrunning_its_value() {
        let bytes = request(&[(0x35, "job-name", &[0, 2, b'e', b'n', 0, 200, b'x'])]);
        assert!(matches!(
            SectionScanner::default().scan(&bytes),
            Scan::Malformed(_)
        ));
        let good = request(&[(0x35, "job-name", &[0, 2, b'e', b'n', 0, 1, b'x'])]);
        assert_eq!(
            SectionScanner::default().scan(&good),
            Scan::Complete(good.len())
        );
    }

    #[test]
    fn decode_keeps_group_and_attribute_order() {
        let bytes = request(&[
            (0x47, "attributes-charset", b"utf-8"),
            (0x48, "attributes-natural-language", b"en"),
            (0x44, "requested-attributes", b"printer-name"),
            (0x44, "", b"printer-state"),
        ]);
        let request = decode(Bytes::from(bytes)).expect("well-formed request");
        assert_eq!(request.header.operation, 0x0b);
        assert_eq!(request.header.request_id, 7);
        let group = request.operation_group().expect("operation group first");
        let names: Vec<&str> = group
            .attributes()
            .iter()
            .map(|a| a.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "attributes-charset",
                "attributes-natural-language",
                "requested-attributes"
            ]
        );
        let requested = request.operation("requested-attributes").expect("present");
        let requested: Vec<&str> = values(requested).iter().filter_map(string_of).collect();
        assert_eq!(requested, ["printer-name", "printer-state"]);
    }

    #[test]
    fn response_round_trips_through_the_crate_parser() {
        let mut response = Response::new(StatusCode::SuccessfulOkIgnoredOrSubstitutedAttributes);
        response.message = Some("héllo".into());
        response
            .unsupported
            .push(keyword("sides", "two-sided-long-edge"));
        response.push_group(DelimiterTag::JobAttributes, vec![integer("job-id", 1)]);
        response.push_group(DelimiterTag::JobAttributes, vec![integer("job-id", 2)]);
        let bytes = response.encode(0x0200, 42);
        assert_eq!(
            SectionScanner::default().scan(&bytes),
            Scan::Complete(bytes.len())
        );
        let decoded = decode(bytes).expect("our encoding parses");
        assert_eq!(decoded.header.request_id, 42);
        assert_eq!(decoded.header.operation, 1);
        let tags: Vec<DelimiterTag> = decoded.groups.iter().map(|g| g.tag()).collect();
        assert_eq!(
            tags,
            [
                DelimiterTag::OperationAttributes,
                DelimiterTag::UnsupportedAttributes,
                DelimiterTag::JobAttributes,
                DelimiterTag::JobAttributes
            ]
        );
        assert_eq!(
            decoded.operation("status-message").and_then(string_of),
            Some("héllo")
        );
    }

    #[test]
    fn mixed_sets_encode_each_value_with_its_own_tag() {
        let mut response = Response::new(StatusCode::SuccessfulOk);
        response.unsupported.push(attribute(
            "copies",
            IppValue::Array(vec![IppValue::Integer(1), keyword_value("many")]),
        ));
        let decoded = decode(response.encode(0x0101, 1)).expect("well-formed");
        let value = decoded.groups[1].get("copies").map(IppAttribute::value);
        assert_eq!(
            value,
            Some(&IppValue::Array(vec![
                IppValue::Integer(1),
                keyword_value("many")
            ]))
        );
    }

    #[test]
    fn clip_respects_character_boundaries() {
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("abc", 5), "abc");
    }

    #[test]
    fn date_time_is_utc_civil_time() {
        let value = date_time_value(1_700_000_000);
        assert_eq!(
            (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minutes
            ),
            (2023, 11, 14, 22, 13)
        );
    }
}
