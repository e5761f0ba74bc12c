//! `cargo xtask report`: runs the experiments and writes `REPORT.md`, a verdict on each claim of
//! arXiv 2107.05264 from data, with PNG figures beside it.
//!
//! The experiment is W1 (`../shared/docs/WORKLOADS.md`) with AdamW, K-FAC and CG-FAC, three seeds
//! each, every diagnostic on. Each run lives in `runs/report/<optimizer>-seed<k>`; a finished run
//! (its `summary.json` present and its `config.json` equal to the wanted configuration) is reused,
//! an unfinished one with a checkpoint is resumed, anything else is started afresh, so an
//! interrupted report continues where it stopped.
//!
//! The verdicts follow rules fixed in code ([`claims`]) and printed in the report before any number
//! (section "Verdict rules"); the same constants drive both the text and the decision.
//!
//! `--quick` ([`ReportOptions::quick`]) is a smoke test: one seed, two epochs at batch 32 (so that
//! the training clock has enough snapshots), no verdict that needs a spread over seeds.

pub mod claims;
mod data;
mod markdown;
mod plot;
mod stats;

use std::path::{Path, PathBuf};

use crate::config::{OptimizerKind, TrainConfig};
use crate::run::{read_config, RunOptions};
use crate::TrainError;

pub use claims::{ClaimRow, Verdict};

/// Errors of the report: a failed run, an unreadable run file, a figure that could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A training run failed.
    #[error("the run in {dir} failed: {source}")]
    Run {
        /// Run directory.
        dir: PathBuf,
        /// The trainer's error.
        #[source]
        source: TrainError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source} (check that the directory exists and is writable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A run file is not what the trainer writes.
    #[error("{path}: {msg}; delete the run directory and run the report again to redo that run")]
    RunFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A figure could not be drawn.
    #[error("figure {path}: {msg}")]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// The drawing backend's message.
        msg: String,
    },
}

/// `Result` with [`ReportError`].
pub type Result<T> = std::result::Result<T, ReportError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the report runs and where it writes.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Smoke test: one seed, two epochs at batch 32 (see the module docs).
    pub quick: bool,
    /// Directory of `REPORT.md` and the figures (created).
    pub out: PathBuf,
    /// Directory of the run directories (`<optimizer>-seed<k>` inside it).
    pub runs: PathBuf,
    /// Print no progress lines.
    pub quiet: bool,
}

impl ReportOptions {
    /// The defaults of `cargo xtask report [--quick]`: `docs/report`, runs under `runs/report`
    /// (`runs/report-quick` for the quick report).
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            out: PathBuf::from("docs/report"),
            runs: PathBuf::from(if quick {
                "runs/report-quick"
            } else {
                "runs/report"
            }),
            quiet: false,
        }
    }

    /// The seeds of every optimizer: 0, 1, 2 (quick: 0).
    pub fn seeds(&self) -> Vec<u64> {
        if self.quick {
            vec![0]
        } else {
            vec![0, 1, 2]
        }
    }

    /// The optimizers compared.
    pub fn optimizers(&self) -> [OptimizerKind; 3] {
        [
            OptimizerKind::Adamw,
            OptimizerKind::Kfac,
            OptimizerKind::Cgfac,
        ]
    }

    /// The configuration of one run: `TrainConfig::w1()` with the optimizer and seed (the split
    /// seed equals the seed), K-FAC and CG-FAC at [`crate::kfac::DEFAULT_LR`] with their settings
    /// resolved to the current defaults; quick: 2 epochs at batch 32.
    pub fn config(&self, optimizer: OptimizerKind, seed: u64) -> TrainConfig {
        let mut c = TrainConfig::w1();
        c.optimizer = optimizer;
        c.seed = seed;
        c.split_seed = seed;
        c.diagnostics = true;
        if matches!(optimizer, OptimizerKind::Kfac | OptimizerKind::Cgfac) {
            c.lr = crate::kfac::DEFAULT_LR;
        }
        if self.quick {
            c.epochs = QUICK_EPOCHS;
            c.batch_size = QUICK_BATCH;
        }
        // As `run` records it, so that a finished run made with other K-FAC defaults is not reused.
        c.resolve_kfac_settings();
        c
    }
}

/// Epochs of the quick report.
pub const QUICK_EPOCHS: usize = 2;
/// Batch size of the quick report: 44 steps an epoch, so two epochs give the training clock nine
/// snapshots (one every [`crate::diag::TRAJ_EVERY`] steps), the fewest its MSD fit accepts is eight.
pub const QUICK_BATCH: usize = 32;

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct ReportOutcome {
    /// `REPORT.md`.
    pub report: PathBuf,
    /// Every figure, in the order of the report.
    pub figures: Vec<PathBuf>,
    /// The claim table's rows.
    pub claims: Vec<ClaimRow>,
}

/// How a run directory was brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAction {
    Reused,
    Resumed,
    Started,
}

fn ensure_run(config: &TrainConfig, dir: &Path, quiet: bool) -> Result<RunAction> {
    // The saved config carries the data fingerprint its run recorded; the wanted one does not.
    let saved = read_config(dir).ok().map(|mut s| {
        s.data_fingerprint = config.data_fingerprint.clone();
        s
    });
    let same = saved.as_ref() == Some(config);
    if same && dir.join("summary.json").is_file() {
        return Ok(RunAction::Reused);
    }
    let has_checkpoint = crate::checkpoint::list(dir)
        .map(|l| !l.is_empty())
        .unwrap_or(false);
    let resume = same && has_checkpoint;
    let options = RunOptions {
        resume,
        quiet: true,
        stop_after: None,
    };
    let action = if resume {
        RunAction::Resumed
    } else {
        RunAction::Started
    };
    if !quiet {
        eprintln!(
            "report: {} {} ({} epochs)",
            match action {
                RunAction::Resumed => "resuming",
                _ => "starting",
            },
            dir.display(),
            config.epochs
        );
    }
    crate::run::run(config.clone(), dir, &options).map_err(|source| ReportError::Run {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(action)
}

/// Runs (or reuses) every run of the report, then writes `REPORT.md` and the figures into
/// `options.out`. Prints one line per run unless `options.quiet`.
pub fn generate(options: &ReportOptions) -> Result<ReportOutcome> {
    let mut runs = Vec::new();
    for optimizer in options.optimizers() {
        for seed in options.seeds() {
            let config = options.config(optimizer, seed);
            let dir = options.runs.join(format!("{optimizer}-seed{seed}"));
            let start = std::time::Instant::now();
            let action = ensure_run(&config, &dir, options.quiet)?;
            if !options.quiet {
                eprintln!(
                    "report: {} {} ({:.0} s)",
                    match action {
                        RunAction::Reused => "reused",
                        RunAction::Resumed => "resumed and finished",
                        RunAction::Started => "finished",
                    },
                    dir.display(),
                    start.elapsed().as_secs_f64()
                );
            }
            runs.push(data::RunData::load(&dir, &config)?);
        }
    }
    std::fs::create_dir_all(&options.out).map_err(io_err(&options.out))?;
    let evaluation = claims::evaluate(&runs);
    let figures = plot::draw_all(&runs, &evaluation, &options.out)?;
    let report = options.out.join("REPORT.md");
    let text = markdown::render(options, &runs, &evaluation, &figures);
    std::fs::write(&report, text).map_err(io_err(&report))?;
    if !options.quiet {
        eprintln!("report: wrote {}", report.display());
    }
    Ok(ReportOutcome {
        report,
        figures: figures.iter().map(|f| options.out.join(f.file)).collect(),
        claims: evaluation.rows,
    })
}
