//! Reports: ledger entries of a time range summed by user, group, queue, printer or billing
//! code, per currency, rendered as a table, CSV or JSON.
//!
//! Rows are sums of ledger entries (deltas), so a report's `totals` equal the ledger's sums
//! over the same range exactly. By group, an entry counts once for each of the user's groups
//! (and under `-` when the user had none), so the rows of a group report can add up to more
//! than the totals; the totals are always the ledger's.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;

use super::admission::privacy_of_queue;
use super::ledger::{LedgerEntry, LedgerQuery};
use super::pricing::Money;
use super::privacy::user_label;
use crate::app::App;
use crate::config::Config;
use crate::store::{JobStore, StoreError};

/// The key of every row that has no value for the dimension (no billing code, no printer
/// yet, no group, or a user whose name the privacy mode omits).
pub const NO_VALUE: &str = "-";

/// What a report's rows are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dimension {
    User,
    Group,
    Queue,
    Printer,
    Account,
}

impl Dimension {
    pub fn name(self) -> &'static str {
        match self {
            Dimension::User => "user",
            Dimension::Group => "group",
            Dimension::Queue => "queue",
            Dimension::Printer => "printer",
            Dimension::Account => "account",
        }
    }

    pub fn from_name(name: &str) -> Option<Dimension> {
        Some(match name {
            "user" => Dimension::User,
            "group" => Dimension::Group,
            "queue" => Dimension::Queue,
            "printer" => Dimension::Printer,
            "account" => Dimension::Account,
            _ => return None,
        })
    }
}

/// How a report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Sums of one row (or of the whole report) in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    /// Jobs with at least one entry in the row.
    pub jobs: u64,
    pub impressions: i64,
    pub sheets: i64,
    /// Minor units of `currency`.
    pub amount_minor: i64,
    /// The amount as a decimal, e.g. `"1.35"`.
    pub amount: String,
    /// Jobs admitted over an allow-and-flag quota.
    pub flagged_jobs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub key: String,
    pub currency: String,
    #[serde(flatten)]
    pub sums: Sums,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Total {
    pub currency: String,
    #[serde(flatten)]
    pub sums: Sums,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub by: &'static str,
    /// RFC 3339, inclusive; `None`: from the first entry.
    pub from: Option<String>,
    /// RFC 3339, exclusive; `None`: to the last entry.
    pub to: Option<String>,
    pub rows: Vec<Row>,
    pub totals: Vec<Total>,
}

#[derive(Default)]
struct Accumulator {
    jobs: BTreeSet<i32>,
    flagged: BTreeSet<i32>,
    impressions: i64,
    sheets: i64,
    amount: i64,
}

impl Accumulator {
    fn add(&mut self, entry: &LedgerEntry) {
        self.jobs.insert(entry.job);
        if entry.flagged {
            self.flagged.insert(entry.job);
        }
        self.impressions = self.impressions.saturating_add(entry.impressions);
        self.sheets = self.sheets.saturating_add(entry.sheets);
        self.amount = self.amount.saturating_add(entry.amount);
    }

    fn sums(self, currency: &str) -> Sums {
        Sums {
            jobs: self.jobs.len() as u64,
            impressions: self.impressions,
            sheets: self.sheets,
            amount_minor: self.amount,
            amount: decimal(self.amount, currency),
            flagged_jobs: self.flagged.len() as u64,
        }
    }
}

/// `Money`'s display without the currency code.
fn decimal(minor: i64, currency: &str) -> String {
    let text = Money {
        minor,
        currency: currency.to_owned(),
    }
    .to_string();
    text.strip_suffix(&format!(" {currency}"))
        .unwrap_or(&text)
        .to_owned()
}

