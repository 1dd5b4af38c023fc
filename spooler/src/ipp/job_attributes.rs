//! Jobs in IPP terms: validating the job template a client sends (RFC 8011 section 5.2,
//! PWG 5100.3 `job-account-id`) and describing a stored job as job attributes.

use ipp::attribute::IppAttribute;
use ipp::model::StatusCode;
use ipp::value::IppValue;
use printfleet_crds::queue::JobDefaults;

use super::Failure;
use super::codec::{self, Request, string_of, values};
use super::printer_attributes::{
    AttributeGroup, HOLD_UNTIL_SUPPORTED, MAX_COPIES, QueueProfile, media_size, printer_uri,
};
use crate::job::{Job, JobState, JobTicket};

/// A validated job submission (Print-Job, Create-Job, Validate-Job).
#[derive(Clone, Debug)]
pub struct Submission {
    pub ticket: JobTicket,
    pub priority: i32,
    /// `job-hold-until` other than `no-hold`.
    pub held: bool,
    pub job_name: Option<String>,
    pub document_name: Option<String>,
    /// `document-format` as sent (`None` when absent).
    pub format: Option<String>,
    /// What was ignored or substituted (the unsupported group).
    pub unsupported: Vec<IppAttribute>,
}

/// Operation attributes a submission may carry; others are ignored.
pub fn ipp_attribute_fidelity(request: &Request) -> bool {
    matches!(
        request.operation("ipp-attribute-fidelity"),
        Some(IppValue::Boolean(true))
    )
}

/// Check the document format against the queue: `client-error-document-format-not-supported`.
pub fn check_format(request: &Request, profile: &QueueProfile) -> Result<Option<String>, Failure> {
    let Some(value) = request.operation("document-format") else {
        return Ok(None);
    };
    match value {
        IppValue::MimeMediaType(format) if profile.supports_format(format) => {
            Ok(Some(format.to_ascii_lowercase()))
        }
        other => Err(Failure::new(
            StatusCode::ClientErrorDocumentFormatNotSupported,
            format!("document-format {other} is not supported"),
        )
        .with_unsupported(codec::attribute("document-format", other.clone()))),
    }
}

/// Refuse compressed documents: only `none` is supported.
pub fn check_compression(request: &Request) -> Result<(), Failure> {
    match request.operation("compression") {
        None => Ok(()),
        Some(IppValue::Keyword(keyword)) if keyword.as_str() == "none" => Ok(()),
        Some(other) => Err(Failure::new(
            StatusCode::ClientErrorCompressionNotSupported,
            format!("compression {other} is not supported"),
        )
        .with_unsupported(codec::attribute("compression", other.clone()))),
    }
}

/// Validate a submission's operation and job template attributes against the queue.
///
/// Unsupported attributes and values are dropped (the queue's default applies) and
/// listed in `unsupported`; with `ipp-attribute-fidelity` true they reject the request
/// with `client-error-attributes-or-values-not-supported` instead.
pub fn parse_submission(
    request: &Request,
    profile: &QueueProfile,
    defaults: &JobDefaults,
) -> Result<Submission, Failure> {
    check_compression(request)?;
    let format = check_format(request, profile)?;
    let name_of = |attribute: &str| {
        request
            .operation(attribute)
            .and_then(string_of)
            .map(str::to_string)
    };
    let mut submission = Submission {
        ticket: JobTicket::default(),
        priority: 50,
        held: false,
        job_name: name_of("job-name"),
        document_name: name_of("document-name"),
        format,
        unsupported: Vec::new(),
    };
    for attribute in request.job_attributes() {
        let name = attribute.name().as_str();
        match apply_template(&mut submission, profile, name, attribute.value()) {
            Applied::Yes => {}
            Applied::BadValue => submission.unsupported.push(attribute.clone()),
            Applied::UnknownAttribute => submission.unsupported.push(codec::attribute(
                name,
                IppValue::Other {
                    tag: 0x10,
                    data: bytes::Bytes::new(),
                },
            )),
        }
    }
    let ticket = &mut submission.ticket;
    if ticket.sides.is_none() {
        ticket.sides = supported_default(&defaults.sides, profile.sides());
    }
    if ticket.print_color_mode.is_none() {
        ticket.print_color_mode = supported_default(&defaults.color_mode, profile.color_modes());
    }
    if ticket.media.is_none() {
        ticket.media = defaults
            .media
            .clone()
            .filter(|media| profile.supports_media(media));
    }
    if !submission.unsupported.is_empty() && ipp_attribute_fidelity(request) {
        let names: Vec<String> = submission
            .unsupported
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        return Err(Failure {
            unsupported: submission.unsupported,
            ..Failure::new(
                StatusCode::ClientErrorAttributesOrValuesNotSupported,
                format!("unsupported attributes or values: {}", names.join(", ")),
            )
        });
    }
    Ok(submission)
}

