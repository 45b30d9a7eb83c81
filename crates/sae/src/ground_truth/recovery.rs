//! Does an SAE recover known features? Direction recovery (mean max cosine similarity between
//! true feature directions and decoder rows), activation recovery (F1 of each feature's matched
//! latent against the feature being on) and causal tests (editing one latent and decoding
//! changes the decoded state in that feature only).

use candle_core::{DType, Tensor};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::latents::Latents;
use crate::sae::Sae;

/// For each true direction (rows of `truth` `[F, d]`), the best cosine over the rows of
/// `decoder` `[N, d]` and which row gives it (computed on the decoder's device); the mean of the
/// best cosines is the MMCS.
pub fn max_cosines(decoder: &Tensor, truth: &Tensor) -> Result<(Vec<f64>, Vec<usize>)> {
    let unit = |t: &Tensor| -> Result<Tensor> {
        let t = t.to_dtype(DType::F64)?;
        Ok(t.broadcast_div(&(t.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-300)?)?)
    };
    if decoder.dim(1)? != truth.dim(1)? {
        return Err(Error::shape(
            "decoder rows",
            format!("width {}", truth.dim(1)?),
            format!("{}", decoder.dim(1)?),
        ));
    }
    let cos = unit(&truth.to_device(decoder.device())?)?
        .matmul(&unit(decoder)?.t()?)?
        .to_vec2::<f64>()?;
    let mut best = Vec::with_capacity(cos.len());
    let mut which = Vec::with_capacity(cos.len());
    for row in cos {
        let (i, c) = row
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |acc, (i, c)| if c > acc.1 { (i, c) } else { acc },
            );
        best.push(c);
        which.push(i);
    }
    Ok((best, which))
}

/// Mean of a slice (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// F1 of "latent `matches[f]` > 0" against "feature `f` is on" over the rows, per feature.
/// `codes`: dense `[rows, N]`; `states`: `[rows, F]` row-major 0/1.
pub fn matched_f1(codes: &Tensor, states: &[f32], matches: &[usize]) -> Result<Vec<f64>> {
    let codes = codes.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let f = matches.len();
    let mut out = Vec::with_capacity(f);
    for (feat, &lat) in matches.iter().enumerate() {
        let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
        for (r, row) in codes.iter().enumerate() {
            let on = states[r * f + feat] > 0.5;
            let fired = row[lat] > 0.0;
            match (on, fired) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fneg += 1,
                _ => {}
            }
        }
        let denom = 2 * tp + fp + fneg;
        out.push(if denom == 0 {
            1.0
        } else {
            2.0 * tp as f64 / denom as f64
        });
    }
    Ok(out)
}

/// A linear readout from observations to states, `ŝ = R o + c`, fitted by least squares.
#[derive(Debug, Clone)]
pub struct Readout {
    r: DMatrix<f64>,
}

impl Readout {
    /// Fits `[obs 1] → states` on rows of `obs` `[rows, d]` and `states` `[rows, F]` (ridge
    /// 1e-9 for conditioning).
    pub fn fit(obs: &Tensor, states: &[f32], n_features: usize) -> Result<Self> {
        let o = obs.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let (rows, d) = (o.len(), o.first().map_or(0, Vec::len));
        if rows == 0 || states.len() != rows * n_features {
            return Err(Error::shape(
                "readout data",
                format!("{rows} rows of {n_features} features"),
                format!("{} values", states.len()),
            ));
        }
        let x = DMatrix::from_fn(rows, d + 1, |i, j| if j < d { o[i][j] } else { 1.0 });
        let y = DMatrix::from_fn(rows, n_features, |i, j| states[i * n_features + j] as f64);
        let xtx = x.transpose() * &x + DMatrix::identity(d + 1, d + 1) * 1e-9;
        let sol = xtx
            .cholesky()
            .ok_or_else(|| {
                Error::Invalid("readout normal equations are not positive definite".into())
            })?
            .solve(&(x.transpose() * y));
        Ok(Self { r: sol.transpose() })
    }

    /// Decoded states of observations `[rows, d]` → `[rows][F]`.
    pub fn apply(&self, obs: &Tensor) -> Result<Vec<Vec<f64>>> {
        let o = obs.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Ok(o.iter()
            .map(|row| {
                let v = DVector::from_iterator(
                    row.len() + 1,
                    row.iter().copied().chain(std::iter::once(1.0)),
                );
                (&self.r * v).iter().copied().collect()
            })
            .collect())
    }
}

