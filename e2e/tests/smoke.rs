//! The demo from the README: the spooler on examples/standalone.yaml, a user prints with
//! CUPS's `lp`, the document lands in the demo printer's directory, and SIGTERM stops the
//! spooler cleanly.

use std::time::Duration;

use printfleet_e2e::Spooler;
use printfleet_e2e::cups_cli::lp;
use printfleet_e2e::process::wait_until;
use printfleet_e2e::spooler::{delivered_files, http_get_status, workspace_root};

#[test]
fn standalone_example_prints_to_its_directory() {
    let example =
        std::fs::read_to_string(workspace_root().join("examples/standalone.yaml")).unwrap();
    assert!(
        example.contains("file:///tmp/printfleet-demo"),
        "the example's printer moved; update this test"
    );
    let output = tempfile::tempdir().unwrap();
    let config = example.replace(
        "file:///tmp/printfleet-demo",
        &format!("file://{}", output.path().display()),
    );
    let mut spooler = Spooler::start(&config).unwrap();
    assert_eq!(http_get_status(spooler.port(), "/healthz"), Some(200));
    assert_eq!(http_get_status(spooler.port(), "/metrics"), Some(200));
    // The icon `printer-icons` advertises (IPP Everywhere clients show it).
    assert_eq!(
        http_get_status(spooler.port(), "/icons/demo.png"),
        Some(200)
    );
    assert_eq!(
        http_get_status(spooler.port(), "/icons/no-such-queue.png"),
        Some(404)
    );

    let document = printfleet_e2e::documents::pdf("smoke test", 3000);
    let input_dir = tempfile::tempdir().unwrap();
    let file = input_dir.path().join("smoke.pdf");
    std::fs::write(&file, &document).unwrap();
    let job_id = lp(&spooler.host(), "demo", "alice", &file, &[]).unwrap();

    let landed = wait_until(Duration::from_secs(20), || {
        !delivered_files(output.path()).is_empty()
    });
    assert!(
        landed,
        "nothing in {} after 20 s; spooler log:\n{}",
        output.path().display(),
        spooler.log()
    );
    let files = delivered_files(output.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(name, format!("{job_id}-1.pdf"));
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        document,
        "the printer got other bytes than lp sent"
    );

    assert!(
        spooler.shutdown(Duration::from_secs(15)),
        "SIGTERM did not stop the spooler cleanly:\n{}",
        spooler.log()
    );
}
