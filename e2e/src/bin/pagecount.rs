//! Benchmark (not a test): how long admission's page count of a 100-page PDF takes.
//!
//!     cargo run --release -p printfleet-e2e --bin pagecount -- --pages 100 --iterations 2000

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use printfleet_e2e::documents::multi_page_pdf;
use printfleet_e2e::stats::percentile;
use printfleet_spooler::accounting::pages::count_pages;

#[derive(Parser)]
#[command(
    name = "pagecount",
    about = "Times count_pages on a generated multi-page PDF"
)]
struct Cli {
    /// Pages in the generated PDF.
    #[arg(long, default_value_t = 100)]
    pages: usize,
    /// Timed counts (after a tenth as many untimed warm-up counts).
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let pdf = multi_page_pdf(cli.pages);
    let expected = u32::try_from(cli.pages).context("--pages is too large")?;
    let count = || count_pages("application/pdf", black_box(&pdf)).context("counting pages");
    let counted = count()?;
    if counted != expected {
        bail!("counted {counted} pages in a {expected}-page PDF");
    }
    for _ in 0..cli.iterations / 10 {
        count()?;
    }
    let mut durations: Vec<Duration> = Vec::with_capacity(cli.iterations);
    for _ in 0..cli.iterations {
        let start = Instant::now();
        black_box(count()?);
        durations.push(start.elapsed());
    }
    durations.sort();
    let micros = |duration: Duration| duration.as_secs_f64() * 1e6;
    let mean = durations.iter().sum::<Duration>() / u32::try_from(durations.len())?;
    let p99 = percentile(&durations, 99.0).context("no samples")?;
    println!(
        "{}-page PDF ({} bytes), {} counts: mean {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        cli.pages,
        pdf.len(),
        durations.len(),
        micros(mean),
        micros(p99),
        micros(durations[durations.len() - 1]),
    );
    Ok(())
}
