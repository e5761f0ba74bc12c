//! First-order optimizers over *named* parameters, with explicit, savable state.
//!
//! candle-nn's `AdamW` keeps its moments private, so a checkpoint cannot hold them and a resumed run
//! cannot continue exactly. These optimizers follow PyTorch's update rules to the letter and expose
//! their state as name → tensor pairs (sorted by parameter name, never `HashMap` order), so one
//! safetensors file can hold the model and the optimizer.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{KfacError, Result};
use crate::host_update::{adamw_step, sgd_step, takes_host_path, AdamWScalars};

/// Parameters sorted by name: the canonical order for every per-parameter state.
#[derive(Debug, Clone, Default)]
pub struct NamedParams {
    entries: Vec<(String, Var)>,
}

impl NamedParams {
    /// Builds the set, sorted by name. Non-float variables are dropped.
    pub fn new(mut entries: Vec<(String, Var)>) -> Self {
        entries.retain(|(_, v)| v.dtype().is_float());
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Self { entries }
    }

    /// The `(name, variable)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Var)> {
        self.entries.iter()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where an optimizer reads each parameter's gradient from.
pub trait GradientSource {
    /// The gradient for parameter `name` (variable `var`), if there is one.
    fn gradient(&self, name: &str, var: &Var) -> Option<Tensor>;
}

impl GradientSource for GradStore {
    fn gradient(&self, _name: &str, var: &Var) -> Option<Tensor> {
        self.get(var.as_tensor()).cloned()
    }
}

impl GradientSource for HashMap<String, Tensor> {
    fn gradient(&self, name: &str, _var: &Var) -> Option<Tensor> {
        self.get(name).cloned()
    }
}

/// An optimizer over named parameters whose state can be saved and restored exactly.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &dyn GradientSource) -> Result<()>;
    /// The current learning rate.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate.
    fn set_learning_rate(&mut self, lr: f64);
    /// The optimizer's state as named tensors, in a stable order.
    fn state(&self) -> Result<Vec<(String, Tensor)>>;
    /// Restores state saved by [`Optimizer::state`]; every expected tensor must be present with
    /// the right shape.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// AdamW hyper-parameters (Loshchilov & Hutter 2019, PyTorch's defaults except the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate η.
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay λ: `θ ← θ(1 − ηλ)` before the Adam step.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        check(
            self.lr > 0.0 && self.lr.is_finite(),
            "lr",
            self.lr,
            "a finite value > 0",
        )?;
        check(
            (0.0..1.0).contains(&self.beta1),
            "beta1",
            self.beta1,
            "a value in [0, 1)",
        )?;
        check(
            (0.0..1.0).contains(&self.beta2),
            "beta2",
            self.beta2,
            "a value in [0, 1)",
        )?;
        check(self.eps > 0.0, "eps", self.eps, "a value > 0")?;
        check(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "weight_decay",
            self.weight_decay,
            "a finite value ≥ 0",
        )
    }
}

fn check(ok: bool, name: &'static str, value: f64, hint: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(KfacError::InvalidConfig {
            name,
            value: value.to_string(),
            hint,
        })
    }
}

/// AdamW with PyTorch's update: with bias corrections `c₁ = 1 − β₁ᵗ`, `c₂ = 1 − β₂ᵗ`,
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `θ ← θ(1 − ηλ) − (η/c₁)·m / (√v/√c₂ + ε)`.
///
/// `f32` parameters in CPU memory take one in-place pass over host buffers
/// (the crate's `host_update.rs`) with bit-identical results; every other dtype and device takes
/// candle tensor ops.
#[derive(Debug)]
pub struct AdamW {
    params: NamedParams,
    config: AdamWConfig,
    step: u64,
    /// The moments of parameters on the tensor path (and as loaded from a checkpoint).
    moments: Vec<Option<(Tensor, Tensor)>>,
    /// The moments of parameters on the host path.
    host_moments: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    /// Whether `f32` CPU parameters may take the host path (tests turn it off to compare).
    host_path: bool,
}

impl AdamW {
    /// A new AdamW over `params` with zero moments.
    pub fn new(params: NamedParams, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let moments = vec![None; params.len()];
        let host_moments = vec![None; params.len()];
        Ok(Self {
            params,
            config,
            step: 0,
            moments,
            host_moments,
            host_path: true,
        })
    }

