//! Operations on one T × T transition matrix, stored row-major in f64.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::prelude::Solve;
use faer::{Mat, Par};

use crate::error::{MarkovError, Result};
use crate::kernels::check_rows;

/// A borrowed T × T row-stochastic matrix `P` (row-major, `P_ij = p[i * T + j]`), the transition
/// matrix of a random walk on T tokens.
#[derive(Clone, Copy, Debug)]
pub struct KernelView<'a> {
    t: usize,
    p: &'a [f64],
}

/// How to compute the stationary distribution `πᵀP = πᵀ`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum StationaryMethod {
    /// Direct solve (the default). The closed communicating classes of the support graph
    /// `{(i, j) : P_ij > 0}` are found (Tarjan); on each closed class the Grassmann–Taksar–Heyman
    /// elimination (subtraction-free Gaussian elimination, accurate even for nearly decomposable
    /// chains) gives its stationary law. With one closed class π is unique (transient tokens get
    /// π_i = 0; a causal mask makes token 0 absorbing and π = e₀). With several closed classes π is
    /// not unique and the returned π is the limit law from the uniform start: each class weighted by
    /// the probability that the walk started uniformly is absorbed in it.
    #[default]
    Direct,
    /// Left power iteration `πᵀ ← πᵀP` from the uniform distribution, stopped when
    /// `‖πᵀP − πᵀ‖₁ ≤ tol` or after `max_iter` steps. It converges at the rate |λ₂|, so it is slow
    /// for nearly decomposable chains (|λ₂| ≈ 1) and does not converge for periodic ones; the
    /// result reports whether it converged. For a causal P it converges to e₀ at rate max_{i≥1} P_ii.
    Power {
        /// Stop when the ℓ₁ residual is at most this.
        tol: f64,
        /// Maximum number of steps.
        max_iter: usize,
    },
}

/// A stationary distribution with its diagnostics.
#[derive(Clone, Debug)]
pub struct Stationary {
    /// π, a probability vector of length T.
    pub pi: Vec<f64>,
    /// `‖πᵀP − πᵀ‖₁` of the returned π.
    pub residual: f64,
    /// Power-iteration steps taken (0 for the direct method).
    pub iterations: usize,
    /// Whether the method reached its tolerance (always true for the direct method).
    pub converged: bool,
    /// Number of closed communicating classes (1 ⇔ π unique). Computed by the direct method only;
    /// 0 when unknown (power iteration).
    pub closed_classes: usize,
}

/// Options for Sinkhorn's alternating normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinkhornOptions {
    /// Stop when every column sum is within `tol` of 1 (rows are exact after each sweep).
    pub tol: f64,
    /// Maximum number of sweeps (one sweep = normalise columns, then rows).
    pub max_iter: usize,
}

impl Default for SinkhornOptions {
    fn default() -> Self {
        SinkhornOptions {
            tol: 1e-9,
            max_iter: 10_000,
        }
    }
}

/// The result of a Sinkhorn projection.
#[derive(Clone, Debug)]
pub struct SinkhornResult {
    /// The scaled matrix `D₁ P D₂`, row-major T × T.
    pub matrix: Vec<f64>,
    /// Sweeps performed.
    pub iterations: usize,
    /// Whether `max_col_deviation ≤ tol` was reached.
    pub converged: bool,
    /// `max_i |Σ_j S_ij − 1|` of the returned matrix.
    pub max_row_deviation: f64,
    /// `max_j |Σ_i S_ij − 1|` of the returned matrix.
    pub max_col_deviation: f64,
}

impl<'a> KernelView<'a> {
    /// Checks a row-major T × T slice (finite, non-negative, rows summing to 1 within `tol`) and
    /// borrows it. Rows are not renormalised: use [`crate::AttentionKernels`] for that.
    pub fn new(p: &'a [f64], t: usize, tol: f64) -> Result<Self> {
        if t < 2 {
            return Err(MarkovError::TooFewTokens { t });
        }
        if p.len() != t * t {
            return Err(MarkovError::Shape {
                what: "transition matrix",
                expected: format!("T × T = {} entries", t * t),
                got: vec![p.len()],
            });
        }
        check_rows(p, 1, 1, t, tol)?;
        Ok(KernelView { t, p })
    }

    pub(crate) fn new_unchecked(p: &'a [f64], t: usize) -> Self {
        debug_assert_eq!(p.len(), t * t);
        KernelView { t, p }
    }

    /// Number of tokens T.
    pub fn tokens(&self) -> usize {
        self.t
    }

