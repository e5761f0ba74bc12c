//! Seeded simulators of processes with known answers, used to validate every estimator
//! (MATH §3, last paragraph). All use the generator convention `DΔ`: `dX = √(2D) dW` in Rⁿ.

use crate::error::{check_param, BrownianError, Result};
use crate::special::hyp1f1;
use crate::trajectory::{norm, Geometry, Trajectories};
use rand::Rng;
use rand_distr::StandardNormal;

fn check_sizes(members: usize, steps: usize, dim: usize) -> Result<()> {
    for (what, v) in [
        ("member", members),
        ("time step", steps),
        ("dimension", dim),
    ] {
        if v == 0 {
            return Err(BrownianError::Empty { what });
        }
    }
    Ok(())
}

pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// Euclidean Brownian motion in Rⁿ from the origin: `X_(t+1) = X_t + √(2DΔt) z`, `z ~ N(0, I)`,
/// so `E‖X_(t+τ) − X_t‖² = 2nDτΔt`. Returns `members × steps × dim`.
pub fn brownian_motion(
    members: usize,
    steps: usize,
    dim: usize,
    diffusion: f64,
    dt: f64,
    rng: &mut impl Rng,
) -> Result<Trajectories> {
    drift_diffusion(members, steps, &vec![0.0; dim], diffusion, dt, rng)
}

/// Drift plus noise in Rⁿ from the origin: `X_(t+1) = X_t + μΔt + √(2DΔt) z`.
///
/// `diffusion = 0` gives a pure drift (MSD `= ‖μ‖²Δt²τ²`, α = 2, drift share 1).
pub fn drift_diffusion(
    members: usize,
    steps: usize,
    drift: &[f64],
    diffusion: f64,
    dt: f64,
    rng: &mut impl Rng,
) -> Result<Trajectories> {
    let dim = drift.len();
    check_sizes(members, steps, dim)?;
    check_param("diffusion", diffusion, diffusion >= 0.0, "D ≥ 0")?;
    check_param("dt", dt, dt > 0.0, "a time step > 0")?;
    if let Some(&bad) = drift.iter().find(|v| !v.is_finite()) {
        return Err(BrownianError::InvalidParameter {
            name: "drift",
            value: bad,
            expected: "finite components",
        });
    }
    let sd = (2.0 * diffusion * dt).sqrt();
    let mut data = Vec::with_capacity(members * steps * dim);
    for _ in 0..members {
        let mut x = vec![0.0; dim];
        data.extend_from_slice(&x);
        for _ in 1..steps {
            for (xi, mu) in x.iter_mut().zip(drift) {
                *xi += mu * dt;
                if sd > 0.0 {
                    *xi += sd * normal(rng);
                }
            }
            data.extend_from_slice(&x);
        }
    }
    Trajectories::new(data, members, steps, dim, Geometry::Euclidean)
}

/// Geodesic random walk on S^(n−1)(r): start uniform, then `x ← exp_x(v)` with tangent steps
/// `v = √(2DΔt) P_x z`, `z ~ N(0, I_n)` (so `v ~ N(0, 2DΔt P_x)`, in the length units of x).
///
/// By isotropy `E[x̂_k·x̂_0] = φ^k` exactly, with `φ = E cos(‖v‖/r) =
/// ₁F₁((n−1)/2; 1/2; −DΔt/r²)` ([`geodesic_step_factor`]); this tends to the Brownian
/// `exp(−(n−1)DkΔt/r²)` as Δt → 0.
pub fn geodesic_random_walk(
    members: usize,
    steps: usize,
    dim: usize,
    radius: f64,
    diffusion: f64,
    dt: f64,
    rng: &mut impl Rng,
) -> Result<Trajectories> {
    check_sizes(members, steps, dim)?;
    check_param("radius", radius, radius > 0.0, "a radius > 0")?;
    check_param("diffusion", diffusion, diffusion >= 0.0, "D ≥ 0")?;
    check_param("dt", dt, dt > 0.0, "a time step > 0")?;
    if dim < 2 {
        return Err(BrownianError::TooShort {
            what: "a sphere, in ambient dimensions,",
            needed: 2,
            got: dim,
        });
    }
    let sd = (2.0 * diffusion * dt).sqrt();
    let mut data = Vec::with_capacity(members * steps * dim);
    for _ in 0..members {
        let mut x = uniform_on_sphere(dim, radius, rng);
        data.extend_from_slice(&x);
        for _ in 1..steps {
            let z: Vec<f64> = (0..dim).map(|_| sd * normal(rng)).collect();
            let v = bmt_sphere::reference::tangent_project(&x, &z, radius)?;
            x = bmt_sphere::reference::exp_map(&x, &v, radius)?;
            let nrm = norm(&x);
            x.iter_mut().for_each(|c| *c *= radius / nrm);
            data.extend_from_slice(&x);
        }
    }
    Trajectories::new(data, members, steps, dim, Geometry::Sphere { radius })
}