fn supported_default(wanted: &Option<String>, supported: &[&str]) -> Option<String> {
    wanted
        .clone()
        .filter(|value| supported.contains(&value.as_str()))
}

enum Applied {
    Yes,
    BadValue,
    UnknownAttribute,
}

fn single(value: &IppValue) -> Option<&IppValue> {
    match value {
        IppValue::Array(_) => None,
        single => Some(single),
    }
}

fn keyword_in<'a>(value: &'a IppValue, supported: &[&str]) -> Option<&'a str> {
    match single(value)? {
        IppValue::Keyword(keyword) if supported.contains(&keyword.as_str()) => {
            Some(keyword.as_str())
        }
        _ => None,
    }
}

fn integer_in(value: &IppValue, min: i32, max: i32) -> Option<i32> {
    match single(value)? {
        IppValue::Integer(n) | IppValue::Enum(n) if (min..=max).contains(n) => Some(*n),
        _ => None,
    }
}

fn keyword_or_name(value: &IppValue) -> Option<&str> {
    match single(value)? {
        IppValue::Keyword(_)
        | IppValue::NameWithoutLanguage(_)
        | IppValue::NameWithLanguage { .. } => string_of(value),
        _ => None,
    }
}

fn apply_template(
    submission: &mut Submission,
    profile: &QueueProfile,
    name: &str,
    value: &IppValue,
) -> Applied {
    let ticket = &mut submission.ticket;
    let accepted = match name {
        "copies" => integer_in(value, 1, MAX_COPIES).map(|n| ticket.copies = Some(n)),
        "sides" => keyword_in(value, profile.sides()).map(|s| ticket.sides = Some(s.to_string())),
        "print-color-mode" => keyword_in(value, profile.color_modes())
            .map(|m| ticket.print_color_mode = Some(m.to_string())),
        "media" => keyword_or_name(value)
            .filter(|media| profile.supports_media(media))
            .map(|media| ticket.media = Some(media.to_string())),
        "media-col" => media_of_collection(value, profile).map(|media| ticket.media = Some(media)),
        "print-quality" => integer_in(value, 3, 5).map(|q| ticket.print_quality = Some(q)),
        "orientation-requested" => {
            integer_in(value, 3, 6).map(|o| ticket.orientation_requested = Some(o))
        }
        "number-up" => integer_in(value, 1, 1).map(|n| ticket.number_up = Some(n)),
        "page-ranges" => page_ranges(value).map(|ranges| ticket.page_ranges = ranges),
        "job-hold-until" => keyword_or_name(value)
            .filter(|hold| HOLD_UNTIL_SUPPORTED.contains(hold))
            .map(|hold| {
                submission.held = hold != "no-hold";
                ticket.job_hold_until = Some(hold.to_string());
            }),
        "job-priority" => integer_in(value, 1, 100).map(|p| submission.priority = p),
        "job-account-id" => single(value)
            .and_then(string_of)
            .map(|id| ticket.job_account_id = Some(id.to_string())),
        "job-accounting-user-id" => single(value)
            .and_then(string_of)
            .map(|id| ticket.job_accounting_user_id = Some(id.to_string())),
        // Accepted at their only supported value.
        "finishings" => values(value)
            .iter()
            .all(|v| *v == IppValue::Enum(3))
            .then_some(()),
        "job-sheets" => keyword_or_name(value).filter(|s| *s == "none").map(|_| ()),
        "multiple-document-handling" => keyword_in(
            value,
            &[
                "separate-documents-uncollated-copies",
                "separate-documents-collated-copies",
            ],
        )
        .map(|_| ()),
        "output-bin" => keyword_in(value, &["face-down"]).map(|_| ()),
        "print-content-optimize" => keyword_in(value, &["auto"]).map(|_| ()),
        "print-scaling" => keyword_in(value, &["auto", "fit", "fill", "none"]).map(|_| ()),
        "printer-resolution" => match single(value) {
            Some(IppValue::Resolution {
                cross_feed,
                feed,
                units: 3,
            }) if cross_feed == feed && profile.resolutions.contains(cross_feed) => Some(()),
            _ => None,
        },
        _ => return Applied::UnknownAttribute,
    };
    match accepted {
        Some(()) => Applied::Yes,
        None => Applied::BadValue,
    }
}