    /// The number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &dyn GradientSource) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let step_size = c.lr / (1.0 - c.beta1.powi(t));
        let sqrt_c2 = (1.0 - c.beta2.powi(t)).sqrt();
        let decay = 1.0 - c.lr * c.weight_decay;
        let scalars = AdamWScalars::new((c.beta1, c.beta2, c.eps), sqrt_c2, step_size, decay);
        for (((name, var), moments), host) in self
            .params
            .iter()
            .zip(self.moments.iter_mut())
            .zip(self.host_moments.iter_mut())
        {
            let Some(g) = grads.gradient(name, var) else {
                continue;
            };
            if self.host_path && takes_host_path(var, &g) {
                if let Some((m, v)) = moments.take() {
                    let read = |t: &Tensor| -> Result<Vec<f32>> {
                        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
                    };
                    *host = Some((read(&m)?, read(&v)?));
                }
                adamw_step(var, &g, host, scalars)?;
                continue;
            }
            if let Some((m, v)) = host.take() {
                let t = |x: Vec<f32>| Tensor::from_vec(x, var.shape(), var.device());
                *moments = Some((t(m)?.to_dtype(var.dtype())?, t(v)?.to_dtype(var.dtype())?));
            }
            let (m, v) = match moments.take() {
                Some((m, v)) => (
                    ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                    ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                ),
                None => ((&g * (1.0 - c.beta1))?, (g.sqr()? * (1.0 - c.beta2))?),
            };
            let denom = ((v.sqrt()? / sqrt_c2)? + c.eps)?;
            let update = ((&m / denom)? * step_size)?;
            let decayed = (var.as_tensor() * decay)?;
            var.set(&(decayed - update)?)?;
            *moments = Some((m, v));
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let device = match self.params.iter().next() {
            Some((_, v)) => v.device().clone(),
            None => candle_core::Device::Cpu,
        };
        let mut out = vec![(
            "adamw.step".to_string(),
            Tensor::new(&[self.step as f64], &device)?,
        )];
        for (((name, var), moments), host) in self
            .params
            .iter()
            .zip(self.moments.iter())
            .zip(self.host_moments.iter())
        {
            let (m, v) = match (moments, host) {
                (Some((m, v)), _) => (m.clone(), v.clone()),
                (None, Some((m, v))) => {
                    let t = |x: &Vec<f32>| Tensor::from_vec(x.clone(), var.shape(), var.device());
                    (t(m)?, t(v)?)
                }
                (None, None) => (var.zeros_like()?, var.zeros_like()?),
            };
            out.push((format!("adamw.m.{name}"), m));
            out.push((format!("adamw.v.{name}"), v));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let step = get_state(state, "adamw.step")?.to_vec1::<f64>()?;
        self.step = step.first().copied().unwrap_or(0.0) as u64;
        for ((name, var), moments) in self.params.iter().zip(self.moments.iter_mut()) {
            let m = get_state(state, &format!("adamw.m.{name}"))?;
            let v = get_state(state, &format!("adamw.v.{name}"))?;
            for (t, which) in [(&m, "m"), (&v, "v")] {
                if t.dims() != var.dims() {
                    return Err(KfacError::StateMismatch(format!(
                        "adamw.{which}.{name} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
            }
            let to = |t: &Tensor| t.to_dtype(var.dtype())?.to_device(var.device());
            *moments = Some((to(&m)?, to(&v)?));
        }
        self.host_moments.iter_mut().for_each(|h| *h = None);
        Ok(())
    }
}

/// SGD with heavy-ball momentum, PyTorch's form: `b ← μb + (g + λθ)` (the first step `b = g + λθ`),
/// `θ ← θ − ηb`.
///
/// `f32` parameters in CPU memory take one in-place pass over host buffers
/// (the crate's `host_update.rs`) with bit-identical results; every other dtype and device takes
/// candle tensor ops.
#[derive(Debug)]
pub struct SgdMomentum {
    params: NamedParams,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    /// Buffers of parameters on the tensor path (and as loaded from a checkpoint).
    buffers: Vec<Option<Tensor>>,
    /// Buffers of parameters on the host path.
    host_buffers: Vec<Option<Vec<f32>>>,
    /// Whether `f32` CPU parameters may take the host path (tests turn it off to compare).
    host_path: bool,
}

impl SgdMomentum {
    /// A new SGD with momentum `momentum` ∈ [0, 1) and L2 weight decay `weight_decay` ≥ 0.
    pub fn new(params: NamedParams, lr: f64, momentum: f64, weight_decay: f64) -> Result<Self> {
        check(lr > 0.0 && lr.is_finite(), "lr", lr, "a finite value > 0")?;
        check(
            (0.0..1.0).contains(&momentum),
            "momentum",
            momentum,
            "a value in [0, 1)",
        )?;
        check(
            weight_decay >= 0.0,
            "weight_decay",
            weight_decay,
            "a value ≥ 0",
        )?;
        let buffers = vec![None; params.len()];
        let host_buffers = vec![None; params.len()];
        Ok(Self {
            params,
            lr,
            momentum,
            weight_decay,
            buffers,
            host_buffers,
            host_path: true,
        })
    }

    /// The momentum coefficient μ.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }
}

impl Optimizer for SgdMomentum {
    fn step(&mut self, grads: &dyn GradientSource) -> Result<()> {
        for (((name, var), buffer), host) in self
            .params
            .iter()
            .zip(self.buffers.iter_mut())
            .zip(self.host_buffers.iter_mut())
        {
            let Some(mut g) = grads.gradient(name, var) else {
                continue;
            };
            if self.host_path && takes_host_path(var, &g) {
                if let Some(b) = buffer.take() {
                    *host = Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
                }
                sgd_step(var, &g, host, (self.lr, self.momentum, self.weight_decay))?;
                continue;
            }
            if let Some(b) = host.take() {
                *buffer =
                    Some(Tensor::from_vec(b, var.shape(), var.device())?.to_dtype(var.dtype())?);
            }
            if self.weight_decay > 0.0 {
                g = (g + (var.as_tensor() * self.weight_decay)?)?;
            }
            let b = match buffer.take() {
                Some(b) if self.momentum > 0.0 => ((b * self.momentum)? + g)?,
                _ => g,
            };
            var.set(&(var.as_tensor() - (&b * self.lr)?)?)?;
            *buffer = Some(b);
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (((name, var), buffer), host) in self
            .params
            .iter()
            .zip(self.buffers.iter())
            .zip(self.host_buffers.iter())
        {
            let (b, present) = match (buffer, host) {
                (Some(b), _) => (b.clone(), 1.0),
                (None, Some(h)) => (Tensor::from_vec(h.clone(), var.shape(), var.device())?, 1.0),
                (None, None) => (var.zeros_like()?, 0.0),
            };
            out.push((format!("sgd.buf.{name}"), b));
            out.push((
                format!("sgd.has_buf.{name}"),
                Tensor::new(&[present], var.device())?,
            ));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for ((name, var), buffer) in self.params.iter().zip(self.buffers.iter_mut()) {
            let b = get_state(state, &format!("sgd.buf.{name}"))?;
            let present = get_state(state, &format!("sgd.has_buf.{name}"))?.to_vec1::<f64>()?;
            if b.dims() != var.dims() {
                return Err(KfacError::StateMismatch(format!(
                    "sgd.buf.{name} has shape {:?}, the parameter {:?}",
                    b.dims(),
                    var.dims()
                )));
            }
            *buffer = if present.first().copied().unwrap_or(0.0) > 0.5 {
                Some(b.to_dtype(var.dtype())?.to_device(var.device())?)
            } else {
                None
            };
        }
        self.host_buffers.iter_mut().for_each(|h| *h = None);
        Ok(())
    }
}

fn get_state(state: &HashMap<String, Tensor>, key: &str) -> Result<Tensor> {
    state
        .get(key)
        .cloned()
        .ok_or_else(|| KfacError::StateMismatch(format!("`{key}` is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One AdamW step from zero moments moves every coordinate by η·sign(g) (bias-corrected
    /// m̂/√v̂ = g/|g|), up to ε, plus the decoupled decay.
    #[test]
    fn adamw_first_step_is_signed_lr() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 3.0], &dev)?)?;
        let params = NamedParams::new(vec![("w".into(), w.clone())]);
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(params, cfg)?;
        let mut grads = HashMap::new();
        grads.insert("w".to_string(), Tensor::new(&[0.3f64, -4.0, 1e-3], &dev)?);
        opt.step(&grads)?;
        let got = w.as_tensor().to_vec1::<f64>()?;
        // m̂ = g, √v̂ = |g|: the step is η·g/(|g| + ε), within 1e-8 relative of η·sign(g).
        let expect = [
            1.0 * (1.0 - 0.05) - 0.1 * 0.3 / (0.3 + 1e-8),
            -2.0 * (1.0 - 0.05) + 0.1 * 4.0 / (4.0 + 1e-8),
            3.0 * (1.0 - 0.05) - 0.1 * 1e-3 / (1e-3 + 1e-8),
        ];
        for (g, e) in got.iter().zip(expect) {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
        Ok(())
    }

    /// Saving after k steps and loading into a fresh optimizer continues bit-for-bit.
    #[test]
    fn adamw_state_round_trip_continues_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let grads_at = |k: usize| -> HashMap<String, Tensor> {
            let g: Vec<f32> = (0..4).map(|i| ((i + k) as f32 * 0.7).sin()).collect();
            HashMap::from([("w".to_string(), Tensor::new(g.as_slice(), &dev).unwrap())])
        };
        let w0 = Tensor::new(&[0.5f32, -0.25, 1.0, 2.0], &dev)?;
        let a = Var::from_tensor(&w0)?;
        let mut opt_a = AdamW::new(
            NamedParams::new(vec![("w".into(), a.clone())]),
            Default::default(),
        )?;
        for k in 0..5 {
            opt_a.step(&grads_at(k))?;
        }
        let b = Var::from_tensor(&w0)?;
        let mut opt_b = AdamW::new(
            NamedParams::new(vec![("w".into(), b.clone())]),
            Default::default(),
        )?;
        for k in 0..3 {
            opt_b.step(&grads_at(k))?;
        }
        let saved: HashMap<_, _> = opt_b.state()?.into_iter().collect();
        let c = Var::from_tensor(b.as_tensor())?;
        let mut opt_c = AdamW::new(
            NamedParams::new(vec![("w".into(), c.clone())]),
            Default::default(),
        )?;
        opt_c.load_state(&saved)?;
        for k in 3..5 {
            opt_c.step(&grads_at(k))?;
        }
        assert_eq!(
            a.as_tensor().to_vec1::<f32>()?,
            c.as_tensor().to_vec1::<f32>()?
        );
        Ok(())
    }

    /// SGD with momentum 0.5 on a constant gradient g: displacements g, 1.5g, 1.75g.
    #[test]
    fn sgd_momentum_accumulates_geometrically() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[0.0f64], &dev)?)?;
        let mut opt = SgdMomentum::new(
            NamedParams::new(vec![("w".into(), w.clone())]),
            1.0,
            0.5,
            0.0,
        )?;
        let grads = HashMap::from([("w".to_string(), Tensor::new(&[1.0f64], &dev)?)]);
        let mut positions = vec![];
        for _ in 0..3 {
            opt.step(&grads)?;
            positions.push(w.as_tensor().to_vec1::<f64>()?[0]);
        }
        assert_eq!(positions, vec![-1.0, -2.5, -4.25]);
        Ok(())
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = AdamWConfig {
            beta2: 1.0,
            ..Default::default()
        };
        let err = AdamW::new(NamedParams::default(), bad).unwrap_err();
        assert!(err.to_string().contains("beta2"), "{err}");
    }

    /// `n` values spread over several magnitudes and both signs, zeros included.
    fn spread(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
                if h % 17 == 0 {
                    return 0.0;
                }
                let mag = 10f32.powi((h % 9) as i32 - 6);
                let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
                sign * mag * (1.0 + (h % 1000) as f32 / 1000.0)
            })
            .collect()
    }

    /// The host path of `f32` CPU parameters (`make(params, true)`) against the tensor ops
    /// (`make(params, false)`), bit for bit, over steps where one parameter gets no gradient at
    /// first, and through a save / load into a fresh optimizer in the middle.
    fn host_path_matches_the_tensor_ops<O: Optimizer>(
        make: impl Fn(NamedParams, bool) -> Result<O>,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 3] = [&[5, 7], &[13], &[1]];
        let vars = || -> Result<Vec<Var>> {
            shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n = s.iter().product();
                    Ok(Var::from_tensor(&Tensor::from_vec(
                        spread(n, 100 + i as u32),
                        *s,
                        &dev,
                    )?)?)
                })
                .collect()
        };
        let named = |vars: &[Var]| {
            NamedParams::new(
                vars.iter()
                    .enumerate()
                    .map(|(i, v)| (format!("p{i}"), v.clone()))
                    .collect(),
            )
        };
        let grads = |step: u32| -> Result<HashMap<String, Tensor>> {
            let mut g = HashMap::new();
            for (i, s) in shapes.iter().enumerate() {
                // p1 gets no gradient on step 1: its state starts a step late.
                if i == 1 && step == 1 {
                    continue;
                }
                let n = s.iter().product();
                let v = spread(n, 7 * step + i as u32);
                g.insert(format!("p{i}"), Tensor::from_vec(v, *s, &dev)?);
            }
            Ok(g)
        };
        let bits = |vars: &[Var]| -> Result<Vec<u32>> {
            let mut out = Vec::new();
            for v in vars {
                let x = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                out.extend(x.into_iter().map(f32::to_bits));
            }
            Ok(out)
        };
        let state_bits = |o: &O| -> Result<Vec<(String, Vec<u64>)>> {
            let mut out = Vec::new();
            for (k, t) in o.state()? {
                let x = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                out.push((k, x.into_iter().map(f64::to_bits).collect()));
            }
            Ok(out)
        };
        let (host_vars, tensor_vars) = (vars()?, vars()?);
        let mut host = make(named(&host_vars), true)?;
        let mut tensor = make(named(&tensor_vars), false)?;
        for step in 0..3 {
            host.step(&grads(step)?)?;
            tensor.step(&grads(step)?)?;
            assert_eq!(bits(&host_vars)?, bits(&tensor_vars)?, "step {step}");
        }
        assert_eq!(state_bits(&host)?, state_bits(&tensor)?);
        let saved: HashMap<String, Tensor> = host.state()?.into_iter().collect();
        let mut resumed = make(named(&host_vars), true)?;
        resumed.load_state(&saved)?;
        for step in 3..5 {
            resumed.step(&grads(step)?)?;
            tensor.step(&grads(step)?)?;
            assert_eq!(bits(&host_vars)?, bits(&tensor_vars)?, "step {step}");
        }
        assert_eq!(state_bits(&resumed)?, state_bits(&tensor)?);
        Ok(())
    }

    #[test]
    fn adamw_host_path_matches_the_tensor_ops_bit_for_bit() -> Result<()> {
        host_path_matches_the_tensor_ops(|p, host| {
            let mut o = AdamW::new(p, AdamWConfig::default())?;
            o.host_path = host;
            Ok(o)
        })
    }

    /// A gradient that shares the parameter's storage (a hand-made gradient source) updates as
    /// the tensor ops do instead of failing the in-place op.
    #[test]
    fn a_gradient_aliasing_its_parameter_takes_the_tensor_path() -> Result<()> {
        let dev = Device::Cpu;
        let run = |host: bool| -> Result<Vec<f32>> {
            let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0, 4.0], &dev)?)?;
            let mut o = SgdMomentum::new(
                NamedParams::new(vec![("w".into(), w.clone())]),
                0.1,
                0.9,
                0.0,
            )?;
            o.host_path = host;
            let mut a = AdamW::new(
                NamedParams::new(vec![("w".into(), w.clone())]),
                AdamWConfig::default(),
            )?;
            a.host_path = host;
            for _ in 0..2 {
                let g: HashMap<String, Tensor> = [("w".to_string(), w.as_tensor().clone())].into();
                o.step(&g)?;
                a.step(&g)?;
            }
            Ok(w.as_tensor().to_vec1::<f32>()?)
        };
        assert_eq!(run(true)?, run(false)?);
        Ok(())
    }

    #[test]
    fn sgd_host_path_matches_the_tensor_ops_bit_for_bit() -> Result<()> {
        for (momentum, weight_decay) in [(0.9, 0.01), (0.9, 0.0), (0.0, 0.01), (1e-46, 0.0)] {
            host_path_matches_the_tensor_ops(|p, host| {
                let mut o = SgdMomentum::new(p, 0.05, momentum, weight_decay)?;
                o.host_path = host;
                Ok(o)
            })?;
        }
        Ok(())
    }
}
