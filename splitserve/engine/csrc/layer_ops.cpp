// A decoder layer's small ops for fp32 rows on CPU, each in one pass (torch's take several ops and most
// of their time in overhead at decode sizes: its rms_norm took 19-29 us for 8 rows of 576 on this
// project's 2-core machine, and a 30-layer decode step calls it 61 times):
//
//   rms_norm(x, weight, eps)                  -> x * rsqrt(mean(x^2) + eps) * weight (HF's formula; the
//                                                sum of squares in 8 lanes, then across them)
//   add_rms_norm(x, residual, weight, eps)    -> (s, rms_norm(s, weight, eps)) with s = x + residual
//   rope(qkv, heads, head_dim, cos, sin)      -> the first `heads` heads of each row of qkv [T, >= heads *
//                                                head_dim], rotated: x * cos + swap_halves(x) * sin, with
//                                                rotate_half's sign already in sin (rope.py's
//                                                apply_rotary_signed, bit for bit: mul, mul, add)
//   silu_mul(gate_up)                         -> silu(gate) * up for gate_up [T, 2I] = [gate | up]

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "checks.h"
#include "simd.h"

#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

using splitserve::exp8;
using splitserve::sum8;

constexpr int64_t kRowsPerTask = 16;

void check_rows(const at::Tensor& x, const at::Tensor& weight) {
  splitserve::check_float_rows(x, "x");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 1 && weight.is_contiguous() &&
                  weight.size(0) == x.size(1), "weight must be float32 [", x.size(1), "]");
  TORCH_CHECK(x.size(1) % 8 == 0, "the row width must be a multiple of 8");
}

void normalize_row(const float* x, const float* weight, int64_t width, float eps, float* out) {
  __m256 squares = _mm256_setzero_ps();
  for (int64_t i = 0; i < width; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    squares = _mm256_fmadd_ps(v, v, squares);
  }
  const __m256 inverse_rms = _mm256_set1_ps(1.f / std::sqrt(sum8(squares) / static_cast<float>(width) + eps));
  for (int64_t i = 0; i < width; i += 8) {
    const __m256 normed = _mm256_mul_ps(_mm256_loadu_ps(x + i), inverse_rms);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i), normed));
  }
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, weight);
  const int64_t width = x.size(1);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) normalize_row(xp + r * width, wp, width, static_cast<float>(eps), op + r * width);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  check_rows(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == at::kFloat && residual.is_contiguous(),
              "residual must be a contiguous float32 tensor shaped like x");
  const int64_t width = x.size(1);
  at::Tensor sum = at::empty(x.sizes(), x.options()), out = at::empty(x.sizes(), x.options());
  const float *xp = x.data_ptr<float>(), *rp = residual.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float *sp = sum.data_ptr<float>(), *op = out.data_ptr<float>();
  at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t row = r * width;
      for (int64_t i = 0; i < width; i += 8) {
        _mm256_storeu_ps(sp + row + i, _mm256_add_ps(_mm256_loadu_ps(xp + row + i), _mm256_loadu_ps(rp + row + i)));
      }
      normalize_row(sp + row, wp, width, static_cast<float>(eps), op + row);
    }
  });
  return {sum, out};
}

at::Tensor rope(const at::Tensor& qkv, int64_t heads, int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin) {
  splitserve::check_float_rows(qkv, "qkv");
  TORCH_CHECK(head_dim % 16 == 0 && heads > 0 && heads * head_dim <= qkv.size(1),
              "heads x head_dim must fit in a row, head_dim a multiple of 16");
  const int64_t tokens = qkv.size(0), width = qkv.size(1), half = head_dim / 2;
  for (const at::Tensor* table : {&cos, &sin}) {
    TORCH_CHECK(table->scalar_type() == at::kFloat && table->is_contiguous() && table->numel() == tokens * head_dim,
                "cos and sin must be contiguous float32 with head_dim values per token");
  }
  at::Tensor out = at::empty({tokens, heads, head_dim}, qkv.options());
  const float *xp = qkv.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, tokens, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float *c = cp + t * head_dim, *s = sp + t * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = xp + t * width + h * head_dim;
        float* o = op + (t * heads + h) * head_dim;
        for (int64_t i = 0; i < half; i += 8) {
          const __m256 low = _mm256_loadu_ps(x + i), high = _mm256_loadu_ps(x + half + i);
          _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_mul_ps(low, _mm256_loadu_ps(c + i)),
                                                _mm256_mul_ps(high, _mm256_loadu_ps(s + i))));
          _mm256_storeu_ps(o + half + i, _mm256_add_ps(_mm256_mul_ps(high, _mm256_loadu_ps(c + half + i)),
                                                       _mm256_mul_ps(low, _mm256_loadu_ps(s + half + i))));
        }
      }
    }
  });
  return out;
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  splitserve::check_float_rows(gate_up, "gate_up");
  TORCH_CHECK(gate_up.size(1) % 16 == 0, "gate_up's width must be a multiple of 16");
  const int64_t tokens = gate_up.size(0), inner = gate_up.size(1) / 2;
  at::Tensor out = at::empty({tokens, inner}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  at::parallel_for(0, tokens, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float *gate = gp + t * 2 * inner, *up = gate + inner;
      for (int64_t i = 0; i < inner; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, g))));
        _mm256_storeu_ps(op + t * inner + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(splitserve_layer, lib) {
  lib.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", rms_norm);
  lib.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)", add_rms_norm);
  lib.def("rope(Tensor qkv, int heads, int head_dim, Tensor cos, Tensor sin) -> Tensor", rope);
  lib.def("silu_mul(Tensor gate_up) -> Tensor", silu_mul);
}
