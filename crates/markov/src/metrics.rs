//! Per-matrix metrics, computed for every (batch, head) in parallel, and per-head summaries.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{MarkovError, Result};
use crate::kernels::AttentionKernels;
use crate::matrix::{
    entropy, KernelView, SinkhornOptions, SinkhornResult, Stationary, StationaryMethod,
};

/// Options for [`kernel_metrics`] and [`AttentionKernels::metrics`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricsOptions {
    /// How π is computed (default: the direct method).
    pub stationary: StationaryMethod,
    /// ε of the mixing-time bound `t_mix(ε)` (default 1/4), in (0, 1).
    pub mixing_eps: f64,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            stationary: StationaryMethod::Direct,
            mixing_eps: 0.25,
        }
    }
}

/// Markov-chain metrics of one T × T attention matrix P (MATH.md §2). Entropies in nats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelMetrics {
    /// `‖πᵀP − πᵀ‖₁` of the computed stationary distribution π.
    pub pi_residual: f64,
    /// Entropy of π, `−Σ π_i ln π_i` ∈ [0, ln T] (TokenRank concentration).
    pub pi_entropy: f64,
    /// `min_i π_i` (0 for a causal P, whose π is e₀).
    pub pi_min: f64,
    /// `max_i π_i`.
    pub pi_max: f64,
    /// Second-largest eigenvalue modulus |λ₂| (dense eigenvalues).
    pub lambda2_abs: f64,
    /// Absolute spectral gap `1 − |λ₂|`.
    pub spectral_gap: f64,
    /// Dobrushin coefficient `δ(P) = ½ max_{i,j} Σ_k |P_ik − P_jk|`; `|λ₂| ≤ δ(P) ≤ 1`.
    pub dobrushin: f64,
    /// Mean row entropy `(1/T) Σ_i H_i`, `H_i = −Σ_j P_ij ln P_ij`.
    pub row_entropy_mean: f64,
    /// `min_i H_i` (entropy collapse shows here first).
    pub row_entropy_min: f64,
    /// `max_i H_i`.
    pub row_entropy_max: f64,
    /// Mean effective number of neighbours `(1/T) Σ_i exp(H_i)` ∈ [1, T].
    pub effective_neighbours_mean: f64,
    /// Entropy rate `Σ_i π_i H_i`.
    pub entropy_rate: f64,
    /// Reversibility defect `‖ΠP − PᵀΠ‖_F / ‖ΠP‖_F`, Π = diag(π).
    pub reversibility_defect: f64,
    /// Doubly-stochastic deviation `‖Pᵀ1 − 1‖₂ / √T` (RMS of column sums minus one).
    pub doubly_stochastic_deviation: f64,
    /// Mixing-time bound `log(1/(ε π_min)) / (1 − |λ₂|)` with ε = [`MetricsOptions::mixing_eps`]
    /// (Levin–Peres Thm 12.4 for reversible chains; for non-reversible P a heuristic).
    /// `+∞` when π_min = 0 or the gap is 0 (no bound).
    pub mixing_time_bound: f64,
}

/// Per-head means over the batch of the [`KernelMetrics`] the trainer logs every epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadSummary {
    /// Head index.
    pub head: usize,
    /// Number of batch elements averaged.
    pub count: usize,
    /// Mean of [`KernelMetrics::row_entropy_mean`].
    pub row_entropy_mean: f64,
    /// Mean of [`KernelMetrics::row_entropy_min`].
    pub row_entropy_min: f64,
    /// Mean of [`KernelMetrics::effective_neighbours_mean`].
    pub effective_neighbours_mean: f64,
    /// Mean of [`KernelMetrics::lambda2_abs`].
    pub lambda2_abs: f64,
    /// Mean of [`KernelMetrics::spectral_gap`].
    pub spectral_gap: f64,
    /// Mean of [`KernelMetrics::dobrushin`].
    pub dobrushin: f64,
    /// Mean of [`KernelMetrics::doubly_stochastic_deviation`].
    pub doubly_stochastic_deviation: f64,
    /// Mean of [`KernelMetrics::reversibility_defect`].
    pub reversibility_defect: f64,
    /// Mean of [`KernelMetrics::pi_entropy`].
    pub pi_entropy: f64,
    /// Mean of [`KernelMetrics::entropy_rate`].
    pub entropy_rate: f64,
    /// Maximum over the batch of [`KernelMetrics::pi_residual`] (a quality check on π).
    pub pi_residual_max: f64,
}