/// A point uniform on S^(n−1)(r): `r z/‖z‖`, `z ~ N(0, I)`.
pub fn uniform_on_sphere(dim: usize, radius: f64, rng: &mut impl Rng) -> Vec<f64> {
    loop {
        let z: Vec<f64> = (0..dim).map(|_| normal(rng)).collect();
        let nrm = norm(&z);
        if nrm > 1e-300 {
            return z.into_iter().map(|v| v * radius / nrm).collect();
        }
    }
}

/// Exact one-step factor of [`geodesic_random_walk`]:
/// `φ = E cos(‖v‖/r) = ₁F₁((n−1)/2; 1/2; −DΔt/r²)`, since `‖v‖²/r² = (2DΔt/r²) χ²_(n−1)`.
pub fn geodesic_step_factor(dim: usize, radius: f64, diffusion: f64, dt: f64) -> Result<f64> {
    check_param("radius", radius, radius > 0.0, "a radius > 0")?;
    check_param(
        "diffusion·dt",
        diffusion * dt,
        diffusion * dt >= 0.0,
        "D·Δt ≥ 0",
    )?;
    hyp1f1(
        (dim as f64 - 1.0) / 2.0,
        0.5,
        -diffusion * dt / (radius * radius),
    )
}

/// The D that [`crate::msd::diffusion_coefficient`] recovers from a geodesic random walk, in
/// expectation of its mean cosine: `−r² ln φ / ((n−1)Δt)` with φ from [`geodesic_step_factor`].
/// With `k = n − 1`, `x = DΔt/r²`: `D_eff = D(1 + (k−1)x/3 + O(k²x²))`.
pub fn geodesic_walk_effective_diffusion(
    dim: usize,
    radius: f64,
    diffusion: f64,
    dt: f64,
) -> Result<f64> {
    check_param("dt", dt, dt > 0.0, "a time step > 0")?;
    let phi = geodesic_step_factor(dim, radius, diffusion, dt)?;
    if phi <= 0.0 {
        return Err(BrownianError::Mixed {
            lag: 1,
            mean_cos: phi,
        });
    }
    Ok(-radius * radius * phi.ln() / ((dim as f64 - 1.0) * dt))
}

/// Autocovariance of unit fractional Gaussian noise:
/// `γ(k) = ½(|k+1|^(2H) − 2|k|^(2H) + |k−1|^(2H))`.
pub fn fgn_autocovariance(hurst: f64, k: usize) -> f64 {
    let h2 = 2.0 * hurst;
    let k = k as f64;
    0.5 * ((k + 1.0).powf(h2) - 2.0 * k.powf(h2) + (k - 1.0).abs().powf(h2))
}

/// Exact sampler of unit-variance fractional Gaussian noise of a fixed length (Davies & Harte,
/// Biometrika 74, 1987): the covariance is embedded in a circulant of size `2m` (`m` the smallest
/// power of two ≥ len), diagonalised by the FFT; its eigenvalues are non-negative for every
/// `H ∈ (0, 1)` (Craigmile 2003), checked here anyway. Cost `O(m log m)` per sample.
#[derive(Debug, Clone)]
pub struct FgnSampler {
    len: usize,
    hurst: f64,
    /// `√(λ_j / (2m))` for the circulant eigenvalues λ_j.
    scale: Vec<f64>,
}

