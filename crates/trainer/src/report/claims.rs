//! The verdict rules and their application. Every threshold is a constant used both by
//! [`rules_markdown`] (the "Verdict rules" section of the report, printed before any number) and by
//! the code that decides, so the text and the decision cannot drift apart.

use std::collections::BTreeMap;

use super::data::RunData;
use super::plot;
use super::stats::{median, Spread};
use crate::config::OptimizerKind;

/// Seeds needed per group before a rule that compares against the spread over seeds may say
/// "supported" or "refuted".
pub const MIN_SEEDS: usize = 3;
/// "Beyond the seed spread" means a difference larger than this many standard errors.
pub const SPREAD_K: f64 = 2.0;
/// Claim 1: tokens of one image count as collapsed (not spread) at a mean pairwise cosine ≥ this.
pub const COLLAPSE_COSINE: f64 = 0.99;
/// Claim 2: the measured radius matches MATH §1 when the relative deviation stays below this.
pub const SPHERE_SUPPORT: f64 = 1e-4;
/// Claim 2: a relative deviation above this refutes the sphere.
pub const SPHERE_REFUTE: f64 = 1e-2;
/// Claim 3: smallest change (nats for the entropy, absolute for |λ₂|) that counts as learned.
pub const MIN_KERNEL_CHANGE: f64 = 0.01;
/// Claim 4: the α interval compatible with Brownian motion.
pub const ALPHA_BAND: (f64, f64) = (0.9, 1.1);
/// Claim 4: Jarque–Bera p-value below which increments are not Gaussian.
pub const JB_P_MIN: f64 = 0.01;
/// Claim 4b: median |second order| / |first order| at or above which the term is not negligible.
pub const SECOND_ORDER_SUPPORT: f64 = 0.1;
/// Claim 4b: below this ratio the second-order term is negligible.
pub const SECOND_ORDER_REFUTE: f64 = 0.01;
/// Claim 5: the target test accuracy of "time to target" (lowered when some run never reaches it).
pub const TARGET_ACCURACY: f64 = 0.95;

/// A claim's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The data meet the rule's "supported" condition.
    Supported,
    /// The data meet the rule's "refuted" condition.
    Refuted,
    /// Neither (too few seeds, mixed results, or not measured).
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Supported => "supported",
            Self::Refuted => "refuted",
            Self::Inconclusive => "inconclusive",
        })
    }
}

/// One row of the claim table.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    /// Claim number as in the rules (`1`, `2`, `3`, `4`, `4b`, `5`, `5k`, `6`).
    pub id: &'static str,
    /// The claim in a few words.
    pub claim: &'static str,
    /// What is measured.
    pub quantity: &'static str,
    /// The value, mean ± standard deviation over seeds (or `not measured`).
    pub value: String,
    /// Which runs the value comes from.
    pub runs: String,
    /// The verdict by the claim's rule.
    pub verdict: Verdict,
    /// Which branch of the rule decided.
    pub why: String,
    /// The figure that shows it (file name beside `REPORT.md`).
    pub figure: &'static str,
}

/// Per-block change of the attention kernel from the first to the last epoch (claim 3).
#[derive(Debug, Clone)]
pub(crate) struct KernelChange {
    pub block: String,
    pub entropy: Option<Spread>,
    pub lambda2: Option<Spread>,
}

