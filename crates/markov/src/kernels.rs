//! Attention kernels: a batch of row-stochastic T × T matrices, one per (batch, head).

use candle_core::{DType, Device, Tensor};

use crate::error::{MarkovError, Result};
use crate::matrix::KernelView;

/// Default tolerance of the row-sum check in [`AttentionKernels::from_probs`]: loose enough for
/// f32 softmax outputs over a few thousand tokens, tight enough to catch a wrong softmax axis.
pub const DEFAULT_ROW_TOL: f64 = 1e-4;

/// The row with the largest `|Σ_j P_ij − 1|` in a batch of kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorstRow {
    /// Batch index.
    pub batch: usize,
    /// Head index.
    pub head: usize,
    /// Row (query token) index.
    pub row: usize,
    /// Its deviation `|Σ_j P_ij − 1|`.
    pub deviation: f64,
}

/// Attention probabilities of shape (batch, heads, T, T), held on the host in f64, every row
/// renormalised to sum to one exactly (up to f64 rounding) after validation.
///
/// Each matrix is the transition matrix `P_ij = softmax_j(s_ij)` of a random walk on the T tokens
/// (MATH.md §2). Build one from probabilities ([`from_probs`](Self::from_probs)), from queries and
/// keys ([`from_qk`](Self::from_qk)) or from raw scores ([`from_scores`](Self::from_scores)).
#[derive(Clone, Debug)]
pub struct AttentionKernels {
    batch: usize,
    heads: usize,
    t: usize,
    data: Vec<f64>,
    input_worst: WorstRow,
}

fn dims4(x: &Tensor, what: &'static str, expected: &str) -> Result<(usize, usize, usize, usize)> {
    x.dims4().map_err(|_| MarkovError::Shape {
        what,
        expected: expected.to_string(),
        got: x.dims().to_vec(),
    })
}

fn check_float(x: &Tensor, what: &'static str) -> Result<()> {
    match x.dtype() {
        DType::F32 | DType::F64 => Ok(()),
        dtype => Err(MarkovError::Dtype { what, dtype }),
    }
}

