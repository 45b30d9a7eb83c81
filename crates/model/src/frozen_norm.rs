//! A pre-norm with its scale frozen at recorded values: the linearisation every exact
//! decomposition of the residual stream rests on (direct logit attribution, answer
//! attribution, second-order effects, TransformerLens's `apply_ln_to_stack`).
//!
//! LayerNorm computes `N(x) = (x − mean(x)) / s(x) ⊙ w + b` and RMSNorm `N(x) = x / s(x) ⊙ w`.
//! With `s` held at the value recorded on a forward pass (`hook_scale`), `N` is affine in `x`,
//! so a sum of residual writes maps to the sum of their images plus `b`:
//!
//! - [`FrozenNorm::apply`]: `(centre(x) / s) ⊙ w`, the image of a write (bias excluded);
//! - [`FrozenNorm::linear`]: `centre(x) ⊙ w`, its prompt-independent part (divide by `s` later,
//!   e.g. after folding it into weight products);
//! - [`FrozenNorm::read_direction`]: `centre(w ⊙ v) / s`, the residual direction whose dot
//!   product with a write `x` equals `⟨apply(x), v⟩` (the adjoint: how the logit of `v` reads
//!   the stream).
//!
//! Centring applies to LayerNorm only. Each method fixes its order of operations, so results
//! are reproducible bit for bit.

use candle_core::{DType, Tensor, D};

use crate::config::NormKind;
use crate::error::{Error, Result};
use crate::model::HookedTransformer;
use crate::weights::NormWeights;

/// A norm with its scale frozen (see the module docs).
#[derive(Debug, Clone)]
pub struct FrozenNorm {
    /// Subtract the mean over the last axis (LayerNorm).
    pub centre: bool,
    /// Whether there is a norm at all (a model without a final norm: the identity).
    pub scaled: bool,
    /// Weight `[d_model]` (`None`: 1, as in TransformerLens's `apply_ln_to_stack`).
    pub w: Option<Tensor>,
    /// Bias `[d_model]` (LayerNorm).
    pub b: Option<Tensor>,
}

impl FrozenNorm {
    /// The identity (no norm).
    pub fn identity() -> Self {
        FrozenNorm {
            centre: false,
            scaled: false,
            w: None,
            b: None,
        }
    }

    /// The norm `weights` of kind `kind`.
    pub fn new(kind: NormKind, weights: &NormWeights) -> Self {
        FrozenNorm {
            centre: kind == NormKind::LayerNorm,
            scaled: true,
            w: Some(weights.w.clone()),
            b: weights.b.clone(),
        }
    }

    /// The norm of kind `kind` without its weight and bias: centring (LayerNorm) and the
    /// division by the recorded scale only.
    pub fn unweighted(kind: NormKind) -> Self {
        FrozenNorm {
            centre: kind == NormKind::LayerNorm,
            scaled: true,
            w: None,
            b: None,
        }
    }

    /// `model`'s final norm (`ln_final`), or the identity when it has none.
    pub fn final_of(model: &HookedTransformer) -> Self {
        match model.ln_final() {
            Some(ln) => Self::new(model.config().norm, ln),
            None => Self::identity(),
        }
    }

    /// Block `layer`'s first norm (`ln1`) of `model`.
    pub fn ln1_of(model: &HookedTransformer, layer: usize) -> Result<Self> {
        Ok(Self::new(model.config().norm, model.ln1(layer)?))
    }

