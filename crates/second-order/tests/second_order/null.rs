//! The shuffled-prompt null: what the shuffle keeps, that it does not depend on chunking, and
//! that the significance fraction is ≈ the null's 5% when real and null effects share a
//! distribution and near 1 when the real effects are larger.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{normal_vec, seeded};
use metarep_second_order::null::{centred_norms, quantile, shuffle_prompts, significance};

fn tokens() -> (Tensor, Vec<usize>) {
    let rows: Vec<u32> = (0..4u32)
        .flat_map(|r| (0..12).map(move |t| 100 * r + t))
        .collect();
    (
        Tensor::from_vec(rows, (4, 12), &Device::Cpu).unwrap(),
        vec![11, 7, 1, 0],
    )
}

#[test]
fn shuffling_keeps_the_first_and_read_out_tokens_and_the_bag() {
    let (t, pos) = tokens();
    let s = shuffle_prompts(&t, &pos, 9, 0)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let orig = t.to_vec2::<u32>().unwrap();
    for (r, (&q, (a, b))) in pos.iter().zip(orig.iter().zip(&s)).enumerate() {
        assert_eq!(a[0], b[0], "row {r}");
        assert_eq!(
            a[q..],
            b[q..],
            "row {r}: the read-out token and padding stay"
        );
        let (mut x, mut y) = (a[..q].to_vec(), b[..q].to_vec());
        x.sort_unstable();
        y.sort_unstable();
        assert_eq!(x, y, "row {r}: same tokens");
    }
    assert_ne!(orig[0], s[0], "a 12-token row is permuted");
    // Row r is shuffled by its index in the whole set: a chunk starting at row 2 agrees.
    let tail = shuffle_prompts(&t.narrow(0, 2, 2).unwrap(), &pos[2..], 9, 2).unwrap();
    assert_eq!(tail.to_vec2::<u32>().unwrap(), s[2..].to_vec());
    assert_ne!(
        shuffle_prompts(&t, &pos, 10, 0)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()[0],
        s[0]
    );
}

#[test]
fn bad_positions_are_named() {
    let (t, _) = tokens();
    let e = shuffle_prompts(&t, &[1, 2], 0, 0).unwrap_err().to_string();
    assert!(e.contains("2 read-out positions"), "{e}");
    let e = shuffle_prompts(&t, &[1, 2, 3, 12], 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position 12 of prompt 3"), "{e}");
    assert!(quantile(&[], 0.5).is_err());
}

#[test]
fn the_significant_fraction_tracks_the_effect_size_against_the_null() {
    assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5).unwrap(), 2.0);
    assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 1.0).unwrap(), 4.0);
    let n = 4000;
    let d = 8;
    // Gaussian effects of scale `scale`, drawn from `seed` (seeded, so the test is the same
    // test on every run: the 5% tolerance below is ≈ 3 standard deviations of `same`).
    let draw = |scale: f64, seed: u64| {
        let v = normal_vec(&mut seeded(seed), n * d, 0.0, scale).unwrap();
        Tensor::from_vec(v, (n, d), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let mean = vec![0f32; d];
    let null = centred_norms(&draw(1.0, 1), &mean).unwrap();
    let (thr, same) = significance(&centred_norms(&draw(1.0, 2), &mean).unwrap(), &null).unwrap();
    assert!((same - 0.05).abs() < 0.015, "same distribution: {same}");
    assert!(thr > 2.0 && thr < 5.0, "χ8 q95 ≈ 3.9: {thr}");
    let (_, larger) = significance(&centred_norms(&draw(3.0, 3), &mean).unwrap(), &null).unwrap();
    assert!(larger > 0.9, "three times larger effects: {larger}");
    let (_, smaller) = significance(&centred_norms(&draw(0.3, 4), &mean).unwrap(), &null).unwrap();
    assert!(smaller < 0.01, "smaller effects: {smaller}");
}
