//! f32 values to and from little-endian 16-bit floats (f16, bf16), the on-disk encodings of the
//! activation store and the gist tree.
//!
//! Both directions work on whole slices without temporary buffers, converting in place inside
//! the output; f16 is converted eight values at a time with F16C where the CPU has it (unaligned
//! loads and stores), bf16 through `half`'s slice conversion. Rounding is to
//! nearest even, bit-identical to `half`'s scalar conversions (the reference in the tests).
//!
//! ```
//! use metarep_core::half_bytes::{decode, encode, Half};
//!
//! let mut bytes = Vec::new();
//! encode(Half::F16, &[1.0, -0.5, 3.0], &mut bytes);
//! assert_eq!(bytes.len(), 6);
//! let mut back = [0f32; 3];
//! decode(Half::F16, &bytes, &mut back);
//! assert_eq!(back, [1.0, -0.5, 3.0]);
//! ```

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

// Bytes are reinterpreted as little-endian values.
#[cfg(not(target_endian = "little"))]
compile_error!("metarep-core's half_bytes supports little-endian targets only");

/// A 16-bit float format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    Bf16,
}

/// Appends `values` encoded as little-endian `kind` (2 bytes each) to `out`.
pub fn encode(kind: Half, values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * values.len(), 0);
    let tail = &mut out[start..];
    match kind {
        Half::F16 => encode_f16(values, tail),
        Half::Bf16 => match bytemuck::try_cast_slice_mut::<u8, u16>(tail) {
            // Converted in place when the bytes are 2-byte aligned (always, in practice).
            Ok(bits) => bits
                .reinterpret_cast_mut::<half::bf16>()
                .convert_from_f32_slice(values),
            Err(_) => {
                for (b, x) in tail.chunks_exact_mut(2).zip(values) {
                    b.copy_from_slice(&half::bf16::from_f32(*x).to_le_bytes());
                }
            }
        },
    }
}

/// Whether the CPU converts f16 in hardware (F16C, with AVX for the 256-bit forms).
#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
}

fn encode_f16(values: &[f32], bytes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has F16C and AVX (checked just above); `encode` sized `bytes`.
        unsafe { encode_f16_f16c(values, bytes) };
        return;
    }
    encode_f16_scalar(values, bytes);
}

fn encode_f16_scalar(values: &[f32], bytes: &mut [u8]) {
    for (b, x) in bytes.chunks_exact_mut(2).zip(values) {
        b.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
    }
}

/// # Safety
/// The CPU must support F16C and AVX, and `bytes.len() >= 2 * values.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn encode_f16_f16c(values: &[f32], bytes: &mut [u8]) {
    use std::arch::x86_64::{
        __m128i, _mm256_cvtps_ph, _mm256_loadu_ps, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT,
    };
    let n = values.len();
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: values i..i + 8 lie inside both slices (i + 8 ≤ n and bytes holds 2n bytes);
        // the loads and stores are unaligned ones.
        unsafe {
            let v = _mm256_loadu_ps(values.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(bytes.as_mut_ptr().add(2 * i).cast::<__m128i>(), h);
        }
    }
    encode_f16_scalar(&values[full..], &mut bytes[2 * full..]);
}

/// Appends `values` encoded as little-endian `kind` to `out` and replaces each value by what its
/// encoding decodes back to (the stored value), in one pass over `values`.
pub fn encode_rounding(kind: Half, values: &mut [f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * values.len(), 0);
    let tail = &mut out[start..];
    match kind {
        Half::F16 => {
            #[cfg(target_arch = "x86_64")]
            if has_f16c() {
                // SAFETY: the CPU has F16C and AVX (checked just above); `tail` was sized above.
                unsafe { encode_rounding_f16_f16c(values, tail) };
                return;
            }
            encode_f16_scalar(values, tail);
            decode_f16_scalar(tail, values);
        }
        Half::Bf16 => {
            for (b, x) in tail.chunks_exact_mut(2).zip(values.iter_mut()) {
                let h = half::bf16::from_f32(*x);
                b.copy_from_slice(&h.to_le_bytes());
                *x = h.to_f32();
            }
        }
    }
}

/// # Safety
/// The CPU must support F16C and AVX, and `bytes.len() >= 2 * values.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn encode_rounding_f16_f16c(values: &mut [f32], bytes: &mut [u8]) {
    use std::arch::x86_64::{
        __m128i, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_storeu_ps,
        _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT,
    };
    let n = values.len();
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: values i..i + 8 lie inside both slices (i + 8 ≤ n and bytes holds 2n bytes);
        // the loads and stores are unaligned ones.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(
                values.as_ptr().add(i),
            ));
            _mm_storeu_si128(bytes.as_mut_ptr().add(2 * i).cast::<__m128i>(), h);
            _mm256_storeu_ps(values.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    encode_f16_scalar(&values[full..], &mut bytes[2 * full..]);
    decode_f16_scalar(&bytes[2 * full..], &mut values[full..]);
}

