//! f32 values to and from little-endian 16-bit floats (f16, bf16), the on-disk encodings of the
//! activation store and the gist tree.
//!
//! Both directions work on whole slices without temporary buffers: encoding converts in place
//! inside the output bytes (with `half`'s slice conversion, which uses F16C where the CPU has
//! it), and f16 decoding reads unaligned bytes eight values at a time with F16C. Rounding is to
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
    match bytemuck::try_cast_slice_mut::<u8, u16>(tail) {
        // Converted in place when the bytes are 2-byte aligned (always, in practice).
        Ok(bits) => match kind {
            Half::F16 => bits
                .reinterpret_cast_mut::<half::f16>()
                .convert_from_f32_slice(values),
            Half::Bf16 => bits
                .reinterpret_cast_mut::<half::bf16>()
                .convert_from_f32_slice(values),
        },
        Err(_) => {
            for (b, x) in tail.chunks_exact_mut(2).zip(values) {
                let bits = match kind {
                    Half::F16 => half::f16::from_f32(*x).to_bits(),
                    Half::Bf16 => half::bf16::from_f32(*x).to_bits(),
                };
                b.copy_from_slice(&bits.to_le_bytes());
            }
        }
    }
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
