//! `bmt`: the command line of brownian-transformer (`cargo xtask train` forwards here).

use std::path::PathBuf;
use std::process::ExitCode;

use bmt_trainer::config::{OptimizerKind, TrainConfig};
use bmt_trainer::data::DataSource;
use bmt_trainer::kfac::KfacSettings;
use bmt_trainer::run::{read_config, run, RunOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bmt",
    version,
    about = "Train transformers and measure the geometry and dynamics of their attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (default: W1, the ViT on the embedded digits, with AdamW).
    Train(TrainArgs),
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
struct TrainArgs {
    /// Data: digits (embedded), mnist:DIR (MNIST or Fashion-MNIST idx files), cifar10:DIR.
    #[arg(long, default_value = "digits")]
    data: String,
    /// Number of epochs (with --resume: the new total).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (the last partial batch of an epoch is dropped).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate (default: 1e-3 for adamw, 0.05 for sgd, the K-FAC defaults for kfac/cgfac).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialisation, shuffling and sampling; also the split seed unless --split-seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed of the train/test split (digits).
    #[arg(long)]
    split_seed: Option<u64>,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    optimizer: OptimizerKind,
    /// Momentum of SGD and of K-FAC's outer update.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Weight decay (decoupled for AdamW).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Patch size (default: 2 for 8×8 images, 4 for larger).
    #[arg(long)]
    patch: Option<usize>,
    /// Device: cpu, cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads for Candle's kernels (default 1: measured fastest for W1, see README).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Run directory (default: runs/<data>-<optimizer>-seed<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in DIR from its newest checkpoint.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Start from the weights in this safetensors file instead of the seeded initialisation.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// The --init file stores linear weights (in, out), as `x·W` frameworks do (e.g. the peer fixture).
    #[arg(long, requires = "init")]
    init_in_out: bool,
    /// K-FAC solver: eigen, inverse, cg (CG-FAC on the factors) or cg-matrix-free (kfac/cgfac only).
    #[arg(long)]
    kfac_solver: Option<String>,
    /// K-FAC weight sharing over tokens: reduce (default) or expand (kfac/cgfac only).
    #[arg(long)]
    weight_sharing: Option<String>,
    /// K-FAC Tikhonov damping λ (kfac/cgfac only).
    #[arg(long)]
    damping: Option<f64>,
    /// Fisher type: mc (Monte-Carlo labels, the default) or empirical (kfac/cgfac only).
    #[arg(long)]
    fisher: Option<String>,
    /// Factor refresh period in steps (kfac/cgfac only).
    #[arg(long)]
    k_fac: Option<u64>,
    /// Eigenbasis / inverse refresh period in steps (kfac/cgfac only).
    #[arg(long)]
    k_inv: Option<u64>,
    /// KL-clipping constant, 0 to disable (kfac/cgfac only).
    #[arg(long)]
    kl_clip: Option<f64>,
    /// CG tolerance on the relative squared residual (kfac/cgfac only).
    #[arg(long)]
    cg_tol: Option<f64>,
    /// CG iteration cap (kfac/cgfac only).
    #[arg(long)]
    cg_max_iters: Option<usize>,
    /// A step record goes to metrics.jsonl every this many steps (0: none).
    #[arg(long, default_value_t = 5)]
    log_every: usize,
    /// Skip the per-epoch diagnostics (sphere, Markov, Brownian).
    #[arg(long)]
    no_diagnostics: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    bmt_trainer::device::set_cpu_threads(a.threads)?;
    if let Some(dir) = a.resume {
        if let Some(flag) = changed_on_resume() {
            anyhow::bail!(
                "invalid {flag}: a resumed run keeps the settings in its config.json; only --epochs, --threads and --quiet may be given with --resume"
            );
        }
        let mut config = read_config(&dir)?;
        if let Some(e) = a.epochs {
            config.epochs = e;
        }
        config.threads = a.threads;
        let summary = run(
            config,
            &dir,
            &RunOptions {
                resume: true,
                quiet: a.quiet,
                stop_after: None,
            },
        )?;
        let _ = summary;
        return Ok(());
    }
    let source: DataSource = a.data.parse()?;
    let mut config = TrainConfig::w1();
    config.data = source.to_string();
    config.seed = a.seed;
    config.split_seed = a.split_seed.unwrap_or(a.seed);
    config.optimizer = a.optimizer;
    config.lr = a.lr.unwrap_or(match a.optimizer {
        OptimizerKind::Adamw => 1e-3,
        OptimizerKind::Sgd => 0.05,
        OptimizerKind::Kfac | OptimizerKind::Cgfac => bmt_trainer::kfac::DEFAULT_LR,
    });
    config.momentum = a.momentum;
    config.weight_decay = a.weight_decay;
    config.epochs = a.epochs.unwrap_or(30);
    config.batch_size = a.batch_size;
    config.device = a.device;
    config.threads = a.threads;
    config.log_every = a.log_every;
    config.diagnostics = !a.no_diagnostics;
    config.init = a.init;
    config.init_in_out = a.init_in_out;
    config.model.patch = a.patch.unwrap_or(match source {
        DataSource::Digits => 2,
        _ => 4,
    });
    let kfac_flags = [
        ("--kfac-solver", a.kfac_solver.is_some()),
        ("--damping", a.damping.is_some()),
        ("--weight-sharing", a.weight_sharing.is_some()),
        ("--fisher", a.fisher.is_some()),
        ("--k-fac", a.k_fac.is_some()),
        ("--k-inv", a.k_inv.is_some()),
        ("--kl-clip", a.kl_clip.is_some()),
        ("--cg-tol", a.cg_tol.is_some()),
        ("--cg-max-iters", a.cg_max_iters.is_some()),
    ];
    if matches!(a.optimizer, OptimizerKind::Kfac | OptimizerKind::Cgfac) {
        let mut k = KfacSettings::defaults(a.optimizer);
        if let Some(v) = a.kfac_solver {
            k.solver = v;
        }
        if let Some(v) = a.damping {
            k.damping = v;
        }
        if let Some(v) = a.weight_sharing {
            k.sharing = v;
        }
        if let Some(v) = a.fisher {
            k.fisher = v;
        }
        if let Some(v) = a.k_fac {
            k.k_fac = v;
        }
        if let Some(v) = a.k_inv {
            k.k_inv = v;
        }
        if let Some(v) = a.kl_clip {
            k.kl_clip = v;
        }
        if let Some(v) = a.cg_tol {
            k.cg_tol = v;
        }
        if let Some(v) = a.cg_max_iters {
            k.cg_max_iters = v;
        }
        config.kfac = Some(k);
    } else if let Some((flag, _)) = kfac_flags.iter().find(|(_, given)| *given) {
        anyhow::bail!(
            "invalid {flag}: it applies only to --optimizer kfac or cgfac, not {}",
            a.optimizer
        );
    }
    let out = a.out.unwrap_or_else(|| {
        let data = match source {
            DataSource::Digits => "digits",
            DataSource::Mnist(_) => "mnist",
            DataSource::Cifar10(_) => "cifar10",
            DataSource::Text(_) => "text",
        };
        PathBuf::from("runs").join(format!("{data}-{}-seed{}", a.optimizer, a.seed))
    });
    run(
        config,
        &out,
        &RunOptions {
            resume: false,
            quiet: a.quiet,
            stop_after: None,
        },
    )?;
    Ok(())
}

/// The first flag given on the command line besides those a resume may change.
fn changed_on_resume() -> Option<String> {
    use clap::{parser::ValueSource, CommandFactory};
    let matches = Cli::command().try_get_matches().ok()?;
    let (_, sub) = matches.subcommand()?;
    let allowed = ["resume", "epochs", "threads", "quiet"];
    sub.ids()
        .map(|id| id.as_str())
        // The derive adds an argument group named after the struct; only real flags count.
        .filter(|id| !allowed.contains(id) && *id != "TrainArgs")
        .find(|id| sub.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line, exit code 1, like every other error of this command.
            // clap's message: "error: …" possibly continued on indented lines, then usage.
            let msg = e.to_string();
            let text: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see `bmt train --help`)", text.join(" "));
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Train(a) => train(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
