//! Ready-made interventions as hooks: zero / mean / resample ablation of attention heads (at
//! `hook_z`) and MLP neurons (at `mlp.hook_post`), scaling (amplify or suppress), steering
//! vectors, and activation patching from another run, each restricted to chosen positions and
//! channels (heads, neurons, residual dimensions).
//!
//! An [`Intervention`] acts on one hook point; [`Interventions`] (a list of them) implements
//! [`Hooks`], so it can be passed to `run_with_hooks` or combined with a cache as
//! `(interventions, cache_hooks)`.
//!
//! ```
//! use candle_core::{DType, Device};
//! use metarep_model::interventions::{Intervention, Interventions};
//! use metarep_model::{HookedTransformer, Input, ModelConfig};
//!
//! # fn main() -> metarep_model::Result<()> {
//! let model = HookedTransformer::random(ModelConfig::gpt2_like(2, 16, 4, 20, 8), 0, DType::F32, &Device::Cpu)?;
//! let input = Input::from_ids(&[vec![1, 2, 3, 4]], &Device::Cpu)?;
//! let mut ivs = Interventions::new(vec![
//!     Intervention::zero_heads(0, &[1, 3]),
//!     Intervention::scale_neurons(1, &[5], 2.0),
//! ]);
//! let logits = model.run_with_hooks(input, &mut ivs)?;
//! assert_eq!(logits.dims(), &[1, 4, 20]);
//! # Ok(())
//! # }
//! ```

use candle_core::{DType, Tensor};

use crate::component::Component;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hooks::{HookPoint, Hooks};

/// What to do with the selected entries of an activation.
#[derive(Debug, Clone)]
pub enum Action {
    /// Set them to zero.
    Zero,
    /// Set them to `value`, broadcast against the activation (a mean such as `[n_heads,
    /// d_head]` or `[pos, d_mlp]`, or a full activation from another run for resampling and
    /// patching).
    Replace(Tensor),
    /// Multiply them by a factor (0 suppresses, 1 keeps, > 1 amplifies).
    Scale(f64),
    /// Add `vector` (broadcast against the activation, e.g. `[d_model]`) times a coefficient.
    Add(Tensor, f64),
}

/// One intervention at one hook point, on chosen positions and channels.
#[derive(Debug, Clone)]
pub struct Intervention {
    /// Where it acts.
    pub point: HookPoint,
    /// Positions (query positions for attention patterns); `None` = all.
    pub positions: Option<Vec<usize>>,
    /// Heads for per-head hooks, neurons for MLP hooks, dimensions for residual hooks;
    /// `None` = all.
    pub channels: Option<Vec<usize>>,
    /// What it does.
    pub action: Action,
}

/// How a hook's activation is laid out: (position dim, channel dim) of `[batch, ...]`.
fn layout(point: HookPoint) -> (usize, usize) {
    match point {
        // [batch, head, query, key]
        HookPoint::AttnScores(_) | HookPoint::Pattern(_) => (2, 1),
        // [batch, pos, head, d_head | d_model] or [batch, pos, channels]
        _ => (1, 2),
    }
}

/// Mean of `act` over the batch (and over positions when `over_positions`): a value for
/// [`Action::Replace`] that mean-ablates. `act: [batch, pos, ...]` → `[...]` or `[pos, ...]`.
pub fn mean_activation(act: &Tensor, over_positions: bool) -> Result<Tensor> {
    let m = act.to_dtype(DType::F32)?.mean(0)?;
    let m = if over_positions { m.mean(0)? } else { m };
    Ok(m.to_dtype(act.dtype())?)
}

impl Intervention {
    /// An intervention on every entry of `point`.
    pub fn new(point: HookPoint, action: Action) -> Self {
        Intervention {
            point,
            positions: None,
            channels: None,
            action,
        }
    }

    /// Restricts it to `positions`.
    pub fn at_positions(mut self, positions: &[usize]) -> Self {
        self.positions = Some(positions.to_vec());
        self
    }

    /// Restricts it to `channels` (heads, neurons or dimensions, by hook).
    pub fn at_channels(mut self, channels: &[usize]) -> Self {
        self.channels = Some(channels.to_vec());
        self
    }

    /// Zero-ablates `heads` of layer `layer` (at `hook_z`).
    pub fn zero_heads(layer: usize, heads: &[usize]) -> Self {
        Self::new(HookPoint::Z(layer), Action::Zero).at_channels(heads)
    }