/// The supported media a `media-col` names, by `media-size-name` or by `media-size`.
fn media_of_collection(value: &IppValue, profile: &QueueProfile) -> Option<String> {
    let IppValue::Collection(members) = single(value)? else {
        return None;
    };
    if let Some(name) = members.get("media-size-name").and_then(string_of) {
        return profile.supports_media(name).then(|| name.to_string());
    }
    let IppValue::Collection(size) = members.get("media-size")? else {
        return None;
    };
    let (Some(IppValue::Integer(width)), Some(IppValue::Integer(height))) =
        (size.get("x-dimension"), size.get("y-dimension"))
    else {
        return None;
    };
    // Sizes match within 1 mm, as PWG 5101.1 allows for rounding.
    profile
        .media
        .iter()
        .find(|media| {
            media_size(media)
                .is_some_and(|(w, h)| (w - width).abs() <= 100 && (h - height).abs() <= 100)
        })
        .cloned()
}

/// `page-ranges`: ascending, non-overlapping ranges of pages counted from 1.
fn page_ranges(value: &IppValue) -> Option<Vec<(i32, i32)>> {
    let mut ranges = Vec::new();
    let mut last = 0;
    for value in values(value) {
        let IppValue::RangeOfInteger { min, max } = *value else {
            return None;
        };
        if min < 1 || max < min || min <= last {
            return None;
        }
        last = max;
        ranges.push((min, max));
    }
    (!ranges.is_empty()).then_some(ranges)
}

/// The `job-uri` of a job.
pub fn job_uri(base_uri: &str, id: i32) -> String {
    format!("{base_uri}/jobs/{id}")
}

fn state_message(state: JobState) -> &'static str {
    match state {
        JobState::Pending => "Job is waiting to be printed.",
        JobState::PendingHeld => "Job is held.",
        JobState::Processing => "Job is printing.",
        JobState::ProcessingStopped => "Job is stopped.",
        JobState::Canceled => "Job was canceled.",
        JobState::Aborted => "Job was aborted.",
        JobState::Completed => "Job completed.",
    }
}

fn clamp_i32(value: i64) -> i32 {
    i32::try_from(value.clamp(0, i64::from(i32::MAX))).unwrap_or(i32::MAX)
}

/// What a requester may see of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// The owner or an operator.
    Full,
    /// Someone else: the job name is withheld, as CUPS does with job privacy.
    Private,
}

/// Which job this is and how it stands: what an operation that creates or changes a job
/// answers with (RFC 8011 section 4.2.1.2), and the first of its full attributes.
pub fn job_status(job: &Job, base_uri: &str) -> [IppAttribute; 5] {
    use codec::*;
    let reasons: Vec<&str> = if job.reasons.is_empty() {
        vec!["none"]
    } else {
        job.reasons.iter().map(String::as_str).collect()
    };
    [
        integer("job-id", job.id),
        uri("job-uri", &job_uri(base_uri, job.id)),
        enumeration("job-state", job.state.as_i32()),
        keywords("job-state-reasons", reasons),
        text(
            "job-state-message",
            job.message.as_deref().unwrap_or(state_message(job.state)),
        ),
    ]
}

