//! Route A measurements: the constructed softmax CG transformer on exponential-kernel tasks
//! against the KRR oracle, the kernel it realises (with its rounding bound), and how its
//! attention rows compare with kernel smoothers (`docs/route_a_theorem.md`).

use candle_core::{DType, Device};
use metarep_eval::baselines::cg::{condition_number, pcg, CgState, CgTrace, Preconditioner};
use metarep_eval::metrics::{cosine, rmse, spearman};
use metarep_lat_cg::mask::TokenLayout;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::construct::{HeadSharing, MatVec, Preconditioning, SoftmaxCg, SoftmaxCgSpec};
use crate::error::{Error, Result};
use crate::kernel::{ExpKernel, ExpTask};

/// Settings of a Route A model (a `[model]` table in experiment configs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteAModel {
    /// CG steps `t`.
    pub steps: usize,
    /// Shared or dedicated kernel heads.
    pub sharing: HeadSharing,
    /// Softmax (`true`) or unnormalised exponential (`false`) kernel heads.
    pub normalised: bool,
    /// Rows of `U` the heads use (`None`: all of them).
    #[serde(default)]
    pub width: Option<usize>,
    /// Plain CG, or PCG with the softmax normaliser as preconditioner.
    #[serde(default)]
    pub preconditioner: Preconditioning,
}

impl RouteAModel {
    /// `steps` CG steps with one shared softmax kernel head per mat-vec layer over all of `U`,
    /// plain CG (fig3's model).
    pub fn plain(steps: usize) -> Self {
        Self {
            steps,
            sharing: HeadSharing::Shared,
            normalised: true,
            width: None,
            preconditioner: Preconditioning::None,
        }
    }

    /// The constructed transformer for `task`, its weights on `device`.
    pub fn build(&self, task: &ExpTask, device: &Device) -> Result<SoftmaxCg> {
        let kernel = match self.width {
            Some(w) => task.kernel.truncated(w)?,
            None => task.kernel.clone(),
        };
        SoftmaxCg::build(
            SoftmaxCgSpec {
                layout: TokenLayout::new(task.prompt.n(), task.prompt.m())?,
                input_dim: task.prompt.dim(),
                lambda: task.lambda,
                steps: self.steps,
                matvec: MatVec::ExpKernel {
                    kernel,
                    sharing: self.sharing,
                    normalised: self.normalised,
                    preconditioner: self.preconditioner,
                },
            },
            device,
        )
    }
}

/// A Route A model's predictions on one task next to the oracle and the Nadaraya–Watson smoother.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteAEval {
    /// Model predictions at the queries.
    pub predictions: DVector<f64>,
    /// Exact KRR predictions (f64).
    pub oracle: DVector<f64>,
    /// RMSE of the model against the noise-free targets.
    pub rmse_model: f64,
    /// RMSE of the oracle against the noise-free targets.
    pub rmse_oracle: f64,
    /// RMSE of the Nadaraya–Watson smoother (what one softmax head reading the labels computes).
    pub rmse_nadaraya_watson: f64,
    /// `rmse_model / rmse_oracle` (the 5% criterion is `≤ 1.05`).
    pub rmse_ratio: f64,
    /// Spearman rank correlation of model and oracle predictions.
    pub spearman_vs_oracle: f64,
    /// `‖f_model − f_oracle‖ / ‖f_oracle‖`.
    pub rel_dev_vs_oracle: f64,
}

/// Nadaraya–Watson predictions `Σ_j k(x_q, x_j) y_j / Σ_j k(x_q, x_j)`: the output of a single
/// softmax head with logits `⟨Ux_q, Ux_j⟩/τ` that reads the labels (no solver).
pub fn nadaraya_watson(task: &ExpTask) -> Result<DVector<f64>> {
    let kq = task.query_gram()?;
    Ok(DVector::from_fn(kq.nrows(), |q, _| {
        let row = kq.row(q);
        row.transpose().dot(&task.prompt.y) / row.sum()
    }))
}