    /// The same norm with its weight and bias in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let cast = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(dtype)).transpose();
        Ok(FrozenNorm {
            centre: self.centre,
            scaled: self.scaled,
            w: cast(&self.w)?,
            b: cast(&self.b)?,
        })
    }

    /// `x − mean(x)` over the last axis when the norm centres, else `x`.
    pub fn centred(&self, x: &Tensor) -> Result<Tensor> {
        if self.centre {
            Ok(x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?)
        } else {
            Ok(x.clone())
        }
    }

    /// `centre(x) ⊙ w` on the last axis: the prompt-independent part of [`FrozenNorm::apply`].
    pub fn linear(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.centred(x)?;
        match &self.w {
            Some(w) => Ok(x.broadcast_mul(w)?),
            None => Ok(x),
        }
    }

    /// `(centre(x) / scale) ⊙ w`: the image of a residual write `x: [..., d_model]` without
    /// the bias; `scale` is the recorded `hook_scale`, broadcastable against `x` (it is
    /// required when the norm exists and ignored for the identity).
    pub fn apply(&self, x: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
        if !self.scaled {
            return Ok(x.clone());
        }
        let s =
            scale.ok_or_else(|| Error::Invalid("a frozen norm needs its recorded scale".into()))?;
        let x = self.centred(x)?.broadcast_div(&s.to_dtype(x.dtype())?)?;
        match &self.w {
            Some(w) => Ok(x.broadcast_mul(w)?),
            None => Ok(x),
        }
    }

    /// `centre(w ⊙ v) / scale` for read directions `v: [..., d_model]`: the residual direction
    /// whose dot product with a write `x` is `⟨apply(x), v⟩` (scale broadcastable; required when
    /// the norm exists).
    pub fn read_direction(&self, v: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
        if !self.scaled {
            return Ok(v.clone());
        }
        let s =
            scale.ok_or_else(|| Error::Invalid("a frozen norm needs its recorded scale".into()))?;
        let v = match &self.w {
            Some(w) => v.broadcast_mul(w)?,
            None => v.clone(),
        };
        Ok(self.centred(&v)?.broadcast_div(&s.to_dtype(v.dtype())?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn apply_is_the_norm_at_its_recorded_scale_and_read_direction_its_adjoint() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f64, -2.0, 4.0], [0.5, 0.0, -1.5]], &dev).unwrap();
        let w = Tensor::new(&[2.0f64, 0.5, -1.0], &dev).unwrap();
        let b = Tensor::new(&[0.1f64, 0.2, 0.3], &dev).unwrap();
        let ln = FrozenNorm::new(
            NormKind::LayerNorm,
            &NormWeights {
                w: w.clone(),
                b: Some(b.clone()),
            },
        );
        // The real LayerNorm (eps 0) of each row, and its scale.
        let xc = x.broadcast_sub(&x.mean_keepdim(1).unwrap()).unwrap();
        let s = xc.sqr().unwrap().mean_keepdim(1).unwrap().sqrt().unwrap();
        let want = xc.broadcast_div(&s).unwrap().broadcast_mul(&w).unwrap();
        let got = ln.apply(&x, Some(&s)).unwrap();
        let diff = (got.clone() - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        // ⟨apply(x), v⟩ = ⟨x, read_direction(v)⟩ per row.
        let v = Tensor::new(&[0.3f64, -0.7, 1.1], &dev).unwrap();
        let lhs = got.broadcast_mul(&v).unwrap().sum(1).unwrap();
        let r = ln
            .read_direction(&v.unsqueeze(0).unwrap(), Some(&s))
            .unwrap();
        let rhs = (x.clone() * r).unwrap().sum(1).unwrap();
        let diff = (lhs - rhs).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        // The linear part divided by the scale is apply.
        let lin = ln.linear(&x).unwrap().broadcast_div(&s).unwrap();
        let diff = (lin - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        assert!(ln.apply(&x, None).is_err());
        // The identity ignores the scale; RMSNorm does not centre.
        let id = FrozenNorm::identity();
        assert_eq!(
            id.apply(&x, None).unwrap().to_vec2::<f64>().unwrap(),
            x.to_vec2::<f64>().unwrap()
        );
        let rms = FrozenNorm::unweighted(NormKind::RmsNorm);
        let one = Tensor::ones((2, 1), DType::F64, &dev).unwrap();
        assert_eq!(
            rms.apply(&x, Some(&one)).unwrap().to_vec2::<f64>().unwrap(),
            x.to_vec2::<f64>().unwrap()
        );
    }
}
