//! Crate tests: tracked layers, factors against exact Fishers, solvers against dense f64 solves,
//! the optimizer's composition, fallbacks and state.

mod exactness;
mod optimizer;
mod solvers;
mod tracked;

use candle_core::{Device, Tensor, Var};
use faer::Mat;
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::Result;

pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A standard-normal f64 tensor.
pub(crate) fn randn(rng: &mut impl Rng, dims: &[usize]) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

pub(crate) fn var(rng: &mut impl Rng, dims: &[usize], scale: f64) -> Result<Var> {
    Ok(Var::from_tensor(&(randn(rng, dims)? * scale)?)?)
}

pub(crate) fn host(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
}

/// Column-major vec(X) as a column.
pub(crate) fn vec_col(x: &Mat<f64>) -> Mat<f64> {
    let (r, c) = (x.nrows(), x.ncols());
    Mat::from_fn(r * c, 1, |i, _| x[(i % r, i / r)])
}

pub(crate) fn unvec(v: &Mat<f64>, r: usize, c: usize) -> Mat<f64> {
    Mat::from_fn(r, c, |i, j| v[(j * r + i, 0)])
}

/// `A ⊗ G` (so that `vec(G X A) = (A ⊗ G) vec X` for symmetric A).
pub(crate) fn kron(a: &Mat<f64>, g: &Mat<f64>) -> Mat<f64> {
    let (k, m) = (a.nrows(), g.nrows());
    Mat::from_fn(k * m, k * m, |i, j| a[(i / m, j / m)] * g[(i % m, j % m)])
}

pub(crate) fn add_diag(x: &Mat<f64>, d: f64) -> Mat<f64> {
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| {
        x[(i, j)] + if i == j { d } else { 0.0 }
    })
}

/// Dense solve of `M x = b` by LU with partial pivoting (faer).
pub(crate) fn dense_solve(m: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
    use faer::linalg::solvers::Solve;
    m.partial_piv_lu().solve(b)
}

pub(crate) fn max_abs_diff(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    let mut d: f64 = 0.0;
    for j in 0..x.ncols() {
        for i in 0..x.nrows() {
            d = d.max((x[(i, j)] - y[(i, j)]).abs());
        }
    }
    d
}

pub(crate) fn max_abs(x: &Mat<f64>) -> f64 {
    max_abs_diff(x, &Mat::zeros(x.nrows(), x.ncols()))
}