    /// The row-major entries.
    pub fn as_slice(&self) -> &'a [f64] {
        self.p
    }

    /// Entry `P_ij`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.p[i * self.t + j]
    }

    fn row(&self, i: usize) -> &'a [f64] {
        &self.p[i * self.t..(i + 1) * self.t]
    }

    /// The closed communicating classes of the support graph `{(i, j) : P_ij > 0}`, each sorted.
    /// A stochastic matrix has at least one; π is unique iff it has exactly one.
    pub fn closed_classes(&self) -> Vec<Vec<usize>> {
        let comps = tarjan_scc(self);
        let t = self.t;
        let mut comp_of = vec![0usize; t];
        for (c, comp) in comps.iter().enumerate() {
            for &i in comp {
                comp_of[i] = c;
            }
        }
        let mut closed = Vec::new();
        for (c, comp) in comps.iter().enumerate() {
            let is_closed = comp.iter().all(|&i| {
                self.row(i)
                    .iter()
                    .enumerate()
                    .all(|(j, &v)| v <= 0.0 || comp_of[j] == c)
            });
            if is_closed {
                let mut comp = comp.clone();
                comp.sort_unstable();
                closed.push(comp);
            }
        }
        closed.sort_by_key(|c| c[0]);
        closed
    }

    /// The ℓ₁ residual `‖πᵀP − πᵀ‖₁`.
    pub fn stationary_residual(&self, pi: &[f64]) -> f64 {
        let next = self.left_mul(pi);
        next.iter().zip(pi).map(|(a, b)| (a - b).abs()).sum()
    }

    /// `πᵀP` for a row vector π.
    fn left_mul(&self, pi: &[f64]) -> Vec<f64> {
        let t = self.t;
        let mut out = vec![0.0; t];
        for (i, &w) in pi.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            for (o, &p) in out.iter_mut().zip(self.row(i)) {
                *o += w * p;
            }
        }
        out
    }

    /// The stationary distribution `πᵀP = πᵀ` (see [`StationaryMethod`] for the algorithms and
    /// how reducible chains are handled).
    pub fn stationary(&self, method: StationaryMethod) -> Result<Stationary> {
        match method {
            StationaryMethod::Direct => Ok(self.stationary_direct()),
            StationaryMethod::Power { tol, max_iter } => {
                if !(tol.is_finite() && tol > 0.0) {
                    return Err(MarkovError::Parameter {
                        name: "tol",
                        value: tol,
                        hint: "power-iteration tolerance must be finite and > 0 (e.g. 1e-12)",
                    });
                }
                Ok(self.stationary_power(tol, max_iter))
            }
        }
    }

    fn stationary_power(&self, tol: f64, max_iter: usize) -> Stationary {
        let t = self.t;
        let mut pi = vec![1.0 / t as f64; t];
        let mut iterations = 0;
        let mut converged = false;
        while iterations < max_iter {
            let next = self.left_mul(&pi);
            let res: f64 = next.iter().zip(&pi).map(|(a, b)| (a - b).abs()).sum();
            let s: f64 = next.iter().sum();
            pi = next.into_iter().map(|v| v / s).collect();
            iterations += 1;
            if res <= tol {
                converged = true;
                break;
            }
        }
        let residual = self.stationary_residual(&pi);
        Stationary {
            pi,
            residual,
            iterations,
            converged,
            closed_classes: 0,
        }
    }

    fn stationary_direct(&self) -> Stationary {
        let t = self.t;
        let classes = self.closed_classes();
        let mut pi = vec![0.0; t];
        // Stationary law on each closed class (irreducible and stochastic there).
        let laws: Vec<Option<Vec<f64>>> = classes.iter().map(|c| gth(self, c)).collect();
        if laws.iter().any(|l| l.is_none()) {
            // Underflow broke the elimination (a pivot became exactly 0): fall back to power
            // iteration, which reports its own convergence.
            let mut s = self.stationary_power(1e-13, 100_000);
            s.closed_classes = classes.len();
            return s;
        }
        let weights = if classes.len() == 1 {
            vec![1.0]
        } else {
            absorption_weights(self, &classes)
        };
        for ((class, law), w) in classes.iter().zip(&laws).zip(&weights) {
            for (&i, &v) in class.iter().zip(law.as_ref().expect("checked above")) {
                pi[i] = w * v;
            }
        }
        let s: f64 = pi.iter().sum();
        pi.iter_mut().for_each(|v| *v /= s);
        let residual = self.stationary_residual(&pi);
        Stationary {
            pi,
            residual,
            iterations: 0,
            converged: true,
            closed_classes: classes.len(),
        }
    }

    /// All eigenvalues `(re, im)` of P from faer's dense real non-symmetric solver (sequential),
    /// sorted by decreasing modulus. Returns `None` if the QR algorithm did not converge.
    pub fn eigenvalues(&self) -> Option<Vec<(f64, f64)>> {
        let t = self.t;
        let a = Mat::<f64>::from_fn(t, t, |i, j| self.get(i, j));
        let mut re = Diag::<f64>::zeros(t);
        let mut im = Diag::<f64>::zeros(t);
        let mut mem = MemBuffer::new(evd::evd_scratch::<f64>(
            t,
            ComputeEigenvectors::No,
            ComputeEigenvectors::No,
            Par::Seq,
            Default::default(),
        ));
        evd::evd_real(
            a.as_ref(),
            re.as_mut(),
            im.as_mut(),
            None,
            None,
            Par::Seq,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .ok()?;
        let mut out: Vec<(f64, f64)> = re
            .column_vector()
            .iter()
            .zip(im.column_vector().iter())
            .map(|(&r, &i)| (r, i))
            .collect();
        if out.iter().any(|(r, i)| !r.is_finite() || !i.is_finite()) {
            return None;
        }
        out.sort_by(|a, b| a.0.hypot(a.1).total_cmp(&b.0.hypot(b.1)).reverse());
        Some(out)
    }

    /// Second-largest eigenvalue modulus |λ₂| (the largest is |λ₁| = 1 for a stochastic matrix).
    pub fn second_eigenvalue_modulus(&self) -> Option<f64> {
        let ev = self.eigenvalues()?;
        Some(ev[1].0.hypot(ev[1].1))
    }

    /// Dobrushin's ergodicity coefficient `δ(P) = ½ max_{i,j} Σ_k |P_ik − P_jk|` ∈ [0, 1]: the
    /// total-variation contraction factor of one step; `|λ₂| ≤ δ(P)`.
    pub fn dobrushin(&self) -> f64 {
        let t = self.t;
        let mut best = 0.0f64;
        for i in 0..t {
            let ri = self.row(i);
            for j in i + 1..t {
                best = best.max(l1_distance(ri, self.row(j)));
            }
        }
        0.5 * best
    }

    /// Row entropies `H_i = −Σ_j P_ij ln P_ij` (nats, `0 ln 0 = 0`), each in [0, ln T].
    pub fn row_entropies(&self) -> Vec<f64> {
        (0..self.t).map(|i| entropy(self.row(i))).collect()
    }

    /// Reversibility defect `‖ΠP − PᵀΠ‖_F / ‖ΠP‖_F`, Π = diag(π): 0 iff detailed balance holds.
    pub fn reversibility_defect(&self, pi: &[f64]) -> f64 {
        let t = self.t;
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..t {
            for j in 0..t {
                let a = pi[i] * self.get(i, j);
                let b = pi[j] * self.get(j, i);
                num += (a - b) * (a - b);
                den += a * a;
            }
        }
        (num / den).sqrt()
    }

    /// Doubly-stochastic deviation `‖Pᵀ1 − 1‖₂ / √T`: the root-mean-square deviation of the
    /// column sums from 1 (0 iff P is doubly stochastic; at most √(T − 1)).
    pub fn doubly_stochastic_deviation(&self) -> f64 {
        let t = self.t;
        let mut col = vec![0.0; t];
        for i in 0..t {
            for (c, &v) in col.iter_mut().zip(self.row(i)) {
                *c += v;
            }
        }
        (col.iter().map(|c| (c - 1.0) * (c - 1.0)).sum::<f64>() / t as f64).sqrt()
    }

    /// The k-step kernel `P^k` (row-major; `P⁰ = I`), by repeated squaring.
    pub fn power(&self, k: u32) -> Vec<f64> {
        let t = self.t;
        let mut result: Vec<f64> = (0..t * t)
            .map(|idx| if idx / t == idx % t { 1.0 } else { 0.0 })
            .collect();
        let mut base = self.p.to_vec();
        let mut k = k;
        while k > 0 {
            if k & 1 == 1 {
                result = matmul(&result, &base, t, t, t);
            }
            k >>= 1;
            if k > 0 {
                base = matmul(&base, &base, t, t, t);
            }
        }
        result
    }

    /// `P^k X` for a row-major T × n matrix X (k products with P; P^k is never formed).
    pub fn apply_power(&self, x: &[f64], n: usize, k: usize) -> Vec<f64> {
        let mut y = x.to_vec();
        for _ in 0..k {
            y = matmul(self.p, &y, self.t, self.t, n);
        }
        y
    }

    /// Rank-collapse ratio `‖res(P^k X)‖_F / ‖res(X)‖_F`, `res(X) = X − 1x̄ᵀ` (x̄ the column
    /// mean), for a row-major T × n matrix X. 0 means every token of `P^k X` is identical.
    pub fn rank_collapse_ratio(&self, x: &[f64], n: usize, k: usize) -> Result<f64> {
        if n == 0 || x.len() != self.t * n {
            return Err(MarkovError::Shape {
                what: "X for rank collapse",
                expected: format!("T × n with T = {} and n ≥ 1", self.t),
                got: vec![x.len()],
            });
        }
        if let Some((idx, &v)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(MarkovError::NonFinite {
                what: "X",
                batch: 0,
                head: 0,
                row: idx / n,
                col: idx % n,
                value: v,
            });
        }
        let den = residual_norm(x, self.t, n);
        if den == 0.0 {
            return Err(MarkovError::ZeroResidual);
        }
        Ok(residual_norm(&self.apply_power(x, n, k), self.t, n) / den)
    }

    /// Sinkhorn projection onto the doubly stochastic matrices: alternately normalise columns and
    /// rows until every column sum is within `tol` of 1. Converges for strictly positive P
    /// (Sinkhorn 1964); for P with zeros it converges iff P has total support, which a causal
    /// (lower-triangular) P lacks: there it drifts toward I and reports `converged = false`.
    pub fn sinkhorn(&self, opts: SinkhornOptions) -> Result<SinkhornResult> {
        if !(opts.tol.is_finite() && opts.tol > 0.0) {
            return Err(MarkovError::Parameter {
                name: "tol",
                value: opts.tol,
                hint: "Sinkhorn tolerance must be finite and > 0 (e.g. 1e-9)",
            });
        }
        let t = self.t;
        let mut s = self.p.to_vec();
        let mut iterations = 0;
        let mut col_dev = max_col_deviation(&s, t);
        let mut converged = col_dev <= opts.tol;
        while !converged && iterations < opts.max_iter {
            let mut col = vec![0.0; t];
            for i in 0..t {
                for (c, &v) in col.iter_mut().zip(&s[i * t..(i + 1) * t]) {
                    *c += v;
                }
            }
            for i in 0..t {
                for (v, &c) in s[i * t..(i + 1) * t].iter_mut().zip(&col) {
                    if c > 0.0 {
                        *v /= c;
                    }
                }
            }
            for i in 0..t {
                let row = &mut s[i * t..(i + 1) * t];
                let r: f64 = row.iter().sum();
                if r > 0.0 {
                    row.iter_mut().for_each(|v| *v /= r);
                }
            }
            iterations += 1;
            col_dev = max_col_deviation(&s, t);
            converged = col_dev <= opts.tol;
        }
        let row_dev = (0..t)
            .map(|i| (s[i * t..(i + 1) * t].iter().sum::<f64>() - 1.0).abs())
            .fold(0.0, f64::max);
        Ok(SinkhornResult {
            matrix: s,
            iterations,
            converged: converged && row_dev <= opts.tol,
            max_row_deviation: row_dev,
            max_col_deviation: col_dev,
        })
    }
}

