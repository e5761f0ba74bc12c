//! `cargo xtask`: the project's command runner (wired in by the alias in `.cargo/config.toml`).
//!
//! Plain cargo cannot name a workflow ("train W1", "run every benchmark in one sitting", "write the
//! report"), and shell scripts drift; these are ordinary Rust, one subcommand each. Every
//! subcommand builds what it needs in release mode and forwards the remaining arguments.

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "brownian-transformer's command runner")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train a model; with no arguments, W1 (the ViT on the embedded digits) with AdamW.
    /// Every flag is forwarded to `bmt train` (see `cargo xtask train --help`).
    #[command(disable_help_flag = true)]
    Train {
        /// Cargo features of the trainer to build with (e.g. `cuda`).
        #[arg(long)]
        features: Option<String>,
        /// Arguments for `bmt train`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the report's experiments (W1 × AdamW, K-FAC, CG-FAC × 3 seeds; finished runs are reused)
    /// and write `REPORT.md` with its figures (default `docs/report`).
    Report {
        /// Smoke test: one seed, two epochs.
        #[arg(long)]
        quick: bool,
        /// Directory of REPORT.md and the figures.
        #[arg(long)]
        out: Option<String>,
        /// Further arguments for the `report` binary (e.g. `--runs DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Train W1 with several optimizers over several seeds (diagnostics off) and print a Markdown
    /// table of accuracy, time to 95% test accuracy, steps/s and memory, mean ± sd over seeds.
    /// An optimizer `kfac:cg-matrix-free` selects a K-FAC solver.
    Compare {
        /// Optimizers (the first is the baseline of the ratios).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "adamw,kfac,cgfac,cgfac:cg-matrix-free"
        )]
        optimizers: Vec<String>,
        /// Seeds.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        /// Further arguments for every `bmt train`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark W1 (AdamW, K-FAC, CG-FAC, CG-FAC matrix-free), the GEMM ceiling and the fused ops
    /// in one process and one sitting: `cargo xtask bench [--json FILE] [--quick] [--threads N]`
    /// (see `cargo xtask bench --help`). Run it on an otherwise idle machine.
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for the trainer's `bench` binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(mut cmd: Command) -> ExitCode {
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo run --release --quiet -p bmt-trainer [--features F] --bin NAME -- ARGS...`
fn trainer_bin(name: &str, features: Option<&str>) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "bmt-trainer"]);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    cmd.args(["--bin", name, "--"]);
    cmd
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Trains W1 for every optimizer and seed (diagnostics off) and prints one Markdown row per
/// optimizer with the mean ± sd over seeds, and ratios to the first optimizer.
fn compare(optimizers: &[String], seeds: &[u64], extra: &[String]) -> Result<(), String> {
    let mut rows = Vec::new();
    for opt in optimizers {
        let mut s: Vec<serde_json::Value> = Vec::new();
        for seed in seeds {
            let (name, flags) = match opt.split_once(':') {
                Some((o, solver)) => (
                    format!("{o}-{solver}"),
                    vec![
                        "--optimizer".to_string(),
                        o.to_string(),
                        "--kfac-solver".into(),
                        solver.to_string(),
                    ],
                ),
                None => (opt.clone(), vec!["--optimizer".to_string(), opt.clone()]),
            };
            let out = format!("runs/compare/{name}-seed{seed}");
            let _ = std::fs::remove_dir_all(&out);
            eprintln!("training {name} seed {seed} → {out}");
            let mut cmd = trainer_bin("bmt", None);
            cmd.args([
                "train",
                "--no-diagnostics",
                "-q",
                "--seed",
                &seed.to_string(),
                "--out",
                &out,
            ])
            .args(&flags)
            .args(extra);
            let st = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !st.success() {
                return Err(format!("training {name} seed {seed} failed"));
            }
            let text = std::fs::read_to_string(format!("{out}/summary.json"))
                .map_err(|e| format!("{out}/summary.json: {e}"))?;
            s.push(serde_json::from_str(&text).map_err(|e| format!("{out}/summary.json: {e}"))?);
            rows.push((name.clone(), s.last().cloned().unwrap_or_default()));
        }
    }
    let names: Vec<String> = {
        let mut v: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        v.dedup();
        v
    };
    let col = |name: &str, key: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.0 == name)
            .filter_map(|r| r.1[key].as_f64())
            .collect()
    };
    println!("| optimizer | final test acc | best test acc | seconds to 95% (runs reaching it) | steps/s | wall s | peak MiB | to-95% ratio | steps/s ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let base_t95 = mean_sd(&col(&names[0], "seconds_to_95pct")).0;
    let base_sps = mean_sd(&col(&names[0], "steps_per_second")).0;
    for n in &names {
        let f = mean_sd(&col(n, "final_test_accuracy"));
        let b = mean_sd(&col(n, "best_test_accuracy"));
        let t95v = col(n, "seconds_to_95pct");
        let t = mean_sd(&t95v);
        let sps = mean_sd(&col(n, "steps_per_second"));
        let w = mean_sd(&col(n, "wall_seconds"));
        let m = mean_sd(&col(n, "peak_memory_mib"));
        let t95 = if t95v.is_empty() {
            "never".to_string()
        } else {
            format!("{:.1} ± {:.1} ({}/{})", t.0, t.1, t95v.len(), seeds.len())
        };
        let ratio = if t95v.is_empty() || base_t95.is_nan() {
            "—".to_string()
        } else {
            format!("{:.2}", t.0 / base_t95)
        };
        println!(
            "| {n} | {:.4} ± {:.4} | {:.4} ± {:.4} | {t95} | {:.2} ± {:.2} | {:.1} ± {:.1} | {:.0} | {ratio} | {:.2} |",
            f.0, f.1, b.0, b.1, sps.0, sps.1, w.0, w.1, m.0, sps.0 / base_sps
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Task::Train { features, args } => {
            let mut cmd = trainer_bin("bmt", features.as_deref());
            cmd.arg("train").args(args);
            status(cmd)
        }
        Task::Report { quick, out, args } => {
            let mut cmd = trainer_bin("report", None);
            if quick {
                cmd.arg("--quick");
            }
            if let Some(o) = out {
                cmd.args(["--out", &o]);
            }
            cmd.args(args);
            status(cmd)
        }
        Task::Bench { args } => {
            let mut cmd = trainer_bin("bench", None);
            cmd.args(args);
            status(cmd)
        }
        Task::Compare {
            optimizers,
            seeds,
            args,
        } => match compare(&optimizers, &seeds, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
