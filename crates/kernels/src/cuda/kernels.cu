// CUDA kernels of metarep-kernels, compiled to PTX by build.rs (feature `cuda`) and loaded by
// src/cuda.rs. Shapes and semantics are those of the CPU kernels they stand in for; every
// pointer is to contiguous data. f32 unless the name says otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define INACTIVE 0xFFFFFFFFu

// ---------------------------------------------------------------------------------------------
// Block reductions (blockDim.x a multiple of 32, at most 1024).

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum (or max) of `v` over the block, returned to every thread; `scratch` holds 32 floats.
__device__ float block_reduce(float v, float* scratch, bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by an earlier call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : (is_max ? -INFINITY : 0.f);
  return is_max ? warp_max(r) : warp_sum(r);
}

// ---------------------------------------------------------------------------------------------
// Top-k per row by radix select.

// Order-preserving map of a float to an unsigned key (larger float, larger key).
__device__ __forceinline__ uint32_t float_key(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The inverse of float_key.
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The k largest entries of each row of x [rows, n] (plus off [n] with has_offset), best first,
// ties to the lower column: out_idx, out_val [rows, k]. One block per row. Four 8-bit radix
// passes find the key of the k-th largest entry (T); an ordered pass then takes every entry
// above T and the first entries equal to T, and a bitonic sort of the k candidates (keys and
// columns packed in 64 bits, in `kp` (a power of two ≥ k) slots of dynamic shared memory)
// orders them. nan_rows[row] is set to 1 when the row holds a NaN (its selection is then void).
extern "C" __global__ void topk_rows(const float* __restrict__ x, const float* __restrict__ off,
                                     int has_offset, int n, int k, int kp,
                                     uint32_t* __restrict__ out_idx, float* __restrict__ out_val,
                                     uint32_t* __restrict__ nan_rows) {
  const float* offset = has_offset ? off : nullptr;
  extern __shared__ unsigned long long cand[];
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix, s_need, s_count;
  __shared__ uint32_t warp_eq[32];
  const float* row = x + (size_t)blockIdx.x * n;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;

  uint32_t prefix = 0, mask = 0, need = k;
  int nan = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int c = tid; c < n; c += blockDim.x) {
      const float v = offset ? row[c] + offset[c] : row[c];
      if (shift == 24 && v != v) nan = 1;
      const uint32_t key = float_key(v);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t above = 0;
      int d = 255;
      for (; d > 0; --d) {
        if (above + hist[d] >= need) break;
        above += hist[d];
      }
      s_prefix = prefix | ((uint32_t)d << shift);
      s_need = need - above;
    }
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    mask |= 0xffu << shift;
  }
  // prefix is T; `need` entries equal to T are taken, by column.
  nan = __syncthreads_or(nan);
  if (tid == 0) {
    s_count = 0;
    nan_rows[blockIdx.x] = nan;
  }
  for (int i = tid; i < kp; i += blockDim.x) cand[i] = 0ull;  // sorts after every real entry
  __syncthreads();
  uint32_t eq_before = 0;
  for (int base = 0; base < n; base += blockDim.x) {
    const int c = base + tid;
    uint32_t key = 0;
    if (c < n) key = float_key(offset ? row[c] + offset[c] : row[c]);
    const bool gt = c < n && key > prefix, eq = c < n && key == prefix;
    const uint32_t ballot = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_eq[warp] = __popc(ballot);
    __syncthreads();
    uint32_t rank = eq_before + __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) rank += warp_eq[w];
      total += warp_eq[w];
    }
    if (gt || (eq && rank < need)) {
      const uint32_t slot = atomicAdd(&s_count, 1u);
      cand[slot] = ((unsigned long long)key << 32) | (uint32_t)(~(uint32_t)c);
    }
    eq_before += total;
    __syncthreads();
  }
  // Bitonic sort, descending (larger key first; equal keys: lower column first).
  for (int size = 2; size <= kp; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < kp; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const unsigned long long a = cand[i], b = cand[j];
          const bool desc = (i & size) == 0;
          if (desc ? a < b : a > b) {
            cand[i] = b;
            cand[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int j = tid; j < k; j += blockDim.x) {
    const unsigned long long e = cand[j];
    out_idx[(size_t)blockIdx.x * k + j] = ~(uint32_t)(e & 0xffffffffull);
    out_val[(size_t)blockIdx.x * k + j] = key_float((uint32_t)(e >> 32));
  }
}

// ---------------------------------------------------------------------------------------------
// Sparse latent ops. idx, val: [b, k]; weight: [n, d]; input: [b, d].

// out[r] = Σ_j val[r,j] · weight[idx[r,j]] → [b, d]. One block per row.
extern "C" __global__ void sparse_decode(const uint32_t* __restrict__ idx,
                                         const float* __restrict__ val,
                                         const float* __restrict__ weight, int k, int d,
                                         float* __restrict__ out) {
  const size_t r = blockIdx.x;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
      const uint32_t i = idx[r * k + j];
      if (i != INACTIVE) acc = fmaf(val[r * k + j], weight[(size_t)i * d + c], acc);
    }
    out[r * d + c] = acc;
  }
}