/// Runs `model` on `task` in `dtype` on `device` and compares it with the oracle.
pub fn evaluate(
    task: &ExpTask,
    model: &RouteAModel,
    dtype: DType,
    device: &Device,
) -> Result<RouteAEval> {
    let m = model.build(task, device)?;
    let states = m.run(std::slice::from_ref(&task.prompt), dtype)?;
    let out = states
        .last()
        .ok_or_else(|| Error::invalid("model", "no layers"))?;
    let predictions = m.predictions(out)?.row(0).transpose();
    if !predictions.iter().all(|v| v.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("Route A predictions in {dtype:?}"),
            reason: format!(
                "max logit {:.1}: kernel entries up to e^{0:.0} overflow exp or the products of CG",
                max_logit(&task.kernel, &task.prompt.x)?
            ),
        });
    }
    let oracle = task.oracle()?.predictions;
    let nw = nadaraya_watson(task)?;
    let rmse_model = rmse(&predictions, &task.target)?;
    let rmse_oracle = rmse(&oracle, &task.target)?;
    Ok(RouteAEval {
        rmse_ratio: rmse_model / rmse_oracle,
        spearman_vs_oracle: spearman(&predictions, &oracle)?,
        rel_dev_vs_oracle: (&predictions - &oracle).norm() / oracle.norm().max(f64::MIN_POSITIVE),
        rmse_nadaraya_watson: rmse(&nw, &task.target)?,
        predictions,
        oracle,
        rmse_model,
        rmse_oracle,
    })
}

/// Condition number of `D^{-1/2}(K + λI)D^{-1/2}` with `D = I + diag(K1)`: the system that the
/// softmax normaliser (sink included) preconditions when it is kept as a row-sum preconditioner
/// instead of being undone (`docs/route_a_theorem.md`, Remark 2).
pub fn row_sum_preconditioned_kappa(task: &ExpTask) -> Result<f64> {
    let d = DMatrix::from_diagonal(&row_sum_inverse(task)?.map(f64::sqrt));
    Ok(condition_number(&(&d * task.system_matrix()? * &d)))
}

/// `M⁻¹` of the row-sum preconditioner: `1/(1 + Σ_j K_ij)`, the sink weight of a softmax
/// kernel head.
pub fn row_sum_inverse(task: &ExpTask) -> Result<DVector<f64>> {
    let k = task.gram()?;
    Ok(DVector::from_fn(k.nrows(), |i, _| {
        1.0 / (1.0 + k.row(i).sum())
    }))
}

/// Reference (P)CG in f64 on `task`'s system `K + λI` for `pre` (what a Route A model with
/// that preconditioner computes step by step). Row-sum PCG (`M = D`) is run as metarep-eval's CG
/// on `D^{-1/2}(K + λI)D^{-1/2}` with `y' = D^{-1/2}y`, mapped back by `α = D^{-1/2}α'`,
/// `r = D^{1/2}r'`, `z = M⁻¹r = D^{-1/2}r'`, `p = D^{-1/2}p'` (the same `γ`, `β`).
pub fn reference_cg(task: &ExpTask, steps: usize, pre: Preconditioning) -> Result<CgTrace> {
    let a = task.system_matrix()?;
    let y = &task.prompt.y;
    match pre {
        Preconditioning::None => Ok(pcg(&a, y, steps, Preconditioner::None)?),
        Preconditioning::RowSum => {
            let s = row_sum_inverse(task)?.map(f64::sqrt);
            let scale = DMatrix::from_diagonal(&s);
            let scaled = pcg(
                &(&scale * a * &scale),
                &y.component_mul(&s),
                steps,
                Preconditioner::None,
            )?;
            Ok(unscale(scaled, &s))
        }
    }
}

/// Maps a CG trace on `D^{-1/2}AD^{-1/2}` back to PCG on `A` with `M = D` (`s = diag(D^{-1/2})`).
pub fn unscale(trace: CgTrace, s: &DVector<f64>) -> CgTrace {
    let states = trace
        .states
        .into_iter()
        .map(|st| CgState {
            alpha: st.alpha.component_mul(s),
            r: st.r.component_div(s),
            z: st.r.component_mul(s),
            p: st.p.component_mul(s),
        })
        .collect();
    CgTrace { states, ..trace }
}

