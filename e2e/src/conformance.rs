//! Running CUPS's `ipptool` conformance suites and judging their reports against the list of
//! tests that cannot apply to a spooler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::documents::{self, PwgType};
use crate::error::{HarnessError, Result};

/// Where Debian's `cups-ipp-utils` installs the suites.
pub const SUITES_DIR: &str = "/usr/share/cups/ipptool";

/// The suites we hold the spooler to, and the IPP version each is run with.
pub const SUITES: [(&str, &str); 3] = [
    ("ipp-1.1", "1.1"),
    ("ipp-2.0", "2.0"),
    ("ipp-everywhere", "2.0"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// One test's line in an `ipptool -t` report (names are cut at the report's column width).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub verdict: Verdict,
    /// The indented lines ipptool printed under a failure (what it expected and got).
    pub details: Vec<String>,
}

/// A parsed `ipptool -t` report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tests: Vec<TestResult>,
    /// `ipptool: ...` lines: errors that stop a suite early (a missing file, a bad URI).
    pub errors: Vec<String>,
}

/// Parses ipptool's test-report output. Progress lines (`[0001]` while a test repeats) and
/// attribute dumps are not results; lines indented under a `[FAIL]` are its details.
pub fn parse_report(output: &str) -> Report {
    let mut report = Report::default();
    let mut last_failed = false;
    for line in output.lines() {
        if let Some(error) = line.strip_prefix("ipptool: ") {
            report.errors.push(error.to_string());
            last_failed = false;
        } else if let Some(detail) = line.strip_prefix("        ") {
            if last_failed && let Some(test) = report.tests.last_mut() {
                test.details.push(detail.trim().to_string());
            }
        } else if let Some(entry) = line.strip_prefix("    ") {
            let verdict = [
                ("[PASS]", Verdict::Pass),
                ("[FAIL]", Verdict::Fail),
                ("[SKIP]", Verdict::Skip),
            ]
            .into_iter()
            .find_map(|(tag, verdict)| {
                entry
                    .strip_suffix(tag)
                    .map(|name| (name.trim_end(), verdict))
            });
            last_failed = false;
            if let Some((name, verdict)) = verdict {
                last_failed = verdict == Verdict::Fail;
                report.tests.push(TestResult {
                    name: name.to_string(),
                    verdict,
                    details: Vec::new(),
                });
            }
        } else {
            last_failed = false;
        }
    }
    report
}

/// One line of `known-inapplicable.txt`: `suite<TAB>test name<TAB>reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownInapplicable {
    pub suite: String,
    /// The name exactly as the report prints it (cut at its column width).
    pub test: String,
    pub reason: String,
}

/// Parses the list; blank lines and `#` comments are ignored, every entry needs a reason.
pub fn parse_known_inapplicable(text: &str) -> std::result::Result<Vec<KnownInapplicable>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                [suite, test, reason]
                    if !suite.is_empty() && !test.is_empty() && !reason.trim().is_empty() =>
                {
                    Ok(KnownInapplicable {
                        suite: suite.to_string(),
                        test: test.to_string(),
                        reason: reason.trim().to_string(),
                    })
                }
                _ => Err(format!(
                    "line {}: expected `suite<TAB>test name<TAB>reason`: {line:?}",
                    index + 1
                )),
            }
        })
        .collect()
}

/// What is wrong with a suite's report, given its known-inapplicable entries: failures not
/// on the list, listed tests that pass (or are gone), and errors that cut the run short.
/// Empty means the suite conforms.
pub fn judge(suite: &str, report: &Report, known: &[KnownInapplicable]) -> Vec<String> {
    let mut problems: Vec<String> = report
        .errors
        .iter()
        .map(|error| format!("{suite}: ipptool stopped: {error}"))
        .collect();
    if report.tests.is_empty() {
        problems.push(format!("{suite}: no test results in the report"));
    }
    let listed: Vec<&KnownInapplicable> =
        known.iter().filter(|entry| entry.suite == suite).collect();
    let mut by_name: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
    for test in &report.tests {
        by_name.entry(test.name.as_str()).or_default().push(test);
    }
    for test in report
        .tests
        .iter()
        .filter(|test| test.verdict == Verdict::Fail)
    {
        if !listed.iter().any(|entry| entry.test == test.name) {
            problems.push(format!(
                "{suite}: FAIL {}\n        {}",
                test.name,
                test.details.join("\n        ")
            ));
        }
    }
    for entry in listed {
        match by_name.get(entry.test.as_str()) {
            None => problems.push(format!(
                "{suite}: `{}` is listed as inapplicable but no longer exists; remove it from the list",
                entry.test
            )),
            Some(results) if results.iter().all(|test| test.verdict != Verdict::Fail) => problems.push(format!(
                "{suite}: `{}` is listed as inapplicable but now passes; remove it from the list",
                entry.test
            )),
            Some(_) => {}
        }
    }
    problems
}