/// Sums `entries` by `by`. `user_key` gives a user's row key (their privacy label, `None`
/// when omitted) for an entry.
pub fn build(
    entries: &[LedgerEntry],
    by: Dimension,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    user_key: impl Fn(&LedgerEntry) -> Option<String>,
) -> Report {
    let mut rows: BTreeMap<(String, String), Accumulator> = BTreeMap::new();
    let mut totals: BTreeMap<String, Accumulator> = BTreeMap::new();
    let or_none = |value: Option<&str>| value.unwrap_or(NO_VALUE).to_owned();
    for entry in entries {
        let keys = match by {
            Dimension::User => vec![user_key(entry).unwrap_or_else(|| NO_VALUE.to_owned())],
            Dimension::Group if entry.groups.is_empty() => vec![NO_VALUE.to_owned()],
            Dimension::Group => entry.groups.clone(),
            Dimension::Queue => vec![entry.queue.clone()],
            Dimension::Printer => vec![or_none(entry.printer.as_deref())],
            Dimension::Account => vec![or_none(entry.account.as_deref())],
        };
        for key in keys {
            rows.entry((key, entry.currency.clone()))
                .or_default()
                .add(entry);
        }
        totals.entry(entry.currency.clone()).or_default().add(entry);
    }
    Report {
        by: by.name(),
        from: from.map(|t| t.to_string()),
        to: to.map(|t| t.to_string()),
        rows: rows
            .into_iter()
            .map(|((key, currency), sums)| Row {
                sums: sums.sums(&currency),
                key,
                currency,
            })
            .collect(),
        totals: totals
            .into_iter()
            .map(|(currency, sums)| Total {
                sums: sums.sums(&currency),
                currency,
            })
            .collect(),
    }
}

