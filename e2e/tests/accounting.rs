//! Accounting through the whole spooler: documents made here (multi-page PDF, PostScript,
//! PWG raster) printed with copies, duplex and page ranges to `ippeveprinter`; the ledger
//! (report JSON and CSV, over HTTP and from the command line) and `/metrics` agree to the
//! cent, `/metrics` passes `promtool check metrics` and a real Prometheus scraping the
//! spooler returns the same per-user cost; 50 simultaneous submissions against a quota never
//! overspend it.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use ipp::attribute::IppAttribute;
use ipp::operation::builder::IppOperationBuilder;
use ipp::payload::IppPayload;
use ipp::value::IppValue;
use printfleet_e2e::documents::{PwgType, multi_page_pdf, postscript, pwg_raster};
use printfleet_e2e::process::wait_until;
use printfleet_e2e::prometheus::{PrometheusServer, check_metrics};
use printfleet_e2e::spooler::{config_yaml, printer_yaml, queue_yaml, spooler_binary};
use printfleet_e2e::{IppConnection, IppEvePrinter, IppResponse, Spooler};

/// client-error-account-limit-reached (PWG 5100.7).
const ACCOUNT_LIMIT_REACHED: i16 = 0x041E;
/// client-error-account-info-needed.
const ACCOUNT_INFO_NEEDED: i16 = 0x041C;
/// client-error-account-authorization-failed.
const ACCOUNT_AUTHORIZATION_FAILED: i16 = 0x041F;

fn policy_yaml(extra: &str) -> String {
    format!(
        "apiVersion: printfleet.io/v1alpha1\nkind: AccountingPolicy\nmetadata:\n  name: office\nspec:\n  currency: EUR\n  privacy: plain\n  prices:\n    monoImpression: \"0.05\"\n    colorImpression: \"0.20\"\n    perJob: \"0.10\"\n    duplexFactor: \"0.8\"\n{extra}"
    )
}

/// The office queue on one two-sided printer (`IppEvePrinter::start_two_sided`).
fn config(printer_uri: &str, policy_extra: &str) -> String {
    config_yaml(&[
        printer_yaml("eve", printer_uri) + "  capabilities:\n    duplex: true\n",
        queue_yaml(
            "office",
            &["eve"],
            "  accountingPolicy: office\n  defaults:\n    colorMode: monochrome\n",
        ),
        policy_yaml(policy_extra),
    ])
}

/// `GET path` on the spooler: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    printfleet_e2e::spooler::http_get(port, path).expect("the spooler answers")
}

struct Job<'a> {
    user: &'a str,
    format: &'a str,
    document: Vec<u8>,
    attributes: Vec<IppAttribute>,
}

async fn submit(connection: &mut IppConnection, uri: &str, job: Job<'_>) -> IppResponse {
    let mut builder =
        IppOperationBuilder::print_job(uri.parse().expect("uri"), IppPayload::empty())
            .user_name(job.user)
            .job_title("accounting")
            .document_format(job.format);
    for attribute in job.attributes {
        builder = builder.attribute(attribute);
    }
    let operation = builder.build().expect("operation");
    connection
        .send(operation, Some(Bytes::from(job.document)))
        .await
        .expect("IPP exchange")
}

fn name(value: &str) -> IppValue {
    IppValue::NameWithoutLanguage(ipp::value::IppName::new_truncated(value))
}

fn attribute(name: &str, value: IppValue) -> IppAttribute {
    IppAttribute::new(ipp::value::IppName::new_truncated(name), value)
}

/// The CSV report's line for `key` (first column), split.
fn csv_line(csv: &str, key: &str) -> Vec<String> {
    csv.lines()
        .map(|line| line.split(',').map(str::to_string).collect::<Vec<_>>())
        .find(|fields| fields[0] == key)
        .unwrap_or_else(|| panic!("no {key} line in\n{csv}"))
}

/// Per-user cost as a Prometheus server scraping the spooler every second reports it, once
/// it reports every user of `expected` (or what it has after 30 s).
fn cost_in_prometheus(
    spooler_port: u16,
    expected: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    let mut prometheus =
        PrometheusServer::start(&format!("127.0.0.1:{spooler_port}")).expect("prometheus");
    let mut seen = BTreeMap::new();
    let complete = wait_until(Duration::from_secs(30), || {
        let samples = prometheus
            .query("printfleet_cost_minor_units_total")
            .unwrap_or_else(|error| panic!("{error}"));
        seen = samples
            .iter()
            .filter(|sample| sample.labels.get("currency").map(String::as_str) == Some("EUR"))
            .filter_map(|sample| Some((sample.labels.get("user")?.clone(), sample.value as i64)))
            .collect();
        expected.keys().all(|user| seen.contains_key(user))
    });
    assert!(
        complete,
        "Prometheus has {seen:?}; its log:\n{}",
        prometheus.log()
    );
    seen
}