/// Largest logit `⟨Ux_i, Ux_j⟩/τ` over pairs of rows of `x` (the overflow criterion).
pub fn max_logit(kernel: &ExpKernel, x: &DMatrix<f64>) -> Result<f64> {
    Ok(kernel.logits(x, x)?.max())
}

/// Unit roundoff of a float dtype (`2⁻²⁴` for f32, `2⁻⁵³` for f64).
pub fn unit_roundoff(dtype: DType) -> Result<f64> {
    match dtype {
        DType::F32 => Ok(f64::from(f32::EPSILON) / 2.0),
        DType::F64 => Ok(f64::EPSILON / 2.0),
        other => Err(Error::invalid(
            "dtype",
            format!("rounding bounds are derived for f32 and f64, not {other:?}"),
        )),
    }
}

/// The kernel a Route A model realises on the supports, in `dtype`, against the exact one.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelError {
    /// `ε = ‖K̃ − K_exp‖₂`.
    pub op_error: f64,
    /// `‖K_exp‖₂`.
    pub kernel_norm: f64,
    /// The a-priori rounding bound on `ε` (`docs/route_a_theorem.md`, Proposition 2).
    pub bound: f64,
    /// Largest logit on the supports.
    pub max_logit: f64,
}

/// Measures `‖K̃ − K_exp‖₂` for `model` (built for `task`) in `dtype`, with the rounding bound.
pub fn kernel_error(model: &SoftmaxCg, task: &ExpTask, dtype: DType) -> Result<KernelError> {
    let kernel = match &model.spec.matvec {
        MatVec::ExpKernel { kernel, .. } => kernel,
        MatVec::SmallLogit { .. } => {
            return Err(Error::invalid(
                "model",
                "kernel_error measures Route A models",
            ))
        }
    };
    let exact = kernel.gram(&task.prompt.x, &task.prompt.x)?;
    let realised = model.realised_operator(&task.prompt, dtype)?;
    Ok(KernelError {
        op_error: spectral_norm(&(realised - &exact)),
        kernel_norm: spectral_norm(&exact),
        bound: rounding_bound(kernel, &task.prompt.x, dtype)?,
        max_logit: max_logit(kernel, &task.prompt.x)?,
    })
}

/// A-priori bound on `‖K̃ − K_exp‖₂` from rounding in `dtype`:
/// `‖[K_ij (e^{η_ij} − 1)]‖₂` with `η_ij = γ_{2d+r+7} B_ij/τ + u|ℓ_ij − μ_i| + 8u`, where
/// `B_ij = Σ_r (|U||x_i|)_r (|U||x_j|)_r`, `ℓ_ij` the logit, `μ_i = max(0, max_j ℓ_ij)` the row
/// maximum the softmax subtracts and `γ_k = ku/(1 − ku)` (derivation in the theory note).
pub fn rounding_bound(kernel: &ExpKernel, x: &DMatrix<f64>, dtype: DType) -> Result<f64> {
    let u = unit_roundoff(dtype)?;
    let (d, r) = (kernel.dim() as f64, kernel.width() as f64);
    let k_terms = 2.0 * d + r + 7.0;
    let gamma = k_terms * u / (1.0 - k_terms * u);
    let abs_proj = x.abs() * kernel.u.abs().transpose();
    let b = &abs_proj * abs_proj.transpose();
    let logits = kernel.logits(x, x)?;
    let n = x.nrows();
    let bound = DMatrix::from_fn(n, n, |i, j| {
        let mu = logits.row(i).max().max(0.0);
        let eta = gamma * b[(i, j)] / kernel.tau + u * (logits[(i, j)] - mu).abs() + 8.0 * u;
        logits[(i, j)].exp() * eta.exp_m1()
    });
    Ok(spectral_norm(&bound))
}

/// Largest singular value.
pub fn spectral_norm(a: &DMatrix<f64>) -> f64 {
    a.singular_values().max()
}