/// The report of the ledger entries in `[from, to)`, users labelled by the privacy mode of
/// their entry's queue (with the installation's `salt`).
pub async fn generate(
    store: &dyn JobStore,
    config: &Config,
    salt: &[u8],
    by: Dimension,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Report, StoreError> {
    let entries = store
        .ledger(&LedgerQuery {
            from_ms: from.map(|t| t.as_millisecond()),
            to_ms: to.map(|t| t.as_millisecond()),
            job: None,
        })
        .await?;
    // Each (queue, user) is labelled once, not once per entry: the policy lookup and the
    // salted hash are the same for all of its entries.
    let labels: RefCell<HashMap<(String, String), Option<String>>> = RefCell::default();
    Ok(build(&entries, by, from, to, |entry| {
        labels
            .borrow_mut()
            .entry((entry.queue.clone(), entry.user.clone()))
            .or_insert_with(|| {
                user_label(privacy_of_queue(config, &entry.queue), salt, &entry.user)
            })
            .clone()
    }))
}

const COLUMNS: [&str; 7] = [
    "currency",
    "jobs",
    "impressions",
    "sheets",
    "amount_minor",
    "amount",
    "flagged_jobs",
];

fn cells(key: &str, currency: &str, sums: &Sums) -> Vec<String> {
    vec![
        key.to_owned(),
        currency.to_owned(),
        sums.jobs.to_string(),
        sums.impressions.to_string(),
        sums.sheets.to_string(),
        sums.amount_minor.to_string(),
        sums.amount.clone(),
        sums.flagged_jobs.to_string(),
    ]
}

/// RFC 4180 quoting where needed (user names and billing codes are free text).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

impl Report {
    /// One line per row, then one `TOTAL` line per currency (key `*`).
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<&str> = std::iter::once(self.by).chain(COLUMNS).collect();
        out.push_str(&header.join(","));
        out.push_str("\r\n");
        let lines = self
            .rows
            .iter()
            .map(|row| cells(&row.key, &row.currency, &row.sums))
            .chain(
                self.totals
                    .iter()
                    .map(|total| cells("*", &total.currency, &total.sums)),
            );
        for line in lines {
            let fields: Vec<String> = line.iter().map(|f| csv_field(f)).collect();
            out.push_str(&fields.join(","));
            out.push_str("\r\n");
        }
        out
    }

    pub fn json(&self) -> String {
        // A report holds strings and integers only: encoding cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Aligned columns for a terminal, totals last.
    pub fn table(&self) -> String {
        let header: Vec<String> = std::iter::once(self.by)
            .chain(COLUMNS)
            .map(str::to_owned)
            .collect();
        let mut lines = vec![header];
        lines.extend(
            self.rows
                .iter()
                .map(|row| cells(&row.key, &row.currency, &row.sums)),
        );
        lines.extend(
            self.totals
                .iter()
                .map(|total| cells("TOTAL", &total.currency, &total.sums)),
        );
        let widths: Vec<usize> = (0..header_len())
            .map(|column| {
                lines
                    .iter()
                    .map(|line| line[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in &lines {
            for (column, cell) in line.iter().enumerate() {
                let width = widths[column];
                // Names left, numbers right.
                let _ = if column < 2 {
                    write!(out, "{cell:<width$}  ")
                } else {
                    write!(out, "{cell:>width$}  ")
                };
            }
            let trimmed = out.trim_end().len();
            out.truncate(trimmed);
            out.push('\n');
        }
        out
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => self.json(),
        }
    }
}

fn header_len() -> usize {
    COLUMNS.len() + 1
}

/// Why a report's time bound cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is neither a date (2025-01-31) nor an RFC 3339 time (2025-01-31T08:00:00Z)")]
pub struct BadTime {
    value: String,
}

/// Which end of a range a time bound is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    From,
    To,
}

/// A report bound: an RFC 3339 time as is, or a date in `tz` — its start for `From`, the
/// start of the next day for `To` (so `--to 2025-01-31` includes that day).
pub fn parse_bound(value: &str, bound: Bound, tz: &TimeZone) -> Result<Timestamp, BadTime> {
    let bad = || BadTime {
        value: value.to_owned(),
    };
    if let Ok(time) = value.parse::<Timestamp>() {
        return Ok(time);
    }
    let date: Date = value.parse().map_err(|_| bad())?;
    let date = match bound {
        Bound::From => date,
        Bound::To => date.tomorrow().map_err(|_| bad())?,
    };
    date.to_zoned(tz.clone())
        .map(|zoned| zoned.timestamp())
        .map_err(|_| bad())
}

/// `printfleet-spooler report`: the same reports as over HTTP, from the store's file.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "printfleet-spooler report",
    about = "Print an accounting report from the spooler's ledger"
)]
pub struct ReportArgs {
    /// The spooler's state directory (its SQLite job database).
    #[arg(long, env = "PRINTFLEET_STATE_DIR", default_value = "printfleet-state")]
    pub state_dir: std::path::PathBuf,
    /// The PostgreSQL job store of a cluster [default: SQLite in --state-dir]. Set in a
    /// spooler pod, so `printfleet-spooler report` there reads the shared ledger.
    #[arg(long, env = "PRINTFLEET_STORE_DSN", hide_env_values = true)]
    pub store_dsn: Option<String>,
    /// The spooler's configuration (for each queue's privacy mode).
    #[arg(long, env = "PRINTFLEET_CONFIG")]
    pub config: std::path::PathBuf,
    /// What the rows are.
    #[arg(long, value_enum, default_value_t = Dimension::User)]
    pub by: Dimension,
    /// First day (YYYY-MM-DD, UTC) or instant (RFC 3339) included [default: the beginning].
    #[arg(long)]
    pub from: Option<String>,
    /// Last day included (YYYY-MM-DD, UTC), or the instant (RFC 3339) before which entries
    /// count [default: no end].
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Why the report command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--{0}: {1}")]
    Time(&'static str, BadTime),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("installation salt for {path}: {source}")]
    Salt {
        path: String,
        source: super::admission::SaltError,
    },
    #[error("job store: {0}")]
    Store(#[from] StoreError),
}

/// Runs the report command against `store`; returns the report.
pub async fn run_command(args: &ReportArgs, store: &dyn JobStore) -> Result<String, ReportError> {
    let bound = |value: &Option<String>, bound, flag| {
        value
            .as_deref()
            .map(|value| parse_bound(value, bound, &TimeZone::UTC))
            .transpose()
            .map_err(|error| ReportError::Time(flag, error))
    };
    let from = bound(&args.from, Bound::From, "from")?;
    let to = bound(&args.to, Bound::To, "to")?;
    let config = Config::load(&args.config)?;
    let salt = super::admission::installation_salt(store, &args.state_dir)
        .await
        .map_err(|source| ReportError::Salt {
            path: args.state_dir.display().to_string(),
            source,
        })?;
    let report = generate(store, &config, &salt, args.by, from, to).await?;
    Ok(report.render(args.format))
}

/// The path prefix of report requests: `GET /api/v1/reports/<dimension>?from=&to=&format=`.
pub const HTTP_PREFIX: &str = "/api/v1/reports/";

/// An answer to an HTTP report request.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl HttpAnswer {
    fn error(status: u16, message: impl std::fmt::Display) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n"),
        }
    }
}

