// KV transfer's layer checksum, ChecksumKind.MULSUM_64 (splitserve/kvtransfer/checksum.py defines it and
// holds a torch reference), alone or fused into the copies a transfer makes anyway, so the bytes are hashed
// while they are in registers instead of read again from memory:
//
//   mulsum(bytes, seed)                           -> the checksum of a contiguous uint8 tensor
//   gather_mulsum(k, v, slots, out, seed)         -> out[0][i] = k[slots[i]], out[1][i] = v[slots[i]] (a prefill
//                                                    node reading a layer out of its pool); the checksum of out
//   scatter_mulsum(kv, k, v, slots, seed)         -> k[slots[i]] = kv[0][i], v[slots[i]] = kv[1][i] (a decode node
//                                                    writing a received layer); the checksum of kv
//   scatter_rows(kv, k, v, slots)                 -> the same copy, unhashed (torch's index_copy_ took 120 us
//                                                    where this takes ~60 for a layer of 1.1 MB, one thread)
//
// The payload is read as little-endian 64-bit words w_i (the last one zero-padded), key_i = key0 + i * GOLDEN,
// x_i = w_i ^ key_i; two sums mod 2^64, products = sum(lo32(x_i) * hi32(x_i)) and words = sum(w_i), then
// fmix64(fmix64(products ^ seed) + words + nbytes * GOLDEN). Sums do not care in which order or on which
// thread the words are taken: each chunk of rows is copied and then hashed at once (in L1/L2), chunks in
// parallel. One 32x32->64 multiply per 8 bytes (as xxh3's AVX2 loop); a changed word always changes
// `words`, a swapped pair changes `products` through the keys.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "simd.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int64_t kChunkBytes = 16 << 10;  // copied, then hashed while still in cache
constexpr int64_t kPrefetchBytes = 512;     // how far ahead a hash loop asks for its next lines

struct Sums {
  uint64_t products = 0, words = 0;
  void add(const Sums& other) {
    products += other.products;
    words += other.words;
  }
};

uint64_t fmix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  return x ^ (x >> 33);
}

uint64_t key0_of(uint64_t seed) { return fmix64(seed + kGolden); }

uint64_t lane_sum(__m256i v) {
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

__m256i keys_from(uint64_t key0, uint64_t first) {
  return _mm256_set_epi64x(static_cast<int64_t>(key0 + (first + 3) * kGolden),
                           static_cast<int64_t>(key0 + (first + 2) * kGolden),
                           static_cast<int64_t>(key0 + (first + 1) * kGolden),
                           static_cast<int64_t>(key0 + first * kGolden));
}

// The sums of `count` whole words at p, the first being the payload's word `first`.
Sums hash_words(const uint8_t* p, int64_t count, uint64_t first, uint64_t key0) {
  __m256i products_a = _mm256_setzero_si256(), products_b = products_a, words_a = products_a, words_b = products_a;
  __m256i keys_a = keys_from(key0, first), keys_b = keys_from(key0, first + 4);
  const __m256i step = _mm256_set1_epi64x(static_cast<int64_t>(8 * kGolden));
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(p + 8 * i) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i w_a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * i));
    const __m256i w_b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * i + 32));
    const __m256i x_a = _mm256_xor_si256(w_a, keys_a), x_b = _mm256_xor_si256(w_b, keys_b);
    products_a = _mm256_add_epi64(products_a, _mm256_mul_epu32(x_a, _mm256_srli_epi64(x_a, 32)));
    products_b = _mm256_add_epi64(products_b, _mm256_mul_epu32(x_b, _mm256_srli_epi64(x_b, 32)));
    words_a = _mm256_add_epi64(words_a, w_a);
    words_b = _mm256_add_epi64(words_b, w_b);
    keys_a = _mm256_add_epi64(keys_a, step);
    keys_b = _mm256_add_epi64(keys_b, step);
  }
  Sums sums{lane_sum(_mm256_add_epi64(products_a, products_b)), lane_sum(_mm256_add_epi64(words_a, words_b))};
  for (; i < count; ++i) {
    uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    const uint64_t x = w ^ (key0 + (first + i) * kGolden);
    sums.products += (x & 0xFFFFFFFFull) * (x >> 32);
    sums.words += w;
  }
  return sums;
}

