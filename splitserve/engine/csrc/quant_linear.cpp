// Linears over weights held as GGML's Q4_1 and Q8_0 blocks (32 weights each), for fp32 rows.
//
// The weights are what the fp32 weights already are (quant_weights.py only takes a tensor whose every
// value is exactly d * q + m), and each block is decoded back to those fp32 weights in registers:
// the output is the fp32 linear up to summation order, from a quarter (Q8_0) or a sixth (Q4_1) of
// the bytes. Activations stay fp32 (llama.cpp quantizes them to int8; this does not).
//
// Two kernels each: the dot kernels (q4_1_linear, q8_0_linear) for a few rows, and the panel kernels
// (q4_1_panel_linear, q8_0_panel_linear, further down) for more.
//
// Dot kernels' layouts (row n of the weight, block b of its K / 32):
//   Q4_1: qs uint8 [N, K/2]: bytes 16b..16b+15 hold weight 32b+j in their low nibble and weight
//         32b+16+j in their high nibble (GGML's order); d, m float32 [N, K/32]; w = d * q + m.
//   Q8_0: qs int8 [N, K]; d float32 [N, K/32]; w = d * q.
// Rows of x go four at a time through each weight block: the block is decoded once per four rows.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "checks.h"
#include "simd.h"

#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

using splitserve::sum8;

constexpr int64_t kBlock = 32;
constexpr int64_t kRowsPerPass = 4;
constexpr int64_t kGrain = 16;  // output features per task

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
    #pragma GCC unroll 8
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
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < kChains; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const Block block(qs + b * q_bytes_per_block, d[b], m == nullptr ? 0.f : m[b]);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float* xb = x + r * x_stride + b * kBlock;
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) {
        acc[r][i % kChains] = _mm256_fmadd_ps(block.w[i], _mm256_loadu_ps(xb + 8 * i), acc[r][i % kChains]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 8
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
  splitserve::check_float_rows(x, "x");
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

// ---- Many rows: a group of 16 features decoded once into an fp32 panel, then a register-tiled GEMM.
//
// Layouts, for group g of output features 16g..16g+15 (N a multiple of 16):
//   Q4_1: qs uint8 [N/16, K, 8]: byte j at input k holds feature j's q in its low nibble and feature
//         8+j's in its high nibble; d, m float32 [N/16, K/32, 16].
//   Q8_0: qs int8 [N/16, K, 16]; d float32 [N/16, K/32, 16].
// A panel [kPanelInputs, 16] holds the group's exact fp32 weights input by input for a stretch of K; tiles
// of rows of x then run over it (panel_tile), adding to their outputs from the second stretch on.

constexpr int64_t kGroup = 16;
constexpr int64_t kTileRows = 8;  // the most rows one tile takes
constexpr int64_t kFullWidthRows = 6;  // the most rows a tile takes all 16 features at once for
constexpr int64_t kPanelInputs = 256;  // 16 KB of fp32 panel: a multiple of kBlock

void decode_q4_1_panel(const uint8_t* qs, const float* d, const float* m, int64_t k, float* panel) {
  const __m256i nibble = _mm256_set1_epi32(0x0F);
  for (int64_t b = 0; b < k / kBlock; ++b) {
    const __m256 d0 = _mm256_loadu_ps(d + b * kGroup), d1 = _mm256_loadu_ps(d + b * kGroup + 8);
    const __m256 m0 = _mm256_loadu_ps(m + b * kGroup), m1 = _mm256_loadu_ps(m + b * kGroup + 8);
    for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
      const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + i * 8)));
      _mm256_storeu_ps(panel + i * kGroup, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q, nibble)), d0, m0));
      _mm256_storeu_ps(panel + i * kGroup + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(q, 4)), d1, m1));
    }
  }
}

void decode_q8_0_panel(const int8_t* qs, const float* d, const float*, int64_t k, float* panel) {
  for (int64_t b = 0; b < k / kBlock; ++b) {
    const __m256 d0 = _mm256_loadu_ps(d + b * kGroup), d1 = _mm256_loadu_ps(d + b * kGroup + 8);
    for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
      const int8_t* q = qs + i * kGroup;
      _mm256_storeu_ps(panel + i * kGroup, _mm256_mul_ps(signed_bytes_to_floats(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))), d0));
      _mm256_storeu_ps(panel + i * kGroup + 8, _mm256_mul_ps(signed_bytes_to_floats(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8))), d1));
    }
  }
}