    /// Zero-ablates one head or one MLP neuron; other components are an error naming them.
    pub fn zero(component: Component) -> Result<Self> {
        match component {
            Component::Head { layer, head } => Ok(Self::zero_heads(layer, &[head])),
            Component::Neuron { layer, neuron } => Ok(Self::zero_neurons(layer, &[neuron])),
            other => Err(Error::Invalid(format!(
                "{other} cannot be zero-ablated by an intervention (heads and neurons can)"
            ))),
        }
    }

    /// Mean-ablates `heads` of layer `layer` with `mean` (`[n_heads, d_head]` or `[pos,
    /// n_heads, d_head]`, e.g. [`mean_activation`] of a reference run's `hook_z`).
    pub fn mean_heads(layer: usize, heads: &[usize], mean: Tensor) -> Self {
        Self::new(HookPoint::Z(layer), Action::Replace(mean)).at_channels(heads)
    }

    /// Resample-ablates `heads` of layer `layer` with `hook_z` recorded on other inputs
    /// (`[batch, pos, n_heads, d_head]`).
    pub fn resample_heads(layer: usize, heads: &[usize], source: Tensor) -> Self {
        Self::new(HookPoint::Z(layer), Action::Replace(source)).at_channels(heads)
    }

    /// Zero-ablates `neurons` of layer `layer` (at `mlp.hook_post`).
    pub fn zero_neurons(layer: usize, neurons: &[usize]) -> Self {
        Self::new(HookPoint::MlpPost(layer), Action::Zero).at_channels(neurons)
    }

    /// Mean-ablates `neurons` with `mean` (`[d_mlp]` or `[pos, d_mlp]`).
    pub fn mean_neurons(layer: usize, neurons: &[usize], mean: Tensor) -> Self {
        Self::new(HookPoint::MlpPost(layer), Action::Replace(mean)).at_channels(neurons)
    }

    /// Resample-ablates `neurons` with `mlp.hook_post` recorded on other inputs.
    pub fn resample_neurons(layer: usize, neurons: &[usize], source: Tensor) -> Self {
        Self::new(HookPoint::MlpPost(layer), Action::Replace(source)).at_channels(neurons)
    }

    /// Scales the output (`hook_z`) of `heads` of layer `layer` by `factor`.
    pub fn scale_heads(layer: usize, heads: &[usize], factor: f64) -> Self {
        Self::new(HookPoint::Z(layer), Action::Scale(factor)).at_channels(heads)
    }

    /// Scales `neurons` of layer `layer` (at `mlp.hook_post`) by `factor`.
    pub fn scale_neurons(layer: usize, neurons: &[usize], factor: f64) -> Self {
        Self::new(HookPoint::MlpPost(layer), Action::Scale(factor)).at_channels(neurons)
    }

    /// Adds `coeff · vector` (`[d_model]`) to the residual stream (or any hook) at `point`.
    pub fn steer(point: HookPoint, vector: Tensor, coeff: f64) -> Self {
        Self::new(point, Action::Add(vector, coeff))
    }

    /// Activation patching: the activation at `point` taken from another run (`source`, same
    /// shape), restrict with [`Intervention::at_positions`] / [`Intervention::at_channels`].
    pub fn patch(point: HookPoint, source: Tensor) -> Self {
        Self::new(point, Action::Replace(source))
    }