/// Shannon entropy `−Σ p ln p` (nats) of a probability vector, `0 ln 0 = 0`.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| v * v.ln())
        .sum::<f64>()
}

/// `Σ_k |a_k − b_k|` with four independent accumulators (lets the compiler vectorise).
fn l1_distance(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += (x[l] - y[l]).abs();
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| (x - y).abs()).sum();
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}

fn max_col_deviation(s: &[f64], t: usize) -> f64 {
    let mut col = vec![0.0; t];
    for i in 0..t {
        for (c, &v) in col.iter_mut().zip(&s[i * t..(i + 1) * t]) {
            *c += v;
        }
    }
    col.iter().map(|c| (c - 1.0).abs()).fold(0.0, f64::max)
}

/// `‖X − 1x̄ᵀ‖_F` for a row-major T × n matrix.
fn residual_norm(x: &[f64], t: usize, n: usize) -> f64 {
    let mut mean = vec![0.0; n];
    for i in 0..t {
        for (m, &v) in mean.iter_mut().zip(&x[i * n..(i + 1) * n]) {
            *m += v / t as f64;
        }
    }
    let mut s = 0.0;
    for i in 0..t {
        for (m, &v) in mean.iter().zip(&x[i * n..(i + 1) * n]) {
            s += (v - m) * (v - m);
        }
    }
    s.sqrt()
}

