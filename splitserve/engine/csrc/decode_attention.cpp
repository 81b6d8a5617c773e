// Decode attention read in place from the paged KV cache (CPU): one query token per request.
//
// torch's SDPA needs the keys gathered into one padded tensor first (an index_select of every request's
// blocks, then a masked attention over the longest context); this reads each key and value row where it
// lies, through the request's block table, and only the positions the query sees.
//
//   q            [B, H, D]            float32, the step's decode queries
//   k, v         [NB, BS, KVH, D]     float32, float16 or bfloat16, one layer's cache pools
//   block_tables [B, W]               int64, the request's blocks in order (padding past its last is ignored)
//   positions    [B]                  int64, the query's position: it sees keys lo..position, where
//                                     lo = max(0, position - window + 1) with a window, else 0
//   out          [B, H, D]            softmax(q . k * scale) . v per head; head h reads KV head h / (H / KVH)
//
// Scores and sums are fp32, as SDPA's CPU kernels keep them (16-bit keys and values are widened to fp32 as
// they are loaded); D must be a multiple of 8.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using splitserve::exp8;
using splitserve::Bf16Values;
using splitserve::Fp16Values;
using splitserve::Fp32Values;
using splitserve::prefetch_values;
using splitserve::sum8;

struct Shapes {
  int64_t heads, kv_heads, group, head_dim, block_size, table_width, num_blocks;
};

// Calls visit(j, row) for the visible keys lo..position in order, j counting from 0, row pointing at the
// key's KV head `kv` in `pool`: block by block, no division per key.
//
// Before each key it asks for the same row of the next block. A block is a few pages at a place of its
// own, and the hardware's prefetchers stop at a page's end, so without this every block began with a
// wait on memory. SmolLM2-135M's 30 layers, 2 threads, keys in random blocks of a 4,096-block pool
// (benchmarks/decode_attention_kernel.py): batch 8 at 530 keys 18.2 -> 13.6 ms, batch 1 at 600 keys
// 3.8 -> 2.6 ms, batch 32 78 -> 59 ms; reading the same bytes in the same order with no arithmetic
// took 11.8 ms at batch 8. Prefetching two blocks ahead, or a whole block at once, was no faster.
template <typename E, typename Visit>
inline void for_each_key(const E* pool, const int64_t* table, int64_t lo, int64_t position, int64_t kv,
                         const Shapes& s, Visit visit) {
  const int64_t row = s.kv_heads * s.head_dim, last_block = position / s.block_size;
  for (int64_t p = lo, j = 0; p <= position;) {
    const int64_t block = p / s.block_size, in_block = p % s.block_size;
    const int64_t run = std::min(s.block_size - in_block, position + 1 - p);
    const E* first = pool + (table[block] * s.block_size + in_block) * row + kv * s.head_dim;
    const E* ahead = pool + (table[std::min(block + 1, last_block)] * s.block_size + in_block) * row + kv * s.head_dim;
    for (int64_t i = 0; i < run; ++i) {
      prefetch_values(ahead + i * row, s.head_dim);
      visit(j + i, first + i * row);
    }
    p += run;
    j += run;
  }
}

constexpr int64_t kScoreHeads = 4;  // query heads one pass over the keys scores at once (8 accumulators)

// scores[g][j] = q_g . k_j * scale for G query heads: two accumulators a head (even and odd stretches of
// 8 lanes), so that 2G chains of FMAs run side by side; G is a template argument so that they stay in
// registers.
template <typename Kv, int G>
void score_keys_for(const float* q, const typename Kv::E* k, const int64_t* table, int64_t lo, int64_t position,
                    int64_t kv, float scale, const Shapes& s, float* scores, int64_t keys) {
  for_each_key(k, table, lo, position, kv, s, [&](int64_t j, const typename Kv::E* kj) {
    __m256 acc[G][2];
    #pragma GCC unroll 4
    for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= s.head_dim; i += 16) {
      const __m256 k0 = Kv::load8(kj + i), k1 = Kv::load8(kj + i + 8);
      #pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        acc[g][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * s.head_dim + i), k0, acc[g][0]);
        acc[g][1] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * s.head_dim + i + 8), k1, acc[g][1]);
      }
    }
    if (i < s.head_dim) {  // head_dim is a multiple of 8: one stretch left
      const __m256 k0 = Kv::load8(kj + i);
      #pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[g][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * s.head_dim + i), k0, acc[g][0]);
    }
    #pragma GCC unroll 4
    for (int g = 0; g < G; ++g) scores[g * keys + j] = sum8(_mm256_add_ps(acc[g][0], acc[g][1])) * scale;
  });
}