/// Settings of the causal edit test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CausalConfig {
    /// Edits per feature and direction (switching on, switching off).
    pub per_feature: usize,
    /// The decoded target feature must move by at least this much.
    pub on_target: f64,
    /// Every other decoded feature must move by at most this much.
    pub off_target: f64,
}

impl Default for CausalConfig {
    fn default() -> Self {
        Self {
            per_feature: 20,
            on_target: 0.5,
            off_target: 0.25,
        }
    }
}

/// Outcome of the causal edit test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CausalReport {
    /// Edits made.
    pub edits: usize,
    /// Fraction that moved the target feature by ≥ `on_target` in the right direction and no
    /// other feature by more than `off_target`.
    pub pass_rate: f64,
    /// Mean signed change of the target feature (sign-corrected: positive = right way).
    pub on_target: f64,
    /// Mean over edits of the largest change of any other feature.
    pub off_target: f64,
}

/// Edits latent `matches[f]` of observations `obs` — switching it on (to its mean activation
/// over rows where `f` is on) where `f` is off, and off (to 0) where `f` is on — decodes, and
/// reads the state change through `readout`.
pub fn causal_edits(
    sae: &Sae,
    obs: &Tensor,
    states: &[f32],
    matches: &[usize],
    readout: &Readout,
    cfg: &CausalConfig,
) -> Result<CausalReport> {
    let f = matches.len();
    let (xn, factor) = sae.normalize_input(obs)?;
    let codes = sae.encode_normalized(&xn)?.to_dense(sae.config.d_sae)?;
    let base = readout.apply(&sae.decode(&Latents::Dense(codes.clone()), factor.as_ref())?)?;
    let codes_v = codes.to_vec2::<f32>()?;
    let rows = codes_v.len();
    let (mut edits, mut passed, mut on_sum, mut off_sum) = (0usize, 0usize, 0.0, 0.0);
    for (feat, &lat) in matches.iter().enumerate() {
        let on_rows: Vec<usize> = (0..rows).filter(|&r| states[r * f + feat] > 0.5).collect();
        let off_rows: Vec<usize> = (0..rows).filter(|&r| states[r * f + feat] <= 0.5).collect();
        let on_value = if on_rows.is_empty() {
            0.0
        } else {
            on_rows.iter().map(|&r| codes_v[r][lat] as f64).sum::<f64>() / on_rows.len() as f64
        };
        for (rows_of, value, sign) in [(&off_rows, on_value, 1.0), (&on_rows, 0.0, -1.0)] {
            let chosen: Vec<usize> = rows_of.iter().copied().take(cfg.per_feature).collect();
            if chosen.is_empty() {
                continue;
            }
            let mut edited: Vec<f32> = Vec::with_capacity(chosen.len() * sae.config.d_sae);
            for &r in &chosen {
                let mut row = codes_v[r].clone();
                row[lat] = value as f32;
                edited.extend(row);
            }
            let edited =
                Tensor::from_vec(edited, (chosen.len(), sae.config.d_sae), codes.device())?;
            let f_rows = match &factor {
                Some(fa) => Some(fa.index_select(
                    &Tensor::from_vec(
                        chosen.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                        chosen.len(),
                        fa.device(),
                    )?,
                    0,
                )?),
                None => None,
            };
            let after = readout.apply(&sae.decode(&Latents::Dense(edited), f_rows.as_ref())?)?;
            for (k, &r) in chosen.iter().enumerate() {
                let delta: Vec<f64> = after[k].iter().zip(&base[r]).map(|(a, b)| a - b).collect();
                let on = sign * delta[feat];
                let off = delta
                    .iter()
                    .enumerate()
                    .filter(|&(g, _)| g != feat)
                    .map(|(_, d)| d.abs())
                    .fold(0.0, f64::max);
                edits += 1;
                on_sum += on;
                off_sum += off;
                if on >= cfg.on_target && off <= cfg.off_target {
                    passed += 1;
                }
            }
        }
    }
    let n = edits.max(1) as f64;
    Ok(CausalReport {
        edits,
        pass_rate: passed as f64 / n,
        on_target: on_sum / n,
        off_target: off_sum / n,
    })
}