impl FgnSampler {
    /// Prepares the sampler. Errors: `len = 0`, `H ∉ (0, 1)`.
    pub fn new(len: usize, hurst: f64) -> Result<Self> {
        if len == 0 {
            return Err(BrownianError::Empty { what: "time step" });
        }
        check_param("hurst", hurst, hurst > 0.0 && hurst < 1.0, "H in (0, 1)")?;
        let m = len.next_power_of_two();
        let size = 2 * m;
        let mut re: Vec<f64> = (0..size)
            .map(|j| fgn_autocovariance(hurst, if j <= m { j } else { size - j }))
            .collect();
        let mut im = vec![0.0; size];
        fft(&mut re, &mut im);
        let top = re.iter().cloned().fold(0.0, f64::max);
        let low = re.iter().cloned().fold(f64::INFINITY, f64::min);
        if low < -1e-10 * top {
            return Err(BrownianError::EmbeddingNotPsd { hurst, value: low });
        }
        let scale = re
            .iter()
            .map(|&l| (l.max(0.0) / size as f64).sqrt())
            .collect();
        Ok(Self { len, hurst, scale })
    }

    /// The Hurst exponent.
    pub fn hurst(&self) -> f64 {
        self.hurst
    }

    /// Two independent samples of unit fGn of length `len` (real and imaginary parts of one FFT of
    /// `√(λ/2m)·(ξ₁ + iξ₂)`, each exactly `N(0, Γ)`).
    pub fn sample_pair(&self, rng: &mut impl Rng) -> (Vec<f64>, Vec<f64>) {
        let mut re: Vec<f64> = self.scale.iter().map(|s| s * normal(rng)).collect();
        let mut im: Vec<f64> = self.scale.iter().map(|s| s * normal(rng)).collect();
        fft(&mut re, &mut im);
        re.truncate(self.len);
        im.truncate(self.len);
        (re, im)
    }
}

/// Fractional Brownian motion in Rⁿ from the origin with independent coordinates:
/// `X_t = scale · Σ_(s<t) G_s`, G unit fGn, so `E‖X_(t+τ) − X_t‖² = n·scale²·τ^(2H)` (α = 2H).
pub fn fractional_brownian_motion(
    members: usize,
    steps: usize,
    dim: usize,
    hurst: f64,
    scale: f64,
    rng: &mut impl Rng,
) -> Result<Trajectories> {
    check_sizes(members, steps, dim)?;
    check_param("scale", scale, scale > 0.0, "a scale > 0")?;
    check_param("hurst", hurst, hurst > 0.0 && hurst < 1.0, "H in (0, 1)")?;
    let mut data = vec![0.0; members * steps * dim];
    if steps > 1 {
        let sampler = FgnSampler::new(steps - 1, hurst)?;
        let mut pending: Option<Vec<f64>> = None;
        for m in 0..members {
            for i in 0..dim {
                let noise = match pending.take() {
                    Some(v) => v,
                    None => {
                        let (a, b) = sampler.sample_pair(rng);
                        pending = Some(b);
                        a
                    }
                };
                let mut acc = 0.0;
                for (t, g) in noise.iter().enumerate() {
                    acc += scale * g;
                    data[(m * steps + t + 1) * dim + i] = acc;
                }
            }
        }
    }
    Trajectories::new(data, members, steps, dim, Geometry::Euclidean)
}