// The checksum of an `nbytes` payload at p whose whole words before `hashed_words` are already in `sums`.
int64_t finish(Sums sums, const uint8_t* p, int64_t nbytes, int64_t hashed_words, uint64_t seed) {
  const uint64_t key0 = key0_of(seed);
  sums.add(hash_words(p + 8 * hashed_words, nbytes / 8 - hashed_words, hashed_words, key0));
  if (nbytes % 8) {
    uint64_t last = 0;
    std::memcpy(&last, p + nbytes / 8 * 8, nbytes % 8);
    sums.add(hash_words(reinterpret_cast<const uint8_t*>(&last), 1, nbytes / 8, key0));
  }
  return static_cast<int64_t>(fmix64(fmix64(sums.products ^ seed) + sums.words + static_cast<uint64_t>(nbytes) * kGolden));
}

int64_t mulsum(const at::Tensor& bytes, int64_t seed) {
  TORCH_CHECK(bytes.device().is_cpu() && bytes.scalar_type() == at::kByte && bytes.dim() == 1 && bytes.is_contiguous(),
              "bytes must be a contiguous 1-D uint8 CPU tensor");
  const uint8_t* p = bytes.data_ptr<uint8_t>();
  const int64_t words = bytes.numel() / 8, chunk_words = kChunkBytes / 8;
  const uint64_t key0 = key0_of(static_cast<uint64_t>(seed));
  std::vector<Sums> parts((words + chunk_words - 1) / chunk_words);
  at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * chunk_words;
      parts[c] = hash_words(p + 8 * first, std::min(chunk_words, words - first), first, key0);
    }
  });
  Sums sums;
  for (const Sums& part : parts) sums.add(part);
  return finish(sums, p, bytes.numel(), words, static_cast<uint64_t>(seed));
}

// A layer as 2n rows of `row_bytes`: rows [0, n) of K, [n, 2n) of V, each at a slot of the pool.
struct LayerRows {
  uint8_t *k, *v;  // the pool's flat K and V: [num_slots, row]
  const int64_t* slots;
  int64_t n, row_bytes;

  uint8_t* pool_row(int64_t r) const {
    return (r < n ? k : v) + slots[r < n ? r : r - n] * row_bytes;
  }
};

LayerRows layer_rows(const at::Tensor& kv, const at::Tensor& k, const at::Tensor& v, const at::Tensor& slots) {
  TORCH_CHECK(kv.device().is_cpu() && kv.is_contiguous() && kv.dim() == 4 && kv.size(0) == 2,
              "kv must be a contiguous [2, n, kv_heads, head_dim] CPU tensor");
  for (const at::Tensor* pool : {&k, &v}) {
    TORCH_CHECK(pool->device().is_cpu() && pool->is_contiguous() && pool->scalar_type() == kv.scalar_type() &&
                    pool->dim() == 3 && pool->size(1) == kv.size(2) && pool->size(2) == kv.size(3),
                "k and v must be contiguous [num_slots, kv_heads, head_dim] CPU tensors of kv's dtype");
  }
  TORCH_CHECK(k.size(0) == v.size(0), "k and v must have as many slots");
  TORCH_CHECK(slots.device().is_cpu() && slots.scalar_type() == at::kLong && slots.dim() == 1 &&
                  slots.is_contiguous() && slots.size(0) == kv.size(1),
              "slots must be a contiguous 1-D int64 CPU tensor with one slot per row of kv");
  const int64_t* s = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < slots.size(0); ++i) {
    TORCH_CHECK(0 <= s[i] && s[i] < k.size(0), "slot ", s[i], " is outside the pool's ", k.size(0), " slots");
  }
  return {static_cast<uint8_t*>(k.data_ptr()), static_cast<uint8_t*>(v.data_ptr()), s, kv.size(1),
          kv.size(2) * kv.size(3) * static_cast<int64_t>(kv.element_size())};
}

enum class Hash { kNone, kBefore, kAfter };

