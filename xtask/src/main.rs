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

fn main() -> ExitCode {
    match Cli::parse().command {
        Task::Train { features, args } => {
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "bmt-trainer",
                "--bin",
                "bmt",
            ]);
            if let Some(f) = features {
                cmd.args(["--features", &f]);
            }
            cmd.args(["--", "train"]).args(args);
            status(cmd)
        }
        Task::Report { quick, out, args } => {
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "bmt-trainer",
                "--bin",
                "report",
                "--",
            ]);
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
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "bmt-trainer",
                "--bin",
                "bench",
                "--",
            ]);
            cmd.args(args);
            status(cmd)
        }
    }
}
