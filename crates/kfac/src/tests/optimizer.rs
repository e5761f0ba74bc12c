//! The composed optimizer: training, KL clipping, fallbacks, adaptive damping, state, sampling.

use std::collections::HashMap;

use candle_core::{Module, Tensor, Var};

use super::{randn, rng, var};
use crate::{
    sample_labels, AdamWConfig, DampingKind, KfacConfig, KfacOptimizer, LayerCapture, NamedParams,
    PreconditionedLayer, Preconditioner, Result, Solver, TrackedLinear,
};

/// `x → L1 → tanh → L2 → + offset`, the offset an untracked parameter trained by AdamW.
struct Mlp {
    l1: TrackedLinear,
    l2: TrackedLinear,
    offset: Var,
}

impl Mlp {
    fn new(seed: u64) -> Result<Self> {
        let mut r = rng(seed);
        Ok(Self {
            l1: TrackedLinear::new(
                "l1",
                var(&mut r, &[8, 4], 0.5)?,
                Some(var(&mut r, &[8], 0.0)?),
            )?,
            l2: TrackedLinear::new(
                "l2",
                var(&mut r, &[2, 8], 0.35)?,
                Some(var(&mut r, &[2], 0.0)?),
            )?,
            offset: var(&mut r, &[2], 0.0)?,
        })
    }

