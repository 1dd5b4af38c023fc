use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

const PRINTER: &str = "apiVersion: printfleet.io/v1alpha1
kind: Printer
metadata:
  name: lab-1
spec:
  uri: ipp://127.0.0.1:8631/ipp/print
";

fn queue(name: &str, printers: &str) -> String {
    format!(
        "apiVersion: printfleet.io/v1alpha1\nkind: PrintQueue\nmetadata:\n  name: {name}\nspec:\n  printers: {printers}\n"
    )
}

/// The problems of an invalid text, displayed, one per line.
fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "office.yaml") {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn every_example_loads() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&examples).expect("examples/ exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let config = Config::load(&path).unwrap_or_else(|error| panic!("{error}"));
            assert!(
                !config.queues.is_empty(),
                "{} defines no queue",
                path.display()
            );
            loaded.push(
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned()),
            );
        }
    }
    assert!(
        loaded.contains(&Some("standalone.yaml".into())),
        "{loaded:?}"
    );
    assert!(loaded.contains(&Some("office.yaml".into())), "{loaded:?}");
}

#[test]
fn standalone_example_is_the_demo() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/standalone.yaml");
    let config = Config::load(path).expect("valid");
    assert_eq!(config.queues["demo"].printers, ["demo-printer"]);
    assert_eq!(
        config.printers["demo-printer"].uri,
        "file:///tmp/printfleet-demo"
    );
    assert_eq!(config.queues_of_printer("demo-printer", None), ["demo"]);
}

#[test]
fn standalone_example_commented_policy_is_valid() {
    // The commented-out second example works once uncommented.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/standalone.yaml");
    let text = std::fs::read_to_string(path).expect("readable");
    let (active, commented) = text
        .split_once("\n# ---\n")
        .expect("a commented second example");
    let mut uncommented = active.replace("  # accountingPolicy:", "  accountingPolicy:");
    uncommented.push_str("\n---\n");
    for line in commented.lines() {
        uncommented.push_str(line.strip_prefix("# ").unwrap_or(line));
        uncommented.push('\n');
    }
    let config = Config::parse(&uncommented, "standalone.yaml")
        .unwrap_or_else(|error| panic!("{error}\n{uncommented}"));
    assert_eq!(config.policies["default"].spec.currency, "EUR");
    assert_eq!(
        config.queues["demo"].accounting_policy.as_deref(),
        Some("default")
    );
}

#[test]
fn parses_documents_of_every_kind() {
    let text = format!(
        "# comment only\n---\n{PRINTER}---\n---\n{}---\napiVersion: printfleet.io/v1alpha1\nkind: AccountingPolicy\nmetadata:\n  name: p\nspec:\n  currency: JPY\n  prices:\n    monoImpression: \"5\"\n",
        queue("lab", "[lab-1]")
    );
    let config = Config::parse(&text, "t.yaml").unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.printers.keys().collect::<Vec<_>>(), ["lab-1"]);
    assert_eq!(config.queues["lab"].printers, ["lab-1"]);
    assert_eq!(
        config.policies["p"].spec.prices.mono_impression.as_deref(),
        Some("5")
    );
}

#[test]
fn undefined_printer_names_the_document_and_field() {
    let text = format!("{PRINTER}---\n{}", queue("lab", "[lab-1, lab-2]"));
    assert_eq!(
        problems(&text),
        [
            r#"office.yaml: document 2 (PrintQueue "lab"): spec.printers[1]: Printer "lab-2" is not defined"#
        ]
    );
}

#[test]
fn undefined_policy_is_reported() {
    let text = format!(
        "{PRINTER}---\n{}  accountingPolicy: nope\n",
        queue("lab", "[lab-1]")
    );
    assert_eq!(
        problems(&text),
        [
            r#"office.yaml: document 2 (PrintQueue "lab"): spec.accountingPolicy: AccountingPolicy "nope" is not defined"#
        ]
    );
}

#[test]
fn field_rules_from_the_api_crate_apply() {
    let text = PRINTER.replace("ipp://127.0.0.1:8631/ipp/print", "file://relative/out");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(r#"office.yaml: document 1 (Printer "lab-1"): spec.uri: "file://relative/out" must name an absolute directory"#),
        "{found:?}"
    );
}