// out[r,j] = ⟨input[r], weight[idx[r,j]]⟩ (0 for inactive slots) → [b, k]. One block per row,
// one warp per slot.
extern "C" __global__ void gather_dot(const uint32_t* __restrict__ idx,
                                      const float* __restrict__ input,
                                      const float* __restrict__ weight, int k, int d,
                                      float* __restrict__ out) {
  const size_t r = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const float* x = input + r * d;
  for (int j = warp; j < k; j += warps) {
    const uint32_t i = idx[r * k + j];
    float acc = 0.f;
    if (i != INACTIVE) {
      const float* w = weight + (size_t)i * d;
      for (int c = lane; c < d; c += 32) acc = fmaf(x[c], w[c], acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) out[r * k + j] = acc;
  }
}

// out[idx[r,j]] += val[r,j] · input[r] for every active slot; out [n, d] starts at zero. One
// block per row; the adds are atomic, so the summation order varies from run to run.
extern "C" __global__ void scatter_outer(const uint32_t* __restrict__ idx,
                                         const float* __restrict__ val,
                                         const float* __restrict__ input, int k, int d,
                                         float* __restrict__ out) {
  const size_t r = blockIdx.x;
  for (int j = 0; j < k; ++j) {
    const uint32_t i = idx[r * k + j];
    if (i == INACTIVE) continue;
    const float v = val[r * k + j];
    for (int c = threadIdx.x; c < d; c += blockDim.x)
      atomicAdd(&out[(size_t)i * d + c], v * input[r * d + c]);
  }
}

// out[i] = v[idx[i]] (0 for inactive slots) over the len slots of idx.
extern "C" __global__ void gather_vector(const uint32_t* __restrict__ idx,
                                         const float* __restrict__ v, size_t len,
                                         float* __restrict__ out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
       i += (size_t)gridDim.x * blockDim.x) {
    const uint32_t u = idx[i];
    out[i] = u == INACTIVE ? 0.f : v[u];
  }
}

// ---------------------------------------------------------------------------------------------
// Optimiser and weight upkeep (in place).

// m = β·m + (1−β)·g, or with `square`, m = β·m + (1−β)·g².
extern "C" __global__ void adam_moment(float* __restrict__ m, const float* __restrict__ g,
                                       size_t len, float beta, float one_minus_beta, int square) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
       i += (size_t)gridDim.x * blockDim.x) {
    const float gi = g[i];
    m[i] = m[i] * beta + (square ? gi * gi : gi) * one_minus_beta;
  }
}

// p = p·decay − lr · (m / c1) / (√(v / c2) + eps).
extern "C" __global__ void adam_update(float* __restrict__ p, const float* __restrict__ m,
                                       const float* __restrict__ v, size_t len, float c1,
                                       float c2, float decay, float lr, float eps) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
       i += (size_t)gridDim.x * blockDim.x) {
    const float update = (m[i] / c1) / (sqrtf(v[i] / c2) + eps);
    p[i] = p[i] * decay - update * lr;
  }
}

// Scales every row of w [rows, d] to unit L2 norm; all-zero rows stay. One block per row.
extern "C" __global__ void normalize_rows(float* __restrict__ w, int d) {
  __shared__ float scratch[32];
  float* row = w + (size_t)blockIdx.x * d;
  float ss = 0.f;
  for (int c = threadIdx.x; c < d; c += blockDim.x) ss = fmaf(row[c], row[c], ss);
  const float norm = sqrtf(block_reduce(ss, scratch, false));
  if (norm > 0.f)
    for (int c = threadIdx.x; c < d; c += blockDim.x) row[c] /= norm;
}

