//! The AdamW and SGD-with-momentum updates of an `f32` CPU parameter, each one pass over host
//! buffers: the parameter's own storage written in place by a candle in-place op, the moments or
//! the momentum buffer kept as `Vec<f32>`.
//!
//! The tensor path ([`crate::optim::AdamW`], [`crate::optim::SgdMomentum`] on any other dtype or
//! device) costs about twelve (AdamW) or four (SGD) candle ops per parameter tensor, each a kernel
//! launch and an allocation; on W1 (72 tensors) that was about 7 % of an AdamW step
//! (docs/BENCHMARKS.md). This pass rounds every operation as
//! those ops do — candle's `x * f64` and `x / f64` are `affine(mul, 0)` and `x + f64` is
//! `affine(1, add)`, each `x·mul + add` in the element type with the scalars cast to it — so both
//! paths give bit-identical parameters and states (tested in [`crate::optim`]).

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};

use crate::error::Result;

/// Whether `var` and its gradient `g` take the host path: both `f32`, in CPU memory, contiguous,
/// of one shape, in separate storage (a gradient that is a view of the parameter itself, which
/// only a hand-made `GradientSource` can give, takes the tensor path: the in-place op refuses
/// aliased operands).
pub(crate) fn takes_host_path(var: &Var, g: &Tensor) -> bool {
    let t = var.as_tensor();
    t.dtype() == DType::F32
        && g.dtype() == DType::F32
        && t.device().is_cpu()
        && g.device().is_cpu()
        && t.is_contiguous()
        && g.is_contiguous()
        && t.dims() == g.dims()
        && storage_address(t) != storage_address(g)
}

/// The address of a tensor's storage (one read lock, released before returning): equal for
/// tensors that share it.
fn storage_address(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    std::ptr::from_ref(&*storage).addr()
}

/// The scalars of one AdamW step as the tensor path casts them to `f32`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWScalars {
    /// `β₁`, `1 − β₁`.
    pub(crate) beta1: (f32, f32),
    /// `β₂`, `1 − β₂`.
    pub(crate) beta2: (f32, f32),
    /// `1/√c₂` (the bias correction of `v`, as `x / √c₂` is `affine(1/√c₂, 0)`).
    pub(crate) inv_sqrt_c2: f32,
    /// `ε`.
    pub(crate) eps: f32,
    /// `η/c₁`.
    pub(crate) step_size: f32,
    /// `1 − ηλ` (the decoupled decay).
    pub(crate) decay: f32,
}

impl AdamWScalars {
    /// From the `f64` values the tensor path passes to `affine`.
    pub(crate) fn new(
        (beta1, beta2, eps): (f64, f64, f64),
        sqrt_c2: f64,
        step_size: f64,
        decay: f64,
    ) -> Self {
        Self {
            beta1: (beta1 as f32, (1.0 - beta1) as f32),
            beta2: (beta2 as f32, (1.0 - beta2) as f32),
            inv_sqrt_c2: (1.0 / sqrt_c2) as f32,
            eps: eps as f32,
            step_size: step_size as f32,
            decay: decay as f32,
        }
    }
}

/// candle's `affine` on one element: `x·mul + add`, two roundings (no fused multiply-add).
#[inline(always)]
fn affine(x: f32, mul: f32, add: f32) -> f32 {
    x * mul + add
}

/// The parameter's values (mutable) and the gradient's, as the `f32` slices their layouts
/// describe; an error naming the op when either is not `f32`, not contiguous, or their lengths
/// differ.
fn f32_slices<'a>(
    op: &str,
    (dst, dst_l): (&'a mut CpuStorage, &Layout),
    (src, src_l): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a mut [f32], &'a [f32])> {
    let (CpuStorage::F32(w), CpuStorage::F32(g)) = (dst, src) else {
        candle_core::bail!("{op}: the parameter and its gradient must be f32");
    };
    let (Some((w0, w1)), Some((g0, g1))) = (dst_l.contiguous_offsets(), src_l.contiguous_offsets())
    else {
        candle_core::bail!("{op}: the parameter and its gradient must be contiguous");
    };
    let (w, g) = (&mut w[w0..w1], &g[g0..g1]);
    if w.len() != g.len() {
        candle_core::bail!(
            "{op}: {} parameter values, {} gradient values",
            w.len(),
            g.len()
        );
    }
    Ok((w, g))
}