/// The suites copied next to the documents they print, so that every `FILE` a test names
/// exists (Debian ships the tests without their sample documents, and ipptool stops a
/// whole suite at the first file it cannot read).
pub struct SuiteDir {
    dir: TempDir,
}

impl SuiteDir {
    pub fn prepare() -> Result<SuiteDir> {
        let source = Path::new(SUITES_DIR);
        if !source.join("ipp-everywhere.test").is_file() {
            return Err(HarnessError::MissingTool {
                tool: "ipptool test suites",
                package: "cups-ipp-utils",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("printfleet-ipptool-")
            .tempdir()
            .map_err(HarnessError::io("creating the suite dir"))?;
        let entries =
            std::fs::read_dir(source).map_err(HarnessError::io(format!("reading {SUITES_DIR}")))?;
        let mut referenced = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(HarnessError::io(format!("reading {SUITES_DIR}")))?
                .path();
            if path.extension().is_some_and(|ext| ext == "test") {
                let text = std::fs::read_to_string(&path)
                    .map_err(HarnessError::io(format!("reading {}", path.display())))?;
                referenced.extend(referenced_files(&text));
                if let Some(name) = path.file_name() {
                    std::fs::copy(&path, dir.path().join(name))
                        .map_err(HarnessError::io(format!("copying {}", path.display())))?;
                }
            }
        }
        referenced.sort();
        referenced.dedup();
        for name in referenced {
            let target = dir.path().join(&name);
            let contents = sample_document(&name).ok_or_else(|| HarnessError::Invalid {
                path: PathBuf::from(&name),
                message: "a conformance test prints a document this harness cannot generate".into(),
            })?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(HarnessError::io(format!("creating {}", parent.display())))?;
            }
            std::fs::write(&target, contents)
                .map_err(HarnessError::io(format!("writing {}", target.display())))?;
        }
        Ok(SuiteDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn test_file(&self, suite: &str) -> PathBuf {
        self.dir.path().join(format!("{suite}.test"))
    }

    /// The default document (`-f`), printed where a test says `FILE $filename`.
    pub fn default_document(&self) -> PathBuf {
        self.dir.path().join("document-a4.pdf")
    }
}

/// The files named by `FILE` and `SKIP-IF-MISSING` directives (not `$variables`).
fn referenced_files(test_file: &str) -> Vec<String> {
    test_file
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("FILE" | "SKIP-IF-MISSING"), Some(name)) if !name.starts_with('$') => {
                    Some(name.to_string())
                }
                _ => None,
            }
        })
        .collect()
}

/// Page size in points for the sample names' paper.
fn paper_points(base: &str) -> Option<(u32, u32)> {
    if base.ends_with("4x6") {
        Some((288, 432))
    } else if base.ends_with("a4") {
        Some((595, 842))
    } else if base.ends_with("letter") {
        Some((612, 792))
    } else {
        None
    }
}