fn metric(metrics: &str, prefix: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn priced_documents_reconcile_across_ledger_reports_and_metrics() {
    let printer = IppEvePrinter::start_two_sided("accounting").expect("ippeveprinter");
    let spooler = Spooler::start(&config(&printer.uri(), "")).expect("spooler");
    let uri = spooler.queue_uri("office");
    let mut connection = IppConnection::new(&uri).expect("client");

    // 3 pages × 2 copies: 6 impressions at 0.05 + 0.10 = 0.40.
    let pdf = Job {
        user: "alice",
        format: "application/pdf",
        document: multi_page_pdf(3),
        attributes: vec![
            attribute("copies", IppValue::Integer(2)),
            attribute("job-account-id", name("client-a")),
        ],
    };
    // 4 PostScript pages, pages 2-3 only: 2 impressions, 0.20.
    let ps = Job {
        user: "alice",
        format: "application/postscript",
        document: postscript("accounting", 4),
        attributes: vec![attribute(
            "page-ranges",
            IppValue::RangeOfInteger { min: 2, max: 3 },
        )],
    };
    // 2 PWG raster pages × 3 copies: 6 impressions, 0.40.
    let raster = Job {
        user: "bob",
        format: "image/pwg-raster",
        document: pwg_raster(PwgType::Sgray8, 72, 595, 842, 2),
        attributes: vec![attribute("copies", IppValue::Integer(3))],
    };
    // 3 pages × 2 copies on both sides: 6 impressions on 4 sheets (each copy starts on a
    // new sheet), at 0.05 × 0.8 (the duplex factor) + 0.10 = 0.34.
    let duplex = Job {
        user: "carol",
        format: "application/pdf",
        document: multi_page_pdf(3),
        attributes: vec![
            attribute("copies", IppValue::Integer(2)),
            attribute(
                "sides",
                IppValue::Keyword(ipp::value::BoundedString::new_truncated(
                    "two-sided-long-edge",
                )),
            ),
        ],
    };
    let mut ids = Vec::new();
    for job in [pdf, ps, raster, duplex] {
        let response = submit(&mut connection, &uri, job).await;
        assert!(response.is_success(), "status {:#06x}", response.raw_status);
        ids.push(response.integer("job-id").expect("job-id"));
    }
    let finished = wait_until(Duration::from_secs(60), || {
        let (_, csv) = http_get(spooler.port(), "/api/v1/reports/printer?format=csv");
        // Settled jobs are attributed to the printer.
        csv.lines().any(|line| line.starts_with("eve,EUR,4,"))
    });
    assert!(finished, "jobs not settled; log:\n{}", spooler.log());

    let (status, csv) = http_get(spooler.port(), "/api/v1/reports/user?format=csv");
    assert_eq!(status, 200);
    // Estimates when the printer reports nothing, its counts when it does: either way the
    // report's totals are the ledger's and the metrics'.
    let alice = csv_line(&csv, "alice");
    let bob = csv_line(&csv, "bob");
    let carol = csv_line(&csv, "carol");
    let total = csv_line(&csv, "*");
    assert_eq!(alice[1], "EUR");
    let amount = |fields: &[String]| fields[5].parse::<i64>().expect("amount_minor");
    let impressions = |fields: &[String]| fields[3].parse::<i64>().expect("impressions");
    let sheets = |fields: &[String]| fields[4].parse::<i64>().expect("sheets");
    assert_eq!(
        amount(&alice) + amount(&bob) + amount(&carol),
        amount(&total)
    );
    let (_, json) = http_get(spooler.port(), "/api/v1/reports/account");
    assert!(
        json.contains(&format!("\"amount_minor\": {}", amount(&total))),
        "{json}"
    );

    let (_, metrics) = http_get(spooler.port(), "/metrics");
    let cost = |user: &str| {
        metric(
            &metrics,
            &format!(
                "printfleet_cost_minor_units_total{{currency=\"EUR\",queue=\"office\",user=\"{user}\"}}"
            ),
        )
        .unwrap_or_else(|| panic!("no cost for {user} in\n{metrics}"))
    };
    assert_eq!(cost("alice") as i64, amount(&alice));
    assert_eq!(cost("bob") as i64, amount(&bob));
    assert_eq!(cost("carol") as i64, amount(&carol));
    if let Err(error) = check_metrics(&metrics) {
        panic!("{error}\n{metrics}");
    }
    let ledger = BTreeMap::from([
        ("alice".to_string(), amount(&alice)),
        ("bob".to_string(), amount(&bob)),
        ("carol".to_string(), amount(&carol)),
    ]);
    assert_eq!(
        cost_in_prometheus(spooler.port(), &ledger),
        ledger,
        "Prometheus's per-user cost is not the ledger's"
    );

    // What the spooler estimated from the documents, to the cent (when the printer's own
    // counts agree, as they must for these documents, the totals are these).
    assert_eq!(
        (impressions(&alice), amount(&alice)),
        (8, 60),
        "alice: {alice:?}\n{csv}"
    );
    assert_eq!(
        (impressions(&bob), amount(&bob)),
        (6, 40),
        "bob: {bob:?}\n{csv}"
    );
    assert_eq!(
        (impressions(&carol), sheets(&carol), amount(&carol)),
        (6, 4, 34),
        "carol: {carol:?}\n{csv}"
    );
    // The two-sided job reached the printer as two-sided.
    let printed = IppConnection::new(&printer.uri())
        .expect("client")
        .get_completed_jobs(&["sides"])
        .await
        .expect("Get-Jobs on the printer");
    let sides = printed.keywords("sides");
    assert_eq!(
        sides
            .iter()
            .filter(|sides| *sides == "two-sided-long-edge")
            .count(),
        1,
        "the printer's jobs have sides {sides:?}"
    );

    // The command line reads the same ledger.
    let output = Command::new(spooler_binary().expect("binary"))
        .args(["report", "--by", "account", "--format", "csv", "--config"])
        .arg(
            spooler
                .state_dir()
                .parent()
                .expect("dir")
                .join("config.yaml"),
        )
        .arg("--state-dir")
        .arg(spooler.state_dir())
        .output()
        .expect("report command");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cli = String::from_utf8_lossy(&output.stdout);
    assert_eq!(amount(&csv_line(&cli, "*")), amount(&total), "{cli}");
    assert_eq!(amount(&csv_line(&cli, "client-a")), 40, "{cli}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_never_overspend_a_quota() {
    // Each job: 1 page, 0.15. The day allows 3.00: exactly 20 of 50 get in.
    let quota = "  quotas:\n    - user: carol\n      period: day\n      maxAmount: \"3.00\"\n      action: reject\n  billingCodes:\n    allowed: [client-a, client-b]\n";
    let printer = IppEvePrinter::start_two_sided("quota").expect("ippeveprinter");
    let spooler = Spooler::start(&config(&printer.uri(), quota)).expect("spooler");
    let uri = spooler.queue_uri("office");

    let submissions = (0..50).map(|n| {
        let uri = uri.clone();
        tokio::spawn(async move {
            let mut connection = IppConnection::new(&uri).expect("client");
            let job = Job {
                user: "carol",
                format: "application/pdf",
                document: multi_page_pdf(1),
                attributes: vec![attribute("job-name", name(&format!("q{n}")))],
            };
            submit(&mut connection, &uri, job).await.raw_status
        })
    });
    let mut accepted = 0;
    let mut limited = 0;
    for status in futures_join(submissions).await {
        match status {
            0..=0xff => accepted += 1,
            ACCOUNT_LIMIT_REACHED => limited += 1,
            other => panic!("unexpected status {other:#06x}"),
        }
    }
    assert_eq!((accepted, limited), (20, 30));
    let (_, csv) = http_get(spooler.port(), "/api/v1/reports/user?format=csv");
    let carol = csv_line(&csv, "carol");
    assert_eq!(carol[5], "300", "{csv}");

    // Billing codes: one not in the list, then a required one missing (another policy).
    let mut connection = IppConnection::new(&uri).expect("client");
    let refused = submit(
        &mut connection,
        &uri,
        Job {
            user: "dave",
            format: "application/pdf",
            document: multi_page_pdf(1),
            attributes: vec![attribute("job-account-id", name("client-z"))],
        },
    )
    .await;
    assert_eq!(refused.raw_status, ACCOUNT_AUTHORIZATION_FAILED);
    drop(spooler);
    let required = "  billingCodes:\n    required: true\n";
    let spooler = Spooler::start(&config(&printer.uri(), required)).expect("spooler");
    let uri = spooler.queue_uri("office");
    let mut connection = IppConnection::new(&uri).expect("client");
    let missing = submit(
        &mut connection,
        &uri,
        Job {
            user: "dave",
            format: "application/pdf",
            document: multi_page_pdf(1),
            attributes: Vec::new(),
        },
    )
    .await;
    assert_eq!(missing.raw_status, ACCOUNT_INFO_NEEDED);
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    results
}