#[test]
fn all_problems_are_reported_not_just_the_first() {
    let text = format!(
        "{}---\n{}\n---\napiVersion: printfleet.io/v1alpha1\nkind: AccountingPolicy\nmetadata:\n  name: p\nspec:\n  currency: eur\n",
        PRINTER.replace("ipp://", "http://"),
        queue("lab", "[lab-1, ghost]")
    );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].contains(r#"document 1 (Printer "lab-1"): spec.uri: scheme "http""#),
        "{found:?}"
    );
    // The broken printer is still known by name: only the ghost is reported missing.
    assert!(
        found[1].contains(r#"document 2 (PrintQueue "lab"): spec.printers[1]: Printer "ghost""#),
        "{found:?}"
    );
    assert!(
        found[2].contains(r#"document 3 (AccountingPolicy "p"): spec.currency: "eur""#),
        "{found:?}"
    );
}

#[test]
fn unknown_fields_are_named() {
    let text = format!(
        "{PRINTER}  colour: true\n---\n{}  access:\n    alowedUsers: [bob]\n",
        queue("lab", "[lab-1]")
    );
    assert_eq!(
        problems(&text),
        [
            r#"office.yaml: document 1 (Printer "lab-1"): spec.colour: unknown field"#,
            r#"office.yaml: document 2 (PrintQueue "lab"): spec.access.alowedUsers: unknown field"#,
        ]
    );
}

#[test]
fn unknown_kind_and_wrong_api_version_are_errors() {
    let text = format!(
        "apiVersion: printfleet.io/v1alpha1\nkind: Scanner\nmetadata:\n  name: s\n---\n{}",
        PRINTER.replace("printfleet.io/v1alpha1", "printfleet.io/v1")
    );
    assert_eq!(
        problems(&text),
        [
            r#"office.yaml: document 1: kind: "Scanner" is not one of Printer, PrintQueue, AccountingPolicy"#,
            r#"office.yaml: document 2 (Printer "lab-1"): apiVersion: "printfleet.io/v1" is not printfleet.io/v1alpha1"#,
        ]
    );
}

#[test]
fn metadata_name_is_required_and_valid() {
    let missing = PRINTER.replace("  name: lab-1\n", "  labels: {}\n");
    assert_eq!(
        problems(&missing),
        ["office.yaml: document 1 (Printer): metadata.name: required"]
    );
    let invalid = PRINTER.replace("lab-1", "Lab_1");
    assert!(problems(&invalid)[0].contains("metadata.name: \"Lab_1\" is not a valid name"));
}

#[test]
fn duplicate_names_are_errors() {
    let text = format!("{PRINTER}---\n{PRINTER}");
    assert_eq!(
        problems(&text),
        [
            r#"office.yaml: document 2 (Printer "lab-1"): metadata.name: Printer "lab-1" is already defined in document 1"#
        ]
    );
}

#[test]
fn yaml_syntax_errors_carry_the_line_in_the_file() {
    let text = format!(
        "{PRINTER}---\napiVersion: printfleet.io/v1alpha1\nkind: PrintQueue\nmetadata:\n  name: [unclosed\n"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    // Document 2 starts on line 7; the error is inside it, not on line 1 of the chunk.
    let line: usize = found[0]
        .strip_prefix("office.yaml:")
        .and_then(|rest| rest.split(':').next())
        .and_then(|line| line.parse().ok())
        .unwrap_or_else(|| panic!("no line in {found:?}"));
    assert!((10..=12).contains(&line), "{found:?}");
    assert!(found[0].contains(": document 2:"), "{found:?}");
}

#[test]
fn type_errors_name_field_and_line() {
    let text = format!("{PRINTER}---\n{}", queue("lab", "lab-1"));
    assert_eq!(
        problems(&text),
        [
            "office.yaml:13: document 2 (PrintQueue \"lab\"): spec.printers: invalid type: string \"lab-1\", expected a sequence"
        ]
    );
}

#[test]
fn a_document_must_be_a_mapping() {
    assert_eq!(
        problems("- a\n- b\n"),
        [
            "office.yaml: document 1: a document is a mapping with apiVersion, kind, metadata and spec"
        ]
    );
}

#[test]
fn empty_text_is_an_empty_config() {
    assert_eq!(Config::parse("", "x").ok(), Some(Config::default()));
    assert_eq!(
        Config::parse("# nothing\n---\n", "x").ok(),
        Some(Config::default())
    );
}

#[test]
fn load_reports_unreadable_files() {
    let error = Config::load("/nonexistent/printfleet.yaml").expect_err("missing file");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/printfleet.yaml: "),
        "{error}"
    );
}

const TICK: Duration = Duration::from_millis(20);

async fn changed_within(
    receiver: &mut tokio::sync::watch::Receiver<Arc<Config>>,
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, receiver.changed())
        .await
        .is_ok()
}