fn check_opts(opts: &MetricsOptions) -> Result<()> {
    if !(opts.mixing_eps > 0.0 && opts.mixing_eps < 1.0) {
        return Err(MarkovError::Parameter {
            name: "mixing_eps",
            value: opts.mixing_eps,
            hint: "the mixing-time ε must lie in (0, 1), e.g. 0.25",
        });
    }
    if let StationaryMethod::Power { tol, .. } = opts.stationary {
        if !(tol.is_finite() && tol > 0.0) {
            return Err(MarkovError::Parameter {
                name: "tol",
                value: tol,
                hint: "power-iteration tolerance must be finite and > 0 (e.g. 1e-12)",
            });
        }
    }
    Ok(())
}

/// All [`KernelMetrics`] of one matrix. `(b, h)` only label an eigen-solver error.
fn metrics_of(
    p: KernelView<'_>,
    opts: &MetricsOptions,
    b: usize,
    h: usize,
) -> Result<KernelMetrics> {
    let t = p.tokens() as f64;
    let mut st = p.stationary(opts.stationary)?;
    if st.pi.iter().any(|x| !x.is_finite()) {
        // The direct solve can break down on kernels whose probabilities underflowed to exact
        // zeros in f32 (many closed classes, a singular absorption system); the power iteration
        // from the uniform start always yields a probability vector, with its residual reported.
        st = p.stationary(StationaryMethod::Power {
            tol: 1e-12,
            max_iter: 100_000,
        })?;
    }
    let pi = &st.pi;
    let lambda2_abs = p
        .second_eigenvalue_modulus()
        .ok_or(MarkovError::Eigen { batch: b, head: h })?;
    let spectral_gap = 1.0 - lambda2_abs;
    let ent = p.row_entropies();
    let pi_min = pi.iter().copied().fold(f64::INFINITY, f64::min);
    let pi_max = pi.iter().copied().fold(0.0, f64::max);
    let mixing_time_bound = if pi_min > 0.0 && spectral_gap > 0.0 {
        (1.0 / (opts.mixing_eps * pi_min)).ln() / spectral_gap
    } else {
        f64::INFINITY
    };
    Ok(KernelMetrics {
        pi_residual: st.residual,
        pi_entropy: entropy(pi),
        pi_min,
        pi_max,
        lambda2_abs,
        spectral_gap,
        dobrushin: p.dobrushin(),
        row_entropy_mean: ent.iter().sum::<f64>() / t,
        row_entropy_min: ent.iter().copied().fold(f64::INFINITY, f64::min),
        row_entropy_max: ent.iter().copied().fold(0.0, f64::max),
        effective_neighbours_mean: ent.iter().map(|e| e.exp()).sum::<f64>() / t,
        entropy_rate: pi.iter().zip(&ent).map(|(a, e)| a * e).sum(),
        reversibility_defect: p.reversibility_defect(pi),
        doubly_stochastic_deviation: p.doubly_stochastic_deviation(),
        mixing_time_bound,
    })
}

/// All [`KernelMetrics`] of one transition matrix.
pub fn kernel_metrics(p: KernelView<'_>, opts: &MetricsOptions) -> Result<KernelMetrics> {
    check_opts(opts)?;
    metrics_of(p, opts, 0, 0)
}

/// Means over the batch, per head, of metrics laid out as `metrics[b * heads + h]`.
pub fn summarize_heads(metrics: &[KernelMetrics], heads: usize) -> Result<Vec<HeadSummary>> {
    if heads == 0 || metrics.is_empty() || metrics.len() % heads != 0 {
        return Err(MarkovError::Shape {
            what: "metrics for summarize_heads",
            expected: format!(
                "a non-empty multiple of heads = {heads} entries, laid out b·heads + h"
            ),
            got: vec![metrics.len()],
        });
    }
    let batch = metrics.len() / heads;
    Ok((0..heads)
        .map(|h| {
            let rows = || metrics.iter().skip(h).step_by(heads);
            let mean = |f: fn(&KernelMetrics) -> f64| rows().map(f).sum::<f64>() / batch as f64;
            HeadSummary {
                head: h,
                count: batch,
                row_entropy_mean: mean(|m| m.row_entropy_mean),
                row_entropy_min: mean(|m| m.row_entropy_min),
                effective_neighbours_mean: mean(|m| m.effective_neighbours_mean),
                lambda2_abs: mean(|m| m.lambda2_abs),
                spectral_gap: mean(|m| m.spectral_gap),
                dobrushin: mean(|m| m.dobrushin),
                doubly_stochastic_deviation: mean(|m| m.doubly_stochastic_deviation),
                reversibility_defect: mean(|m| m.reversibility_defect),
                pi_entropy: mean(|m| m.pi_entropy),
                entropy_rate: mean(|m| m.entropy_rate),
                pi_residual_max: rows().map(|m| m.pi_residual).fold(0.0, f64::max),
            }
        })
        .collect())
}

/// Rank-collapse ratios `‖res(P^k X)‖_F / ‖res(X)‖_F` for k = 1..=k_max and every (b, h).
#[derive(Clone, Debug)]
pub struct RankCollapse {
    heads: usize,
    k_max: usize,
    ratios: Vec<f64>,
}