    /// Checks the hook exists in a model with `cfg`.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.point.check_available(cfg)
    }

    /// A `{0, 1}` mask broadcastable against `act` selecting the chosen positions × channels.
    fn mask(&self, act: &Tensor) -> Result<Option<Tensor>> {
        if self.positions.is_none() && self.channels.is_none() {
            return Ok(None);
        }
        let dims = act.dims();
        let (pd, cd) = layout(self.point);
        if dims.len() <= pd.max(cd) {
            return Err(Error::shape(
                format!("activation at {}", self.point),
                format!("rank > {}", pd.max(cd)),
                format!("{dims:?}"),
            ));
        }
        let select = |idx: &Option<Vec<usize>>, n: usize, what: &str| -> Result<Vec<f32>> {
            match idx {
                None => Ok(vec![1.0; n]),
                Some(list) => {
                    let mut v = vec![0.0; n];
                    for &i in list {
                        if i >= n {
                            return Err(Error::Invalid(format!(
                                "{what} {i} is out of range: {} has {n} {what}s",
                                self.point
                            )));
                        }
                        v[i] = 1.0;
                    }
                    Ok(v)
                }
            }
        };
        let channel_name = match self.point {
            HookPoint::MlpPre(_) | HookPoint::MlpPreLinear(_) | HookPoint::MlpPost(_) => "neuron",
            HookPoint::Q(_)
            | HookPoint::K(_)
            | HookPoint::V(_)
            | HookPoint::RotQ(_)
            | HookPoint::RotK(_)
            | HookPoint::Z(_)
            | HookPoint::HeadResult(_)
            | HookPoint::AttnScores(_)
            | HookPoint::Pattern(_) => "head",
            _ => "channel",
        };
        let pos = select(&self.positions, dims[pd], "position")?;
        let ch = select(&self.channels, dims[cd], channel_name)?;
        let (lo, hi, lo_v, hi_v) = if pd < cd {
            (pd, cd, &pos, &ch)
        } else {
            (cd, pd, &ch, &pos)
        };
        let mut outer = Vec::with_capacity(dims[lo] * dims[hi]);
        for a in lo_v {
            for b in hi_v {
                outer.push(a * b);
            }
        }
        let mut shape = vec![1usize; dims.len()];
        shape[lo] = dims[lo];
        shape[hi] = dims[hi];
        Ok(Some(
            Tensor::from_vec(outer, shape, act.device())?.to_dtype(act.dtype())?,
        ))
    }

    /// The activation after this intervention.
    pub fn apply(&self, act: &Tensor) -> Result<Tensor> {
        if let Some(out) = self.apply_to_channel_slices(act)? {
            return Ok(out);
        }
        let mask = self.mask(act)?;
        let broadcast = |v: &Tensor| self.broadcast_value(v, act);
        let out = match (&self.action, &mask) {
            (Action::Zero, None) => act.zeros_like()?,
            (Action::Zero, Some(m)) => act.broadcast_mul(&(1.0 - m)?)?,
            (Action::Replace(v), None) => broadcast(v)?.contiguous()?,
            // v·m + act·(1 − m): exactly v where selected, exactly act elsewhere.
            (Action::Replace(v), Some(m)) => {
                (broadcast(v)?.broadcast_mul(m)? + act.broadcast_mul(&(1.0 - m)?)?)?
            }
            (Action::Scale(f), None) => (act * *f)?,
            (Action::Scale(f), Some(m)) => act.broadcast_mul(&((m * (f - 1.0))? + 1.0)?)?,
            (Action::Add(v, c), None) => (act + (broadcast(v)? * *c)?)?,
            (Action::Add(v, c), Some(m)) => (act + (broadcast(v)? * *c)?.broadcast_mul(m)?)?,
        };
        Ok(out)
    }

    /// `v` in `act`'s dtype and device, broadcast to its shape; an error names the hook.
    fn broadcast_value(&self, v: &Tensor, act: &Tensor) -> Result<Tensor> {
        v.to_dtype(act.dtype())?
            .to_device(act.device())?
            .broadcast_as(act.shape())
            .map_err(|_| {
                Error::shape(
                    format!("value for {}", self.point),
                    format!("a tensor broadcastable to {:?}", act.dims()),
                    format!("{:?}", v.dims()),
                )
            })
    }

    /// The common case of a few channels at every position (a head, a neuron): only their
    /// slices are computed and written into a copy of `act` (one pass over it instead of the
    /// mask's three), with the same values as [`Intervention::apply`]'s masked form. `None`
    /// where that does not apply: chosen positions, more than [`MAX_CHANNEL_RUNS`] separate
    /// channel ranges, an index out of range (the masked form names it), or an activation that
    /// gradients flow through.
    fn apply_to_channel_slices(&self, act: &Tensor) -> Result<Option<Tensor>> {
        let (Some(channels), None) = (&self.channels, &self.positions) else {
            return Ok(None);
        };
        let (_, cd) = layout(self.point);
        let dims = act.dims();
        if act.track_op() || dims.len() <= cd || channels.iter().any(|&c| c >= dims[cd]) {
            return Ok(None);
        }
        let runs = contiguous_runs(channels);
        if runs.len() > MAX_CHANNEL_RUNS {
            return Ok(None);
        }
        let out = match act.is_contiguous() {
            true => act.copy()?,
            false => act.contiguous()?,
        };
        // The value is converted and moved to `act`'s device once, not once per run.
        let value = match &self.action {
            Action::Replace(v) | Action::Add(v, _) => Some(self.broadcast_value(v, act)?),
            Action::Zero | Action::Scale(_) => None,
        };
        for (start, len) in runs {
            let old = act.narrow(cd, start, len)?;
            let slice = value
                .as_ref()
                .map(|v| v.narrow(cd, start, len))
                .transpose()?;
            let new = match (&self.action, slice) {
                (Action::Replace(_), Some(v)) => v,
                (Action::Add(_, c), Some(v)) => (old + (v * *c)?)?,
                (Action::Scale(f), _) => (old * *f)?,
                _ => old.zeros_like()?,
            };
            out.slice_set(&new.contiguous()?, cd, start)?;
        }
        Ok(Some(out))
    }
}

