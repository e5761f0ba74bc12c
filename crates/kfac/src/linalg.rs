//! Host-side dense linear algebra with faer (sequential, `faer::Par::Seq`): symmetric
//! eigendecompositions and SPD inverses of the Kronecker factors. Factors move from their tensor's
//! device to the host as f64 and the results move back in the factor's dtype and device (or, for
//! `f32` CPU factors, into `f32` host buffers: [`eigh_to_host`]).

use candle_core::{DType, Tensor};
use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::cholesky::llt;
use faer::linalg::evd;
use faer::{Mat, Par};

use crate::error::Result;

/// A square tensor as a symmetrised f64 host matrix `(X + Xᵀ)/2`.
pub(crate) fn to_host(t: &Tensor) -> Result<Mat<f64>> {
    let n = t.dims()[0];
    let data = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(n, n, |i, j| {
        0.5 * (data[i * n + j] + data[j * n + i])
    }))
}

/// A host matrix back as a tensor with `like`'s dtype and device.
pub(crate) fn from_host(m: &Mat<f64>, like: &Tensor) -> Result<Tensor> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut data = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            data.push(m[(i, j)]);
        }
    }
    Ok(Tensor::from_vec(data, (r, c), like.device())?.to_dtype(like.dtype())?)
}

fn vec_like(v: Vec<f64>, like: &Tensor) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, like.device())?.to_dtype(like.dtype())?)
}

fn finite(m: &Mat<f64>) -> bool {
    (0..m.ncols()).all(|j| (0..m.nrows()).all(|i| m[(i, j)].is_finite()))
}

/// Adds `eps·(tr X/n + 1e-12)` to the diagonal: the jitter of a retried decomposition.
fn jitter(m: &Mat<f64>, eps: f64) -> Mat<f64> {
    let n = m.nrows();
    let tr: f64 = (0..n).map(|i| m[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let shift = eps * (tr.abs() + 1e-12);
    Mat::from_fn(n, n, |i, j| m[(i, j)] + if i == j { shift } else { 0.0 })
}

fn eigh_host(m: &Mat<f64>) -> Option<(Mat<f64>, Vec<f64>)> {
    let n = m.nrows();
    let mut u = Mat::<f64>::zeros(n, n);
    let mut s = Diag::<f64>::zeros(n);
    let req = evd::self_adjoint_evd_scratch::<f64>(
        n,
        evd::ComputeEigenvectors::Yes,
        Par::Seq,
        Default::default(),
    );
    let mut buf = MemBuffer::new(req);
    evd::self_adjoint_evd(
        m.as_ref(),
        s.as_mut(),
        Some(u.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    let vals: Vec<f64> = (0..n).map(|i| s.column_vector()[i]).collect();
    (finite(&u) && vals.iter().all(|v| v.is_finite())).then_some((u, vals))
}

/// Outcome of a host decomposition.
pub(crate) struct Decomposed<T> {
    /// The result, `None` when even the jittered retries failed.
    pub value: Option<T>,
    /// Whether jitter had to be added.
    pub jittered: bool,
}

/// Jitter levels tried after a failed plain attempt.
const JITTERS: [f64; 2] = [1e-6, 1e-3];

/// `X = Q Λ Qᵀ` of a symmetric host matrix, retried with [`JITTERS`]; eigenvalues clamped at 0
/// (the factors are PSD, small negative values are round-off).
fn eigh_with_retries(host: &Mat<f64>) -> Decomposed<(Mat<f64>, Vec<f64>)> {
    let mut jittered = false;
    let mut res = finite(host).then(|| eigh_host(host)).flatten();
    for eps in JITTERS {
        if res.is_some() || !finite(host) {
            break;
        }
        jittered = true;
        res = eigh_host(&jitter(host, eps));
    }
    let value = res.map(|(q, l)| (q, l.into_iter().map(|v| v.max(0.0)).collect()));
    Decomposed { value, jittered }
}

/// Symmetric eigendecomposition `X = Q Λ Qᵀ` of a square tensor in `f64` (see
/// [`eigh_with_retries`]). Returns `(Q, λ)` as tensors like `t`.
pub(crate) fn eigh(t: &Tensor) -> Result<Decomposed<(Tensor, Tensor)>> {
    let d = eigh_with_retries(&to_host(t)?);
    let value = match d.value {
        Some((q, l)) => Some((from_host(&q, t)?, vec_like(l, t)?)),
        None => None,
    };
    Ok(Decomposed {
        value,
        jittered: d.jittered,
    })
}

/// The same `f64` decomposition of an `f32` square tensor, returned as row-major `f32` host
/// buffers `(Q, λ)` for the host solve: it skips the two tensor round trips of [`eigh`]. (An
/// `f32` decomposition was measured no faster with faer at n = 64–129, docs/BENCHMARKS.md.)
pub(crate) fn eigh_to_host(t: &Tensor) -> Result<Decomposed<(Vec<f32>, Vec<f32>)>> {
    let n = t.dims()[0];
    let d = eigh_with_retries(&to_host(t)?);
    let value = d.value.map(|(q, l)| {
        let mut rows = Vec::with_capacity(n * n);
        for i in 0..n {
            rows.extend((0..n).map(|j| q[(i, j)] as f32));
        }
        (rows, l.into_iter().map(|v| v as f32).collect())
    });
    Ok(Decomposed {
        value,
        jittered: d.jittered,
    })
}

fn spd_inverse_host(m: &Mat<f64>) -> Option<Mat<f64>> {
    let n = m.nrows();
    let mut l = m.clone();
    let req = StackReq::any_of(&[
        llt::factor::cholesky_in_place_scratch::<f64>(n, Par::Seq, Default::default()),
        llt::inverse::inverse_scratch::<f64>(n, Par::Seq),
    ]);
    let mut buf = MemBuffer::new(req);
    llt::factor::cholesky_in_place(
        l.as_mut(),
        Default::default(),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    let mut out = Mat::<f64>::zeros(n, n);
    llt::inverse::inverse(out.as_mut(), l.as_ref(), Par::Seq, MemStack::new(&mut buf));
    // Only the lower triangle is written: mirror it.
    let full = Mat::from_fn(n, n, |i, j| if i >= j { out[(i, j)] } else { out[(j, i)] });
    finite(&full).then_some(full)
}

/// `(X + δI)⁻¹` of a PSD square tensor by Cholesky, with jittered retries.
pub(crate) fn damped_inverse(t: &Tensor, delta: f64) -> Result<Decomposed<Tensor>> {
    let host = to_host(t)?;
    let n = host.nrows();
    let damped = Mat::from_fn(n, n, |i, j| host[(i, j)] + if i == j { delta } else { 0.0 });
    let mut jittered = false;
    let mut res = finite(&damped).then(|| spd_inverse_host(&damped)).flatten();
    for eps in JITTERS {
        if res.is_some() || !finite(&damped) {
            break;
        }
        jittered = true;
        res = spd_inverse_host(&jitter(&damped, eps));
    }
    let value = match res {
        Some(inv) => Some(from_host(&inv, t)?),
        None => None,
    };
    Ok(Decomposed { value, jittered })
}