/// The in-place op: the parameter is the destination, the gradient the one source; the moments
/// are borrowed for the op's lifetime (`None`: the first step, which creates them).
struct AdamWInPlace<'a> {
    moments: RefCell<&'a mut Option<(Vec<f32>, Vec<f32>)>>,
    s: AdamWScalars,
}

impl InplaceOp2 for AdamWInPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (w, g) = f32_slices(self.name(), (dst, dst_l), (src, src_l))?;
        let s = self.s;
        let (b1, ob1) = s.beta1;
        let (b2, ob2) = s.beta2;
        let mut slot = self.moments.borrow_mut();
        let first = slot.is_none();
        let (m, v) = slot.get_or_insert_with(|| (vec![0.0; g.len()], vec![0.0; g.len()]));
        if m.len() != g.len() || v.len() != g.len() {
            candle_core::bail!("adamw-in-place: the moments do not match the parameter");
        }
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let (gm, gv) = (affine(g, ob1, 0.0), affine(g * g, ob2, 0.0));
            if first {
                (*m, *v) = (gm, gv);
            } else {
                *m = affine(*m, b1, 0.0) + gm;
                *v = affine(*v, b2, 0.0) + gv;
            }
            let denom = affine(affine(v.sqrt(), s.inv_sqrt_c2, 0.0), 1.0, s.eps);
            let update = affine(*m / denom, s.step_size, 0.0);
            *w = affine(*w, s.decay, 0.0) - update;
        }
        Ok(())
    }
}

/// One AdamW step of an `f32` CPU parameter ([`takes_host_path`]) with its moments in `moments`
/// (`None` before the first step).
pub(crate) fn adamw_step(
    var: &Var,
    g: &Tensor,
    moments: &mut Option<(Vec<f32>, Vec<f32>)>,
    s: AdamWScalars,
) -> Result<()> {
    let op = AdamWInPlace {
        moments: RefCell::new(moments),
        s,
    };
    var.as_tensor().inplace_op2(g, &op)?;
    Ok(())
}

/// The in-place SGD-with-momentum op: parameter destination, update direction source, the
/// momentum buffer borrowed (`None`: no buffer yet).
struct SgdInPlace<'a> {
    buffer: RefCell<&'a mut Option<Vec<f32>>>,
    /// `η`, `μ`, `λ` as the tensor path casts them.
    lr: f32,
    momentum: f32,
    /// `μ > 0` in `f64`, as the tensor path decides whether to accumulate (a positive `μ` below
    /// `f32`'s range still accumulates there, times zero).
    momentum_positive: bool,
    weight_decay: Option<f32>,
}

impl InplaceOp2 for SgdInPlace<'_> {
    fn name(&self) -> &'static str {
        "sgd-momentum-in-place"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (w, g) = f32_slices(self.name(), (dst, dst_l), (src, src_l))?;
        let mut slot = self.buffer.borrow_mut();
        // The tensor path replaces the buffer by the gradient on the first step and without
        // momentum, and accumulates into it otherwise.
        let accumulate = slot.is_some() && self.momentum_positive;
        let b = slot.get_or_insert_with(|| vec![0.0; g.len()]);
        if b.len() != g.len() {
            candle_core::bail!("sgd-momentum-in-place: the buffer does not match the parameter");
        }
        for ((w, &g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
            let g = match self.weight_decay {
                Some(wd) => g + affine(*w, wd, 0.0),
                None => g,
            };
            *b = if accumulate {
                affine(*b, self.momentum, 0.0) + g
            } else {
                g
            };
            *w -= affine(*b, self.lr, 0.0);
        }
        Ok(())
    }
}

/// One SGD-with-momentum step of an `f32` CPU parameter ([`takes_host_path`]): `b ← μb + (g +
/// λθ)` (the first step `b = g + λθ`), `θ ← θ − ηb`, rounded as the tensor path rounds it.
pub(crate) fn sgd_step(
    var: &Var,
    g: &Tensor,
    buffer: &mut Option<Vec<f32>>,
    (lr, momentum, weight_decay): (f64, f64, f64),
) -> Result<()> {
    let op = SgdInPlace {
        buffer: RefCell::new(buffer),
        lr: lr as f32,
        momentum: momentum as f32,
        momentum_positive: momentum > 0.0,
        weight_decay: (weight_decay > 0.0).then_some(weight_decay as f32),
    };
    var.as_tensor().inplace_op2(g, &op)?;
    Ok(())
}
