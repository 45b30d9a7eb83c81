//! Row encodings of a store: f32, f16 and bf16, little-endian as safetensors lays them out.
//!
//! Decoding is the reader's hot loop; the 16-bit formats go through
//! [`metarep_core::half_bytes`] (F16C eight values at a time where the CPU has it).

use candle_core::DType;
use metarep_core::half_bytes::{self, Half};

/// The 16-bit format of `dtype` (`None` for f32 and anything else).
fn half(dtype: DType) -> Option<Half> {
    match dtype {
        DType::F16 => Some(Half::F16),
        DType::BF16 => Some(Half::Bf16),
        _ => None,
    }
}

/// Appends `flat` encoded as little-endian `dtype` (f32, f16 or bf16; f16 and bf16 round to
/// nearest even) to `out`.
pub(crate) fn encode(dtype: DType, flat: &[f32], out: &mut Vec<u8>) {
    match half(dtype) {
        Some(kind) => half_bytes::encode(kind, flat, out),
        None => out.extend_from_slice(bytemuck::cast_slice(flat)),
    }
}

/// Decodes `out.len()` values of little-endian `dtype` from `bytes` into `out`.
///
/// # Panics
/// When `bytes` holds fewer than `out.len()` values (a caller bug: shard shapes are checked
/// before any row is decoded).
pub(crate) fn decode(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    if let Some(kind) = half(dtype) {
        return half_bytes::decode(kind, bytes, out);
    }
    assert!(
        bytes.len() >= 4 * out.len(),
        "decode: {} bytes for {} f32 values",
        bytes.len(),
        out.len()
    );
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Hints the CPU to bring `bytes` into cache (a no-op off x86-64).
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults; the address lies inside `bytes`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips_each_dtype() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.375).collect();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut bytes = Vec::new();
            encode(dtype, &x, &mut bytes);
            assert_eq!(bytes.len(), x.len() * dtype.size_in_bytes());
            let mut back = vec![0f32; x.len()];
            decode(dtype, &bytes, &mut back);
            assert_eq!(back, x, "{dtype:?}"); // these values are exact in every dtype
        }
    }
}
