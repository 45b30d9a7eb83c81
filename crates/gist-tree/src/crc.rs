//! CRC-32C of three buffers at once. The CPU's CRC instruction has a latency of about three
//! cycles and a throughput of one per cycle, so three independent streams run about three times
//! as fast as one; the `crc32c` crate interleaves streams only inside buffers of 768 bytes or
//! more, while a segment's records are mostly shorter (a 256-wide f16 gist is 584 bytes).

/// The CRC-32C of each buffer (equal to `crc32c::crc32c` of each).
pub fn crc32c_3(bufs: [&[u8]; 3]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2 (checked just above).
        return unsafe { crc32c_3_sse42(bufs) };
    }
    bufs.map(crc32c::crc32c)
}

/// # Safety
/// The CPU must support SSE 4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_3_sse42(bufs: [&[u8]; 3]) -> [u32; 3] {
    use std::arch::x86_64::_mm_crc32_u64;
    // The shared prefix of whole 8-byte words, in lockstep; each state starts at !0 as CRC-32C's
    // does, and the rest goes through the crate, continuing from the finished prefix's CRC.
    let mut s = [u64::from(u32::MAX); 3];
    let mut done = 0;
    let lockstep = bufs[0]
        .chunks_exact(8)
        .zip(bufs[1].chunks_exact(8))
        .zip(bufs[2].chunks_exact(8));
    for ((a, b), c) in lockstep {
        s[0] = _mm_crc32_u64(s[0], word(a));
        s[1] = _mm_crc32_u64(s[1], word(b));
        s[2] = _mm_crc32_u64(s[2], word(c));
        done += 8;
    }
    [0, 1, 2].map(|k| crc32c::crc32c_append(!(s[k] as u32), &bufs[k][done..]))
}

/// The little-endian word in an 8-byte chunk (one unaligned load once inlined).
#[inline(always)]
fn word(chunk: &[u8]) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_one_buffer_at_a_time_for_any_lengths_and_offsets() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (a, b, c) in [
            (0, 0, 0),
            (1, 7, 8),
            (584, 584, 584),
            (584, 140, 18),
            (2000, 3, 900),
        ] {
            for off in [0, 1, 5] {
                let bufs = [
                    &data[off..off + a],
                    &data[off + 11..off + 11 + b],
                    &data[off + 3..off + 3 + c],
                ];
                assert_eq!(
                    crc32c_3(bufs),
                    bufs.map(crc32c::crc32c),
                    "{a} {b} {c} +{off}"
                );
            }
        }
    }
}
