//! CUPS's command-line clients pointed at a server with `-h 127.0.0.1:PORT`, as users run
//! them.

use std::path::Path;

use crate::error::{HarnessError, Result};
use crate::process::{CANCEL, IPPTOOL, LP, LPSTAT, run};

/// `lp -h HOST -d QUEUE -U USER [extra...] FILE`; the job id from "request id is Q-N".
pub fn lp(host: &str, queue: &str, user: &str, file: &Path, extra: &[&str]) -> Result<i32> {
    let mut command = LP.command()?;
    command
        .arg("-h")
        .arg(host)
        .args(["-d", queue, "-U", user])
        .args(extra)
        .arg(file);
    let output = run(command)?;
    parse_request_id(&output).ok_or_else(|| HarnessError::Command {
        command: format!("lp -d {queue} {}", file.display()),
        status: "no request id".into(),
        output,
    })
}

/// The job id in lp's "request id is office-12 (1 file(s))".
pub fn parse_request_id(output: &str) -> Option<i32> {
    let rest = output.split("request id is ").nth(1)?;
    let id = rest.split_whitespace().next()?;
    id.rsplit('-').next()?.parse().ok()
}

/// `lpstat -h HOST -o [QUEUE]`: one line per unfinished job.
pub fn lpstat_jobs(host: &str, queue: Option<&str>) -> Result<String> {
    let mut command = LPSTAT.command()?;
    command.arg("-h").arg(host).arg("-o");
    command.args(queue);
    run(command)
}

/// The job ids in lpstat's "office-12  alice  1024  Mon ..." lines.
pub fn lpstat_job_ids(listing: &str) -> Vec<i32> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|id| id.rsplit('-').next()?.parse().ok())
        .collect()
}

/// `cancel -h HOST -U USER JOB`: an error when the server refuses.
pub fn cancel(host: &str, user: &str, queue: &str, job_id: i32) -> Result<String> {
    let mut command = CANCEL.command()?;
    command
        .arg("-h")
        .arg(host)
        .args(["-U", user])
        .arg(format!("{queue}-{job_id}"));
    run(command)
}

/// `ipptool -tI -V VERSION -f DOCUMENT URI TESTFILE` in `dir`; the report whatever the
/// exit code (ipptool exits 1 when a test fails, which the caller judges from the report).
pub fn ipptool(
    dir: &Path,
    uri: &str,
    version: &str,
    document: &Path,
    test_file: &Path,
) -> Result<String> {
    let output = IPPTOOL
        .command()?
        .current_dir(dir)
        .args(["-tI", "-T", "30", "-V", version, "-f"])
        .arg(document)
        .arg(uri)
        .arg(test_file)
        .output()
        .map_err(HarnessError::io("running ipptool"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_from_lp_output() {
        assert_eq!(
            parse_request_id("request id is office-12 (1 file(s))\n"),
            Some(12)
        );
        assert_eq!(
            parse_request_id("request id is my-queue-3 (1 file(s))"),
            Some(3)
        );
        assert_eq!(parse_request_id("lp: Forbidden"), None);
    }

    #[test]
    fn job_ids_from_lpstat_listing() {
        let listing = "office-3   alice   1024   Fri 21 Nov 2025\noffice-14  bob  9  Fri\n\n";
        assert_eq!(lpstat_job_ids(listing), vec![3, 14]);
    }
}
