//! Prometheus as a peer: `promtool check metrics` on an exposition, and a real Prometheus
//! server scraping a target on 127.0.0.1 that tests query through its HTTP API.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{HarnessError, Result};
use crate::process::{ChildGuard, Tool, free_port};
use crate::spooler::http_get_status;

pub const PROMTOOL: Tool = Tool {
    name: "promtool",
    package: "prometheus",
};
pub const PROMETHEUS: Tool = Tool {
    name: "prometheus",
    package: "prometheus",
};

/// How long Prometheus may take from spawn to `/-/ready` answering 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `promtool check metrics` on an exposition. A parse error or a lint problem is an
/// error carrying promtool's report.
pub fn check_metrics(exposition: &str) -> Result<()> {
    let mut child = PROMTOOL
        .command()?
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HarnessError::io("starting promtool"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping stdin at the end of this block closes it: promtool reads to EOF.
        stdin
            .write_all(exposition.as_bytes())
            .map_err(HarnessError::io("writing to promtool"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(HarnessError::io("waiting for promtool"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command: "promtool check metrics".into(),
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// The `prometheus.yml` that scrapes `target` (`host:port`) every second.
pub fn scrape_config(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: printfleet\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

/// One series of an instant vector: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server on a free port with its TSDB in a temp dir. Dropping it kills the
/// process, then removes the directory.
pub struct PrometheusServer {
    // Fields drop in order: the process stops before its directory is removed.
    process: ChildGuard,
    dir: TempDir,
    port: u16,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `target` (`host:port`) every second and waits until it is
    /// ready to answer queries.
    pub fn start(target: &str) -> Result<PrometheusServer> {
        let binary = PROMETHEUS.path()?;
        let dir = tempfile::Builder::new()
            .prefix("printfleet-prometheus-")
            .tempdir()
            .map_err(HarnessError::io("creating Prometheus's temp dir"))?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(target))
            .map_err(HarnessError::io("writing prometheus.yml"))?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut process = ChildGuard::spawn("prometheus", command, &dir.path().join("log"))?;
        process.wait_ready(READY_TIMEOUT, || {
            http_get_status(port, "/-/ready") == Some(200)
        })?;
        Ok(PrometheusServer { process, dir, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Prometheus's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The instant vector `promql` evaluates to now, through `/api/v1/query`.
    pub fn query(&mut self, promql: &str) -> Result<Vec<Sample>> {
        self.process.check_running()?;
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let body = http_get_body(self.port, &path)?;
        parse_vector(&body).map_err(|message| HarnessError::Invalid {
            path: path.into(),
            message: format!("{message}: {body}"),
        })
    }
}

/// Query-string encoding: everything but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The body of a `GET path` on 127.0.0.1:`port`. HTTP/1.0, so the body is neither chunked
/// nor kept alive: it ends when the server closes.
fn http_get_body(port: u16, path: &str) -> Result<String> {
    let what = format!("GET {path} on 127.0.0.1:{port}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(HarnessError::io(&what))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(HarnessError::io(&what))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .map_err(HarnessError::io(&what))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(HarnessError::io(&what))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| HarnessError::Command {
            command: what.clone(),
            status: "no HTTP header".into(),
            output: response.clone(),
        })?;
    if head.get(9..12) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(HarnessError::Command {
            command: what,
            status: head.lines().next().unwrap_or_default().to_string(),
            output: body.to_string(),
        })
    }
}

/// The samples of a `/api/v1/query` answer whose result is an instant vector.
fn parse_vector(body: &str) -> std::result::Result<Vec<Sample>, String> {
    let answer: serde_json::Value =
        serde_json::from_str(body).map_err(|error| format!("not JSON ({error})"))?;
    if answer["status"] != "success" {
        return Err("query did not succeed".into());
    }
    if answer["data"]["resultType"] != "vector" {
        return Err("result is not an instant vector".into());
    }
    let series = answer["data"]["result"]
        .as_array()
        .ok_or("no result array")?;
    series
        .iter()
        .map(|series| {
            let labels = series["metric"]
                .as_object()
                .ok_or("a series without labels")?
                .iter()
                .map(|(name, value)| (name.clone(), value.as_str().unwrap_or("").to_string()))
                .collect();
            // A sample is [timestamp, "value"]: the value is a string.
            let value = series["value"][1]
                .as_str()
                .and_then(|value| value.parse().ok())
                .ok_or("a sample without a numeric value")?;
            Ok(Sample { labels, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promtool_accepts_clean_expositions_and_reports_bad_ones() {
        let clean =
            "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\n";
        check_metrics(clean).unwrap();
        // A counter without HELP and without the _total suffix: promtool's linter objects.
        let linted = "# TYPE jobs counter\njobs 3\n";
        let error = check_metrics(linted).unwrap_err().to_string();
        assert!(error.contains("jobs"), "{error}");
        assert!(check_metrics("jobs_total{ 3\n").is_err());
    }

    #[test]
    fn query_strings_escape_promql_syntax() {
        assert_eq!(
            percent_encode("sum by (user) (x{queue=\"a b\"})"),
            "sum%20by%20%28user%29%20%28x%7Bqueue%3D%22a%20b%22%7D%29"
        );
        assert_eq!(percent_encode("up_total"), "up_total");
    }

    #[test]
    fn instant_vectors_parse_to_labelled_samples() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"c","user":"alice"},"value":[1700000000.1,"60"]},
            {"metric":{"user":"bob"},"value":[1700000000.1,"40"]}]}}"#;
        let samples = parse_vector(body).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["user"], "alice");
        assert_eq!(samples[0].value, 60.0);
        assert_eq!(samples[1].value, 40.0);
        assert!(parse_vector(r#"{"status":"error","error":"bad"}"#).is_err());
        assert!(
            parse_vector(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
                .is_err()
        );
    }
}