/// Moves a tensor to the host as a flat f64 vector (host first: some devices lack f64).
fn host_f64(x: &Tensor) -> Result<Vec<f64>> {
    Ok(x.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

fn check_sizes(batch: usize, heads: usize, t: usize) -> Result<()> {
    if batch == 0 || heads == 0 {
        return Err(MarkovError::Empty { batch, heads });
    }
    if t < 2 {
        return Err(MarkovError::TooFewTokens { t });
    }
    Ok(())
}

fn check_tol(tol: f64) -> Result<()> {
    if tol.is_finite() && tol >= 0.0 {
        Ok(())
    } else {
        Err(MarkovError::Parameter {
            name: "tol",
            value: tol,
            hint: "the row-sum tolerance must be finite and ≥ 0 (e.g. DEFAULT_ROW_TOL = 1e-4)",
        })
    }
}

/// Validates `(batch·heads·T·T)` probabilities: finite, non-negative, rows summing to 1 within
/// `tol`. Returns the worst row, or [`MarkovError::NotRowStochastic`] naming it.
pub(crate) fn check_rows(
    data: &[f64],
    batch: usize,
    heads: usize,
    t: usize,
    tol: f64,
) -> Result<WorstRow> {
    check_tol(tol)?;
    let mut worst = WorstRow {
        batch: 0,
        head: 0,
        row: 0,
        deviation: 0.0,
    };
    for (r, row) in data.chunks_exact(t).enumerate() {
        let (b, h, i) = (r / (heads * t), (r / t) % heads, r % t);
        let mut sum = 0.0;
        for (j, &v) in row.iter().enumerate() {
            if !v.is_finite() {
                return Err(MarkovError::NonFinite {
                    what: "attention probabilities",
                    batch: b,
                    head: h,
                    row: i,
                    col: j,
                    value: v,
                });
            }
            if v < 0.0 {
                return Err(MarkovError::Negative {
                    batch: b,
                    head: h,
                    row: i,
                    col: j,
                    value: v,
                });
            }
            sum += v;
        }
        let dev = (sum - 1.0).abs();
        if dev > worst.deviation {
            worst = WorstRow {
                batch: b,
                head: h,
                row: i,
                deviation: dev,
            };
        }
    }
    let _ = batch;
    if worst.deviation > tol {
        return Err(MarkovError::NotRowStochastic {
            batch: worst.batch,
            head: worst.head,
            row: worst.row,
            deviation: worst.deviation,
            tol,
        });
    }
    Ok(worst)
}

/// Row-wise softmax in f64 with the row max subtracted; `keep(b, h, i, j) == false` entries and
/// −∞ scores get probability 0. NaN and +∞ scores are errors; a row with nothing left is an error.
fn softmax_host(
    scores: &[f64],
    batch: usize,
    heads: usize,
    t: usize,
    keep: impl Fn(usize, usize, usize, usize) -> bool,
) -> Result<Vec<f64>> {
    let _ = batch;
    let mut out = vec![0.0; scores.len()];
    for (r, (row, dst)) in scores
        .chunks_exact(t)
        .zip(out.chunks_exact_mut(t))
        .enumerate()
    {
        let (b, h, i) = (r / (heads * t), (r / t) % heads, r % t);
        let mut max = f64::NEG_INFINITY;
        for (j, &s) in row.iter().enumerate() {
            if s.is_nan() || s == f64::INFINITY {
                return Err(MarkovError::NonFinite {
                    what: "attention scores",
                    batch: b,
                    head: h,
                    row: i,
                    col: j,
                    value: s,
                });
            }
            if keep(b, h, i, j) && s > max {
                max = s;
            }
        }
        if max == f64::NEG_INFINITY {
            return Err(MarkovError::EmptyRow {
                batch: b,
                head: h,
                row: i,
            });
        }
        let mut sum = 0.0;
        for (j, (&s, d)) in row.iter().zip(dst.iter_mut()).enumerate() {
            *d = if keep(b, h, i, j) {
                (s - max).exp()
            } else {
                0.0
            };
            sum += *d;
        }
        dst.iter_mut().for_each(|d| *d /= sum);
    }
    Ok(out)
}

/// A (T, T) keep-mask for causal attention: 1 where `j ≤ i`, 0 above the diagonal (u8).
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<u8> = (0..t * t).map(|idx| u8::from(idx % t <= idx / t)).collect();
    Ok(Tensor::from_vec(v, (t, t), device)?)
}

impl AttentionKernels {
    /// From attention probabilities of shape (batch, heads, T, T), f32 or f64, on any device.
    /// Checks that entries are finite and non-negative and that every row sums to 1 within
    /// `tol` (see [`DEFAULT_ROW_TOL`]); the worst row is named in the error. Masked entries are
    /// simply zeros. Rows are then renormalised in f64.
    pub fn from_probs(probs: &Tensor, tol: f64) -> Result<Self> {
        let (b, h, t, t2) = dims4(probs, "attention probabilities", "(batch, heads, T, T)")?;
        if t != t2 {
            return Err(MarkovError::Shape {
                what: "attention probabilities",
                expected: "(batch, heads, T, T) with equal last two dimensions".into(),
                got: probs.dims().to_vec(),
            });
        }
        check_float(probs, "attention probabilities")?;
        check_sizes(b, h, t)?;
        Self::from_host(b, h, t, host_f64(probs)?, tol)
    }

    /// From host probabilities, row-major (batch, heads, T, T); checked as in
    /// [`from_probs`](Self::from_probs).
    pub fn from_host(
        batch: usize,
        heads: usize,
        t: usize,
        data: Vec<f64>,
        tol: f64,
    ) -> Result<Self> {
        check_sizes(batch, heads, t)?;
        if data.len() != batch * heads * t * t {
            return Err(MarkovError::Shape {
                what: "host attention probabilities",
                expected: format!("batch·heads·T·T = {} entries", batch * heads * t * t),
                got: vec![data.len()],
            });
        }
        let input_worst = check_rows(&data, batch, heads, t, tol)?;
        let mut data = data;
        for row in data.chunks_exact_mut(t) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        Ok(AttentionKernels {
            batch,
            heads,
            t,
            data,
            input_worst,
        })
    }

    /// From raw scores `s_ij` of shape (batch, heads, T, T), f32 or f64: `P_ij = exp(s_ij − max_k
    /// s_ik) / Σ_k …`, computed on the host in f64. Entries equal to −∞, and entries where the
    /// optional keep-mask is 0, are masked (probability 0). The mask has any numeric dtype and a
    /// shape that broadcasts to (batch, heads, T, T), e.g. (T, T) from [`causal_mask`].
    pub fn from_scores(scores: &Tensor, mask: Option<&Tensor>) -> Result<Self> {
        let (b, h, t, t2) = dims4(scores, "attention scores", "(batch, heads, T, T)")?;
        if t != t2 {
            return Err(MarkovError::Shape {
                what: "attention scores",
                expected: "(batch, heads, T, T) with equal last two dimensions".into(),
                got: scores.dims().to_vec(),
            });
        }
        check_float(scores, "attention scores")?;
        check_sizes(b, h, t)?;
        let s = host_f64(scores)?;
        let probs = match mask {
            None => softmax_host(&s, b, h, t, |_, _, _, _| true)?,
            Some(m) => {
                let m = m
                    .to_device(&Device::Cpu)?
                    .broadcast_as((b, h, t, t))
                    .map_err(|_| MarkovError::Shape {
                        what: "mask",
                        expected: format!("a shape broadcastable to ({b}, {h}, {t}, {t})"),
                        got: m.dims().to_vec(),
                    })?;
                let m = host_f64(&m)?;
                softmax_host(&s, b, h, t, |bb, hh, i, j| {
                    m[((bb * h + hh) * t + i) * t + j] != 0.0
                })?
            }
        };
        Self::from_host(b, h, t, probs, DEFAULT_ROW_TOL)
    }

    /// From queries and keys of shape (batch, heads, T, d) each (f32 or f64, same device):
    /// scores `q_i·k_j / √d` are computed on the tensors' device, then softmax as in
    /// [`from_scores`](Self::from_scores), with a causal mask (`j ≤ i`) if `causal`.
    pub fn from_qk(q: &Tensor, k: &Tensor, causal: bool) -> Result<Self> {
        let (b, h, t, d) = dims4(q, "queries", "(batch, heads, T, d)")?;
        let kd = dims4(k, "keys", "(batch, heads, T, d), the same as the queries")?;
        if kd != (b, h, t, d) || d == 0 {
            return Err(MarkovError::Shape {
                what: "keys",
                expected: format!("({b}, {h}, {t}, {d}) like the queries, with d ≥ 1"),
                got: k.dims().to_vec(),
            });
        }
        check_float(q, "queries")?;
        check_float(k, "keys")?;
        if q.dtype() != k.dtype() {
            return Err(MarkovError::Dtype {
                what: "keys (must match the queries' dtype)",
                dtype: k.dtype(),
            });
        }
        check_sizes(b, h, t)?;
        let scores = q
            .contiguous()?
            .matmul(&k.t()?.contiguous()?)?
            .affine(1.0 / (d as f64).sqrt(), 0.0)?;
        let s = host_f64(&scores)?;
        let probs = softmax_host(&s, b, h, t, |_, _, i, j| !causal || j <= i)?;
        Self::from_host(b, h, t, probs, DEFAULT_ROW_TOL)
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Number of tokens T.
    pub fn tokens(&self) -> usize {
        self.t
    }

    /// All entries, row-major (batch, heads, T, T).
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// The worst row of the input before renormalisation (how far from stochastic it was).
    pub fn input_worst_row(&self) -> WorstRow {
        self.input_worst
    }

    /// The matrix of (batch `b`, head `h`), or `None` if out of range.
    pub fn matrix(&self, b: usize, h: usize) -> Option<KernelView<'_>> {
        if b >= self.batch || h >= self.heads {
            return None;
        }
        let tt = self.t * self.t;
        let start = (b * self.heads + h) * tt;
        Some(KernelView::new_unchecked(
            &self.data[start..start + tt],
            self.t,
        ))
    }

    /// Iterates over `(b, h, P)` in row-major (batch, head) order.
    pub fn matrices(&self) -> impl Iterator<Item = (usize, usize, KernelView<'_>)> + '_ {
        let tt = self.t * self.t;
        self.data.chunks_exact(tt).enumerate().map(move |(m, p)| {
            (
                m / self.heads,
                m % self.heads,
                KernelView::new_unchecked(p, self.t),
            )
        })
    }

    /// The kernels as an f64 tensor of shape (batch, heads, T, T) on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.batch, self.heads, self.t, self.t),
            device,
        )?)
    }
}