// out[r][0..8W) (+)= x[r][0..k) . panel[:, 0..8W) for R rows: R x W accumulators of 8 features, one
// broadcast of x per row and input.
template <int R, int W>
void panel_tile(const float* x, int64_t x_stride, const float* panel, int64_t k, float* out, int64_t out_stride,
                bool accumulate) {
  __m256 acc[R][W];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 2
    for (int c = 0; c < W; ++c) acc[r][c] = accumulate ? _mm256_loadu_ps(out + r * out_stride + 8 * c) : _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < k; ++i) {
    __m256 w[W];
    #pragma GCC unroll 2
    for (int c = 0; c < W; ++c) w[c] = _mm256_loadu_ps(panel + i * kGroup + 8 * c);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 xi = _mm256_broadcast_ss(x + r * x_stride + i);
      #pragma GCC unroll 2
      for (int c = 0; c < W; ++c) acc[r][c] = _mm256_fmadd_ps(xi, w[c], acc[r][c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 2
    for (int c = 0; c < W; ++c) _mm256_storeu_ps(out + r * out_stride + 8 * c, acc[r][c]);
  }
}

// Up to 6 rows take all 16 features at once; 7 or 8 rows take them 8 at a time (8 accumulators keep more
// FMAs in flight than two tiles of 4 rows do).
void panel_tile_any(int64_t rows, const float* x, int64_t x_stride, const float* panel, int64_t k, float* out,
                    int64_t out_stride, bool accumulate) {
  static_assert(kTileRows == 8, "one case per row count of a tile");
#define SPLITSERVE_TILE(R) return panel_tile<R, 2>(x, x_stride, panel, k, out, out_stride, accumulate)
#define SPLITSERVE_HALVES(R)                                                         \
  panel_tile<R, 1>(x, x_stride, panel, k, out, out_stride, accumulate);             \
  return panel_tile<R, 1>(x, x_stride, panel + 8, k, out + 8, out_stride, accumulate)
  switch (rows) {
    case 1: SPLITSERVE_TILE(1);
    case 2: SPLITSERVE_TILE(2);
    case 3: SPLITSERVE_TILE(3);
    case 4: SPLITSERVE_TILE(4);
    case 5: SPLITSERVE_TILE(5);
    case 6: SPLITSERVE_TILE(6);
    case 7: SPLITSERVE_HALVES(7);
    default: SPLITSERVE_HALVES(8);
  }
#undef SPLITSERVE_HALVES
#undef SPLITSERVE_TILE
}

// Up to 8 rows make one tile; more make tiles of at most 6 rows (12 accumulators: the most FMAs in flight
// per broadcast), as even as they can be (20 rows: 7 + 7 + 6 would be worse than 5 + 5 + 5 + 5).
int64_t tile_count(int64_t rows) {
  return rows <= kTileRows ? 1 : (rows + kFullWidthRows - 1) / kFullWidthRows;
}

template <typename Q, typename Decode>
at::Tensor panel_linear(const at::Tensor& x, const Q* qs, const float* d, const float* m, int64_t groups,
                        Decode decode) {
  const int64_t rows = x.size(0), k = x.size(1), features = groups * kGroup;
  const int64_t q_per_input = std::is_same_v<Q, uint8_t> ? kGroup / 2 : kGroup;  // Q4_1: two a byte
  const int64_t q_per_group = k * q_per_input;
  const int64_t scales_per_group = k / kBlock * kGroup;
  at::Tensor out = at::empty({rows, features}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t tiles = tile_count(rows);
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> panel(kPanelInputs * kGroup);
    for (int64_t g = begin; g < end; ++g) {
      for (int64_t k0 = 0; k0 < k; k0 += kPanelInputs) {  // a panel stays in L1 while every tile reads it
        const int64_t kc = std::min(kPanelInputs, k - k0), s0 = k0 / kBlock * kGroup;
        decode(qs + g * q_per_group + k0 * q_per_input, d + g * scales_per_group + s0,
               m == nullptr ? nullptr : m + g * scales_per_group + s0, kc, panel.data());
        for (int64_t t = 0, r0 = 0; t < tiles; ++t) {
          const int64_t tile_rows = (rows - r0) / (tiles - t);
          panel_tile_any(tile_rows, xp + r0 * k + k0, k, panel.data(), kc, op + r0 * features + g * kGroup, features,
                         k0 > 0);
          r0 += tile_rows;
        }
      }
    }
  });
  return out;
}

void check_panel_inputs(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d, int64_t q_per_input,
                        at::ScalarType q_type) {
  splitserve::check_float_rows(x, "x");
  TORCH_CHECK(qs.dim() == 3 && qs.is_contiguous() && d.dim() == 3 && d.is_contiguous() &&
                  d.scalar_type() == at::kFloat, "qs and d must be contiguous 3-D tensors, d float32");
  TORCH_CHECK(qs.scalar_type() == q_type, "qs must be ", q_type == at::kByte ? "uint8 (Q4_1)" : "int8 (Q8_0)");
  const int64_t k = x.size(1);
  TORCH_CHECK(k % kBlock == 0 && qs.size(1) == k && qs.size(2) == q_per_input && d.size(0) == qs.size(0) &&
                  d.size(1) == k / kBlock && d.size(2) == kGroup, "weight groups do not match x's ", k,
              " input features");
}

at::Tensor q4_1_panel_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d, const at::Tensor& m) {
  check_panel_inputs(x, qs, d, kGroup / 2, at::kByte);
  TORCH_CHECK(m.sizes() == d.sizes() && m.is_contiguous() && m.scalar_type() == at::kFloat,
              "Q4_1 needs a float32 m shaped like d");
  return panel_linear(x, qs.data_ptr<uint8_t>(), d.data_ptr<float>(), m.data_ptr<float>(), qs.size(0),
                      decode_q4_1_panel);
}

at::Tensor q8_0_panel_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d) {
  check_panel_inputs(x, qs, d, kGroup, at::kChar);
  return panel_linear(x, qs.data_ptr<int8_t>(), d.data_ptr<float>(), nullptr, qs.size(0), decode_q8_0_panel);
}

}  // namespace

TORCH_LIBRARY(splitserve_quant, lib) {
  lib.def("q4_1_linear(Tensor x, Tensor qs, Tensor d, Tensor m) -> Tensor", q4_1_linear);
  lib.def("q8_0_linear(Tensor x, Tensor qs, Tensor d) -> Tensor", q8_0_linear);
  lib.def("q4_1_panel_linear(Tensor x, Tensor qs, Tensor d, Tensor m) -> Tensor", q4_1_panel_linear);
  lib.def("q8_0_panel_linear(Tensor x, Tensor qs, Tensor d) -> Tensor", q8_0_panel_linear);
}
