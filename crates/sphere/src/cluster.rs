//! Clustering of tokens on the sphere (MATH.md §2, last bullet; Geshkovski, Letrouit, Polyanskiy &
//! Rigollet 2023, "A mathematical perspective on Transformers"): as depth grows, self-attention
//! dynamics drive the normalised tokens into few clusters. These statistics make that measurable.

use crate::error::{Result, SphereError};
use crate::geometry::{check_float, unit};
use candle_core::{DType, Tensor};

/// Clustering statistics of token sets on the unit sphere (tokens used through `x̂ = x/‖x‖`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterStats {
    /// Number of sequences (1 for a `(T, n)` input).
    pub sequences: usize,
    /// Tokens per sequence `T`.
    pub tokens_per_sequence: usize,
    /// Mean of `x̂_i·x̂_j` over distinct pairs `i < j` within each sequence, averaged over sequences.
    pub mean_cosine: f64,
    /// Minimum of `x̂_i·x̂_j` over distinct pairs within each sequence and over sequences.
    pub min_cosine: f64,
    /// Number of ε-clusters (connected components of `{x̂_i·x̂_j > 1 − ε}`), mean over sequences.
    pub mean_clusters: f64,
    /// Fewest ε-clusters in any sequence.
    pub min_clusters: usize,
    /// Most ε-clusters in any sequence.
    pub max_clusters: usize,
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Cluster statistics of `tokens: (B, T, n)` or `(T, n)` (Geshkovski et al. 2023): mean and minimum
/// pairwise cosine over distinct pairs within each sequence, and the number of ε-clusters, the
/// connected components of the graph with an edge `i ~ j` iff `x̂_i·x̂_j > 1 − ε`.
///
/// The Gram matrices `X̂X̂ᵀ` are formed on the tensors' device, then copied to the host (B·T² values)
/// for the pair statistics and a union–find over the edges. Needs `T ≥ 2` and `ε ≥ 0` finite
/// (ε = 0: only exactly parallel tokens join, up to rounding; ε > 2: everything is one cluster). Zero tokens are [`SphereError::DegeneratePoint`].
pub fn cluster_stats(tokens: &Tensor, eps: f64) -> Result<ClusterStats> {
    const OP: &str = "cluster_stats";
    check_float(OP, tokens)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "eps",
            value: eps,
            hint: "the cluster threshold ε must be finite and ≥ 0 (edges where cosine > 1 − ε)",
        });
    }
    let x = match tokens.rank() {
        2 => tokens.unsqueeze(0)?,
        3 => tokens.clone(),
        _ => {
            return Err(SphereError::Rank {
                op: OP,
                shape: tokens.dims().to_vec(),
                expected: "(B, T, n) or (T, n)",
            })
        }
    };
    let (b, t, _) = x.dims3()?;
    if t < 2 || b == 0 {
        return Err(SphereError::Empty {
            op: OP,
            what: "fewer than 2 tokens per sequence (or no sequence)",
            need: "one sequence of T ≥ 2 tokens",
        });
    }
    let xh = unit(OP, &x)?.contiguous()?;
    let gram = xh.matmul(&xh.t()?.contiguous()?)?;
    let g = gram.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let threshold = 1.0 - eps;
    let pairs = (t * (t - 1) / 2) as f64;
    let (mut mean_sum, mut min_cos) = (0.0f64, f64::INFINITY);
    let (mut clusters_sum, mut min_c, mut max_c) = (0usize, usize::MAX, 0usize);
    let mut parent = vec![0usize; t];
    for s in 0..b {
        let gs = &g[s * t * t..(s + 1) * t * t];
        parent.iter_mut().enumerate().for_each(|(i, p)| *p = i);
        let mut sum = 0.0;
        let mut components = t;
        for i in 0..t {
            for j in i + 1..t {
                // Symmetrise the rounding of the two Gram entries.
                let c = 0.5 * (gs[i * t + j] + gs[j * t + i]);
                sum += c;
                min_cos = min_cos.min(c);
                if c > threshold {
                    let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                    if ri != rj {
                        parent[ri] = rj;
                        components -= 1;
                    }
                }
            }
        }
        mean_sum += sum / pairs;
        clusters_sum += components;
        min_c = min_c.min(components);
        max_c = max_c.max(components);
    }
    Ok(ClusterStats {
        sequences: b,
        tokens_per_sequence: t,
        mean_cosine: mean_sum / b as f64,
        min_cosine: min_cos,
        mean_clusters: clusters_sum as f64 / b as f64,
        min_clusters: min_c,
        max_clusters: max_c,
    })
}