template <typename Kv>
void score_keys(const float* q, const typename Kv::E* k, const int64_t* table, int64_t lo, int64_t position, int64_t kv,
                float scale, const Shapes& s, float* scores, int64_t keys) {
  for (int64_t g0 = 0; g0 < s.group; g0 += kScoreHeads) {
    const float* qg = q + g0 * s.head_dim;
    float* sg = scores + g0 * keys;
#define SPLITSERVE_HEADS(G) score_keys_for<Kv, G>(qg, k, table, lo, position, kv, scale, s, sg, keys); break
    switch (std::min(kScoreHeads, s.group - g0)) {
      case 1: SPLITSERVE_HEADS(1);
      case 2: SPLITSERVE_HEADS(2);
      case 3: SPLITSERVE_HEADS(3);
      default: SPLITSERVE_HEADS(4);
    }
#undef SPLITSERVE_HEADS
  }
}

// Each row of scores [group, keys] becomes its softmax.
void softmax_rows(float* scores, int64_t rows, int64_t keys) {
  for (int64_t g = 0; g < rows; ++g) {
    float* sg = scores + g * keys;
    const float top = *std::max_element(sg, sg + keys);
    __m256 totals = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= keys; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sg + j), _mm256_set1_ps(top)));
      _mm256_storeu_ps(sg + j, e);
      totals = _mm256_add_ps(totals, e);
    }
    float total = sum8(totals);
    for (; j < keys; ++j) total += (sg[j] = std::exp(sg[j] - top));
    const float inverse = 1.f / total;
    for (int64_t j = 0; j < keys; ++j) sg[j] *= inverse;
  }
}

constexpr int64_t kWeighHeads = 3;  // query heads one pass over the values serves (3 x 4 accumulators)

// out_h[0..8C) = sum_j weights[h][j] v_j[0..8C) for H query heads at once: H x C accumulators in registers,
// each value row loaded once for all H.
template <typename Kv, int H, int C>
void weigh_values_for(const float* weights, int64_t keys, const typename Kv::E* v, const int64_t* table, int64_t lo,
                      int64_t position, int64_t kv, const Shapes& s, float* out) {
  __m256 acc[H][C];
  #pragma GCC unroll 4
  for (int h = 0; h < H; ++h) {
    #pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[h][c] = _mm256_setzero_ps();
  }
  for_each_key(v, table, lo, position, kv, s, [&](int64_t j, const typename Kv::E* vj) {
    __m256 row[C];
    #pragma GCC unroll 4
    for (int c = 0; c < C; ++c) row[c] = Kv::load8(vj + 8 * c);
    #pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      const __m256 w = _mm256_broadcast_ss(weights + h * keys + j);
      #pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[h][c] = _mm256_fmadd_ps(w, row[c], acc[h][c]);
    }
  });
  #pragma GCC unroll 4
  for (int h = 0; h < H; ++h) {
    #pragma GCC unroll 4
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + h * s.head_dim + 8 * c, acc[h][c]);
  }
}

template <typename Kv, int H>
void weigh_lanes(int64_t lanes, const float* weights, int64_t keys, const typename Kv::E* v, const int64_t* table,
                 int64_t lo, int64_t position, int64_t kv, const Shapes& s, float* out) {
#define SPLITSERVE_LANES(C) return weigh_values_for<Kv, H, C>(weights, keys, v, table, lo, position, kv, s, out)
  switch (lanes) {
    case 1: SPLITSERVE_LANES(1);
    case 2: SPLITSERVE_LANES(2);
    case 3: SPLITSERVE_LANES(3);
    default: SPLITSERVE_LANES(4);
  }
#undef SPLITSERVE_LANES
}

// out_g = sum_j weights[g][j] v_j for every query head of the group: up to 3 heads and 32 lanes a pass.
template <typename Kv>
void weigh_values(const float* weights, const typename Kv::E* v, const int64_t* table, int64_t lo, int64_t position,
                  int64_t kv, const Shapes& s, int64_t keys, float* out) {
  for (int64_t g0 = 0; g0 < s.group; g0 += kWeighHeads) {
    for (int64_t d0 = 0; d0 < s.head_dim; d0 += 32) {
      const int64_t lanes = std::min<int64_t>(4, (s.head_dim - d0) / 8);
      const float* wg = weights + g0 * keys;
      float* od = out + g0 * s.head_dim + d0;
      switch (std::min(kWeighHeads, s.group - g0)) {
        case 1: weigh_lanes<Kv, 1>(lanes, wg, keys, v + d0, table, lo, position, kv, s, od); break;
        case 2: weigh_lanes<Kv, 2>(lanes, wg, keys, v + d0, table, lo, position, kv, s, od); break;
        default: weigh_lanes<Kv, 3>(lanes, wg, keys, v + d0, table, lo, position, kv, s, od); break;
      }
    }
  }
}