/// In-place iterative radix-2 FFT, `X_k = Σ_j x_j e^(−2πijk/N)`; `N` must be a power of two.
pub(crate) fn fft(re: &mut [f64], im: &mut [f64]) {
    let n = re.len();
    debug_assert!(n.is_power_of_two() && im.len() == n);
    let mut j = 0usize;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let ang = -2.0 * std::f64::consts::PI / len as f64;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (s, c) = (ang * k as f64).sin_cos();
                let (a, b) = (start + k, start + k + len / 2);
                let (tr, ti) = (re[b] * c - im[b] * s, re[b] * s + im[b] * c);
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn fft_matches_the_naive_dft() {
        let n = 16;
        let x: Vec<f64> = (0..n).map(|j| ((j * j) as f64 * 0.37).sin()).collect();
        let y: Vec<f64> = (0..n).map(|j| (j as f64 * 1.3).cos()).collect();
        let (mut re, mut im) = (x.clone(), y.clone());
        fft(&mut re, &mut im);
        for k in 0..n {
            let (mut sr, mut si) = (0.0, 0.0);
            for j in 0..n {
                let a = -2.0 * std::f64::consts::PI * (j * k) as f64 / n as f64;
                sr += x[j] * a.cos() - y[j] * a.sin();
                si += x[j] * a.sin() + y[j] * a.cos();
            }
            assert!((re[k] - sr).abs() < 1e-12 && (im[k] - si).abs() < 1e-12);
        }
    }

    #[test]
    fn fgn_autocovariance_special_cases() {
        // H = 1/2 is white noise; γ(0) = 1 for every H.
        assert_eq!(fgn_autocovariance(0.5, 0), 1.0);
        assert!(fgn_autocovariance(0.5, 3).abs() < 1e-15);
        assert!((fgn_autocovariance(0.8, 0) - 1.0).abs() < 1e-15);
        // γ(1) = 2^(2H−1) − 1.
        assert!((fgn_autocovariance(0.8, 1) - (2f64.powf(0.6) - 1.0)).abs() < 1e-15);
    }

    #[test]
    fn fgn_sample_covariance_matches_the_target() {
        // 4000 pairs of length 8 → 8000 independent series (real and imaginary parts of one FFT
        // are independent). Per series the lag-k average of products s_t·s_(t+k) has variance
        // ≤ max Var(s_t s_(t+k)) = 1 + γ(k)² ≤ 2, so over 8000 series SE ≤ √(2/8000) = 0.016;
        // tolerance 4 SE = 0.063 (γ(1) = 0.41 here, so a white-noise bug would fail).
        let h = 0.75;
        let sampler = FgnSampler::new(8, h).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let reps = 4000;
        let mut cov = [0.0; 4];
        for _ in 0..reps {
            let (a, b) = sampler.sample_pair(&mut rng);
            for s in [&a, &b] {
                for (k, c) in cov.iter_mut().enumerate() {
                    *c += (0..8 - k).map(|t| s[t] * s[t + k]).sum::<f64>() / (8 - k) as f64;
                }
            }
        }
        for (k, c) in cov.iter().enumerate() {
            let est = c / (2 * reps) as f64;
            assert!(
                (est - fgn_autocovariance(h, k)).abs() < 0.063,
                "lag {k}: {est}"
            );
        }
    }

    #[test]
    fn geodesic_factor_matches_monte_carlo_and_the_small_step_limit() {
        // n = 4: ₁F₁(3/2; 1/2; −x) = e^(−x)(1 − 2x).
        let x: f64 = 0.1;
        let f = geodesic_step_factor(4, 2.0, 0.4, 1.0).unwrap();
        assert!((f - (-x).exp() * (1.0 - 2.0 * x)).abs() < 1e-14);
        // Monte Carlo E cos‖v‖ for n = 9, DΔt = 0.2, r = 1 (‖v‖² = 2DΔt χ²₈), 20 000 draws:
        // tolerance 4 SE with SE = sample sd/√N; the O(Δt) approximation exp(−(n−1)DΔt) must
        // lie outside 8 SE so that the test can tell the exact factor from it.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n, ddt) = (9usize, 0.2f64);
        let draws = 20_000;
        let vals: Vec<f64> = (0..draws)
            .map(|_| {
                let s: f64 = (0..n - 1).map(|_| normal(&mut rng).powi(2)).sum();
                (2.0 * ddt * s).sqrt().cos()
            })
            .collect();
        let mean = vals.iter().sum::<f64>() / draws as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (draws - 1) as f64;
        let se = (var / draws as f64).sqrt();
        let exact = geodesic_step_factor(n, 1.0, ddt, 1.0).unwrap();
        assert!(
            (mean - exact).abs() < 4.0 * se,
            "{mean} vs {exact}, SE {se}"
        );
        assert!((exact - (-(n as f64 - 1.0) * ddt).exp()).abs() > 8.0 * se);
        // Small steps: ln φ = −kx − k(k−1)x²/3 + O(x³) (k = n − 1, x = DΔt/r²), so
        // D_eff/D − 1 = (k−1)x/3 to relative accuracy O(kx).
        let (k, x) = (15.0, 1e-3 / 16.0);
        let d_eff = geodesic_walk_effective_diffusion(16, 4.0, 1e-3, 1.0).unwrap();
        let rel = d_eff / 1e-3 - 1.0;
        assert!((rel / ((k - 1.0) * x / 3.0) - 1.0).abs() < 0.01, "{rel}");
    }
}
