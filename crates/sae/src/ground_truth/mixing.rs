//! Observations of a system: a fixed random mixture of its state features,
//! `o = A s + γ·tanh(B A s) + σ ε`, with `A` `[d_obs, F]` of unit-norm random columns (the true
//! feature directions), `B` `[d_obs, d_obs]` random with entries `N(0, 1/d_obs)`, `γ` the
//! non-linear strength (0: linear) and `ε` standard Gaussian noise.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ground_truth::systems::StateTrajectories;

/// Shape and strength of a mixing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixingSpec {
    /// Observation width.
    pub d_obs: usize,
    /// Non-linear strength γ (0: a linear mixture).
    pub nonlinear: f64,
    /// Noise standard deviation σ.
    pub noise: f64,
}

/// A drawn mixing.
#[derive(Debug, Clone)]
pub struct Mixing {
    /// Its spec.
    pub spec: MixingSpec,
    a: DMatrix<f64>,
    b: DMatrix<f64>,
}

impl Mixing {
    /// Draws `A` and `B` for `n_features` features from `seed`.
    pub fn new(spec: MixingSpec, n_features: usize, seed: u64) -> Result<Self> {
        if spec.d_obs == 0
            || n_features == 0
            || spec.noise.is_nan()
            || spec.noise < 0.0
            || !spec.nonlinear.is_finite()
        {
            return Err(Error::Config(format!(
                "invalid mixing {spec:?} for {n_features} features"
            )));
        }
        let d = spec.d_obs;
        let mut rng = seeded(derive_seed(seed, "mixing/a"));
        let mut a = DMatrix::from_column_slice(
            d,
            n_features,
            &normal_vec(&mut rng, d * n_features, 0.0, 1.0)?,
        );
        for mut c in a.column_iter_mut() {
            let n = c.norm().max(f64::MIN_POSITIVE);
            c /= n;
        }
        let mut rng = seeded(derive_seed(seed, "mixing/b"));
        let b = DMatrix::from_column_slice(
            d,
            d,
            &normal_vec(&mut rng, d * d, 0.0, 1.0 / (d as f64).sqrt())?,
        );
        Ok(Self { spec, a, b })
    }

    /// The noise-free observation of one state.
    pub fn clean(&self, state: &[f32]) -> DVector<f64> {
        let s = DVector::from_iterator(state.len(), state.iter().map(|&v| v as f64));
        let lin = &self.a * s;
        if self.spec.nonlinear == 0.0 {
            return lin;
        }
        let nl = (&self.b * &lin).map(f64::tanh);
        lin + nl * self.spec.nonlinear
    }

    /// Observations `[rows, d_obs]` (f32) of every state, with noise drawn from `seed`.
    pub fn observe(&self, t: &StateTrajectories, seed: u64) -> Result<Tensor> {
        let (f, d, rows) = (t.n_features(), self.spec.d_obs, t.rows());
        if f != self.a.ncols() {
            return Err(Error::shape(
                "states",
                format!("{} features", self.a.ncols()),
                format!("{f}"),
            ));
        }
        let noise = normal_vec(
            &mut seeded(derive_seed(seed, "mixing/noise")),
            rows * d,
            0.0,
            self.spec.noise.max(0.0),
        )?;
        let mut out = Vec::with_capacity(rows * d);
        for r in 0..rows {
            let o = self.clean(&t.states[r * f..(r + 1) * f]);
            out.extend(o.iter().zip(&noise[r * d..(r + 1) * d]).map(|(a, e)| a + e));
        }
        Ok(Tensor::from_vec(out, (rows, d), &Device::Cpu)?.to_dtype(DType::F32)?)
    }

    /// The true feature directions (columns of `A`) as unit rows `[F, d_obs]`.
    pub fn directions(&self) -> Result<Tensor> {
        let at = self.a.transpose();
        let v: Vec<f64> = at
            .row_iter()
            .flat_map(|r| r.iter().copied().collect::<Vec<_>>())
            .collect();
        Ok(
            Tensor::from_vec(v, (self.a.ncols(), self.a.nrows()), &Device::Cpu)?
                .to_dtype(DType::F32)?,
        )
    }
}
