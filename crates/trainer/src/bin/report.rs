//! `report`: runs the report's experiments (or reuses finished runs) and writes `REPORT.md` with its
//! figures. Usually started through `cargo xtask report [--quick] [--out DIR]`.

use std::path::PathBuf;

use clap::Parser;

/// Runs W1 with AdamW, K-FAC and CG-FAC over seeds and writes the claim-by-claim report.
#[derive(Parser)]
#[command(name = "report", about)]
struct Args {
    /// Smoke test: one seed, two epochs at batch 32 (verdicts needing a seed spread are inconclusive).
    #[arg(long)]
    quick: bool,
    /// Directory of REPORT.md and the figures.
    #[arg(long, default_value = "docs/report")]
    out: PathBuf,
    /// Directory of the run directories [default: runs/report, or runs/report-quick with --quick].
    #[arg(long)]
    runs: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut options = bmt_trainer::report::ReportOptions::new(args.quick);
    options.out = args.out;
    if let Some(r) = args.runs {
        options.runs = r;
    }
    let outcome = bmt_trainer::report::generate(&options)?;
    for row in &outcome.claims {
        println!("claim {:>2}: {:<13} {}", row.id, row.verdict, row.claim);
    }
    println!("report: {}", outcome.report.display());
    Ok(())
}