// Runs copy(rows [r0, r1)) for chunks of about kChunkBytes (a whole number of words each, but the last),
// hashing each chunk's bytes of `payload` right after (a gather: what it wrote) or before (a scatter: what
// it reads) its copy, or not at all (the result is then 0).
template <typename Copy>
int64_t copy_and_hash(const LayerRows& rows, const uint8_t* payload, int64_t seed, Hash hash, Copy copy) {
  const int64_t total_rows = 2 * rows.n, nbytes = total_rows * rows.row_bytes;
  int64_t chunk_rows = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, rows.row_bytes));
  chunk_rows = (chunk_rows + 7) / 8 * 8;  // 8 rows hold a whole number of words
  const int64_t chunks = (total_rows + chunk_rows - 1) / chunk_rows;
  const uint64_t key0 = key0_of(static_cast<uint64_t>(seed));
  std::vector<Sums> parts(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r0 = c * chunk_rows, r1 = std::min(total_rows, r0 + chunk_rows);
      const int64_t first = r0 * rows.row_bytes / 8, count = r1 * rows.row_bytes / 8 - first;
      if (hash == Hash::kBefore) parts[c] = hash_words(payload + 8 * first, count, first, key0);
      copy(r0, r1);
      if (hash == Hash::kAfter) parts[c] = hash_words(payload + 8 * first, count, first, key0);
    }
  });
  if (hash == Hash::kNone) return 0;
  Sums sums;
  for (const Sums& part : parts) sums.add(part);
  return finish(sums, payload, nbytes, nbytes / 8, static_cast<uint64_t>(seed));
}

int64_t gather_mulsum(const at::Tensor& k, const at::Tensor& v, const at::Tensor& slots, at::Tensor& out, int64_t seed) {
  const LayerRows rows = layer_rows(out, k, v, slots);
  uint8_t* dst = static_cast<uint8_t*>(out.data_ptr());
  return copy_and_hash(rows, dst, seed, Hash::kAfter, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * rows.row_bytes, rows.pool_row(r), rows.row_bytes);
  });
}

// Copies a row into the pool with non-temporal stores where it is 32-byte aligned (no read of the pool's lines
// before they are written: a transferred layer lands in memory larger than the cache), else with memcpy.
void write_row(uint8_t* dst, const uint8_t* src, int64_t nbytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 32 != 0 || nbytes % 32 != 0) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  for (int64_t i = 0; i < nbytes; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
  }
}

int64_t scatter(const at::Tensor& kv, at::Tensor& k, at::Tensor& v, const at::Tensor& slots, int64_t seed, Hash hash) {
  const LayerRows rows = layer_rows(kv, k, v, slots);
  const uint8_t* src = static_cast<const uint8_t*>(kv.data_ptr());
  return copy_and_hash(rows, src, seed, hash, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) write_row(rows.pool_row(r), src + r * rows.row_bytes, rows.row_bytes);
    _mm_sfence();  // this thread's streamed rows are visible before the layer is reported written
  });
}

int64_t scatter_mulsum(const at::Tensor& kv, at::Tensor& k, at::Tensor& v, const at::Tensor& slots, int64_t seed) {
  return scatter(kv, k, v, slots, seed, Hash::kBefore);
}

void scatter_rows(const at::Tensor& kv, at::Tensor& k, at::Tensor& v, const at::Tensor& slots) {
  scatter(kv, k, v, slots, 0, Hash::kNone);
}

}  // namespace

TORCH_LIBRARY(splitserve_kv, lib) {
  lib.def("mulsum(Tensor bytes, int seed) -> int", mulsum);
  lib.def("gather_mulsum(Tensor k, Tensor v, Tensor slots, Tensor(a!) out, int seed) -> int", gather_mulsum);
  lib.def("scatter_mulsum(Tensor kv, Tensor(a!) k, Tensor(b!) v, Tensor slots, int seed) -> int", scatter_mulsum);
  lib.def("scatter_rows(Tensor kv, Tensor(a!) k, Tensor(b!) v, Tensor slots) -> ()", scatter_rows);
}