/// Decodes `out.len()` little-endian `kind` values from the front of `bytes` into `out`.
///
/// # Panics
/// When `bytes` holds fewer than `2 * out.len()` bytes (a caller bug: callers check shapes
/// before decoding).
pub fn decode(kind: Half, bytes: &[u8], out: &mut [f32]) {
    assert!(
        bytes.len() >= 2 * out.len(),
        "half_bytes::decode: {} bytes for {} values",
        bytes.len(),
        out.len()
    );
    match kind {
        Half::F16 => decode_f16(bytes, out),
        Half::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
    }
}

fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
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
        decode(Half::F16, &bytes, &mut fast);
        decode_f16_scalar(&bytes, &mut slow);
        for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert!(same(*a, *b), "f16 bits {i:#06x}: {a} vs {b}");
        }
        // Odd offsets (unaligned loads) and every tail length.
        for n in 0..20 {
            let mut out = vec![0f32; n];
            decode(Half::F16, &bytes[1001..], &mut out);
            let want = bytes[1001..]
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            assert!(out.iter().zip(want).all(|(a, b)| same(*a, b)));
        }
    }

    #[test]
    fn f16_encode_matches_half_across_the_f32_bit_patterns() {
        // Every 4099th bit pattern (all exponents, both signs, NaNs and infinities) plus every
        // tail length.
        let x: Vec<f32> = (0..=u32::MAX).step_by(4099).map(f32::from_bits).collect();
        let mut bytes = Vec::new();
        encode(Half::F16, &x, &mut bytes);
        for (b, v) in bytes.chunks_exact(2).zip(&x) {
            let got = half::f16::from_le_bytes([b[0], b[1]]);
            let want = half::f16::from_f32(*v);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{:#010x}: {:#06x} vs {:#06x}",
                v.to_bits(),
                got.to_bits(),
                want.to_bits()
            );
        }
        for n in 0..20 {
            let mut short = Vec::new();
            encode(Half::F16, &x[7..7 + n], &mut short);
            assert_eq!(short, bytes[14..14 + 2 * n]);
        }
    }

    #[test]
    fn encode_rounding_is_encode_then_decode() {
        let x: Vec<f32> = (0..=u32::MAX).step_by(65_537).map(f32::from_bits).collect();
        for kind in [Half::F16, Half::Bf16] {
            for n in [0, 1, 7, 8, 9, 100, x.len()] {
                let (mut want_bytes, mut got_bytes) = (vec![1u8], vec![1u8]);
                encode(kind, &x[..n], &mut want_bytes);
                let mut want = vec![0f32; n];
                decode(kind, &want_bytes[1..], &mut want);
                let mut got = x[..n].to_vec();
                encode_rounding(kind, &mut got, &mut got_bytes);
                assert_eq!(got_bytes, want_bytes, "{kind:?} n {n}");
                assert!(
                    got.iter().zip(&want).all(|(a, b)| same(*a, *b)),
                    "{kind:?} n {n}"
                );
            }
        }
    }

    #[test]
    fn encode_matches_half_scalar_rounding_aligned_or_not() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.7377).sin() * 10f32.powi(i % 9 - 4))
            .chain([f32::INFINITY, f32::NEG_INFINITY, 65520.0, 1e-8, -0.0])
            .collect();
        for kind in [Half::F16, Half::Bf16] {
            for lead in [0usize, 1] {
                let mut bytes = vec![0xAA; lead];
                encode(kind, &x, &mut bytes);
                assert_eq!(bytes.len(), lead + 2 * x.len());
                for (b, v) in bytes[lead..].chunks_exact(2).zip(&x) {
                    let want = match kind {
                        Half::F16 => half::f16::from_f32(*v).to_bits(),
                        Half::Bf16 => half::bf16::from_f32(*v).to_bits(),
                    };
                    assert_eq!(u16::from_le_bytes([b[0], b[1]]), want, "{kind:?} {v}");
                }
                let mut back = vec![0f32; x.len()];
                decode(kind, &bytes[lead..], &mut back);
                for (b, v) in back.iter().zip(&x) {
                    let want = match kind {
                        Half::F16 => half::f16::from_f32(*v).to_f32(),
                        Half::Bf16 => half::bf16::from_f32(*v).to_f32(),
                    };
                    assert!(same(*b, want), "{kind:?} {v}: {b} vs {want}");
                }
            }
        }
    }
}
