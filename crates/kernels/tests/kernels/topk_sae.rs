//! The fused TopK SAE step against the same loss built from candle ops on dense masks and
//! differentiated by candle's autograd: selection, codes, reconstruction, loss terms, fire counts
//! and all four gradients, with and without the auxiliary-K term.

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_kernels::{to_dense, TopkRule, TopkSaeLoss, TopkSaeStep, INACTIVE};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::{
    assert_grads_close, fire_counts, max_diff, on_one_thread, randn, sae_params, sae_view,
};

/// The `k` largest entries of `row` among columns `allowed` (larger first, then lower column).
fn top(row: &[f64], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut cols: Vec<usize> = (0..row.len()).filter(|&i| allowed(i)).collect();
    cols.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
    cols.truncate(k);
    cols
}

/// The `total` largest positive entries of the batch (ties: earlier row, then lower column),
/// per row in column order.
fn batch_top(rows: &[Vec<f64>], total: usize) -> Vec<Vec<usize>> {
    let mut all: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|r| (0..rows[r].len()).map(move |c| (r, c)))
        .filter(|&(r, c)| rows[r][c] > 0.0)
        .collect();
    all.sort_by(|&(ra, ca), &(rb, cb)| {
        rows[rb][cb]
            .partial_cmp(&rows[ra][ca])
            .unwrap()
            .then((ra, ca).cmp(&(rb, cb)))
    });
    let mut picked = vec![Vec::new(); rows.len()];
    for &(r, c) in all.iter().take(total) {
        picked[r].push(c);
    }
    picked.iter_mut().for_each(|p| p.sort());
    picked
}