    fn copy(&self) -> Result<Self> {
        let c = |v: &Var| Var::from_tensor(&v.as_tensor().copy()?);
        Ok(Self {
            l1: TrackedLinear::new(
                "l1",
                c(self.l1.weight())?,
                Some(c(self.l1.bias().unwrap())?),
            )?,
            l2: TrackedLinear::new(
                "l2",
                c(self.l2.weight())?,
                Some(c(self.l2.bias().unwrap())?),
            )?,
            offset: c(&self.offset)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.l1.forward(x)?.tanh()?;
        Ok(self
            .l2
            .forward(&h)?
            .broadcast_add(self.offset.as_tensor())?)
    }

    fn optimizer(&self, cfg: KfacConfig) -> Result<KfacOptimizer> {
        KfacOptimizer::new(
            vec![
                PreconditionedLayer::from_tracked(&self.l1),
                PreconditionedLayer::from_tracked(&self.l2),
            ],
            NamedParams::new(vec![("offset".into(), self.offset.clone())]),
            cfg,
            AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
        )
    }

    fn params(&self) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for v in [
            self.l1.weight(),
            self.l1.bias().unwrap(),
            self.l2.weight(),
            self.l2.bias().unwrap(),
            &self.offset,
        ] {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    /// One training step on the empirical Fisher: returns the loss before the step.
    fn train_step(
        &self,
        opt: &mut KfacOptimizer,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(f64, crate::KfacStepStats)> {
        let track = opt.needs_curvature();
        self.l1.set_tracking(track);
        self.l2.set_tracking(track);
        let loss = mse(&self.forward(x)?, y)?;
        let grads = loss.backward()?;
        let mut caps: Vec<LayerCapture> = Vec::new();
        for l in [&self.l1, &self.l2] {
            caps.extend(l.capture(&grads)?);
        }
        let stats = opt.step(&grads, &caps)?;
        Ok((loss.to_scalar::<f64>()?, stats))
    }
}

/// `(1/N) Σ ½‖ŷ − y‖²`.
fn mse(pred: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(((pred - y)?.sqr()?.sum_all()? * (0.5 / pred.dims()[0] as f64))?)
}

/// Regression data from a fixed random teacher of the same architecture.
fn data(seed: u64) -> Result<(Tensor, Tensor)> {
    let teacher = Mlp::new(seed + 1000)?;
    let x = randn(&mut rng(seed), &[64, 4])?;
    let y = (teacher.forward(&x)? * 3.0)?;
    Ok((x, y))
}

/// Every solver and damping kind trains the tiny tracked MLP: after 20 steps the loss is below
/// half the initial loss, and no step fell back or broke down.
#[test]
fn every_solver_trains_a_tiny_mlp() -> Result<()> {
    let (x, y) = data(30)?;
    let loss_of =
        |net: &Mlp| -> Result<f64> { Ok(mse(&net.forward(&x)?, &y)?.to_scalar::<f64>()?) };
    for (solver, kind) in [
        (Solver::Eigen, DampingKind::Tikhonov),
        (Solver::Eigen, DampingKind::Factored),
        (Solver::Inverse, DampingKind::Factored),
        (Solver::CgFactor, DampingKind::Tikhonov),
        (Solver::CgMatrixFree, DampingKind::Tikhonov),
    ] {
        let net = Mlp::new(31)?;
        let cfg = KfacConfig {
            solver,
            damping_kind: kind,
            k_fac: 1,
            k_inv: 5,
            kl_clip: Some(1e-2),
            ..Default::default()
        };
        let mut opt = net.optimizer(cfg)?;
        let initial = loss_of(&net)?;
        for _ in 0..20 {
            let (_, stats) = net.train_step(&mut opt, &x, &y)?;
            assert_eq!(
                (
                    stats.fallbacks,
                    stats.cg_breakdowns,
                    stats.non_finite_factors
                ),
                (0, 0, 0)
            );
        }
        let fin = loss_of(&net)?;
        assert!(
            fin < 0.5 * initial,
            "{solver:?}/{kind:?}: loss {initial} → {fin}"
        );
    }
    Ok(())
}

/// KL clipping: with a small c the scale ν < 1 engages and the clipped step satisfies
/// η²ν²Σ⟨U, ∇W̄⟩ = c exactly; the output is ν times the unclipped preconditioned gradient.
#[test]
fn kl_clipping_bound_holds() -> Result<()> {
    let (x, y) = data(32)?;
    let net = Mlp::new(33)?;
    net.l1.set_tracking(true);
    net.l2.set_tracking(true);
    let grads = mse(&net.forward(&x)?, &y)?.backward()?;
    let caps: Vec<_> = [&net.l1, &net.l2]
        .iter()
        .map(|l| l.capture(&grads).unwrap().unwrap())
        .collect();
    let layers = vec![
        PreconditionedLayer::from_tracked(&net.l1),
        PreconditionedLayer::from_tracked(&net.l2),
    ];
    let c = 1e-6;
    let lr = 0.1;
    let base = KfacConfig {
        lr,
        k_fac: 1,
        k_inv: 1,
        ..Default::default()
    };
    let mut clipped = Preconditioner::new(
        layers.clone(),
        KfacConfig {
            kl_clip: Some(c),
            ..base
        },
    )?;
    let mut free = Preconditioner::new(
        layers,
        KfacConfig {
            kl_clip: None,
            ..base
        },
    )?;
    let (uc, stats) = clipped.step(&grads, &caps)?;
    let (uf, _) = free.step(&grads, &caps)?;
    let nu = stats.kl_scale;
    assert!(nu < 1.0, "clip did not engage: ν = {nu}");
    let mut vg = 0.0;
    for l in [&net.l1, &net.l2] {
        for (suffix, v) in [("weight", l.weight()), ("bias", l.bias().unwrap())] {
            let key = format!("{}.{suffix}", l.name());
            let g = grads.get(v.as_tensor()).unwrap();
            vg += (&uf[&key] * g)?.sum_all()?.to_scalar::<f64>()?;
            let diff = (&uc[&key] - (&uf[&key] * nu)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(diff < 1e-14, "{key}");
        }
    }
    let kl = lr * lr * nu * nu * vg;
    assert!((kl - c).abs() < 1e-9 * c, "η²ν²Σ⟨U,∇⟩ = {kl}, c = {c}");
    Ok(())
}

/// Saving after 3 steps and resuming into a fresh optimizer and model copy continues bit-for-bit
/// (factors, eigenbases, CG warm starts, step counter, SGD momentum, AdamW moments).
#[test]
fn state_round_trip_continues_exactly() -> Result<()> {
    let (x, y) = data(34)?;
    for solver in [
        Solver::Eigen,
        Solver::CgFactor,
        Solver::CgMatrixFree,
        Solver::Inverse,
    ] {
        let cfg = KfacConfig {
            solver,
            damping_kind: if solver == Solver::Inverse {
                DampingKind::Factored
            } else {
                DampingKind::Tikhonov
            },
            k_fac: 2,
            k_inv: 3,
            ..Default::default()
        };
        let a = Mlp::new(35)?;
        let mut opt_a = a.optimizer(cfg)?;
        for _ in 0..7 {
            a.train_step(&mut opt_a, &x, &y)?;
        }
        let b = Mlp::new(35)?;
        let mut opt_b = b.optimizer(cfg)?;
        for _ in 0..3 {
            b.train_step(&mut opt_b, &x, &y)?;
        }
        let saved: HashMap<String, Tensor> = opt_b.state()?.into_iter().collect();
        let c = b.copy()?;
        let mut opt_c = c.optimizer(cfg)?;
        opt_c.load_state(&saved)?;
        for _ in 3..7 {
            c.train_step(&mut opt_c, &x, &y)?;
        }
        assert_eq!(a.params()?, c.params()?, "{solver:?}");
        // And the state matters: a fresh optimizer from the same point diverges.
        let d = b.copy()?;
        let mut opt_d = d.optimizer(cfg)?;
        for _ in 3..7 {
            d.train_step(&mut opt_d, &x, &y)?;
        }
        assert_ne!(a.params()?, d.params()?, "{solver:?}");
    }
    Ok(())
}

/// Non-finite curvature is discarded and counted; the update stays finite.
#[test]
fn non_finite_capture_is_caught() -> Result<()> {
    let net = Mlp::new(36)?;
    let mut opt = net.optimizer(KfacConfig {
        k_fac: 1,
        ..Default::default()
    })?;
    let (x, y) = data(37)?;
    let grads = mse(&net.forward(&x)?, &y)?.backward()?;
    let bad = LayerCapture {
        name: "l1".into(),
        input: (x.ones_like()? * f64::NAN)?,
        output_grad: Tensor::zeros((64, 8), candle_core::DType::F64, x.device())?,
    };
    let stats = opt.step(&grads, &[bad])?;
    assert_eq!(stats.non_finite_factors, 1);
    assert!(net.params()?.iter().all(|v| v.is_finite()));
    Ok(())
}

/// Breakdowns injected through the state: CG on an indefinite operator breaks down twice (first
/// try and the jittered retry) and falls back to the plain gradient; eigen on NaN factors falls back.
#[test]
fn solver_breakdowns_fall_back_to_the_gradient() -> Result<()> {
    let (x, y) = data(38)?;
    for solver in [Solver::CgFactor, Solver::Eigen] {
        let net = Mlp::new(39)?;
        let cfg = KfacConfig {
            solver,
            k_fac: 1000,
            kl_clip: None,
            momentum: 0.0,
            ..Default::default()
        };
        let mut opt = net.optimizer(cfg)?;
        net.train_step(&mut opt, &x, &y)?;
        let mut state: HashMap<String, Tensor> = opt.state()?.into_iter().collect();
        let a = state["kfac.l1.A"].clone();
        let poisoned = match solver {
            Solver::CgFactor => (Tensor::eye(a.dims()[0], a.dtype(), a.device())? * -1.0)?,
            _ => (a.ones_like()? * f64::NAN)?,
        };
        state.insert("kfac.l1.A".into(), poisoned);
        state.insert(
            "kfac.l1.present".into(),
            Tensor::new(&[1.0f64, 0.0, 0.0, 0.0, 0.0], a.device())?,
        );
        let mut opt2 = net.optimizer(KfacConfig { k_inv: 1, ..cfg })?;
        opt2.load_state(&state)?;
        let before = net.l1.weight().as_tensor().copy()?;
        net.l1.set_tracking(false);
        net.l2.set_tracking(false);
        let grads = mse(&net.forward(&x)?, &y)?.backward()?;
        let stats = opt2.step(&grads, &[])?;
        assert_eq!(stats.fallbacks, 1, "{solver:?}: {stats:?}");
        if solver == Solver::CgFactor {
            assert_eq!(stats.cg_breakdowns, 2);
        }
        let g = grads.get(net.l1.weight().as_tensor()).unwrap();
        let want = (&before - (g * cfg.lr)?)?;
        let diff = (net.l1.weight().as_tensor() - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(
            diff < 1e-14,
            "{solver:?}: not the plain gradient step ({diff})"
        );
    }
    Ok(())
}

/// Levenberg–Marquardt: ρ > 3/4 shrinks λ by ω, ρ < 1/4 grows it by 1/ω, in between keeps it,
/// and the bounds clamp.
#[test]
fn adaptive_damping_follows_levenberg_marquardt() -> Result<()> {
    let net = Mlp::new(40)?;
    let cfg = KfacConfig {
        adaptive_damping: true,
        damping: 1e-2,
        max_damping: 1.1e-2,
        ..Default::default()
    };
    let mut opt = net.optimizer(cfg)?;
    let w = cfg.damping_factor;
    assert!((opt.adapt_damping(-0.9, -1.0) - 1e-2 * w).abs() < 1e-15);
    assert!((opt.adapt_damping(-0.5, -1.0) - 1e-2 * w).abs() < 1e-15);
    assert!((opt.adapt_damping(-0.1, -1.0) - 1e-2).abs() < 1e-15);
    assert!((opt.adapt_damping(0.3, -1.0) - 1e-2 / w).abs() < 1e-15);
    // 1e-2/ω² = 0.01108 exceeds max_damping = 0.011: clamped.
    assert_eq!(opt.adapt_damping(0.3, -1.0), 1.1e-2);
    // A non-descent prediction carries no information: λ unchanged.
    assert_eq!(opt.adapt_damping(-1.0, 0.5), 1.1e-2);
    // The step reports a negative predicted change for a descent step.
    let (x, y) = data(41)?;
    let (_, stats) = net.train_step(&mut opt, &x, &y)?;
    assert!(stats.predicted_change < 0.0, "{stats:?}");
    Ok(())
}

/// Sampled labels follow softmax(logits). Each class frequency over n = 20000 draws has standard
/// error sqrt(p(1−p)/n) ≤ 0.0036; the test allows 5 standard errors.
#[test]
fn sample_labels_follow_the_softmax() -> Result<()> {
    let logits = Tensor::new(&[0.0f64, 1.0, -1.0], &candle_core::Device::Cpu)?;
    let n = 20_000;
    let batch = logits.unsqueeze(0)?.broadcast_as((n, 3))?.contiguous()?;
    let labels = sample_labels(&batch, &mut rng(42))?.to_vec1::<u32>()?;
    let z: f64 = [0.0f64, 1.0, -1.0].iter().map(|v| v.exp()).sum();
    for (c, l) in [0.0f64, 1.0, -1.0].iter().enumerate() {
        let p = l.exp() / z;
        let freq = labels.iter().filter(|&&v| v as usize == c).count() as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!((freq - p).abs() < 5.0 * se, "class {c}: {freq} vs {p}");
    }
    let bad = Tensor::new(&[[0.0f64, f64::NAN]], &candle_core::Device::Cpu)?;
    assert!(sample_labels(&bad, &mut rng(43)).is_err());
    Ok(())
}

#[test]
fn invalid_configs_are_rejected() {
    let bad = KfacConfig {
        solver: Solver::Inverse,
        damping_kind: DampingKind::Tikhonov,
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("Factored"));
    let bad = KfacConfig {
        damping: 0.0,
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("damping"));
    assert!(KfacConfig::default().validate().is_ok());
}

/// The per-layer work on two threads gives the same parameters, bit for bit, as on one, for every
/// solver (each layer's arithmetic does not depend on which thread runs it).
#[test]
fn layer_threads_do_not_change_the_result() -> Result<()> {
    let (x, y) = data(40)?;
    for solver in [
        Solver::Eigen,
        Solver::Inverse,
        Solver::CgFactor,
        Solver::CgMatrixFree,
    ] {
        let kind = if solver == Solver::Inverse {
            DampingKind::Factored
        } else {
            DampingKind::Tikhonov
        };
        let mut finals = Vec::new();
        for threads in [1, 2] {
            let net = Mlp::new(41)?;
            let cfg = KfacConfig {
                solver,
                damping_kind: kind,
                k_fac: 2,
                k_inv: 3,
                ..Default::default()
            };
            let mut opt = net.optimizer(cfg)?;
            opt.set_threads(threads);
            let mut refreshed = 0;
            for _ in 0..7 {
                let (_, stats) = net.train_step(&mut opt, &x, &y)?;
                refreshed += stats.refreshed_factors;
            }
            assert_eq!(
                refreshed,
                2 * 4,
                "{solver:?}: factors of both layers on 4 steps"
            );
            finals.push(net.params()?);
        }
        assert_eq!(finals[0], finals[1], "{solver:?}");
    }
    Ok(())
}