#[tokio::test]
async fn watch_publishes_a_valid_new_file() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("config.yaml");
    let first = format!("{PRINTER}---\n{}", queue("lab", "[lab-1]"));
    std::fs::write(&path, &first).expect("write");
    let initial = Arc::new(Config::load(&path).expect("valid"));
    let (mut receiver, task) = watch_every(path.clone(), initial, TICK);

    // The unchanged file is not published again.
    assert!(!changed_within(&mut receiver, TICK * 5).await);

    std::fs::write(&path, format!("{first}---\n{}", queue("office", "[lab-1]"))).expect("write");
    assert!(changed_within(&mut receiver, Duration::from_secs(5)).await);
    let reloaded = receiver.borrow_and_update().clone();
    assert_eq!(
        reloaded.queues.keys().collect::<Vec<_>>(),
        ["lab", "office"]
    );
    drop(receiver);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends")
        .expect("no panic");
}

#[tokio::test]
async fn watch_keeps_the_old_config_when_the_new_file_is_invalid() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("config.yaml");
    std::fs::write(&path, format!("{PRINTER}---\n{}", queue("lab", "[lab-1]"))).expect("write");
    let initial = Arc::new(Config::load(&path).expect("valid"));
    let (mut receiver, task) = watch_every(path.clone(), initial.clone(), TICK);

    std::fs::write(&path, queue("lab", "[missing]")).expect("write");
    assert!(!changed_within(&mut receiver, TICK * 10).await);
    assert!(Arc::ptr_eq(&receiver.borrow(), &initial));

    // Fixed again: the watcher carries on.
    std::fs::write(&path, PRINTER).expect("write");
    assert!(changed_within(&mut receiver, Duration::from_secs(5)).await);
    assert!(receiver.borrow().queues.is_empty());
    task.abort();
}

#[tokio::test]
async fn watch_sees_a_configmap_style_symlink_swap() {
    // Kubernetes updates a mounted ConfigMap by pointing a symlink at a new directory.
    let directory = tempfile::tempdir().expect("tempdir");
    let first = directory.path().join("v1");
    let second = directory.path().join("v2");
    std::fs::create_dir(&first).expect("mkdir");
    std::fs::create_dir(&second).expect("mkdir");
    std::fs::write(first.join("config.yaml"), PRINTER).expect("write");
    std::fs::write(
        second.join("config.yaml"),
        PRINTER.replace("lab-1", "lab-2"),
    )
    .expect("write");
    let data = directory.path().join("..data");
    std::os::unix::fs::symlink(&first, &data).expect("symlink");
    let path = data.join("config.yaml");
    let initial = Arc::new(Config::load(&path).expect("valid"));
    let (mut receiver, task) = watch_every(path, initial, TICK);

    let swap = directory.path().join("..data_tmp");
    std::os::unix::fs::symlink(&second, &swap).expect("symlink");
    std::fs::rename(&swap, &data).expect("atomic swap");
    assert!(changed_within(&mut receiver, Duration::from_secs(5)).await);
    assert!(receiver.borrow().printers.contains_key("lab-2"));
    task.abort();
}

#[test]
fn a_shard_dispatches_only_its_annotated_queues_and_their_printers() {
    let sharded = |name: &str, printers: &str, shard: &str| {
        queue(name, printers).replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  annotations:\n    printfleet.io/shard: \"{shard}\"\n"),
        )
    };
    let text = [
        PRINTER.to_string(),
        PRINTER.replace("lab-1", "lab-2"),
        sharded("front", "[lab-1]", "0"),
        sharded("back", "[lab-2]", "1"),
        sharded("shared", "[lab-1, lab-2]", "1"),
    ]
    .join("---\n");
    let config = Config::parse(&text, "sharded.yaml").expect("valid");
    assert_eq!(
        config.queue_shards.get("front").map(String::as_str),
        Some("0")
    );

    assert!(config.dispatches("front", Some("0")));
    assert!(!config.dispatches("front", Some("1")));
    assert!(config.dispatches("front", None), "no shard: every queue");

    assert_eq!(config.queues_of_printer("lab-1", Some("0")), ["front"]);
    assert_eq!(config.queues_of_printer("lab-1", Some("1")), ["shared"]);
    assert_eq!(config.queues_of_printer("lab-1", None), ["front", "shared"]);

    let printers = |shard| {
        config
            .dispatched_printers(shard)
            .into_keys()
            .collect::<Vec<_>>()
    };
    assert_eq!(printers(Some("0")), ["lab-1"]);
    assert_eq!(printers(Some("1")), ["lab-1", "lab-2"]);
    assert!(printers(Some("7")).is_empty());
    assert_eq!(printers(None), ["lab-1", "lab-2"]);
}