/// The most separate channel ranges an intervention writes slice by slice (more take the mask).
const MAX_CHANNEL_RUNS: usize = 8;

/// `(start, len)` of the maximal runs of consecutive indices among `channels` (sorted, repeats
/// merged).
fn contiguous_runs(channels: &[usize]) -> Vec<(usize, usize)> {
    let mut sorted = channels.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for c in sorted {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == c => *len += 1,
            _ => runs.push((c, 1)),
        }
    }
    runs
}

/// A list of interventions, applied in order at their hook points.
#[derive(Debug, Clone, Default)]
pub struct Interventions(pub Vec<Intervention>);

impl Interventions {
    /// Wraps a list.
    pub fn new(list: Vec<Intervention>) -> Self {
        Interventions(list)
    }

    /// Checks every intervention's hook exists in a model with `cfg`.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.0.iter().try_for_each(|i| i.validate(cfg))
    }
}

impl Hooks for Interventions {
    fn wants(&self, point: HookPoint) -> bool {
        self.0.iter().any(|i| i.point == point)
    }

    fn apply(&mut self, point: HookPoint, mut act: Tensor) -> Result<Tensor> {
        for i in self.0.iter().filter(|i| i.point == point) {
            act = i.apply(&act)?;
        }
        Ok(act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The same intervention restricted to every position, which takes the masked form.
    fn masked(i: &Intervention, positions: usize) -> Intervention {
        i.clone().at_positions(&(0..positions).collect::<Vec<_>>())
    }

    #[test]
    fn channel_slices_give_the_masked_form_exactly() {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f32, 1., (2, 5, 12, 3), &dev).unwrap();
        let post = Tensor::randn(0f32, 1., (2, 5, 20), &dev).unwrap();
        let pattern = Tensor::randn(0f32, 1., (2, 12, 5, 5), &dev).unwrap();
        // A strided view: the slices must read it through its layout.
        let strided = Tensor::randn(0f32, 1., (2, 20, 5), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let actions = |width: usize, rest: &[usize]| {
            let mut shape = vec![width];
            shape.extend_from_slice(rest);
            let v = Tensor::randn(0f32, 1., shape, &dev).unwrap();
            vec![
                Action::Zero,
                Action::Replace(v.clone()),
                Action::Scale(2.5),
                Action::Add(v, -0.5),
            ]
        };
        let cases = [
            (HookPoint::Z(0), &z, actions(12, &[3]), 5),
            (HookPoint::MlpPost(0), &post, actions(20, &[]), 5),
            (HookPoint::MlpPost(0), &strided, actions(20, &[]), 5),
            (HookPoint::Pattern(0), &pattern, actions(12, &[5, 5]), 5),
        ];
        let lists: [&[usize]; 4] = [&[3], &[0, 2, 3, 7, 3], &[4, 5, 6], &[0, 2, 4, 6, 8, 10]];
        for (point, act, actions, positions) in cases {
            for action in &actions {
                for &channels in &lists {
                    let i = Intervention::new(point, action.clone()).at_channels(channels);
                    let fast = i.apply_to_channel_slices(act).unwrap();
                    let fast = fast.expect("a few channel runs take the slices");
                    let want = masked(&i, positions).apply(act).unwrap();
                    let diff = (fast - &want).unwrap().abs().unwrap().max_all().unwrap();
                    assert_eq!(
                        diff.to_scalar::<f32>().unwrap(),
                        0.0,
                        "{point:?} {action:?} {channels:?}"
                    );
                }
            }
        }
        // Nine separate ranges, chosen positions, an index out of range: the masked form.
        let many = Intervention::zero_neurons(0, &[0, 2, 4, 6, 8, 10, 12, 14, 16]);
        assert!(many.apply_to_channel_slices(&post).unwrap().is_none());
        let at = Intervention::zero_neurons(0, &[1]).at_positions(&[2]);
        assert!(at.apply_to_channel_slices(&post).unwrap().is_none());
        let err = Intervention::zero_neurons(0, &[20])
            .apply(&post)
            .unwrap_err();
        assert!(
            err.to_string().contains("neuron 20 is out of range"),
            "{err}"
        );
        // The activation itself is left as it was.
        let before = post.copy().unwrap();
        Intervention::zero_neurons(0, &[1]).apply(&post).unwrap();
        let diff = (before - &post).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn contiguous_runs_merge_sorted_repeats() {
        assert_eq!(
            contiguous_runs(&[5, 1, 2, 2, 3, 9]),
            vec![(1, 3), (5, 1), (9, 1)]
        );
        assert_eq!(contiguous_runs(&[]), vec![]);
    }
}