// ---------------------------------------------------------------------------------------------
// Forward pass: masked softmax of attention scores, and a bias added to the rows of a product.

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// Softmax over the last axis of scores [rows = batch·heads·q, keys] in f32, written in T: each
// row's scores times `scale` plus, with has_mask, the f32 bias row at mask + batch·mask_bstride +
// query·mask_qstride (strides 0 broadcast it), and with `causal ≥ 0` only keys ≤ query +
// causal. A row with no visible key comes out as zeros. One block per row.
template <typename T>
__device__ void masked_softmax(const T* __restrict__ x, T* __restrict__ out,
                               const float* __restrict__ mask, int has_mask, size_t mask_bstride,
                               size_t mask_qstride, int q, int keys, int causal, int heads,
                               float scale) {
  __shared__ float scratch[32];
  const size_t r = blockIdx.x;
  const T* row = x + r * keys;
  T* dst = out + r * keys;
  const int qi = (int)(r % q);
  const float* m = nullptr;
  if (has_mask) m = mask + (r / ((size_t)heads * q)) * mask_bstride + (size_t)qi * mask_qstride;
  const int limit = causal >= 0 ? min(keys, qi + causal + 1) : keys;
  float mx = -INFINITY;
  for (int c = threadIdx.x; c < limit; c += blockDim.x)
    mx = fmaxf(mx, to_f32(row[c]) * scale + (m ? m[c] : 0.f));
  mx = block_reduce(mx, scratch, true);
  float sum = 0.f;
  if (mx != -INFINITY)
    for (int c = threadIdx.x; c < limit; c += blockDim.x)
      sum += __expf(to_f32(row[c]) * scale + (m ? m[c] : 0.f) - mx);
  sum = block_reduce(sum, scratch, false);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int c = threadIdx.x; c < keys; c += blockDim.x) {
    float p = 0.f;
    if (c < limit && mx != -INFINITY)
      p = __expf(to_f32(row[c]) * scale + (m ? m[c] : 0.f) - mx) * inv;
    dst[c] = from_f32<T>(p);
  }
}

#define MASKED_SOFTMAX(NAME, T)                                                                \
  extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ out,                \
                                  const float* __restrict__ mask, int has_mask,                \
                                  size_t mask_bstride, size_t mask_qstride, int q, int keys,   \
                                  int causal, int heads, float scale) {                        \
    masked_softmax<T>(x, out, mask, has_mask, mask_bstride, mask_qstride, q, keys, causal,     \
                      heads, scale);                                                           \
  }
MASKED_SOFTMAX(masked_softmax_f32, float)
MASKED_SOFTMAX(masked_softmax_f16, __half)
MASKED_SOFTMAX(masked_softmax_bf16, __nv_bfloat16)

// y[r, c] += bias[c] for y [rows, n] in place (f32 arithmetic). Blocks stride over rows,
// threads over columns (no per-element division).
template <typename T>
__device__ void add_bias_rows(T* __restrict__ y, const T* __restrict__ bias, size_t rows, int n) {
  for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* row = y + r * n;
    for (int c = threadIdx.x; c < n; c += blockDim.x)
      row[c] = from_f32<T>(to_f32(row[c]) + to_f32(bias[c]));
  }
}

#define ADD_BIAS_ROWS(NAME, T)                                                                  \
  extern "C" __global__ void NAME(T* __restrict__ y, const T* __restrict__ bias, size_t rows,   \
                                  int n) {                                                      \
    add_bias_rows<T>(y, bias, rows, n);                                                         \
  }
ADD_BIAS_ROWS(add_bias_rows_f32, float)
ADD_BIAS_ROWS(add_bias_rows_f16, __half)
ADD_BIAS_ROWS(add_bias_rows_bf16, __nv_bfloat16)

// out [A, C, B, U] = in [A, B, C, U] in 16-byte units: axes 1 and 2 of a contiguous tensor
// swapped, its last axis U·16 bytes long (attention heads to and from [batch, head, pos, d]).
extern "C" __global__ void swap_axes12(const uint4* __restrict__ in, uint4* __restrict__ out,
                                       size_t A, size_t B, size_t C, size_t U) {
  const size_t len = A * B * C * U;
  for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < len;
       o += (size_t)gridDim.x * blockDim.x) {
    size_t t = o / U;
    const size_t u = o - t * U;
    const size_t b = t % B;
    t /= B;
    const size_t c = t % C, a = t / C;
    out[o] = in[((a * B + b) * C + c) * U + u];
  }
}