// One request's query heads that share KV head `kv`. `scores` has room for group x keys floats.
template <typename Kv>
void attend_one_kv_head(const float* q, const typename Kv::E* k, const typename Kv::E* v, const int64_t* table,
                        int64_t lo, int64_t position, int64_t kv, float scale, const Shapes& s, float* scores,
                        float* out) {
  const int64_t keys = position - lo + 1;
  score_keys<Kv>(q, k, table, lo, position, kv, scale, s, scores, keys);
  softmax_rows(scores, s.group, keys);
  weigh_values<Kv>(scores, v, table, lo, position, kv, s, keys, out);
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& tables,
                  const at::Tensor& positions) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "q, k and v must be contiguous CPU tensors");
  }
  const auto kv_type = k.scalar_type();
  TORCH_CHECK(q.scalar_type() == at::kFloat, "q must be float32");
  TORCH_CHECK(v.scalar_type() == kv_type && (kv_type == at::kFloat || kv_type == at::kHalf || kv_type == at::kBFloat16),
              "k and v must both be float32, float16 or bfloat16");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && k.sizes() == v.sizes(), "q must be [B, H, D], k and v [NB, BS, KVH, D]");
  TORCH_CHECK(q.size(2) == k.size(3) && q.size(2) % 8 == 0, "head_dim must match and be a multiple of 8");
  TORCH_CHECK(q.size(1) % k.size(2) == 0, "heads must be a multiple of KV heads");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.dim() == 2 && tables.is_contiguous() &&
                  tables.size(0) == q.size(0), "block_tables must be contiguous int64 [B, W]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.dim() == 1 && positions.size(0) == q.size(0),
              "positions must be int64 [B]");
}

// Every position inside its table and every block it reaches inside the pools, before any is read.
void check_reach(const int64_t* tables, const int64_t* positions, int64_t lo_window, const Shapes& s, int64_t batch) {
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t position = positions[b];
    TORCH_CHECK(position >= 0 && position < s.table_width * s.block_size, "position ", position, " of request ", b,
                " is outside its block table");
    const int64_t lo = lo_window > 0 ? std::max<int64_t>(0, position - lo_window + 1) : 0;
    for (int64_t i = lo / s.block_size; i <= position / s.block_size; ++i) {
      const int64_t block = tables[b * s.table_width + i];
      TORCH_CHECK(block >= 0 && block < s.num_blocks, "block ", block, " of request ", b, " is not in the cache");
    }
  }
}

template <typename Kv>
void attend_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* tables,
                const int64_t* pos, int64_t window, float scale, const Shapes& s, at::Tensor& out) {
  const float* qp = q.data_ptr<float>();
  const auto* kp = reinterpret_cast<const typename Kv::E*>(k.data_ptr());
  const auto* vp = reinterpret_cast<const typename Kv::E*>(v.data_ptr());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, q.size(0) * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, kv = task % s.kv_heads, position = pos[b];
      const int64_t lo = window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
      scores.resize(s.group * (position - lo + 1));
      const int64_t first_head = (b * s.heads + kv * s.group) * s.head_dim;
      attend_one_kv_head<Kv>(qp + first_head, kp, vp, tables + b * s.table_width, lo, position, kv, scale, s,
                             scores.data(), op + first_head);
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& block_tables, const at::Tensor& positions, int64_t window,
                                  double scale) {
  check_inputs(q, k, v, block_tables, positions);
  const Shapes s{q.size(1), k.size(2), q.size(1) / k.size(2), q.size(2), k.size(1), block_tables.size(1), k.size(0)};
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  check_reach(tables, pos, window, s, q.size(0));
  at::Tensor out = at::empty(q.sizes(), q.options());
  const auto scale_f = static_cast<float>(scale);
  switch (k.scalar_type()) {
    case at::kHalf: attend_all<Fp16Values>(q, k, v, tables, pos, window, scale_f, s, out); break;
    case at::kBFloat16: attend_all<Bf16Values>(q, k, v, tables, pos, window, scale_f, s, out); break;
    default: attend_all<Fp32Values>(q, k, v, tables, pos, window, scale_f, s, out); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(splitserve_attention, lib) {
  lib.def("paged_decode_attention(Tensor q, Tensor k, Tensor v, Tensor block_tables, Tensor positions, "
          "int window, float scale) -> Tensor",
          paged_decode_attention);
}
