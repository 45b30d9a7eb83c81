//! Row encodings of a store: f32, f16 and bf16, little-endian as safetensors lays them out.
//!
//! Decoding is the reader's hot loop, so f16 rows are converted eight values at a time with
//! the F16C instruction where the CPU has it (bit-identical to `half`'s conversion, which is
//! the fallback and the reference in the tests).

use candle_core::DType;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

// Encoding reinterprets memory as little-endian bytes.
#[cfg(not(target_endian = "little"))]
compile_error!("metarep-capture supports little-endian targets only");

/// Appends `flat` encoded as little-endian `dtype` (f32, f16 or bf16; f16 and bf16 round to
/// nearest even) to `out`.
pub(crate) fn encode(dtype: DType, flat: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + flat.len() * dtype.size_in_bytes(), 0);
    let tail = &mut out[start..];
    match dtype {
        DType::F16 | DType::BF16 => match bytemuck::try_cast_slice_mut::<u8, u16>(tail) {
            // Converted in place when the buffer is 2-byte aligned (always, in practice).
            Ok(bits) if dtype == DType::F16 => bits
                .reinterpret_cast_mut::<half::f16>()
                .convert_from_f32_slice(flat),
            Ok(bits) => bits
                .reinterpret_cast_mut::<half::bf16>()
                .convert_from_f32_slice(flat),
            Err(_) => {
                for (b, x) in tail.chunks_exact_mut(2).zip(flat) {
                    let bits = if dtype == DType::F16 {
                        half::f16::from_f32(*x).to_bits()
                    } else {
                        half::bf16::from_f32(*x).to_bits()
                    };
                    b.copy_from_slice(&bits.to_le_bytes());
                }
            }
        },
        _ => tail.copy_from_slice(bytemuck::cast_slice(flat)),
    }
}

/// Decodes `out.len()` values of little-endian `dtype` from `bytes` into `out`.
///
/// # Panics
/// When `bytes` holds fewer than `out.len()` values (a caller bug: shard shapes are checked
/// before any row is decoded).
pub(crate) fn decode(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let width = dtype.size_in_bytes();
    assert!(
        bytes.len() >= width * out.len(),
        "decode: {} bytes for {} values of {dtype:?}",
        bytes.len(),
        out.len()
    );
    match dtype {
        DType::F16 => decode_f16(bytes, out),
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
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

fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX (checked just above); `decode` checked the length.
        unsafe { decode_f16_f16c(bytes, out) };
        return;
    }
    decode_f16_scalar(bytes, out);
}

fn decode_f16_scalar(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// # Safety
/// The CPU must support F16C and AVX, and `bytes.len() >= 2 * out.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn decode_f16_f16c(bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = out.len();
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: values i..i + 8 lie inside both slices (i + 8 ≤ n and bytes holds 2n bytes);
        // the loads and stores are unaligned ones.
        unsafe {
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i).cast::<__m128i>());
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    decode_f16_scalar(&bytes[2 * full..], &mut out[full..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn f16_decode_matches_half_for_every_bit_pattern_and_tail_length() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|x| x.to_le_bytes()).collect();
        let mut fast = vec![0f32; 1 << 16];
        let mut slow = vec![0f32; 1 << 16];
        decode(DType::F16, &bytes, &mut fast);
        decode_f16_scalar(&bytes, &mut slow);
        for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert!(same(*a, *b), "f16 bits {i:#06x}: {a} vs {b}");
        }
        for n in 0..20 {
            let mut out = vec![0f32; n];
            decode(DType::F16, &bytes[1000..], &mut out);
            assert!(out.iter().zip(&slow[500..]).all(|(a, b)| same(*a, *b)));
        }
    }

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