/// What an HTTP report request asks for.
#[derive(Debug, PartialEq, Eq)]
struct HttpQuery {
    by: Dimension,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    format: Format,
}

/// Parses `path` (under [`HTTP_PREFIX`]) and the query string: `from` and `to` as for the
/// command line (dates in UTC), `format` `json` (default) or `csv`.
fn parse_http(path: &str, query: Option<&str>) -> Result<HttpQuery, HttpAnswer> {
    let name = path.strip_prefix(HTTP_PREFIX).unwrap_or(path);
    let by = Dimension::from_name(name).ok_or_else(|| {
        HttpAnswer::error(
            404,
            format_args!("no report by {name:?}: use user, group, queue, printer or account"),
        )
    })?;
    let mut parsed = HttpQuery {
        by,
        from: None,
        to: None,
        format: Format::Json,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| HttpAnswer::error(400, format_args!("{key}: bad percent-encoding")))?;
        let time = |bound| {
            parse_bound(&value, bound, &TimeZone::UTC)
                .map(Some)
                .map_err(|error| HttpAnswer::error(400, format_args!("{key}: {error}")))
        };
        match key {
            "from" => parsed.from = time(Bound::From)?,
            "to" => parsed.to = time(Bound::To)?,
            "format" => {
                parsed.format = match value.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    other => {
                        return Err(HttpAnswer::error(
                            400,
                            format_args!("format {other:?}: use json or csv"),
                        ));
                    }
                }
            }
            other => {
                return Err(HttpAnswer::error(
                    400,
                    format_args!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    Ok(parsed)
}

/// `%XX` and `+` decoded; `None` when malformed or not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Answers `GET /api/v1/reports/<dimension>?...` from the store.
pub async fn http(app: &App, path: &str, query: Option<&str>) -> HttpAnswer {
    let request = match parse_http(path, query) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let (store, config) = (app.store.as_ref(), app.config());
    let salt = match app.installation_salt().await {
        Ok(salt) => salt,
        Err(error) => return HttpAnswer::error(500, format_args!("installation salt: {error}")),
    };
    match generate(store, &config, &salt, request.by, request.from, request.to).await {
        Ok(report) => HttpAnswer {
            status: 200,
            content_type: match request.format {
                Format::Csv => "text/csv; charset=utf-8",
                _ => "application/json",
            },
            body: report.render(request.format),
        },
        Err(error) => HttpAnswer::error(503, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::ledger::EntryKind;

    #[test]
    fn http_queries() {
        let parsed = parse_http(
            "/api/v1/reports/account",
            Some("from=2025-01-01&to=2025-01-31T08%3A00%3A00Z&format=csv"),
        )
        .expect("valid");
        assert_eq!(parsed.by, Dimension::Account);
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(
            parsed.to.map(|t| t.to_string()).as_deref(),
            Some("2025-01-31T08:00:00Z")
        );
        let default = parse_http("/api/v1/reports/user", None).expect("valid");
        assert_eq!((default.format, default.from), (Format::Json, None));
        assert_eq!(
            parse_http("/api/v1/reports/planet", None).map_err(|a| a.status),
            Err(404)
        );
        assert_eq!(
            parse_http("/api/v1/reports/user", Some("format=xml")).map_err(|a| a.status),
            Err(400)
        );
        assert_eq!(
            parse_http("/api/v1/reports/user", Some("from=%zz")).map_err(|a| a.status),
            Err(400)
        );
    }

    fn entry(job: i32, kind: EntryKind, user: &str, amount: i64, impressions: i64) -> LedgerEntry {
        LedgerEntry {
            job,
            kind,
            at_ms: 1_000,
            queue: "office".into(),
            printer: (kind != EntryKind::Estimate).then(|| "p1".into()),
            user: user.into(),
            groups: if user == "alice" {
                vec!["staff".into(), "lab".into()]
            } else {
                Vec::new()
            },
            account: (job == 1).then(|| "client, \"A\"".into()),
            impressions,
            sheets: impressions,
            color: false,
            amount,
            currency: "EUR".into(),
            flagged: job == 2,
        }
    }

    fn ledger() -> Vec<LedgerEntry> {
        vec![
            entry(1, EntryKind::Estimate, "alice", 30, 4),
            entry(1, EntryKind::Settlement, "alice", 10, 2),
            entry(2, EntryKind::Estimate, "bob", 135, 25),
            entry(3, EntryKind::Estimate, "alice", 50, 8),
            entry(3, EntryKind::Refund, "alice", -50, -8),
        ]
    }

    fn plain(entry: &LedgerEntry) -> Option<String> {
        Some(entry.user.clone())
    }

    #[test]
    fn rows_and_totals_reconcile_with_the_ledger() {
        let report = build(&ledger(), Dimension::User, None, None, plain);
        let keys: Vec<(&str, i64, u64)> = report
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.sums.amount_minor, r.sums.jobs))
            .collect();
        assert_eq!(keys, vec![("alice", 40, 2), ("bob", 135, 1)]);
        assert_eq!(report.totals.len(), 1);
        assert_eq!(report.totals[0].sums.amount_minor, 175);
        assert_eq!(report.totals[0].sums.amount, "1.75");
        assert_eq!(report.totals[0].sums.impressions, 31);
        assert_eq!(report.totals[0].sums.flagged_jobs, 1);
    }

    #[test]
    fn groups_count_an_entry_for_each_group() {
        let report = build(&ledger(), Dimension::Group, None, None, plain);
        let keys: Vec<(&str, i64)> = report
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.sums.amount_minor))
            .collect();
        assert_eq!(keys, vec![("-", 135), ("lab", 40), ("staff", 40)]);
        assert_eq!(report.totals[0].sums.amount_minor, 175);
    }

    #[test]
    fn omitted_users_share_one_row() {
        let report = build(&ledger(), Dimension::User, None, None, |_| None);
        assert_eq!(report.rows.len(), 1);
        assert_eq!(report.rows[0].key, NO_VALUE);
        assert_eq!(report.rows[0].sums.amount_minor, 175);
    }

    #[test]
    fn csv_quotes_free_text() {
        let report = build(&ledger(), Dimension::Account, None, None, plain);
        let csv = report.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "account,currency,jobs,impressions,sheets,amount_minor,amount,flagged_jobs"
        );
        assert_eq!(lines[1], "-,EUR,2,25,25,135,1.35,1");
        assert_eq!(lines[2], "\"client, \"\"A\"\"\",EUR,1,6,6,40,0.40,0");
        assert_eq!(lines[3], "*,EUR,3,31,31,175,1.75,1");
    }

    #[test]
    fn json_and_table_carry_the_same_sums() {
        let report = build(&ledger(), Dimension::Printer, None, None, plain);
        let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
        assert_eq!(json["by"], "printer");
        assert_eq!(json["totals"][0]["amount_minor"], 175);
        // Estimates without a settlement have no printer.
        assert_eq!(json["rows"][0]["key"], "-");
        let table = report.table();
        assert!(
            table.lines().last().unwrap_or("").starts_with("TOTAL"),
            "{table}"
        );
        assert!(table.contains("1.75"), "{table}");
    }

    #[test]
    fn bounds() {
        let utc = TimeZone::UTC;
        let from = parse_bound("2025-01-01", Bound::From, &utc).expect("date");
        assert_eq!(from.to_string(), "2025-01-01T00:00:00Z");
        let to = parse_bound("2025-01-31", Bound::To, &utc).expect("date");
        assert_eq!(to.to_string(), "2025-02-01T00:00:00Z");
        let exact = parse_bound("2025-01-31T08:00:00Z", Bound::To, &utc).expect("time");
        assert_eq!(exact.to_string(), "2025-01-31T08:00:00Z");
        assert!(parse_bound("last tuesday", Bound::From, &utc).is_err());
    }
}
