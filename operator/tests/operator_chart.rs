//! The Helm chart: CRDs identical to the generated ones, RBAC exactly the operator's, and
//! linted (templates rendered, values checked against values.schema.json) by the real Helm
//! engine (PyPI's helm-sdkpy, installed into a venv under target/ on first use).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use printfleet_operator::controller::RBAC;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/printfleet")
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for (file, generated) in printfleet_crds::manifests::all() {
        let generated = generated.expect("CRD serializes");
        let in_chart =
            std::fs::read_to_string(chart().join("crds").join(file)).expect("CRD in the chart");
        assert!(
            in_chart == generated,
            "charts/printfleet/crds/{file} differs from the generated CRD: cp crds/manifests/{file} charts/printfleet/crds/"
        );
    }
}

/// Every (apiGroup, resource, verb) a set of RBAC rules grants.
fn grants(rules: &[Value]) -> BTreeSet<(String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let mut all = BTreeSet::new();
    for rule in rules {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    all.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    all
}

#[test]
fn chart_rbac_grants_exactly_what_the_operator_uses() {
    let template = std::fs::read_to_string(chart().join("templates/clusterrole.yaml"))
        .expect("clusterrole template");
    let role_document = template.split("\n---\n").next().unwrap_or_default();
    // The rules are plain YAML; only metadata uses template expressions.
    let plain: String = role_document
        .lines()
        .filter(|line| !line.contains("{{"))
        .map(|line| format!("{line}\n"))
        .collect();
    let role: Value = serde_yaml::from_str(&plain).expect("ClusterRole parses");
    assert_eq!(role["kind"], "ClusterRole");
    let in_chart = grants(role["rules"].as_array().expect("rules"));
    let used: BTreeSet<(String, String, String)> = RBAC
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(move |verb| {
                (
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect();
    let extra: Vec<_> = in_chart.difference(&used).collect();
    let missing: Vec<_> = used.difference(&in_chart).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "chart grants extra {extra:?}, lacks {missing:?}"
    );
}

/// The venv's python with helm-sdkpy, created on first use.
fn helm_python() -> PathBuf {
    let venv = repo().join("target/helm-venv");
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .args(["-c", "import helm_sdkpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--ignore-requires-python",
                "helm-sdkpy",
            ])
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install helm-sdkpy failed");
    }
    python
}

const LINT: &str = r#"
import asyncio, json, sys, helm_sdkpy
result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace="printfleet")).run(sys.argv[1]))
print(json.dumps([{"severity": m.get("Severity"), "path": m.get("Path"), "error": str(m.get("Err"))} for m in result.get("Messages") or []]))
"#;

/// Helm's lint messages for a chart directory, as (severity, path, error); severity 3 is an error.
fn lint(python: &Path, chart: &Path) -> Vec<(i64, String, String)> {
    let output = Command::new(python)
        .arg("-c")
        .arg(LINT)
        .arg(chart)
        .output()
        .expect("lint runs");
    assert!(
        output.status.success(),
        "lint failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let messages: Vec<Value> = serde_json::from_slice(&output.stdout).expect("lint output is JSON");
    messages
        .iter()
        .map(|m| {
            (
                m["severity"].as_i64().unwrap_or(-1),
                m["path"].as_str().unwrap_or_default().to_owned(),
                m["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read chart") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn helm_lints_and_renders_the_chart() {
    let python = helm_python();
    let messages = lint(&python, &chart());
    let problems: Vec<_> = messages
        .iter()
        .filter(|(severity, _, _)| *severity >= 2)
        .collect();
    assert!(problems.is_empty(), "helm lint: {problems:?}");

    // The same engine catches a broken template and values the schema refuses, so the
    // clean result above means something.
    let scratch = tempfile::tempdir().expect("tempdir");
    let broken = scratch.path().join("broken");
    copy_dir(&chart(), &broken);
    std::fs::write(
        broken.join("templates/broken.yaml"),
        "kind: {{ .Values.nope.deeper }}\n",
    )
    .expect("write");
    let messages = lint(&python, &broken);
    assert!(
        messages
            .iter()
            .any(|(s, p, _)| *s == 3 && p.starts_with("templates/")),
        "{messages:?}"
    );

    // The shared-store settings render too (they are empty, so skipped, by default).
    let shared = scratch.path().join("shared-store");
    copy_dir(&chart(), &shared);
    let values = std::fs::read_to_string(shared.join("values.yaml")).expect("values");
    std::fs::write(
        shared.join("values.yaml"),
        values
            .replace("dsnSecret: \"\"", "dsnSecret: spooler-store")
            .replace("documentsUrl: \"\"", "documentsUrl: s3://print-documents"),
    )
    .expect("write");
    let messages = lint(&python, &shared);
    assert!(
        !messages.iter().any(|(severity, _, _)| *severity >= 2),
        "helm lint with a shared store: {messages:?}"
    );

    let bad_values = scratch.path().join("bad-values");
    copy_dir(&chart(), &bad_values);
    let values = std::fs::read_to_string(bad_values.join("values.yaml")).expect("values");
    std::fs::write(
        bad_values.join("values.yaml"),
        values.replace("replicas: 2", "replicas: two"),
    )
    .expect("write");
    let messages = lint(&python, &bad_values);
    // helm-sdkpy does not carry the error text across; the path says it is the values.
    assert!(
        messages
            .iter()
            .any(|(s, p, _)| *s == 3 && p == "values.yaml"),
        "{messages:?}"
    );
}