/// A `[rows, n]` 0/1 mask with ones at `picked` per row.
fn mask(picked: &[Vec<usize>], n: usize, dtype: DType) -> Tensor {
    let mut m = vec![0f64; picked.len() * n];
    for (r, cols) in picked.iter().enumerate() {
        cols.iter().for_each(|&c| m[r * n + c] = 1.0);
    }
    Tensor::from_vec(m, (picked.len(), n), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// What the reference computed.
struct Reference {
    /// Each row's selected latents, in column order.
    picked: Vec<Vec<usize>>,
    codes: Tensor,
    recon: Tensor,
    reconstruction: f64,
    aux_k: Option<f64>,
    batch_min: Option<f64>,
    grads: Vec<Tensor>,
}

/// The loss of the module docs from candle ops, the selections as dense masks.
fn reference(x: &Tensor, p: &[Var; 4], loss: &TopkSaeLoss, dead: &[bool]) -> Reference {
    let [w_enc, b_enc, w_dec, b_dec] = p.each_ref().map(|v| v.as_tensor());
    let n = w_enc.dim(0).unwrap();
    let input = if loss.pre_encoder_bias {
        x.broadcast_sub(b_dec).unwrap()
    } else {
        x.clone()
    };
    let z = input
        .matmul(&w_enc.t().unwrap())
        .unwrap()
        .broadcast_add(b_enc)
        .unwrap();
    let rows = z.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let picked: Vec<Vec<usize>> = match loss.rule {
        TopkRule::PerRow => rows
            .iter()
            .map(|r| {
                let mut p = top(r, loss.k, |_| true);
                p.sort();
                p
            })
            .collect(),
        TopkRule::Batch => batch_top(&rows, loss.k * rows.len()),
    };
    let batch_min = (loss.rule == TopkRule::Batch)
        .then(|| {
            let kept = picked
                .iter()
                .enumerate()
                .flat_map(|(r, p)| p.iter().map(move |&c| (r, c)));
            kept.map(|(r, c)| rows[r][c]).reduce(f64::min)
        })
        .flatten();
    let f = (z.relu().unwrap() * mask(&picked, n, x.dtype())).unwrap();
    let r = f.matmul(w_dec).unwrap().broadcast_add(b_dec).unwrap();
    let sq = |t: &Tensor| t.sqr().unwrap().sum(D::Minus1).unwrap().mean_all().unwrap();
    let rec = sq(&(&r - x).unwrap());
    let mut total = (&rec * loss.reconstruction).unwrap();
    let n_dead = dead.iter().filter(|&&d| d).count();
    let mut aux_value = None;
    if let (Some((k_aux, coeff)), true) = (loss.aux_k, n_dead > 0) {
        let ka = k_aux.min(n_dead);
        let s = (n_dead as f64 / k_aux as f64).min(1.0);
        let aux: Vec<Vec<usize>> = rows.iter().map(|r| top(r, ka, |i| dead[i])).collect();
        let g = (z.relu().unwrap() * mask(&aux, n, x.dtype())).unwrap();
        let residual = (x - r.detach()).unwrap();
        let term = (sq(&(g.matmul(w_dec).unwrap() - residual).unwrap()) * s).unwrap();
        total = (total + (&term * coeff).unwrap()).unwrap();
        aux_value = Some(scalar(&term));
    }
    let grads = total.backward().unwrap();
    Reference {
        picked,
        codes: f.detach(),
        recon: r.detach(),
        reconstruction: scalar(&rec),
        aux_k: aux_value,
        batch_min,
        grads: [w_enc, b_enc, w_dec, b_dec]
            .map(|t| grads.get(t).unwrap().clone())
            .to_vec(),
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn values_and_gradients_equal_candle_autograd() {
    let (n, d) = (150, 9); // three latent groups of the backward pass, the last partial
                           // Dead latents: none, every third (k_aux < n_dead: s = 1), three (k_a = 3, s = 1/2).
    let every_third: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
    let three: Vec<bool> = (0..n).map(|i| [4, 70, 149].contains(&i)).collect();
    let none = vec![false; n];
    let mut step = TopkSaeStep::new();
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-4)] {
        for (rule, pre_encoder_bias) in [
            (TopkRule::PerRow, false),
            (TopkRule::PerRow, true),
            (TopkRule::Batch, true),
        ] {
            for (aux_k, dead) in [
                (None, &none),
                (Some((5, 0.3)), &every_third),
                (Some((6, 0.3)), &three),
                (Some((6, 0.3)), &none),
            ] {
                let loss = TopkSaeLoss {
                    k: 8,
                    rule,
                    reconstruction: 0.7,
                    aux_k,
                    pre_encoder_bias,
                };
                // The same step object runs every case: buffers are resized and overwritten.
                for rows in [300, 5] {
                    let mut rng = ChaCha8Rng::seed_from_u64(rows as u64);
                    let x = randn(&mut rng, (rows, d), dtype);
                    let p = sae_params(&mut rng, n, d, dtype);
                    // TopK: negative encoder biases, so some selected pre-activations are below
                    // 0. BatchTopK: more positive pre-activations than the batch keeps.
                    let shift = if rule == TopkRule::PerRow { 2.0 } else { 0.0 };
                    let b_enc = Var::from_tensor(&(p[1].as_tensor() - shift).unwrap()).unwrap();
                    let p = [p[0].clone(), b_enc, p[2].clone(), p[3].clone()];
                    let want = reference(&x, &p, &loss, dead);
                    let out = step.run(&x, &sae_view(&p), &loss, dead).unwrap();
                    let case = format!("{dtype:?} {loss:?} {} dead, rows {rows}", {
                        dead.iter().filter(|&&v| v).count()
                    });
                    let idx = out.indices.to_vec2::<u32>().unwrap();
                    for (r, (got, want)) in idx.iter().zip(&want.picked).enumerate() {
                        let mut got: Vec<usize> = got
                            .iter()
                            .filter(|&&i| i != INACTIVE)
                            .map(|&i| i as usize)
                            .collect();
                        got.sort();
                        assert_eq!(&got, want, "row {r}, {case}");
                    }
                    match (out.batch_min, want.batch_min) {
                        (Some(a), Some(b)) => assert!((a - b).abs() < tol, "min, {case}"),
                        (a, b) => assert_eq!(a, b, "min, {case}"),
                    }
                    let dense = to_dense(&out.indices, &out.codes, n).unwrap();
                    assert!(max_diff(&dense, &want.codes) < tol, "codes, {case}");
                    let zeros = want.codes.eq(0.0).unwrap().to_dtype(DType::F64).unwrap();
                    let selected_zero = (zeros.sum_all().unwrap().to_scalar::<f64>().unwrap()
                        as usize)
                        > rows * (n - loss.k);
                    match rule {
                        TopkRule::PerRow => {
                            assert!(rows < 300 || selected_zero, "no selected code is 0, {case}")
                        }
                        TopkRule::Batch => {
                            let lens: Vec<usize> = want.picked.iter().map(Vec::len).collect();
                            assert_eq!(lens.iter().sum::<usize>(), rows * loss.k, "{case}");
                            assert!(lens.iter().any(|&l| l != loss.k), "{case}");
                        }
                    }
                    assert!(max_diff(&out.recon, &want.recon) < tol, "recon, {case}");
                    assert!(
                        (out.reconstruction - want.reconstruction).abs() < tol * 10.0,
                        "reconstruction, {case}"
                    );
                    match (out.aux_k, want.aux_k) {
                        (Some(a), Some(b)) => assert!((a - b).abs() < tol * 10.0, "aux, {case}"),
                        (a, b) => assert_eq!(a, b, "aux, {case}"),
                    }
                    assert_eq!(out.fired, fire_counts(&want.codes), "{case}");
                    assert_grads_close(step.grads(), &want.grads, tol, &case);
                }
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors_naming_the_problem() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = randn(&mut rng, (4, 6), DType::F32);
    let p = sae_params(&mut rng, 8, 6, DType::F32);
    let params = sae_view(&p);
    let loss = TopkSaeLoss {
        k: 3,
        rule: TopkRule::PerRow,
        reconstruction: 1.0,
        aux_k: Some((2, 0.1)),
        pre_encoder_bias: true,
    };
    let dead = vec![true; 8];
    let mut step = TopkSaeStep::new();
    let err = |x: &Tensor, loss: &TopkSaeLoss, dead: &[bool]| {
        TopkSaeStep::new()
            .run(x, &params, loss, dead)
            .unwrap_err()
            .to_string()
    };
    let wide = TopkSaeLoss { k: 9, ..loss };
    assert!(err(&x, &wide, &dead).contains("k = 9 exceeds the 8 latents"));
    assert!(err(&x, &loss, &dead[..5]).contains("dead-latent mask has 5 entries"));
    assert!(err(
        &x.narrow(1, 0, 5).unwrap().contiguous().unwrap(),
        &loss,
        &dead
    )
    .contains("w_enc"));
    let mut bad = x.to_vec2::<f32>().unwrap();
    bad[2][1] = f32::NAN;
    let nan = Tensor::new(bad, &Device::Cpu).unwrap();
    assert!(err(&nan, &loss, &dead).contains("row 2 contains NaN"));
    // A failed call leaves a working step behind; the mask is not read without the term.
    assert!(step.run(&x, &params, &loss, &dead).is_ok());
    let plain = TopkSaeLoss {
        aux_k: None,
        ..loss
    };
    assert!(step.run(&x, &params, &plain, &[]).is_ok());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 600 rows × 120 columns: two product tiles and two blocks of the element-wise pass.
    let (rows, n, d) = (600, 200, 120);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = randn(&mut rng, (rows, d), DType::F32);
    let p = sae_params(&mut rng, n, d, DType::F32);
    let dead: Vec<bool> = (0..n).map(|i| i % 4 == 1).collect();
    for rule in [TopkRule::PerRow, TopkRule::Batch] {
        let loss = TopkSaeLoss {
            k: 16,
            rule,
            reconstruction: 1.0,
            aux_k: Some((8, 0.1)),
            pre_encoder_bias: true,
        };
        let run = || {
            let mut step = TopkSaeStep::new();
            let out = step.run(&x, &sae_view(&p), &loss, &dead).unwrap();
            let flat = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            let mut all = vec![flat(&out.codes), flat(&out.recon)];
            all.extend(step.grads().iter().map(flat));
            (all, out.reconstruction, out.aux_k, out.fired, out.batch_min)
        };
        assert_eq!(run(), on_one_thread(run), "{rule:?}");
    }
}