impl RankCollapse {
    /// The ratio for (batch `b`, head `h`) after `k` steps (1 ≤ k ≤ k_max); `None` if out of range.
    pub fn ratio(&self, b: usize, h: usize, k: usize) -> Option<f64> {
        if h >= self.heads || k == 0 || k > self.k_max {
            return None;
        }
        self.ratios
            .get((b * self.heads + h) * self.k_max + (k - 1))
            .copied()
    }

    /// All ratios, laid out `[(b · heads + h) · k_max + (k − 1)]`.
    pub fn as_slice(&self) -> &[f64] {
        &self.ratios
    }
}

impl AttentionKernels {
    /// [`KernelMetrics`] of every (b, h), laid out `[b * heads + h]`, computed in parallel (rayon)
    /// across matrices; each matrix runs sequentially.
    pub fn metrics(&self, opts: &MetricsOptions) -> Result<Vec<KernelMetrics>> {
        check_opts(opts)?;
        let mats: Vec<_> = self.matrices().collect();
        mats.into_par_iter()
            .map(|(b, h, p)| metrics_of(p, opts, b, h))
            .collect()
    }

    /// Per-head means over the batch ([`HeadSummary`]), one per head.
    pub fn head_summaries(&self, opts: &MetricsOptions) -> Result<Vec<HeadSummary>> {
        summarize_heads(&self.metrics(opts)?, self.heads())
    }

    /// The stationary distribution of every (b, h), laid out `[b * heads + h]`.
    pub fn stationary(&self, method: StationaryMethod) -> Result<Vec<Stationary>> {
        let mats: Vec<_> = self.matrices().collect();
        mats.into_par_iter()
            .map(|(_, _, p)| p.stationary(method))
            .collect()
    }

    /// The Sinkhorn projection of every (b, h), laid out `[b * heads + h]`.
    pub fn sinkhorn(&self, opts: SinkhornOptions) -> Result<Vec<SinkhornResult>> {
        let mats: Vec<_> = self.matrices().collect();
        mats.into_par_iter()
            .map(|(_, _, p)| p.sinkhorn(opts))
            .collect()
    }

    /// Rank-collapse ratios for token features `x` of shape (T, n) (shared by the batch) or
    /// (batch, T, n) (one per batch element), f32 or f64, any device; k = 1..=k_max.
    pub fn rank_collapse(&self, x: &Tensor, k_max: usize) -> Result<RankCollapse> {
        let (b, t) = (self.batch(), self.tokens());
        let bad = || MarkovError::Shape {
            what: "X for rank collapse",
            expected: format!("(T, n) = ({t}, n) or (batch, T, n) = ({b}, {t}, n) with n ≥ 1"),
            got: x.dims().to_vec(),
        };
        let (per_batch, n) = match *x.dims() {
            [tt, n] if tt == t && n > 0 => (false, n),
            [bb, tt, n] if bb == b && tt == t && n > 0 => (true, n),
            _ => return Err(bad()),
        };
        match x.dtype() {
            candle_core::DType::F32 | candle_core::DType::F64 => {}
            dtype => {
                return Err(MarkovError::Dtype {
                    what: "X for rank collapse",
                    dtype,
                })
            }
        }
        if k_max == 0 {
            return Err(MarkovError::Parameter {
                name: "k_max",
                value: 0.0,
                hint: "ask for at least one step (k_max ≥ 1)",
            });
        }
        let xs = x
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let mats: Vec<_> = self.matrices().collect();
        let per: Vec<Vec<f64>> = mats
            .into_par_iter()
            .map(|(bb, _, p)| {
                let xb = if per_batch {
                    &xs[bb * t * n..(bb + 1) * t * n]
                } else {
                    &xs[..]
                };
                // k = 0 validates X (finite, non-zero residual) and must give exactly 1.
                p.rank_collapse_ratio(xb, n, 0)?;
                let mut y = xb.to_vec();
                let mut out = Vec::with_capacity(k_max);
                for _ in 0..k_max {
                    y = p.apply_power(&y, n, 1);
                    out.push(residual_ratio(&y, xb, t, n));
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(RankCollapse {
            heads: self.heads(),
            k_max,
            ratios: per.into_iter().flatten().collect(),
        })
    }
}

fn residual_ratio(y: &[f64], x: &[f64], t: usize, n: usize) -> f64 {
    fn res(x: &[f64], t: usize, n: usize) -> f64 {
        let mut mean = vec![0.0; n];
        for row in x.chunks_exact(n) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v / t as f64;
            }
        }
        x.chunks_exact(n)
            .flat_map(|row| row.iter().zip(&mean).map(|(v, m)| (v - m) * (v - m)))
            .sum::<f64>()
            .sqrt()
    }
    res(y, t, n) / res(x, t, n)
}
