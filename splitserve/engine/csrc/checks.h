// Input checks the kernels share.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace splitserve {

// `name` must be a contiguous 2-D float32 CPU tensor (rows of fp32 values).
inline void check_float_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous(), name,
              " must be a contiguous 2-D float32 CPU tensor");
}

}  // namespace splitserve