/// Mean over queries of the Pearson correlation between the readout head's attention row (over
/// the support keys) and two smoothers: Nadaraya–Watson weights `k(x_q, ·)/Σk` and the KRR
/// smoother row `k(x_q, X)(K + λI)⁻¹` (the weights KRR puts on the labels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmootherAlignment {
    /// Correlation with the Nadaraya–Watson weights.
    pub nadaraya_watson: f64,
    /// Correlation with the KRR smoother row.
    pub krr: f64,
}

/// Attention rows of `model`'s readout head on `task` (run in `dtype`) against both smoothers.
pub fn smoother_alignment(
    model: &SoftmaxCg,
    task: &ExpTask,
    dtype: DType,
) -> Result<SmootherAlignment> {
    let states = model.run(std::slice::from_ref(&task.prompt), dtype)?;
    let pattern = model.readout_pattern(&states)?.get(0)?.to_vec2::<f64>()?;
    let layout = model.spec.layout;
    let (n, m) = (layout.n_support, layout.n_query);
    let kq = task.query_gram()?;
    let a = task.system_matrix()?;
    let chol = a
        .cholesky()
        .ok_or_else(|| Error::invalid("kernel system", "K + λI is not positive definite"))?;
    // Smoother rows: S = K_q (K + λI)⁻¹, i.e. Sᵀ = (K + λI)⁻¹ K_qᵀ.
    let smoother = chol.solve(&kq.transpose()).transpose();
    let (mut nw, mut krr) = (0.0, 0.0);
    for q in 0..m {
        let row = DVector::from_fn(n, |j, _| pattern[layout.first_query() + q][j]);
        let weights = kq.row(q).transpose();
        nw += pearson(&row, &(&weights / weights.sum()))?;
        krr += pearson(&row, &smoother.row(q).transpose())?;
    }
    Ok(SmootherAlignment {
        nadaraya_watson: nw / m as f64,
        krr: krr / m as f64,
    })
}

/// Pearson correlation: the cosine of the centred vectors (0 when either is constant).
pub fn pearson(a: &DVector<f64>, b: &DVector<f64>) -> Result<f64> {
    Ok(cosine(&a.add_scalar(-a.mean()), &b.add_scalar(-b.mean()))?)
}

/// One cell of the silent-failure grid: how a Route A model does on a task, and whether it
/// fails silently (its RMSE looks fine while its predictions no longer rank like the oracle's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SilentCell {
    /// Largest kernel logit on the task.
    pub max_logit: f64,
    /// Condition number of the task's system matrix.
    pub kappa: f64,
    /// The oracle's RMSE.
    pub rmse_oracle: f64,
    /// Model RMSE / oracle RMSE (NaN when the kernel left the run dtype's range).
    pub rmse_ratio: f64,
    /// Spearman correlation of the model's predictions with the oracle's (NaN likewise).
    pub spearman_vs_oracle: f64,
    /// The kernel's entries left the run dtype's range.
    pub out_of_range: bool,
    /// `|rmse_ratio − 1| ≤ rmse_tolerance` while `spearman_vs_oracle < spearman_floor`.
    pub silent_failure: bool,
}

/// Evaluates `model` on `task` in `dtype` on `device` as a [`SilentCell`].
pub fn silent_failure_cell(
    task: &ExpTask,
    model: &RouteAModel,
    dtype: DType,
    device: &Device,
    rmse_tolerance: f64,
    spearman_floor: f64,
) -> Result<SilentCell> {
    let (ratio, rank, out_of_range) = match evaluate(task, model, dtype, device) {
        Ok(e) => (e.rmse_ratio, e.spearman_vs_oracle, false),
        Err(Error::NonFinite { .. }) => (f64::NAN, f64::NAN, true),
        Err(e) => return Err(e),
    };
    let oracle = task.oracle()?.predictions.clone();
    Ok(SilentCell {
        max_logit: max_logit(&task.kernel, &task.prompt.x)?,
        kappa: condition_number(&task.system_matrix()?),
        rmse_oracle: rmse(&oracle, &task.target)?,
        rmse_ratio: ratio,
        spearman_vs_oracle: rank,
        out_of_range,
        silent_failure: (ratio - 1.0).abs() <= rmse_tolerance && rank < spearman_floor,
    })
}