/// The contents for a sample the suites print: `document-a4.pdf`, `color.jpg`,
/// `pwg-raster-samples-300dpi/srgb-8/onepage-a4-srgb-8-300dpi.pwg`, ...
pub fn sample_document(name: &str) -> Option<Vec<u8>> {
    let stem = |ext: &str| name.strip_suffix(ext);
    if let Some(base) = stem(".pdf") {
        return Some(documents::pdf(base, 0));
    }
    if let Some(base) = stem(".ps") {
        return Some(documents::postscript(base, 2));
    }
    match name {
        "color.jpg" => return Some(documents::jpeg(3)),
        "gray.jpg" => return Some(documents::jpeg(1)),
        _ => {}
    }
    // pwg-raster-samples-{dpi}dpi/{type}/{base}-{type}-{dpi}dpi.pwg
    let mut parts = name.split('/');
    let dpi: u32 = parts
        .next()?
        .strip_prefix("pwg-raster-samples-")?
        .strip_suffix("dpi")?
        .parse()
        .ok()?;
    let type_keyword = parts.next()?;
    let kind = PwgType::from_keyword(type_keyword)?;
    let base = parts
        .next()?
        .strip_suffix(&format!("-{type_keyword}-{dpi}dpi.pwg"))?;
    let (width, height) = paper_points(base)?;
    let pages = if base.starts_with("document-") { 2 } else { 1 };
    Some(documents::pwg_raster(kind, dpi, width, height, pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#""/tmp/x/ipp-2.0.test":
    PWG 5100.12 section 6.2 - Required Printer Description Attributes    [PASS]
"/tmp/x/ipp-1.1.test":
    RFC 8011 section 4.2.1: Print-Job Operation                          [0001]
        job-state (enum) = processing
    RFC 8011 section 4.2.1: Print-Job Operation                          [PASS]
    RFC 8011 section 4.2.2: Print-URI Operation                          [SKIP]
    RFC 8011 section 4.2.4: Create-Job Operation                         [FAIL]
        RECEIVED: 123 bytes in response
        status-code = client-error-bad-request (bad request)
        EXPECTED: STATUS successful-ok (got client-error-bad-request)
    Get-Job-Attributes Until Job Complete                                [PASS]
        color-supported (boolean) = false
ipptool: Unable to connect to "127.0.0.1" on port 1 - Connection refused

Summary: 4 tests, 2 passed, 1 failed, 1 skipped
"#;

    #[test]
    fn parses_verdicts_details_and_errors() {
        let report = parse_report(REPORT);
        let verdicts: Vec<(&str, Verdict)> = report
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (
                    "PWG 5100.12 section 6.2 - Required Printer Description Attributes",
                    Verdict::Pass
                ),
                ("RFC 8011 section 4.2.1: Print-Job Operation", Verdict::Pass),
                ("RFC 8011 section 4.2.2: Print-URI Operation", Verdict::Skip),
                (
                    "RFC 8011 section 4.2.4: Create-Job Operation",
                    Verdict::Fail
                ),
                ("Get-Job-Attributes Until Job Complete", Verdict::Pass),
            ]
        );
        assert_eq!(report.tests[3].details.len(), 3);
        assert!(report.tests[3].details[2].starts_with("EXPECTED: STATUS successful-ok"));
        assert!(
            report.tests[4].details.is_empty(),
            "attribute dumps under a pass are not details"
        );
        assert_eq!(report.errors.len(), 1);
    }

    fn entry(test: &str) -> KnownInapplicable {
        KnownInapplicable {
            suite: "ipp-1.1".into(),
            test: test.into(),
            reason: "r".into(),
        }
    }

    #[test]
    fn judges_unlisted_failures_stale_entries_and_errors() {
        let report = parse_report(REPORT);
        let problems = judge("ipp-1.1", &report, &[]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("ipptool stopped"));
        assert!(
            problems[1].contains("FAIL RFC 8011 section 4.2.4") && problems[1].contains("EXPECTED")
        );

        let clean = Report {
            errors: Vec::new(),
            ..report
        };
        assert!(
            judge(
                "ipp-1.1",
                &clean,
                &[entry("RFC 8011 section 4.2.4: Create-Job Operation")]
            )
            .is_empty()
        );
        // The list is for this suite only.
        assert_eq!(
            judge(
                "ipp-2.0",
                &clean,
                &[entry("RFC 8011 section 4.2.4: Create-Job Operation")]
            )
            .len(),
            1
        );

        let stale = judge(
            "ipp-1.1",
            &clean,
            &[
                entry("RFC 8011 section 4.2.1: Print-Job Operation"),
                entry("Gone"),
            ],
        );
        assert_eq!(stale.len(), 3, "{stale:?}");
        assert!(stale[1].contains("now passes"));
        assert!(stale[2].contains("no longer exists"));
        assert!(
            !judge("ipp-1.1", &Report::default(), &[]).is_empty(),
            "an empty report is not a pass"
        );
    }

    #[test]
    fn known_list_format() {
        let parsed = parse_known_inapplicable(
            "# comment\n\nipp-everywhere\tIdentify-Printer\tneeds a panel\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![KnownInapplicable {
                suite: "ipp-everywhere".into(),
                test: "Identify-Printer".into(),
                reason: "needs a panel".into()
            }]
        );
        assert!(parse_known_inapplicable("ipp-1.1\tno reason\t \n").is_err());
        assert!(parse_known_inapplicable("ipp-1.1 spaces not tabs\n").is_err());
    }

    #[test]
    fn files_referenced_by_tests() {
        let text = "\tFILE $filename\n\tFILE document-a4.pdf\n\tSKIP-IF-MISSING pwg-raster-samples-150dpi/black-1/x.pwg\n\t# FILE no\n";
        assert_eq!(
            referenced_files(text),
            vec!["document-a4.pdf", "pwg-raster-samples-150dpi/black-1/x.pwg"]
        );
    }

    #[test]
    fn generates_every_kind_of_sample() {
        for name in [
            "document-a4.pdf",
            "document-letter.ps",
            "color.jpg",
            "gray.jpg",
            "pwg-raster-samples-150dpi/black-1/color.jpg-4x6-black-1-150dpi.pwg",
            "pwg-raster-samples-720dpi/srgb-16/color.jpg-4x6-srgb-16-720dpi.pwg",
            "pwg-raster-samples-600dpi/cmyk-8/document-letter-cmyk-8-600dpi.pwg",
        ] {
            assert!(
                sample_document(name).is_some_and(|doc| !doc.is_empty()),
                "{name}"
            );
        }
        assert_eq!(
            sample_document("pwg-raster-samples-150dpi/rgb-9/x-rgb-9-150dpi.pwg"),
            None
        );
        assert_eq!(sample_document("unknown.bin"), None);
    }
}