/// Row-major `(m × k) · (k × n)`.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        let ci = &mut c[i * n..(i + 1) * n];
        for l in 0..k {
            let a_il = a[i * k + l];
            if a_il == 0.0 {
                continue;
            }
            for (cv, &bv) in ci.iter_mut().zip(&b[l * n..(l + 1) * n]) {
                *cv += a_il * bv;
            }
        }
    }
    c
}

/// Strongly connected components of the support graph (Tarjan, recursive; depth ≤ T).
fn tarjan_scc(p: &KernelView<'_>) -> Vec<Vec<usize>> {
    struct State {
        index: Vec<usize>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        comps: Vec<Vec<usize>>,
    }
    fn visit(v: usize, p: &KernelView<'_>, s: &mut State) {
        s.index[v] = s.next;
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for w in 0..p.t {
            if p.get(v, w) <= 0.0 {
                continue;
            }
            if s.index[w] == usize::MAX {
                visit(w, p, s);
                s.low[v] = s.low[v].min(s.low[w]);
            } else if s.on_stack[w] {
                s.low[v] = s.low[v].min(s.index[w]);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            s.comps.push(comp);
        }
    }
    let t = p.t;
    let mut s = State {
        index: vec![usize::MAX; t],
        low: vec![0; t],
        on_stack: vec![false; t],
        stack: Vec::new(),
        next: 0,
        comps: Vec::new(),
    };
    for v in 0..t {
        if s.index[v] == usize::MAX {
            visit(v, p, &mut s);
        }
    }
    s.comps
}

/// Grassmann–Taksar–Heyman: stationary law of P restricted to a closed class (sorted indices).
/// Returns `None` if a pivot underflowed to 0.
fn gth(p: &KernelView<'_>, class: &[usize]) -> Option<Vec<f64>> {
    let m = class.len();
    let mut a: Vec<f64> = Vec::with_capacity(m * m);
    for &i in class {
        for &j in class {
            a.push(p.get(i, j));
        }
    }
    for n in (1..m).rev() {
        let s: f64 = a[n * m..n * m + n].iter().sum();
        if !(s > 0.0 && s.is_finite()) {
            return None;
        }
        for i in 0..n {
            a[i * m + n] /= s;
        }
        let (head, tail) = a.split_at_mut(n * m);
        let pivot_row = &tail[..n];
        for row in head.chunks_exact_mut(m) {
            let f = row[n];
            if f == 0.0 {
                continue;
            }
            for (x, &y) in row[..n].iter_mut().zip(pivot_row) {
                *x += f * y;
            }
        }
    }
    let mut pi = vec![0.0; m];
    pi[0] = 1.0;
    for j in 1..m {
        pi[j] = (0..j).map(|i| pi[i] * a[i * m + j]).sum();
    }
    let s: f64 = pi.iter().sum();
    if !(s > 0.0 && s.is_finite()) {
        return None;
    }
    Some(pi.into_iter().map(|v| v / s).collect())
}

/// For several closed classes: the probability that the walk started from the uniform law ends
/// in each class, `w_c = μ(C_c) + yᵀ r_c` with `(I − Q)ᵀ y = μ_transient` (y = expected visits to
/// the transient states) and `r_c,i = Σ_{j ∈ C_c} P_ij`.
fn absorption_weights(p: &KernelView<'_>, classes: &[Vec<usize>]) -> Vec<f64> {
    let t = p.t;
    let mu = 1.0 / t as f64;
    let mut in_closed = vec![usize::MAX; t];
    for (c, class) in classes.iter().enumerate() {
        for &i in class {
            in_closed[i] = c;
        }
    }
    let transient: Vec<usize> = (0..t).filter(|&i| in_closed[i] == usize::MAX).collect();
    let mut w: Vec<f64> = classes.iter().map(|c| c.len() as f64 * mu).collect();
    if transient.is_empty() {
        return w;
    }
    let m = transient.len();
    // (I − Q)ᵀ as a faer matrix: entry (a, b) = δ_ab − P_{transient[b], transient[a]}.
    let lhs = Mat::<f64>::from_fn(m, m, |a, b| {
        let d = if a == b { 1.0 } else { 0.0 };
        d - p.get(transient[b], transient[a])
    });
    let rhs = Mat::<f64>::from_fn(m, 1, |_, _| mu);
    let y = lhs.partial_piv_lu().solve(&rhs);
    for (a, &i) in transient.iter().enumerate() {
        let ya = y[(a, 0)];
        for (j, &v) in p.row(i).iter().enumerate() {
            let c = in_closed[j];
            if c != usize::MAX {
                w[c] += ya * v;
            }
        }
    }
    w
}
