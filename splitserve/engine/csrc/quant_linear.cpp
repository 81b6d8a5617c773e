// Linears over weights held as GGML's Q4_1 and Q8_0 blocks (32 weights each), for a few fp32 rows.
//
// The weights are what the fp32 weights already are (quant_weights.py only takes a tensor whose every
// value is exactly d * q + m), and each block is decoded back to those fp32 weights in registers:
// the output is the fp32 linear up to summation order, from a quarter (Q8_0) or a sixth (Q4_1) of
// the bytes. Activations stay fp32 (llama.cpp quantizes them to int8; this does not).
//
// Layouts (row n of the weight, block b of its K / 32):
//   Q4_1: qs uint8 [N, K/2]: bytes 16b..16b+15 hold weight 32b+j in their low nibble and weight
//         32b+16+j in their high nibble (GGML's order); d, m float32 [N, K/32]; w = d * q + m.
//   Q8_0: qs int8 [N, K]; d float32 [N, K/32]; w = d * q.
// Rows of x go four at a time through each weight block: the block is decoded once per four rows.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "these kernels need AVX2 and FMA"
#endif

#include <cstdint>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kRowsPerPass = 4;
constexpr int64_t kGrain = 16;  // output features per task

inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 bytes_to_floats(__m128i eight_low_bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eight_low_bytes));
}

inline __m256 signed_bytes_to_floats(__m128i eight_low_bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight_low_bytes));
}

// The 32 fp32 weights of one block, as four vectors: d * q + m is exact in fp32 (d * q needs at most
// 15 significant bits), so the fused multiply-add gives back the stored weight bit for bit.
struct Q4Block {
  __m256 w[4];
  Q4Block(const uint8_t* bytes, float d, float m) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
    const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
    const __m256 scale = _mm256_set1_ps(d), offset = _mm256_set1_ps(m);
    w[0] = _mm256_fmadd_ps(bytes_to_floats(low), scale, offset);
    w[1] = _mm256_fmadd_ps(bytes_to_floats(_mm_srli_si128(low, 8)), scale, offset);
    w[2] = _mm256_fmadd_ps(bytes_to_floats(high), scale, offset);
    w[3] = _mm256_fmadd_ps(bytes_to_floats(_mm_srli_si128(high, 8)), scale, offset);
  }
};

struct Q8Block {
  __m256 w[4];
  Q8Block(const int8_t* bytes, float d, float) {
    const __m256 scale = _mm256_set1_ps(d);
    for (int i = 0; i < 4; ++i) {
      const __m128i eight = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + 8 * i));
      w[i] = _mm256_mul_ps(signed_bytes_to_floats(eight), scale);
    }
  }
};

// out[r][n] = w[n] . x[r] for R rows at once, each block decoded once. Few rows get several
// accumulators each, so that enough independent FMA chains hide the FMA latency.
template <int R, typename Block, typename Q>
void rows_times_feature(const float* x, int64_t x_stride, const Q* qs, int64_t q_bytes_per_block,
                        const float* d, const float* m, int64_t blocks, float* out, int64_t out_stride) {
  constexpr int kChains = R == 1 ? 4 : 2;
  __m256 acc[R][kChains];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChains; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const Block block(qs + b * q_bytes_per_block, d[b], m == nullptr ? 0.f : m[b]);
    for (int r = 0; r < R; ++r) {
      const float* xb = x + r * x_stride + b * kBlock;
      for (int i = 0; i < 4; ++i) {
        acc[r][i % kChains] = _mm256_fmadd_ps(block.w[i], _mm256_loadu_ps(xb + 8 * i), acc[r][i % kChains]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 1; c < kChains; ++c) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][c]);
    out[r * out_stride] = sum8(acc[r][0]);
  }
}

template <typename Block, typename Q>
void rows_times_feature_any(int64_t rows, const float* x, int64_t x_stride, const Q* qs, int64_t q_bytes_per_block,
                            const float* d, const float* m, int64_t blocks, float* out, int64_t out_stride) {
#define SPLITSERVE_ROWS(R) \
  return rows_times_feature<R, Block>(x, x_stride, qs, q_bytes_per_block, d, m, blocks, out, out_stride)
  static_assert(kRowsPerPass == 4, "one case per row count of a pass");
  switch (rows) {
    case 1: SPLITSERVE_ROWS(1);
    case 2: SPLITSERVE_ROWS(2);
    case 3: SPLITSERVE_ROWS(3);
    default: SPLITSERVE_ROWS(4);
  }
#undef SPLITSERVE_ROWS
}

void check_inputs(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d, int64_t k_per_q_byte,
                  at::ScalarType q_type) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(qs.dim() == 2 && qs.is_contiguous() && d.dim() == 2 && d.is_contiguous() &&
                  d.scalar_type() == at::kFloat, "qs and d must be contiguous 2-D tensors, d float32");
  TORCH_CHECK(qs.scalar_type() == q_type, "qs must be ", q_type == at::kByte ? "uint8 (Q4_1)" : "int8 (Q8_0)");
  const int64_t k = x.size(1);
  TORCH_CHECK(k % kBlock == 0 && qs.size(1) * k_per_q_byte == k && d.size(1) == k / kBlock &&
                  d.size(0) == qs.size(0), "weight blocks do not match x's ", k, " input features");
}

template <typename Block, typename Q>
at::Tensor block_linear(const at::Tensor& x, const Q* qs, int64_t q_bytes_per_row, const float* d,
                        const float* m, int64_t features) {
  const int64_t rows = x.size(0), k = x.size(1), blocks = k / kBlock;
  const int64_t q_bytes_per_block = q_bytes_per_row / blocks;
  at::Tensor out = at::empty({rows, features}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, features, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* m_row = m == nullptr ? nullptr : m + n * blocks;
      for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerPass) {
        rows_times_feature_any<Block>(std::min(kRowsPerPass, rows - r0), xp + r0 * k, k, qs + n * q_bytes_per_row,
                                      q_bytes_per_block, d + n * blocks, m_row, blocks, op + r0 * features + n,
                                      features);
      }
    }
  });
  return out;
}

at::Tensor q4_1_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d, const at::Tensor& m) {
  check_inputs(x, qs, d, 2, at::kByte);
  TORCH_CHECK(m.sizes() == d.sizes() && m.is_contiguous() && m.scalar_type() == at::kFloat,
              "Q4_1 needs a float32 m shaped like d");
  return block_linear<Q4Block>(x, qs.data_ptr<uint8_t>(), qs.size(1), d.data_ptr<float>(), m.data_ptr<float>(),
                               qs.size(0));
}

at::Tensor q8_0_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d) {
  check_inputs(x, qs, d, 1, at::kChar);
  return block_linear<Q8Block>(x, qs.data_ptr<int8_t>(), qs.size(1), d.data_ptr<float>(), nullptr, qs.size(0));
}

}  // namespace

TORCH_LIBRARY(splitserve_quant, lib) {
  lib.def("q4_1_linear(Tensor x, Tensor qs, Tensor d, Tensor m) -> Tensor", q4_1_linear);
  lib.def("q8_0_linear(Tensor x, Tensor qs, Tensor d) -> Tensor", q8_0_linear);
}
