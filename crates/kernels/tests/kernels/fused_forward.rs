//! The one-pass rotary embedding and gated activation give the same values, bit for bit, as the
//! compositions of candle ops they replace, for full and partial rotary, row counts around the
//! kernels' work items and every activation; bad shapes are errors naming the op.

use candle_core::{DType, Device, Tensor};
use metarep_kernels::forward::{activation, gated_activation, Act};
use metarep_kernels::rotary::rope;

/// Panics at the first entry where `a` and `b` differ in any bit.
fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: entry {i} is {} against {}", a[i], b[i]);
    }
}

/// The rotation as candle ops: pairs `(i, i + half)` of each head, the rest kept.
fn rope_ops(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (half, dh) = (cos.dim(3).unwrap(), x.dim(3).unwrap());
    let x1 = x.narrow(3, 0, half).unwrap();
    let x2 = x.narrow(3, half, half).unwrap();
    let r1 = (x1.broadcast_mul(cos).unwrap() - x2.broadcast_mul(sin).unwrap()).unwrap();
    let r2 = (x2.broadcast_mul(cos).unwrap() + x1.broadcast_mul(sin).unwrap()).unwrap();
    let rest = x.narrow(3, 2 * half, dh - 2 * half).unwrap();
    Tensor::cat(&[r1, r2, rest], 3).unwrap()
}

#[test]
fn rope_equals_the_candle_ops_for_full_and_partial_rotary() {
    let dev = Device::Cpu;
    // (batch, pos, heads, d_head, half): full rotary, partial rotary, one position, many rows.
    for (b, p, h, dh, half) in [
        (2, 7, 3, 8, 4),
        (1, 5, 2, 10, 3),
        (3, 1, 4, 16, 8),
        (2, 130, 3, 64, 32),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, p, h, dh), &dev).unwrap();
        let angles = Tensor::randn(0f32, 3.0, (1, p, 1, half), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let got = rope(&x, &cos, &sin).unwrap();
        assert_same(
            &got,
            &rope_ops(&x, &cos, &sin),
            &format!("{b}×{p}×{h}×{dh}, half {half}"),
        );
        // A strided input is read as its values.
        let xt = x.transpose(1, 2).unwrap().contiguous().unwrap();
        let strided = xt.transpose(1, 2).unwrap();
        assert_same(&rope(&strided, &cos, &sin).unwrap(), &got, "strided input");
    }
}

#[test]
fn rope_rejects_tables_that_do_not_fit() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 2, 8), DType::F32, &dev).unwrap();
    let table = |p: usize, half: usize| Tensor::zeros((1, p, 1, half), DType::F32, &dev).unwrap();
    for (cos, sin) in [
        (table(3, 4), table(3, 4)), // fewer positions than x
        (table(4, 5), table(4, 5)), // 2·half > d_head
        (table(4, 4), table(4, 2)), // cos and sin differ
    ] {
        let err = rope(&x, &cos, &sin).unwrap_err().to_string();
        assert!(err.contains("rope") && err.contains("tables"), "{err}");
    }
    let flat = Tensor::zeros((4, 16), DType::F32, &dev).unwrap();
    assert!(rope(&flat, &table(4, 4), &table(4, 4)).is_err());
}

#[test]
fn gated_activation_equals_the_activation_times_the_input() {
    let dev = Device::Cpu;
    // Lengths around the kernel's 16 384-element work items and its SIMD lanes.
    for n in [1usize, 15, 16 * 1024 + 17, 50_000] {
        let gate = (Tensor::randn(0f32, 1.0, n, &dev).unwrap() * 4.0).unwrap();
        let x = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        for act in [Act::Gelu, Act::GeluTanh, Act::Silu, Act::Relu] {
            let want = (activation(&gate, act).unwrap() * &x).unwrap();
            let got = gated_activation(&gate, &x, act).unwrap();
            assert_same(&got, &want, &format!("{act:?}, {n} elements"));
        }
    }
    let gate = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let x = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
    let err = gated_activation(&gate, &x, Act::Silu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gated_activation"), "{err}");
}
