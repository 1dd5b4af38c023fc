//! CUPS's command-line clients (`lp`, `lpstat`, `cancel`) as users run them against the
//! spooler, with ippeveprinter instances as the printers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use printfleet_e2e::cups_cli::{cancel, lp, lpstat_job_ids, lpstat_jobs};
use printfleet_e2e::documents;
use printfleet_e2e::process::wait_until;
use printfleet_e2e::spooler::{config_yaml, printer_yaml, queue_yaml};
use printfleet_e2e::{IppEvePrinter, Spooler};

/// How long a job may take from `lp` to a simulated printer's spool directory (the
/// simulator takes a few seconds per job, and failover waits for a timeout).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// A PDF, a PostScript and a text file, tagged with `tag`.
fn documents_in(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let files = [
        (format!("{tag}.pdf"), documents::pdf(tag, 2000)),
        (format!("{tag}.ps"), documents::postscript(tag, 1)),
        (format!("{tag}.txt"), documents::text(tag)),
    ];
    files
        .into_iter()
        .map(|(name, contents)| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        })
        .collect()
}

#[test]
fn pool_prints_every_format_and_fails_over() {
    let mut first = IppEvePrinter::start("pool-first").unwrap();
    let second = IppEvePrinter::start("pool-second").unwrap();
    let config = config_yaml(&[
        printer_yaml("office-first", &first.uri()),
        printer_yaml("office-second", &second.uri()),
        queue_yaml("office", &["office-first", "office-second"], ""),
    ]);
    let spooler = Spooler::start(&config).unwrap();
    let input = tempfile::tempdir().unwrap();

    for file in documents_in(input.path(), "before") {
        lp(&spooler.host(), "office", "alice", &file, &[]).unwrap();
    }
    let total = || first.received_count() + second.received_count();
    assert!(
        wait_until(DELIVERY_TIMEOUT, || total() == 3),
        "{} of 3 documents reached the pool; spooler log:\n{}",
        total(),
        spooler.log()
    );

    first.stop();
    let first_had = first.received_count();
    let second_had = second.received_count();
    for file in documents_in(input.path(), "failover") {
        lp(&spooler.host(), "office", "alice", &file, &[]).unwrap();
    }
    assert!(
        wait_until(DELIVERY_TIMEOUT, || second.received_count()
            == second_had + 3),
        "with the first printer down, {} of 3 jobs reached the second; spooler log:\n{}",
        second.received_count() - second_had,
        spooler.log()
    );
    assert_eq!(
        first.received_count(),
        first_had,
        "a stopped printer cannot receive"
    );
}

#[test]
fn lpstat_lists_and_cancel_respects_ownership() {
    let output = tempfile::tempdir().unwrap();
    let config = config_yaml(&[
        printer_yaml(
            "secure-printer",
            &format!("file://{}", output.path().display()),
        ),
        queue_yaml("secure", &["secure-printer"], "  holdUntilRelease: true\n"),
        queue_yaml("plain", &["secure-printer"], ""),
    ]);
    let spooler = Spooler::start(&config).unwrap();
    let input = tempfile::tempdir().unwrap();
    let files = documents_in(input.path(), "held");
    let first = lp(&spooler.host(), "secure", "alice", &files[0], &[]).unwrap();
    let second = lp(&spooler.host(), "secure", "alice", &files[1], &[]).unwrap();

    let listed = lpstat_job_ids(&lpstat_jobs(&spooler.host(), None).unwrap());
    assert!(
        listed.contains(&first) && listed.contains(&second),
        "lpstat -o listed {listed:?}"
    );

    let refused = cancel(&spooler.host(), "bob", "secure", first);
    assert!(refused.is_err(), "bob canceled alice's job: {refused:?}");
    let listed = lpstat_job_ids(&lpstat_jobs(&spooler.host(), Some("secure")).unwrap());
    assert!(
        listed.contains(&first),
        "alice's job vanished after bob's refused cancel: {listed:?}"
    );

    cancel(&spooler.host(), "alice", "secure", first).unwrap();
    let listed = lpstat_job_ids(&lpstat_jobs(&spooler.host(), Some("secure")).unwrap());
    assert!(
        !listed.contains(&first),
        "a canceled job is still listed: {listed:?}"
    );
    assert!(
        listed.contains(&second),
        "canceling one job took another: {listed:?}"
    );

    // `lp -H hold` holds a job on a queue without secure release, and its owner cancels it.
    let held = lp(
        &spooler.host(),
        "plain",
        "alice",
        &files[2],
        &["-H", "hold"],
    )
    .unwrap();
    let listed = lpstat_job_ids(&lpstat_jobs(&spooler.host(), Some("plain")).unwrap());
    assert!(
        listed.contains(&held),
        "lp -H hold job not listed: {listed:?}"
    );
    cancel(&spooler.host(), "alice", "plain", held).unwrap();
    assert!(
        printfleet_e2e::spooler::delivered_files(output.path()).is_empty(),
        "held jobs must not print"
    );
}
