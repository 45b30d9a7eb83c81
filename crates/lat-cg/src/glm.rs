//! In-context GLMs with trained LATs (fig17): logistic and Poisson regression tasks from
//! [`metarep_eval::tasks::glm`] laid out as tokens `(φ(x_i), y_i)` and `(φ(x_q), 0)`, the query's
//! `y` channel read as the natural parameter `η̂` (logit or log-rate) and trained on the GLM's
//! negative log-likelihood of the query's label, averaged over the label ([`QueryLoss::GlmNll`]
//! with the true mean as target). The GLM baselines they are compared with live in
//! [`metarep_eval::baselines::glm`].

use candle_core::{DType, Device};
use metarep_core::rng::seeded;
use metarep_eval::baselines::glm::{GdSpanFit, GlmFit, GlmScore, Irls};
use metarep_eval::tasks::glm::{FeatureMap, GlmFamily, GlmProblem, GlmTaskSpec};

use crate::error::{Error, Result};
use crate::icl::{lat_predictions, query_sensitivities};
use crate::train::{
    icl_batch, IclAttention, IclBatch, IclSetting, IclTrainConfig, QueryLoss, TrainableLat,
};

/// A GLM task family plus training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlmIclSetting {
    /// Label family.
    pub family: GlmFamily,
    /// Feature map (the model reads `φ(x)`, `p` channels, intercept last).
    pub features: FeatureMap,
    /// Input dimension `d`.
    pub dim: usize,
    /// In-context examples `n`.
    pub n_support: usize,
    /// Optimiser settings.
    pub train: IclTrainConfig,
}

impl GlmIclSetting {
    /// The task family (one query per task).
    pub fn spec(&self) -> GlmTaskSpec {
        GlmTaskSpec {
            family: self.family,
            features: self.features,
            dim: self.dim,
            n_support: self.n_support,
            n_query: 1,
        }
    }

    /// The loss the models train on.
    pub fn loss(&self) -> QueryLoss {
        QueryLoss::GlmNll(self.family)
    }

    /// `count` problems drawn from generator `seed`.
    pub fn problems(&self, seed: u64, count: usize) -> Result<Vec<GlmProblem>> {
        let spec = self.spec();
        let mut rng = seeded(seed);
        (0..count).map(|_| Ok(spec.problem(&mut rng)?)).collect()
    }
}

/// Tokens `(φ(x_i), y_i)`: the model's input dimension is the number of features `p`.
impl IclSetting for GlmIclSetting {
    fn input_dim(&self) -> usize {
        self.features.output_dim(self.dim)
    }

    fn n_support(&self) -> usize {
        self.n_support
    }

    fn train_config(&self) -> IclTrainConfig {
        self.train
    }

    fn with_train(&self, train: IclTrainConfig) -> Self {
        Self { train, ..*self }
    }

    /// f64 for Poisson: a trained model's output is a polynomial of degree up to `3^layers` in
    /// the raw counts it reads, which overflows f32 mid-training at 4 layers (fig17: NaN by step
    /// 78–213 on every seed in f32; none in f64); f32 for logistic.
    fn dtype(&self) -> DType {
        match self.family {
            GlmFamily::Logistic => DType::F32,
            GlmFamily::Poisson => DType::F64,
        }
    }

    fn batch(&self, seed: u64, count: usize) -> Result<IclBatch> {
        icl_batch(&self.problems(seed, count)?, self.dtype(), &Device::Cpu)
    }
}

/// A trained model's held-out score: the expected NLL (and accuracy) of its `η̂` at each
/// problem's query.
pub fn lat_score(model: &TrainableLat, problems: &[GlmProblem]) -> Result<GlmScore> {
    Ok(GlmScore::of_first_queries(
        problems,
        &lat_predictions(model, problems)?,
    )?)
}

/// A one-layer model's weights against one GD step's and one Newton step's directions
/// ([`GdSpanFit`]), over a set of problems.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneLayerDirections {
    /// Mean GD-span cosine of the model's weights on `φ(x_q)` (its sensitivities `∂η̂/∂φ(x_q)`,
    /// which are its weights: one linear-attention layer is linear in the query).
    pub model_cosine: f64,
    /// Median label centre `c` of the model's weights as `Φ_xᵀ(y − c1)`.
    pub model_centre: f64,
    /// Mean GD-span cosine of one IRLS step's weights (ridge `λ`).
    pub newton_cosine: f64,
}

/// [`OneLayerDirections`] of `model` (one linear-attention layer) over `problems`, with one IRLS
/// step of ridge `ridge` as the Newton reference.
pub fn one_layer_directions(
    model: &TrainableLat,
    problems: &[GlmProblem],
    ridge: f64,
) -> Result<OneLayerDirections> {
    if model.config.layers != 1 || model.config.attention != IclAttention::Linear {
        return Err(Error::invalid(
            "one-layer directions",
            format!("need one linear-attention layer, got {:?}", model.config),
        ));
    }
    if problems.is_empty() {
        return Err(Error::invalid("one-layer directions", "no problems"));
    }
    let newton = Irls { steps: 1, ridge };
    let weights = query_sensitivities(model, problems)?;
    let (mut model_cosine, mut newton_cosine, mut centres) = (0.0, 0.0, Vec::new());
    for (w, p) in weights.into_iter().zip(problems) {
        let fit = GdSpanFit::of(p, &nalgebra::DVector::from_vec(w))?;
        model_cosine += fit.cosine;
        centres.push(fit.centre);
        newton_cosine += GdSpanFit::of(p, &newton.weights(p)?)?.cosine;
    }
    centres.sort_by(f64::total_cmp);
    let count = problems.len() as f64;
    Ok(OneLayerDirections {
        model_cosine: model_cosine / count,
        model_centre: centres[centres.len() / 2],
        newton_cosine: newton_cosine / count,
    })
}