/// The rows and the intermediate numbers the report prints in its details.
#[derive(Debug, Clone)]
pub(crate) struct Evaluation {
    /// The claim table.
    pub rows: Vec<ClaimRow>,
    /// Target accuracy used for claim 5.
    pub target: f64,
    pub kernel_changes: Vec<KernelChange>,
    /// Per run (label) and layer: median |second| / |first| over the measured steps.
    pub second_order_layers: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The "Verdict rules" section, generated from the constants above.
pub fn rules_markdown() -> String {
    format!(
        "\
Spread: `mean ± sd` is the mean and the sample standard deviation (n − 1) over seeds. \"Beyond the \
seed spread\" means a difference of means larger than {k} standard errors, \
`SE = sqrt(sd₁²/n₁ + sd₂²/n₂)`. A rule that uses the spread needs at least {m} seeds per group; with \
fewer it answers **inconclusive**. Claims 1 and 2 (geometry of any trained model) use every run; \
claims 3, 4 and 4b (dynamics of ordinary training) use the AdamW runs; claims 5 and 6 compare \
optimizers. A run whose data lack a quantity makes the claim **inconclusive** (\"not measured\").

- **1. Tokens are random variables** (a necessary, measurable condition: the tokens of one image are \
spread, not one point, and they move with depth). Per run, at the last epoch: the largest mean \
pairwise cosine of the probe tokens over the depths of the residual stream, the smallest mean number \
of ε-clusters, and the depth-clock diffusion coefficient D. A run passes when cosine < {cos}, \
clusters > 1 and D > 0. **Supported**: every run passes; **refuted**: no run passes; otherwise \
inconclusive.
- **2. LayerNorm output lies on the sphere** (MATH §1, pre-affine, radius √n(1 + ε/σ²)^(−1/2)). \
Per run: the largest relative deviation of a token's radius from the prediction, over every \
LayerNorm and epoch. **Supported**: below {ss:e} in every run; **refuted**: above {sr:e} in some run; \
otherwise inconclusive.
- **3. Attention is a Markov kernel, and training learns it.** Row-stochastic by construction \
(softmax rows sum to 1), so only the second half is tested. Per run and block: ΔH = (head-mean row \
entropy at the last epoch) − (at the first epoch), and Δ|λ₂| likewise. A block's quantity has \
changed when |mean| > {k} × sd over seeds, |mean| ≥ {kc} and every seed has the same sign. \
**Supported**: some block's ΔH or Δ|λ₂| changed; **refuted**: none did (with ≥ {m} seeds); \
otherwise inconclusive.
- **4. Token updates are Brownian motion**, on both clocks (depth; training time per LayerNorm). Three \
criteria per clock: (a) the bootstrap interval of α overlaps [{alo}, {ahi}]; (b) increments pass \
Jarque–Bera, p ≥ {jb}; (c) the lag-1 autocorrelation of increments lies within the ±2/√N band. On \
the training clock a criterion holds when it holds for at least half of the LayerNorms with a fit. \
A run passes when all three hold on both clocks. **Supported**: every run passes; **refuted**: every \
run fails at least one criterion; otherwise inconclusive.
- **4b. The second-order term is not negligible.** Per run and tracked layer: the median over measured \
steps of |½⟨ΔW, G ΔW A⟩| / |⟨∇W, ΔW⟩|; per run the median over layers. **Supported**: ≥ {s2s} in \
every run; **refuted**: < {s2r} in every run; otherwise inconclusive (also when not measured).
- **5. The second-order optimizer for attention helps** (CG-FAC, the paper's iterative K-FAC; row 5k: \
eigen K-FAC). Target accuracy a* = {ta}, lowered to the smallest best test accuracy of all runs \
(rounded down to 0.01) when some run never reaches {ta}. Per run: wall seconds at the end of the \
first epoch with test accuracy ≥ a*, and the final test accuracy. **Supported**: reaches a* sooner \
than AdamW beyond the seed spread and its final accuracy is not lower beyond the spread; \
**refuted**: reaches a* later beyond the spread, or its final accuracy is lower beyond the spread; \
otherwise inconclusive.
- **6. CG-FAC costs less time and memory than K-FAC.** Training steps per second (summary), and bytes \
of optimizer state in the last checkpoint (deterministic, no spread). **Supported**: CG-FAC has \
more steps/s beyond the seed spread and less state in every run; **refuted**: CG-FAC has fewer \
steps/s beyond the spread, or more state in every run; otherwise inconclusive.
",
        k = SPREAD_K,
        m = MIN_SEEDS,
        cos = COLLAPSE_COSINE,
        ss = SPHERE_SUPPORT,
        sr = SPHERE_REFUTE,
        kc = MIN_KERNEL_CHANGE,
        alo = ALPHA_BAND.0,
        ahi = ALPHA_BAND.1,
        jb = JB_P_MIN,
        s2s = SECOND_ORDER_SUPPORT,
        s2r = SECOND_ORDER_REFUTE,
        ta = TARGET_ACCURACY,
    )
}

/// Supported when every element passes, refuted when none does, inconclusive otherwise (and when
/// some element could not be judged, `None`, or there is none).
fn all_or_none(passes: &[Option<bool>]) -> (Verdict, String) {
    let n = passes.len();
    let yes = passes.iter().filter(|p| **p == Some(true)).count();
    let no = passes.iter().filter(|p| **p == Some(false)).count();
    let verdict = if n == 0 || yes + no < n {
        Verdict::Inconclusive
    } else if yes == n {
        Verdict::Supported
    } else if no == n {
        Verdict::Refuted
    } else {
        Verdict::Inconclusive
    };
    let why = format!(
        "{yes} of {n} runs pass, {no} fail{}",
        if yes + no < n {
            format!(", {} not measured", n - yes - no)
        } else {
            String::new()
        }
    );
    (verdict, why)
}

fn of(runs: &[&RunData], f: impl Fn(&RunData) -> Option<f64>) -> Option<Spread> {
    let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    Spread::of(&v)
}

fn show(s: Option<Spread>, digits: usize) -> String {
    s.map_or_else(|| "not measured".into(), |s| s.show(digits))
}

fn show_e(s: Option<Spread>) -> String {
    s.map_or_else(
        || "not measured".into(),
        |s| format!("{:.2e} ± {:.1e}", s.mean, s.sd),
    )
}

fn runs_label(runs: &[&RunData]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs {
        *by.entry(r.optimizer.to_string()).or_default() += 1;
    }
    by.iter()
        .map(|(k, n)| format!("{k} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn claim1(all: &[&RunData]) -> ClaimRow {
    let cos = |r: &RunData| {
        let last = r.epochs.last()?;
        last.clusters.iter().map(|c| c.mean_cosine).reduce(f64::max)
    };
    let clusters = |r: &RunData| {
        let last = r.epochs.last()?;
        last.clusters
            .iter()
            .map(|c| c.mean_clusters)
            .reduce(f64::min)
    };
    let d = |r: &RunData| r.depth.as_ref().map(|f| f.diffusion);
    let passes: Vec<Option<bool>> = all
        .iter()
        .map(|r| Some(cos(r)? < COLLAPSE_COSINE && clusters(r)? > 1.0 && d(r)? > 0.0))
        .collect();
    let (verdict, why) = all_or_none(&passes);
    ClaimRow {
        id: "1",
        claim: "tokens are random variables",
        quantity: "largest mean pairwise cosine of an image's tokens over depth; fewest ε-clusters; depth-clock D",
        value: format!(
            "cos {}; clusters {}; D {}",
            show(of(all, cos), 3),
            show(of(all, clusters), 1),
            show(of(all, d), 3)
        ),
        runs: runs_label(all),
        verdict,
        why,
        figure: plot::FIG_TOKENS,
    }
}

fn max_sphere_deviation(r: &RunData) -> Option<f64> {
    r.epochs
        .iter()
        .flat_map(|e| e.layer_norms.values().map(|l| l.max_relative_deviation))
        .filter(|x| x.is_finite())
        .reduce(f64::max)
}

fn claim2(all: &[&RunData]) -> ClaimRow {
    let devs: Vec<Option<f64>> = all.iter().map(|r| max_sphere_deviation(r)).collect();
    let verdict = if devs.iter().any(|d| d.is_some_and(|d| d > SPHERE_REFUTE)) {
        Verdict::Refuted
    } else if !devs.is_empty() && devs.iter().all(|d| d.is_some_and(|d| d < SPHERE_SUPPORT)) {
        Verdict::Supported
    } else {
        Verdict::Inconclusive
    };
    let worst = devs.iter().flatten().copied().reduce(f64::max);
    ClaimRow {
        id: "2",
        claim: "LayerNorm output lies on the sphere",
        quantity: "largest relative radius deviation from MATH §1, over LayerNorms and epochs",
        value: format!(
            "{} (worst {})",
            show_e(of(all, max_sphere_deviation)),
            worst.map_or("not measured".into(), |w| format!("{w:.2e}"))
        ),
        runs: runs_label(all),
        verdict,
        why: match verdict {
            Verdict::Supported => format!("every run below {SPHERE_SUPPORT:e}"),
            Verdict::Refuted => format!("some run above {SPHERE_REFUTE:e}"),
            Verdict::Inconclusive => "between the thresholds, or not measured".into(),
        },
        figure: plot::FIG_RADIUS,
    }
}

fn head_mean(
    heads: &[super::data::HeadRecord],
    f: impl Fn(&super::data::HeadRecord) -> f64,
) -> f64 {
    if heads.is_empty() {
        return f64::NAN;
    }
    heads.iter().map(f).sum::<f64>() / heads.len() as f64
}

/// Per block: the change from the first to the last epoch of each run.
fn kernel_changes(runs: &[&RunData]) -> Vec<(KernelChange, Vec<f64>, Vec<f64>)> {
    let blocks: Vec<String> = runs
        .first()
        .and_then(|r| r.epochs.last())
        .map(|e| e.markov.keys().cloned().collect())
        .unwrap_or_default();
    blocks
        .into_iter()
        .map(|b| {
            let mut dh = Vec::new();
            let mut dl = Vec::new();
            for r in runs {
                let (Some(first), Some(last)) = (r.epochs.first(), r.epochs.last()) else {
                    continue;
                };
                if r.epochs.len() < 2 {
                    continue;
                }
                let (Some(f), Some(l)) = (first.markov.get(&b), last.markov.get(&b)) else {
                    continue;
                };
                dh.push(
                    head_mean(l, |h| h.row_entropy_mean) - head_mean(f, |h| h.row_entropy_mean),
                );
                dl.push(head_mean(l, |h| h.lambda2_abs) - head_mean(f, |h| h.lambda2_abs));
            }
            (
                KernelChange {
                    block: b,
                    entropy: Spread::of(&dh),
                    lambda2: Spread::of(&dl),
                },
                dh,
                dl,
            )
        })
        .collect()
}

/// Claim 3's test of one block's quantity.
fn changed(s: Option<Spread>, values: &[f64]) -> bool {
    let Some(s) = s else { return false };
    let same_sign = values.iter().all(|v| *v > 0.0) || values.iter().all(|v| *v < 0.0);
    s.n >= MIN_SEEDS
        && s.mean.abs() > SPREAD_K * s.sd
        && s.mean.abs() >= MIN_KERNEL_CHANGE
        && same_sign
}

fn claim3(adamw: &[&RunData]) -> (ClaimRow, Vec<KernelChange>) {
    let changes = kernel_changes(adamw);
    let mut changed_list = Vec::new();
    for (c, dh, dl) in &changes {
        if changed(c.entropy, dh) {
            changed_list.push(format!("ΔH {}", c.block));
        }
        if changed(c.lambda2, dl) {
            changed_list.push(format!("Δ|λ₂| {}", c.block));
        }
    }
    let n = changes
        .iter()
        .filter_map(|c| c.0.entropy.map(|s| s.n))
        .min()
        .unwrap_or(0);
    let verdict = if !changed_list.is_empty() {
        Verdict::Supported
    } else if n >= MIN_SEEDS {
        Verdict::Refuted
    } else {
        Verdict::Inconclusive
    };
    let biggest = |f: &dyn Fn(&KernelChange) -> Option<Spread>| {
        changes
            .iter()
            .filter_map(|c| Some((c.0.block.clone(), f(&c.0)?)))
            .max_by(|a, b| a.1.mean.abs().total_cmp(&b.1.mean.abs()))
    };
    let fmt = |x: Option<(String, Spread)>, name: &str| {
        x.map_or(format!("{name} not measured"), |(b, s)| {
            format!("{name}({b}) {}", s.show(3))
        })
    };
    let value = format!(
        "{}; {}",
        fmt(biggest(&|c| c.entropy), "ΔH"),
        fmt(biggest(&|c| c.lambda2), "Δ|λ₂|")
    );
    let why = match verdict {
        Verdict::Supported => format!("changed: {}", changed_list.join(", ")),
        Verdict::Refuted => "no block changed beyond the seed spread".into(),
        Verdict::Inconclusive => format!("{n} seeds, need {MIN_SEEDS}"),
    };
    (
        ClaimRow {
            id: "3",
            claim: "attention is a Markov kernel that training learns",
            quantity:
                "first→last epoch change of head-mean row entropy H and |λ₂| (largest block shown)",
            value,
            runs: runs_label(adamw),
            verdict,
            why,
            figure: plot::FIG_ATTENTION,
        },
        changes.into_iter().map(|c| c.0).collect(),
    )
}

/// Claim 4's three criteria on one fit: (α band, Jarque–Bera, autocorrelation).
pub(crate) fn brownian_criteria(f: &super::data::ClockFit) -> [bool; 3] {
    [
        f.alpha_ci.0 <= ALPHA_BAND.1 && f.alpha_ci.1 >= ALPHA_BAND.0,
        f.jarque_bera_p_value >= JB_P_MIN,
        f.autocorrelation.abs() <= f.autocorr_band,
    ]
}

/// Claim 4's criteria on the training clock of a run (each holds at ≥ half of the fitted
/// LayerNorms), or `None` without any fit.
fn training_criteria(r: &RunData) -> Option<[bool; 3]> {
    let fits: Vec<_> = r
        .training
        .values()
        .filter_map(|f| f.as_ref().ok())
        .collect();
    if fits.is_empty() {
        return None;
    }
    let mut out = [false; 3];
    for (i, o) in out.iter_mut().enumerate() {
        let yes = fits.iter().filter(|f| brownian_criteria(f)[i]).count();
        *o = 2 * yes >= fits.len();
    }
    Some(out)
}

fn training_alpha(r: &RunData) -> Option<f64> {
    let a: Vec<f64> = r
        .training
        .values()
        .filter_map(|f| f.as_ref().ok().map(|f| f.alpha))
        .collect();
    median(&a)
}

fn claim4(adamw: &[&RunData]) -> ClaimRow {
    let passes: Vec<Option<bool>> = adamw
        .iter()
        .map(|r| {
            let d = brownian_criteria(r.depth.as_ref()?);
            let t = training_criteria(r)?;
            Some(d.iter().chain(&t).all(|x| *x))
        })
        .collect();
    let (verdict, why) = all_or_none(&passes);
    let count = |f: &dyn Fn(&RunData) -> Option<[bool; 3]>| -> String {
        let mut c = [0; 3];
        for r in adamw {
            if let Some(x) = f(r) {
                for i in 0..3 {
                    c[i] += x[i] as usize;
                }
            }
        }
        format!("{}/{}/{}", c[0], c[1], c[2])
    };
    let depth_ci = adamw
        .iter()
        .filter_map(|r| r.depth.as_ref().map(|f| f.alpha_ci))
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let value = format!(
        "α depth {}{}; α train (median over LayerNorms) {}; runs passing (α/JB/ρ₁) depth {}, train {} of {}",
        show(of(adamw, |r| r.depth.as_ref().map(|f| f.alpha)), 3),
        depth_ci.map_or(String::new(), |c| format!(" (CIs within [{:.3}, {:.3}])", c.0, c.1)),
        show(of(adamw, training_alpha), 3),
        count(&|r| r.depth.as_ref().map(brownian_criteria)),
        count(&training_criteria),
        adamw.len()
    );
    ClaimRow {
        id: "4",
        claim: "token updates are Brownian motion",
        quantity: "MSD exponent α with bootstrap CI, Jarque–Bera p, lag-1 autocorrelation vs band, both clocks",
        value,
        runs: runs_label(adamw),
        verdict,
        why,
        figure: plot::FIG_MSD,
    }
}

/// Per layer, the median over measured steps of |second| / |first|.
pub(crate) fn second_order_ratios(r: &RunData) -> BTreeMap<String, f64> {
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for rec in &r.second_order {
        for (k, (first, second)) in &rec.layers {
            if first.abs() > 0.0 {
                per.entry(k.clone())
                    .or_default()
                    .push(second.abs() / first.abs());
            }
        }
    }
    per.into_iter()
        .filter_map(|(k, v)| Some((k, median(&v)?)))
        .collect()
}

fn claim4b(adamw: &[&RunData]) -> (ClaimRow, BTreeMap<String, BTreeMap<String, f64>>) {
    let per_run: BTreeMap<String, BTreeMap<String, f64>> = adamw
        .iter()
        .map(|r| (r.label(), second_order_ratios(r)))
        .collect();
    let run_ratio =
        |r: &RunData| median(&per_run[&r.label()].values().copied().collect::<Vec<_>>());
    let measured: Vec<f64> = adamw.iter().filter_map(|r| run_ratio(r)).collect();
    let verdict = if measured.is_empty() || measured.len() < adamw.len() {
        Verdict::Inconclusive
    } else if measured.iter().all(|x| *x >= SECOND_ORDER_SUPPORT) {
        Verdict::Supported
    } else if measured.iter().all(|x| *x < SECOND_ORDER_REFUTE) {
        Verdict::Refuted
    } else {
        Verdict::Inconclusive
    };
    let s = Spread::of(&measured);
    (
        ClaimRow {
            id: "4b",
            claim: "the second-order term is not negligible",
            quantity: "median over layers of median |½⟨ΔW, GΔWA⟩| / |⟨∇W, ΔW⟩|",
            value: s.map_or("not measured".into(), |s| {
                format!("{:.3e} ± {:.1e}", s.mean, s.sd)
            }),
            runs: runs_label(adamw),
            verdict,
            why: if measured.is_empty() {
                "no second-order records in the runs".into()
            } else {
                format!(
                    "{} of {} runs ≥ {SECOND_ORDER_SUPPORT}, {} < {SECOND_ORDER_REFUTE}",
                    measured
                        .iter()
                        .filter(|x| **x >= SECOND_ORDER_SUPPORT)
                        .count(),
                    measured.len(),
                    measured
                        .iter()
                        .filter(|x| **x < SECOND_ORDER_REFUTE)
                        .count()
                )
            },
            figure: plot::FIG_SECOND_ORDER,
        },
        per_run,
    )
}

/// Claim 5's target accuracy: [`TARGET_ACCURACY`], or the smallest best accuracy of all runs rounded
/// down to 0.01 when that is lower.
pub(crate) fn target_accuracy(runs: &[RunData]) -> f64 {
    let min_best = runs
        .iter()
        .map(|r| {
            r.epochs
                .iter()
                .map(|e| e.test_accuracy)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .fold(f64::INFINITY, f64::min);
    if min_best >= TARGET_ACCURACY {
        TARGET_ACCURACY
    } else {
        (min_best * 100.0).floor() / 100.0
    }
}

fn claim5(
    id: &'static str,
    claim: &'static str,
    opt: &[&RunData],
    adamw: &[&RunData],
    target: f64,
) -> ClaimRow {
    let t = |r: &RunData| r.seconds_to(target);
    let acc = |r: &RunData| Some(r.final_test_accuracy);
    let (to, ta, ao, aa) = (of(opt, t), of(adamw, t), of(opt, acc), of(adamw, acc));
    let (verdict, why) = match (to, ta, ao, aa) {
        (Some(to), Some(ta), Some(ao), Some(aa)) if to.n >= MIN_SEEDS && ta.n >= MIN_SEEDS => {
            let (dt, st) = (ta.mean - to.mean, to.se_diff(&ta));
            let (da, sa) = (ao.mean - aa.mean, ao.se_diff(&aa));
            let why = format!(
                "AdamW − this: {dt:.1} s (2 SE {:.1}); final accuracy this − AdamW: {da:.4} (2 SE {:.4})",
                SPREAD_K * st,
                SPREAD_K * sa
            );
            if dt < -SPREAD_K * st || da < -SPREAD_K * sa {
                (Verdict::Refuted, why)
            } else if dt > SPREAD_K * st {
                (Verdict::Supported, why)
            } else {
                (Verdict::Inconclusive, why)
            }
        }
        _ => (
            Verdict::Inconclusive,
            format!(
                "{} and {} seeds reached a*, need {MIN_SEEDS} each",
                to.map_or(0, |s| s.n),
                ta.map_or(0, |s| s.n)
            ),
        ),
    };
    ClaimRow {
        id,
        claim,
        quantity: "wall seconds to test accuracy a*; final test accuracy (vs AdamW)",
        value: format!(
            "a* = {target:.2}: {} s vs AdamW {} s; final accuracy {} vs {}",
            show(to, 1),
            show(ta, 1),
            show(ao, 4),
            show(aa, 4)
        ),
        runs: format!("{}; {}", runs_label(opt), runs_label(adamw)),
        verdict,
        why,
        figure: plot::FIG_TIME,
    }
}

fn claim6(cg: &[&RunData], kfac: &[&RunData]) -> ClaimRow {
    let sps = |r: &RunData| Some(r.steps_per_second);
    let mem = |r: &RunData| Some(r.optimizer_state_bytes as f64 / (1 << 20) as f64);
    let (sc, sk) = (of(cg, sps), of(kfac, sps));
    let bytes = |rs: &[&RunData]| -> Option<(u64, u64)> {
        let v: Vec<u64> = rs.iter().map(|r| r.optimizer_state_bytes).collect();
        Some((*v.iter().min()?, *v.iter().max()?))
    };
    let (verdict, why) = match (sc, sk, bytes(cg), bytes(kfac)) {
        (Some(sc), Some(sk), Some((cmin, cmax)), Some((kmin, kmax))) => {
            let less_memory = cmax < kmin;
            let more_memory = cmin > kmax;
            let d = sc.mean - sk.mean;
            let se = sc.se_diff(&sk);
            let enough = sc.n >= MIN_SEEDS && sk.n >= MIN_SEEDS;
            let why = format!(
                "steps/s CG-FAC − K-FAC {d:.2} (2 SE {:.2}, {} and {} seeds); state {} K-FAC's",
                SPREAD_K * se,
                sc.n,
                sk.n,
                if less_memory {
                    "below"
                } else if more_memory {
                    "above"
                } else {
                    "equal to or overlapping"
                }
            );
            if more_memory || (enough && d < -SPREAD_K * se) {
                (Verdict::Refuted, why)
            } else if enough && d > SPREAD_K * se && less_memory {
                (Verdict::Supported, why)
            } else {
                (Verdict::Inconclusive, why)
            }
        }
        _ => (Verdict::Inconclusive, "not measured".into()),
    };
    ClaimRow {
        id: "6",
        claim: "CG-FAC costs less time and memory than K-FAC",
        quantity: "training steps/s; optimizer state in the checkpoint (MiB)",
        value: format!(
            "steps/s {} vs K-FAC {}; state {} vs {} MiB",
            show(sc, 2),
            show(sk, 2),
            show(of(cg, mem), 2),
            show(of(kfac, mem), 2)
        ),
        runs: format!("{}; {}", runs_label(cg), runs_label(kfac)),
        verdict,
        why,
        figure: plot::FIG_COST,
    }
}

/// Applies every rule to the runs.
pub(crate) fn evaluate(runs: &[RunData]) -> Evaluation {
    let all: Vec<&RunData> = runs.iter().collect();
    let pick =
        |k: OptimizerKind| -> Vec<&RunData> { runs.iter().filter(|r| r.optimizer == k).collect() };
    let (adamw, kfac, cgfac) = (
        pick(OptimizerKind::Adamw),
        pick(OptimizerKind::Kfac),
        pick(OptimizerKind::Cgfac),
    );
    let target = target_accuracy(runs);
    let (c3, kernel_changes) = claim3(&adamw);
    let (c4b, second_order_layers) = claim4b(&adamw);
    let rows = vec![
        claim1(&all),
        claim2(&all),
        c3,
        claim4(&adamw),
        c4b,
        claim5(
            "5",
            "a second-order optimizer for attention (CG-FAC) helps",
            &cgfac,
            &adamw,
            target,
        ),
        claim5("5k", "… and eigen K-FAC (reference)", &kfac, &adamw, target),
        claim6(&cgfac, &kfac),
    ];
    Evaluation {
        rows,
        target,
        kernel_changes,
        second_order_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_none_needs_every_run_judged() {
        assert_eq!(all_or_none(&[Some(true), Some(true)]).0, Verdict::Supported);
        assert_eq!(all_or_none(&[Some(false), Some(false)]).0, Verdict::Refuted);
        assert_eq!(
            all_or_none(&[Some(true), Some(false)]).0,
            Verdict::Inconclusive
        );
        assert_eq!(all_or_none(&[Some(true), None]).0, Verdict::Inconclusive);
        assert_eq!(all_or_none(&[]).0, Verdict::Inconclusive);
    }

    #[test]
    fn kernel_change_rule() {
        let s = |v: &[f64]| Spread::of(v);
        // mean −0.1, sd 0.01: far beyond 2 sd, same sign, above the minimum change.
        let v = [-0.09, -0.1, -0.11];
        assert!(changed(s(&v), &v));
        // Same but only two seeds: not enough.
        let v2 = [-0.09, -0.11];
        assert!(!changed(s(&v2), &v2));
        // Mixed signs.
        let v3 = [0.05, -0.01, 0.2];
        assert!(!changed(s(&v3), &v3));
        // Consistent but below the minimum change.
        let v4 = [0.005, 0.005, 0.006];
        assert!(!changed(s(&v4), &v4));
    }

    #[test]
    fn rules_text_carries_the_constants() {
        let t = rules_markdown();
        for needle in [
            "0.99",
            "1e-4",
            "1e-2",
            "[0.9, 1.1]",
            "p ≥ 0.01",
            "≥ 0.1",
            "< 0.01",
            "0.95",
            "2 standard errors",
            "at least 3 seeds",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from the rules");
        }
    }
}
