//! BatchTopK: training and inference agree. Training selects the `k · batch` largest
//! pre-activations of each batch; inference ([`Sae::encode`]) is a JumpReLU at the learned
//! global threshold. On data whose row norms are heavy-tailed (a few rows ~100× the typical
//! norm, which take many latents each), both must give the same codes on the latents they share,
//! nearly the same active sets and explained variance, and an inference L0 close to `k`.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::seeded;
use metarep_core::train::RunControl;
use metarep_kernels::INACTIVE;
use metarep_sae::metrics::VarianceSums;
use metarep_sae::sae::TrainForward;
use metarep_sae::{
    train, Architecture, InputNorm, Latents, Sae, SaeConfig, SaeTrainConfig, TensorSource,
};
use rand::Rng;

/// Sparse-mixture rows with row scales `e^U(−1,1)`, times 100 on one row in 128.
fn heavy_tailed(rows: usize, d: usize, seed: u64) -> Tensor {
    let x = metarep_sae::ground_truth::sparse_mixture(rows, d, 3 * d, 4, seed).unwrap();
    let mut rng = seeded(seed + 1);
    let s: Vec<f32> = (0..rows)
        .map(|_| {
            let big = if rng.random::<f64>() < 1.0 / 128.0 {
                100.0
            } else {
                1.0
            };
            (big * (rng.random::<f64>() * 2.0 - 1.0).exp()) as f32
        })
        .collect();
    x.broadcast_mul(&Tensor::from_vec(s, (rows, 1), &Device::Cpu).unwrap())
        .unwrap()
}

/// Active `(row, latent) → value` of sparse codes.
fn active_sparse(l: &Latents) -> Vec<((usize, usize), f32)> {
    let Latents::Sparse { indices, values } = l else {
        panic!("training codes must be sparse")
    };
    let (idx, val) = (
        indices.to_vec2::<u32>().unwrap(),
        values.to_vec2::<f32>().unwrap(),
    );
    let mut out = Vec::new();
    for (r, (ir, vr)) in idx.iter().zip(&val).enumerate() {
        for (&i, &v) in ir.iter().zip(vr) {
            if i != INACTIVE && v > 0.0 {
                out.push(((r, i as usize), v));
            }
        }
    }
    out
}

#[test]
fn batchtopk_inference_matches_training_on_heavy_tailed_rows() {
    let (d, k, batch) = (32, 4, 512);
    let x = heavy_tailed(16_384 + 4 * batch, d, 7);
    let train_x = x.narrow(0, 0, 16_384).unwrap();
    let mut config = SaeConfig::new(d, 4, Architecture::BatchTopK { k }).unwrap();
    config.input_norm = InputNorm::ExpectedNorm;
    let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
    let cfg: SaeTrainConfig = metarep_core::parse_config(
        "seed = 1\nbatch = 512\nsteps = 400\nlr = 0.004\nwarmup = 20\nlog_every = 0\n\
         dead_window = 8192\n[loss.aux_k]\nk_aux = 8\ncoeff = 0.03125\n",
        &[],
    )
    .unwrap();
    let mut source = TensorSource::new(train_x, 3).unwrap();
    train(&mut sae, &mut source, &cfg, RunControl::default()).unwrap();
    assert!(sae.batch_threshold > 0.0);

    let (mut ev_train, mut ev_infer) = (VarianceSums::default(), VarianceSums::default());
    let (mut shared, mut only_train, mut only_infer) = (0usize, 0usize, 0usize);
    let (mut l0_infer, mut worst_value) = (0.0, 0f32);
    let mut mins = Vec::new();
    for b in 0..4 {
        let xb = x.narrow(0, 16_384 + b * batch, batch).unwrap();
        // Training-style: the k · batch largest pre-activations of the batch.
        let (xn, factor) = sae.normalize_input(&xb).unwrap();
        let pass = sae.forward(&xn, &TrainForward::default()).unwrap();
        let recon = sae
            .denormalize(&pass.recon.detach(), factor.as_ref())
            .unwrap();
        ev_train.add(&xb, &recon).unwrap();
        mins.push(pass.batch_min.unwrap());
        // Inference: JumpReLU at the global threshold.
        let codes = sae.encode(&xb).unwrap();
        ev_infer.add(&xb, &sae.reconstruct(&xb).unwrap()).unwrap();
        l0_infer += codes.l0_l1().unwrap().0 / 4.0;
        let dense = codes
            .to_dense(config.d_sae)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let train_codes = active_sparse(&pass.latents);
        let mut in_train = vec![vec![false; config.d_sae]; batch];
        for &((r, i), v) in &train_codes {
            in_train[r][i] = true;
            if dense[r][i] > 0.0 {
                shared += 1;
                worst_value = worst_value.max((dense[r][i] - v).abs() / v.abs().max(1.0));
            } else {
                only_train += 1;
            }
        }
        for (r, row) in dense.iter().enumerate() {
            only_infer += row
                .iter()
                .enumerate()
                .filter(|&(i, &v)| v > 0.0 && !in_train[r][i])
                .count();
        }
    }
    let (a, b) = (ev_train.explained_variance(), ev_infer.explained_variance());
    let jaccard = shared as f64 / (shared + only_train + only_infer) as f64;
    let msg = format!(
        "train-style EV {a:.4}, inference EV {b:.4}, inference L0 {l0_infer:.2} (k = {k}), \
         active-set Jaccard {jaccard:.3}, worst relative code difference {worst_value:.2e}, \
         threshold {:.4}, held-out batch minima {mins:?}",
        sae.batch_threshold
    );
    println!("{msg}");
    // The same pre-activation on every latent both paths keep.
    assert!(worst_value < 1e-4, "{msg}");
    // Nearly the same active latents, reconstruction and L0.
    assert!(jaccard > 0.8, "{msg}");
    assert!((a - b).abs() < 0.02, "{msg}");
    assert!((l0_infer - k as f64).abs() < 0.25 * k as f64, "{msg}");
    // The threshold lies among the held-out batches' k·batch-th largest activations.
    let (lo, hi) = mins
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &m| (l.min(m), h.max(m)));
    assert!(
        sae.batch_threshold > 0.8 * lo && sae.batch_threshold < 1.25 * hi,
        "{msg}"
    );
}