/// A job's attributes, each tagged with its group for `requested-attributes`.
pub fn job_attributes(
    job: &Job,
    base_uri: &str,
    now: i64,
    visibility: Visibility,
) -> Vec<(AttributeGroup, IppAttribute)> {
    use codec::*;
    let description = |attribute| (AttributeGroup::Description, attribute);
    let template = |attribute| (AttributeGroup::JobTemplate, attribute);
    let time_or_none = |name: &str, time: Option<i64>| match time {
        Some(time) => integer(name, clamp_i32(time)),
        None => no_value(name),
    };
    let date_or_none = |name: &str, time: Option<i64>| match time {
        Some(time) => date_time(name, time),
        None => no_value(name),
    };
    let octets: u64 = job.documents.iter().map(|d| d.size).sum();
    let mut attributes: Vec<_> = job_status(job, base_uri).map(description).into();
    attributes.extend([
        description(uri("job-printer-uri", &printer_uri(base_uri, &job.queue))),
        description(name_attribute("job-originating-user-name", &job.owner)),
        description(integer(
            "job-k-octets",
            clamp_i32(i64::try_from(octets.div_ceil(1024)).unwrap_or(i64::MAX)),
        )),
        description(integer("time-at-creation", clamp_i32(job.created_at))),
        description(time_or_none("time-at-processing", job.processing_at)),
        description(time_or_none("time-at-completed", job.completed_at)),
        description(date_time("date-time-at-creation", job.created_at)),
        description(date_or_none("date-time-at-processing", job.processing_at)),
        description(date_or_none("date-time-at-completed", job.completed_at)),
        description(integer("job-printer-up-time", clamp_i32(now).max(1))),
        description(integer(
            "number-of-documents",
            i32::try_from(job.documents.len()).unwrap_or(i32::MAX),
        )),
        description(integer(
            "job-impressions-completed",
            clamp_i32(job.impressions_completed.unwrap_or(0)),
        )),
        description(integer(
            "job-media-sheets-completed",
            clamp_i32(job.sheets_completed.unwrap_or(0)),
        )),
        template(integer("job-priority", job.priority)),
        template(keyword(
            "job-hold-until",
            job.ticket.job_hold_until.as_deref().unwrap_or("no-hold"),
        )),
    ]);
    if visibility == Visibility::Full {
        attributes.push(description(name_attribute("job-name", &job.name)));
        if let Some(host) = &job.originating_host {
            attributes.push(description(name_attribute(
                "job-originating-host-name",
                host,
            )));
        }
    }
    if let Some(printer) = &job.printer {
        attributes.push(description(name_attribute(
            "output-device-assigned",
            printer,
        )));
    }
    if let Some(format) = job.documents.first().map(|d| d.format.as_str()) {
        attributes.push(description(mime("document-format-detected", format)));
    }
    let ticket = &job.ticket;
    if let Some(copies) = ticket.copies {
        attributes.push(template(integer("copies", copies)));
    }
    if let Some(sides) = &ticket.sides {
        attributes.push(template(keyword("sides", sides)));
    }
    if let Some(media) = &ticket.media {
        attributes.push(template(keyword("media", media)));
    }
    if let Some(mode) = &ticket.print_color_mode {
        attributes.push(template(keyword("print-color-mode", mode)));
    }
    if let Some(quality) = ticket.print_quality {
        attributes.push(template(enumeration("print-quality", quality)));
    }
    if let Some(orientation) = ticket.orientation_requested {
        attributes.push(template(enumeration("orientation-requested", orientation)));
    }
    if let Some(number_up) = ticket.number_up {
        attributes.push(template(integer("number-up", number_up)));
    }
    if !ticket.page_ranges.is_empty() {
        attributes.push(template(set(
            "page-ranges",
            ticket
                .page_ranges
                .iter()
                .map(|&(min, max)| IppValue::RangeOfInteger { min, max })
                .collect(),
        )));
    }
    if let Some(account) = &ticket.job_account_id {
        attributes.push(template(name_attribute("job-account-id", account)));
    }
    if let Some(user) = &ticket.job_accounting_user_id {
        attributes.push(template(name_attribute("job-accounting-user-id", user)));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use bytes::Bytes;
    use printfleet_crds::PrintQueueSpec;

    /// A request whose operation group holds charset, language and `operation`, and whose
    /// job group holds `job`.
    fn request(operation: Vec<IppAttribute>, job: Vec<IppAttribute>) -> Request {
        let mut response = codec::Response::new(StatusCode::SuccessfulOk);
        response.push_group(ipp::model::DelimiterTag::JobAttributes, job);
        let mut bytes = response.encode(0x0200, 1).to_vec();
        // Splice the extra operation attributes after charset and language.
        let insert_at = 8
            + 1
            + codec::charset("attributes-charset", "utf-8")
                .to_bytes()
                .len()
            + codec::natural_language("attributes-natural-language", "en")
                .to_bytes()
                .len();
        let extra: Vec<u8> = operation
            .iter()
            .flat_map(|a| a.to_bytes().to_vec())
            .collect();
        bytes.splice(insert_at..insert_at, extra);
        codec::decode(Bytes::from(bytes)).expect("test request decodes")
    }

    fn profile() -> QueueProfile {
        QueueProfile::derive(
            &Config::default(),
            &PrintQueueSpec {
                printers: vec!["missing".into()],
                ..PrintQueueSpec::default()
            },
        )
    }

    #[test]
    fn valid_template_fills_the_ticket() {
        let request = request(
            vec![
                codec::name_attribute("job-name", "report"),
                codec::mime("document-format", "application/pdf"),
            ],
            vec![
                codec::integer("copies", 3),
                codec::keyword("media", "na_letter_8.5x11in"),
                codec::integer("job-priority", 80),
                codec::keyword("job-hold-until", "indefinite"),
                codec::name_attribute("job-account-id", "project-7"),
                codec::set(
                    "page-ranges",
                    vec![
                        IppValue::RangeOfInteger { min: 1, max: 2 },
                        IppValue::RangeOfInteger { min: 5, max: 5 },
                    ],
                ),
            ],
        );
        let submission =
            parse_submission(&request, &profile(), &JobDefaults::default()).expect("valid");
        assert!(submission.unsupported.is_empty());
        assert_eq!(submission.ticket.copies, Some(3));
        assert_eq!(
            submission.ticket.media.as_deref(),
            Some("na_letter_8.5x11in")
        );
        assert_eq!(submission.ticket.page_ranges, [(1, 2), (5, 5)]);
        assert_eq!(
            submission.ticket.job_account_id.as_deref(),
            Some("project-7")
        );
        assert_eq!(submission.priority, 80);
        assert!(submission.held);
        assert_eq!(submission.job_name.as_deref(), Some("report"));
        assert_eq!(submission.format.as_deref(), Some("application/pdf"));
    }

    #[test]
    fn unsupported_values_are_reported_or_rejected_with_fidelity() {
        let job = vec![
            codec::integer("copies", 1000),
            codec::keyword("sides", "two-sided-long-edge"),
            codec::keyword("print-color-mode", "color"),
            codec::integer("job-priority", 0),
            codec::set(
                "page-ranges",
                vec![
                    IppValue::RangeOfInteger { min: 5, max: 6 },
                    IppValue::RangeOfInteger { min: 1, max: 2 },
                ],
            ),
            codec::keyword("frobnicate", "yes"),
        ];
        let lenient = parse_submission(
            &request(vec![], job.clone()),
            &profile(),
            &JobDefaults::default(),
        )
        .expect("ignored without fidelity");
        let names: Vec<&str> = lenient
            .unsupported
            .iter()
            .map(|a| a.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "copies",
                "sides",
                "print-color-mode",
                "job-priority",
                "page-ranges",
                "frobnicate"
            ]
        );
        assert_eq!(lenient.ticket, JobTicket::default());
        let strict = parse_submission(
            &request(vec![codec::boolean("ipp-attribute-fidelity", true)], job),
            &profile(),
            &JobDefaults::default(),
        )
        .expect_err("fidelity rejects");
        assert_eq!(
            strict.status,
            StatusCode::ClientErrorAttributesOrValuesNotSupported
        );
        assert_eq!(strict.unsupported.len(), 6);
    }

    #[test]
    fn unsupported_format_and_compression_are_errors() {
        let format = parse_submission(
            &request(
                vec![codec::mime("document-format", "application/x-unknown")],
                vec![],
            ),
            &profile(),
            &JobDefaults::default(),
        )
        .expect_err("unknown format");
        assert_eq!(
            format.status,
            StatusCode::ClientErrorDocumentFormatNotSupported
        );
        let compression = parse_submission(
            &request(vec![codec::keyword("compression", "gzip")], vec![]),
            &profile(),
            &JobDefaults::default(),
        )
        .expect_err("gzip");
        assert_eq!(
            compression.status,
            StatusCode::ClientErrorCompressionNotSupported
        );
    }

    #[test]
    fn media_col_matches_by_name_or_size() {
        let by_size = codec::collection(vec![(
            "media-size",
            codec::collection(vec![
                ("x-dimension", IppValue::Integer(21000)),
                ("y-dimension", IppValue::Integer(29700)),
            ]),
        )]);
        let submission = parse_submission(
            &request(vec![], vec![codec::attribute("media-col", by_size)]),
            &profile(),
            &JobDefaults::default(),
        )
        .expect("valid");
        assert_eq!(submission.ticket.media.as_deref(), Some("iso_a4_210x297mm"));
    }

    #[test]
    fn queue_defaults_fill_what_the_client_left_out() {
        let defaults = JobDefaults {
            sides: Some("two-sided-long-edge".into()),
            color_mode: Some("monochrome".into()),
            media: Some("na_letter_8.5x11in".into()),
        };
        let submission =
            parse_submission(&request(vec![], vec![]), &profile(), &defaults).expect("valid");
        // The default profile is simplex: that default cannot apply.
        assert_eq!(submission.ticket.sides, None);
        assert_eq!(
            submission.ticket.print_color_mode.as_deref(),
            Some("monochrome")
        );
        assert_eq!(
            submission.ticket.media.as_deref(),
            Some("na_letter_8.5x11in")
        );
    }

    #[test]
    fn private_jobs_hide_their_name() {
        let submitted = crate::job::NewJob {
            queue: "demo".into(),
            owner: "alice".into(),
            name: "salaries.pdf".into(),
            originating_host: None,
            priority: 50,
            held: false,
            ticket: JobTicket::default(),
            document: None,
            documents_complete: true,
            admission: None,
        };
        let job = submitted.created(7, JobState::Pending, vec![], 1_700_000_000);
        let names = |visibility| -> Vec<String> {
            job_attributes(&job, "ipp://h", 1_700_000_100, visibility)
                .into_iter()
                .map(|(_, a)| a.name().to_string())
                .collect()
        };
        assert!(names(Visibility::Full).contains(&"job-name".to_string()));
        assert!(!names(Visibility::Private).contains(&"job-name".to_string()));
        let attributes = job_attributes(&job, "ipp://h", 1_700_000_100, Visibility::Full);
        let uri = attributes
            .iter()
            .find(|(_, a)| a.name().as_str() == "job-uri")
            .map(|(_, a)| codec::string_of(a.value()).unwrap_or_default().to_string());
        assert_eq!(uri.as_deref(), Some("ipp://h/jobs/7"));
    }
}
