// Fused CPU kernels for training steps and prediction (skafm/_native.py
// builds them).
//
// Each kernel replaces a run of PyTorch operations that would each make a
// pass over a few MB of per-pair data: in eager PyTorch those passes, not
// the arithmetic, dominate a training step. The kernels cover the batch's
// row gather, the feature lookup, the grouping of identical pairs, the
// attention pooling, dropout and the optimizer's row updates; in training
// the attention network's matrix products stay in PyTorch (its GEMM over a
// whole batch is faster than anything written here). An attention model's
// prediction is one kernel, predict_attention, whose small per-row
// products keep their accumulators in registers: for a row or a few there
// is no batch for a GEMM to amortise its calls over.
//
// Work is split so that no two threads write the same element and every
// sum is taken in a fixed order: rows, groups or fixed blocks are divided
// among threads, and block sums are added in order. Results therefore do
// not depend on the number of threads.
//
// Compiled on first use by skafm/_native.py and registered as torch.ops.skafm.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// Pairs (i < j) of a row of width w are numbered row-major, as
// torch.triu_indices(w, w, offset=1) lists them.
inline int64_t n_pairs_of(int64_t width) { return width * (width - 1) / 2; }

// Sizes of the work a thread takes at once: small enough that a batch
// splits between threads, large enough to pay for starting them.
constexpr int64_t kRowGrain = 8;
constexpr int64_t kGroupGrain = 256;
// How many rows ahead the table updates prefetch.
constexpr int64_t kPrefetchRows = 8;
// Chunks each thread's share of a range is cut into (see dynamic_for).
constexpr int64_t kChunksPerThread = 8;

// at::parallel_for with the range claimed chunk by chunk from a shared
// counter instead of cut into one static share per thread: a thread that
// the operating system deschedules, or whose rows are wider, holds back one
// chunk, not the whole call. Every caller writes each index's results on
// their own, so the split never changes a bit of the output.
template <typename F>
void dynamic_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || n <= grain || at::in_parallel_region()) {
    f(begin, end);
    return;
  }
  const int64_t chunk = std::max(grain, (n + threads * kChunksPerThread - 1) /
                                            (threads * kChunksPerThread));
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, n_chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < n_chunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      f(begin + c * chunk, std::min(end, begin + (c + 1) * chunk));
  });
}

template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// Vector loops over one row of k floats. Sizes and pointers are passed by
// value with __restrict: inside the lambdas of parallel_for, captured
// references could alias the stores, and the compiler would neither keep
// them in registers nor vectorize.
template <typename T>
inline void multiply(T* __restrict out, const T* __restrict a, const T* __restrict b,
                     int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = a[c] * b[c];
}

template <typename T>
inline void scale(T* __restrict out, T a, const T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = x[c] * a;
}

template <typename T>
inline void add_scaled(T* __restrict y, T a, const T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

template <typename T>
inline void add_product(T* __restrict y, const T* __restrict a, const T* __restrict b,
                        int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += a[c] * b[c];
}

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t c = 0; c < n; ++c) total += a[c] * b[c];
  return total;
}

// Slot of a key in an open-addressing table of mask + 1 slots: MurmurHash3's
// 64-bit finalizer, so that keys differing only in their high bits (a
// feature index above a value's bits) spread over the table too.
inline int64_t hashed_slot(int64_t key, int64_t mask) {
  uint64_t z = static_cast<uint64_t>(key);
  z ^= z >> 33;
  z *= 0xFF51AFD7ED558CCDULL;
  z ^= z >> 33;
  z *= 0xC4CEB9FE1A85EC53ULL;
  z ^= z >> 33;
  return static_cast<int64_t>(z) & mask;
}

// Asks for the cache lines of a row of n values before they are needed.
template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < n * int64_t(sizeof(T)); offset += 64)
    __builtin_prefetch(bytes + offset);
}

// Adam's update of one row, in the order of torch's lerp_ (weight < 0.5),
// mul_ and addcmul_, sqrt_, add_, div_ and sub_.
template <typename T>
inline void adam_update(T* __restrict w, T* __restrict m, T* __restrict v,
                        const T* __restrict g, T weight, T decay, T new_share,
                        T step_size, T eps, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const T mean = m[c] + weight * (g[c] - m[c]);
    const T square = v[c] * decay + new_share * g[c] * g[c];
    m[c] = mean;
    v[c] = square;
    w[c] = w[c] - step_size * (mean / (std::sqrt(square) + eps));
  }
}

template <typename T>
inline void relu(T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) x[c] = x[c] > 0 ? x[c] : T(0);
}

template <typename T>
inline void masked_scale(T* __restrict out, const T* __restrict gate, T a,
                         const T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = gate[c] > 0 ? a * x[c] : T(0);
}

// out[g] = flat[left[g]] * flat[right[g]] for every group g.
void pair_products(const at::Tensor& flat, const at::Tensor& left,
                   const at::Tensor& right, at::Tensor& out) {
  const int64_t n = left.size(0), k = flat.size(1);
  const int64_t* l = left.data_ptr<int64_t>();
  const int64_t* r = right.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(flat.scalar_type(), "pair_products", [&] {
    const scalar_t* e = flat.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dynamic_for(0, n, kGroupGrain, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) multiply(o + g * k, e + l[g] * k, e + r[g] * k, k);
    });
  });
}

// exp for the softmax, vectorisable (the C library's expf is a call per
// value, which took half of pool_forward's time): Cephes' expf, 2^n exp(r)
// with |r| <= ln(2)/2 and a degree-7 polynomial, within 2 ulp of expf.
// Arguments are clamped to [-87, 88] (exp(-87) = 1.6e-38 stays normal):
// the softmax only takes exp of scores minus their maximum, <= 0.
inline float exp_of(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double exp_of(double x) { return std::exp(x); }

// Masked softmax of one row's pair scores into `weights` (0 for masked
// pairs, all 0 when no pair is active).
template <typename T>
void row_softmax(const T* __restrict scores_of_pair, const bool* __restrict mask,
                 int64_t n_pairs, T* __restrict weights) {
  T highest = -std::numeric_limits<T>::infinity();
  bool any = false;
  for (int64_t p = 0; p < n_pairs; ++p) {
    if (!mask || mask[p]) {
      highest = std::max(highest, scores_of_pair[p]);
      any = true;
    }
  }
  if (!any) {
    std::fill(weights, weights + n_pairs, T(0));
    return;
  }
#pragma omp simd
  for (int64_t p = 0; p < n_pairs; ++p) weights[p] = exp_of(scores_of_pair[p] - highest);
  if (mask) {
    for (int64_t p = 0; p < n_pairs; ++p)
      if (!mask[p]) weights[p] = T(0);
  }
  T total = 0;
  for (int64_t p = 0; p < n_pairs; ++p) total += weights[p];
  const T inverse_total = T(1) / total;
#pragma omp simd
  for (int64_t p = 0; p < n_pairs; ++p) weights[p] *= inverse_total;
}

// Per row: softmax of its pair scores and the pooled vector
// sum_{i<j} a_ij keep_ij (e_i * e_j), computed as sum_i e_i * (sum_j a_ij e_j).
// Pair scores are read through `inverse` (one score per group) when given.
at::Tensor pool_forward(const at::Tensor& scaled, const at::Tensor& scores,
                        const std::optional<at::Tensor>& inverse,
                        const std::optional<at::Tensor>& pair_mask,
                        const std::optional<at::Tensor>& keep,
                        at::Tensor& weights) {
  const int64_t n_rows = scaled.size(0), width = scaled.size(1), k = scaled.size(2);
  const int64_t n_pairs = n_pairs_of(width);
  at::Tensor pooled = at::zeros({n_rows, k}, scaled.options());
  const int64_t* inv = optional_data<int64_t>(inverse);
  const bool* mask = optional_data<bool>(pair_mask);
  AT_DISPATCH_FLOATING_TYPES(scaled.scalar_type(), "pool_forward", [&] {
    const scalar_t* e = scaled.data_ptr<scalar_t>();
    const scalar_t* s = scores.data_ptr<scalar_t>();
    const scalar_t* kp = optional_data<scalar_t>(keep);
    scalar_t* w_all = weights.data_ptr<scalar_t>();
    scalar_t* out = pooled.data_ptr<scalar_t>();
    dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row_scores(n_pairs), used(n_pairs), acc(k);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t first = r * n_pairs;
        for (int64_t p = 0; p < n_pairs; ++p)
          row_scores[p] = inv ? s[inv[first + p]] : s[first + p];
        scalar_t* w = w_all + first;
        row_softmax(row_scores.data(), mask ? mask + first : nullptr, n_pairs, w);
        for (int64_t p = 0; p < n_pairs; ++p) used[p] = kp ? w[p] * kp[first + p] : w[p];
        const scalar_t* row = e + r * width * k;
        int64_t p = 0;
        for (int64_t i = 0; i < width; ++i) {
          std::fill(acc.begin(), acc.end(), scalar_t(0));
          for (int64_t j = i + 1; j < width; ++j, ++p)
            add_scaled(acc.data(), used[p], row + j * k, k);
          add_product(out + r * k, row + i * k, acc.data(), k);
        }
      }
    });
  });
  return pooled;
}

// Backward of pool_forward's softmax and weighted sum, per row:
// grad_scores = d/d(pair scores); grad_scaled = the pooling's part of
// d/d(scaled), g * sum_j u_ij e_j (the attention network's part is added by
// scatter_pair_grads).
void pool_backward(const at::Tensor& scaled, const at::Tensor& weights,
                   const std::optional<at::Tensor>& keep,
                   const at::Tensor& grad_pooled, at::Tensor& grad_scaled,
                   at::Tensor& grad_scores) {
  const int64_t n_rows = scaled.size(0), width = scaled.size(1), k = scaled.size(2);
  const int64_t n_pairs = n_pairs_of(width);
  AT_DISPATCH_FLOATING_TYPES(scaled.scalar_type(), "pool_backward", [&] {
    const scalar_t* e = scaled.data_ptr<scalar_t>();
    const scalar_t* w_all = weights.data_ptr<scalar_t>();
    const scalar_t* kp = optional_data<scalar_t>(keep);
    const scalar_t* gp = grad_pooled.data_ptr<scalar_t>();
    scalar_t* gs_all = grad_scores.data_ptr<scalar_t>();
    scalar_t* ge_all = grad_scaled.data_ptr<scalar_t>();
    dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scaled_grad(k), grad_weights(n_pairs);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t first = r * n_pairs;
        const scalar_t* row = e + r * width * k;
        const scalar_t* g = gp + r * k;
        const scalar_t* w = w_all + first;
        scalar_t* ge = ge_all + r * width * k;
        std::fill(ge, ge + width * k, scalar_t(0));
        int64_t p = 0;
        for (int64_t i = 0; i < width; ++i) {
          const scalar_t* ei = row + i * k;
          multiply(scaled_grad.data(), ei, g, k);
          for (int64_t j = i + 1; j < width; ++j, ++p) {
            const scalar_t* ej = row + j * k;
            const scalar_t pair_dot = dot(scaled_grad.data(), ej, k);
            const scalar_t u = kp ? w[p] * kp[first + p] : w[p];
            grad_weights[p] = kp ? pair_dot * kp[first + p] : pair_dot;
            // d/de_i gets u e_j and d/de_j gets u e_i, both times g below
            add_scaled(ge + i * k, u, ej, k);
            add_scaled(ge + j * k, u, ei, k);
          }
        }
        for (int64_t i = 0; i < width; ++i) {
          std::copy(ge + i * k, ge + (i + 1) * k, scaled_grad.data());
          multiply(ge + i * k, scaled_grad.data(), g, k);
        }
        scalar_t weighted = 0;
        for (int64_t q = 0; q < n_pairs; ++q) weighted += w[q] * grad_weights[q];
        scalar_t* gs = gs_all + first;
        for (int64_t q = 0; q < n_pairs; ++q)
          gs[q] = w[q] * (grad_weights[q] - weighted);
      }
    });
  });
}

// Groups summed over in fixed blocks: a block's partial sum does not
// depend on the number of threads, and the blocks' sums are added in order.
constexpr int64_t kReductionBlock = 512;

// Sums the pair occurrences' score gradients into their groups (in
// occurrence order, as index_add_), then per group the hidden units'
// gradient grad_group * query where the unit is positive (ReLU), else 0.
// Returns the gradients of the hidden layer's bias (the sum of those rows)
// and of the query (sum_g grad_group hidden_g).
std::tuple<at::Tensor, at::Tensor> hidden_grad(const at::Tensor& grad_scores,
                                               const std::optional<at::Tensor>& inverse,
                                               const at::Tensor& hidden,
                                               const at::Tensor& query,
                                               at::Tensor& grad_groups,
                                               at::Tensor& grad_hidden) {
  const int64_t n_groups = hidden.size(0), t = hidden.size(1);
  const int64_t n_occurrences = grad_scores.numel();
  const int64_t n_blocks = (n_groups + kReductionBlock - 1) / kReductionBlock;
  const int64_t* inv = optional_data<int64_t>(inverse);
  at::Tensor partial_bias = at::zeros({n_blocks, t}, hidden.options());
  at::Tensor partial_query = at::zeros({n_blocks, t}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "hidden_grad", [&] {
    const scalar_t* gs = grad_scores.data_ptr<scalar_t>();
    const scalar_t* h = hidden.data_ptr<scalar_t>();
    const scalar_t* q = query.data_ptr<scalar_t>();
    scalar_t* gg = grad_groups.data_ptr<scalar_t>();
    scalar_t* gh = grad_hidden.data_ptr<scalar_t>();
    scalar_t* pb = partial_bias.data_ptr<scalar_t>();
    scalar_t* pq = partial_query.data_ptr<scalar_t>();
    std::fill(gg, gg + n_groups, scalar_t(0));
    if (inv) {
      for (int64_t o = 0; o < n_occurrences; ++o) gg[inv[o]] += gs[o];
    } else {
      std::copy(gs, gs + n_occurrences, gg);
    }
    dynamic_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t stop = std::min(n_groups, (block + 1) * kReductionBlock);
        for (int64_t g = block * kReductionBlock; g < stop; ++g) {
          masked_scale(gh + g * t, h + g * t, gg[g], q, t);
          add_scaled(pb + block * t, scalar_t(1), gh + g * t, t);
          add_scaled(pq + block * t, gg[g], h + g * t, t);
        }
      }
    });
  });
  return {partial_bias.sum(0), partial_query.sum(0)};
}

// ReLU of the hidden units in place, and each group's score h^T hidden.
at::Tensor relu_scores(at::Tensor& hidden, const at::Tensor& query) {
  const int64_t n_groups = hidden.size(0), t = hidden.size(1);
  at::Tensor scores = at::empty({n_groups}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "relu_scores", [&] {
    scalar_t* h = hidden.data_ptr<scalar_t>();
    const scalar_t* q = query.data_ptr<scalar_t>();
    scalar_t* out = scores.data_ptr<scalar_t>();
    dynamic_for(0, n_groups, kGroupGrain, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        relu(h + g * t, t);
        out[g] = dot(h + g * t, q, t);
      }
    });
  });
  return scores;
}

// grad_flat[left[g]] += flat[right[g]] * grad_products[g] and
// grad_flat[right[g]] += flat[left[g]] * grad_products[g] for the first
// n_groups groups. A group's two positions lie in one row of `width`
// entries; groups are bucketed by that row (stably), and threads take
// whole rows, so each sum keeps the group order whatever the threads.
void scatter_pair_grads(const at::Tensor& flat, const at::Tensor& grad_products,
                        const at::Tensor& left, const at::Tensor& right,
                        int64_t n_groups, int64_t width, at::Tensor& grad_flat) {
  TORCH_CHECK(width > 1, "scatter_pair_grads: rows need two entries to hold pairs");
  const int64_t k = flat.size(1), n_rows = flat.size(0) / width;
  const int64_t* l = left.data_ptr<int64_t>();
  const int64_t* r = right.data_ptr<int64_t>();
  std::vector<int64_t> start(n_rows + 1, 0), order(n_groups);
  for (int64_t g = 0; g < n_groups; ++g) ++start[l[g] / width + 1];
  for (int64_t row = 0; row < n_rows; ++row) start[row + 1] += start[row];
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t g = 0; g < n_groups; ++g) order[next[l[g] / width]++] = g;
  AT_DISPATCH_FLOATING_TYPES(flat.scalar_type(), "scatter_pair_grads", [&] {
    const scalar_t* e = flat.data_ptr<scalar_t>();
    const scalar_t* gp = grad_products.data_ptr<scalar_t>();
    scalar_t* ge = grad_flat.data_ptr<scalar_t>();
    dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = start[begin]; i < start[end]; ++i) {
        const int64_t g = order[i];
        add_product(ge + l[g] * k, e + r[g] * k, gp + g * k, k);
        add_product(ge + r[g] * k, e + l[g] * k, gp + g * k, k);
      }
    });
  });
}

// Dense numbers for int64 keys, in the order keys are first seen: open
// addressing with linear probing, at most half full for max_keys keys.
// A slot holds its key and number side by side: one cache line per probe.
class KeyNumbers {
 public:
  explicit KeyNumbers(int64_t max_keys) {
    int64_t capacity = 16;
    while (capacity < 2 * max_keys) capacity *= 2;
    mask_ = capacity - 1;
    slots_.assign(capacity, Slot{0, -1});
  }

  // The key's number; a new key gets the next one (*added is set).
  int64_t number(int64_t key, bool* added) {
    int64_t at = hashed_slot(key, mask_);
    while (slots_[at].number != -1 && slots_[at].key != key) at = (at + 1) & mask_;
    Slot& slot = slots_[at];
    *added = slot.number == -1;
    if (*added) slot = Slot{key, size_++};
    return slot.number;
  }

  int64_t size() const { return size_; }

 private:
  struct Slot {
    int64_t key;
    int64_t number;
  };
  std::vector<Slot> slots_;
  int64_t mask_ = 0, size_ = 0;
};

// One lazy Adam step (LazyAdam in skafm/_optim.py) on the rows of a table
// that an uncoalesced sparse gradient touches: entry e adds values[e] to
// row indices[e]. Rows are found with a hash table; each sums its entries
// in their order (as index_add_ would) and then updates its moments and
// value with torch.optim.SparseAdam's arithmetic, in the order of the
// PyTorch operations it replaces (lerp, mul and addcmul, sqrt, add, div,
// sub). Threads take whole rows.
void lazy_adam(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
               const at::Tensor& indices, const at::Tensor& values, double step_size,
               double beta1, double beta2, double eps) {
  const int64_t n_entries = indices.size(0);
  const int64_t k = param.numel() / std::max<int64_t>(param.size(0), 1);
  const int64_t* index = indices.data_ptr<int64_t>();
  KeyNumbers row_numbers(n_entries);
  std::vector<int64_t> group(n_entries), rows, start;
  bool added;
  for (int64_t e = 0; e < n_entries; ++e) {
    group[e] = row_numbers.number(index[e], &added);
    if (added) {
      rows.push_back(index[e]);
      start.push_back(0);
    }
    ++start[group[e]];
  }
  // each row's entries, in order: a stable counting sort by row
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  start.push_back(0);
  for (int64_t u = 0, total = 0; u <= n_rows; ++u) {
    const int64_t count = start[u];
    start[u] = total;
    total += count;
  }
  std::vector<int64_t> order(n_entries), next(start.begin(), start.end() - 1);
  for (int64_t e = 0; e < n_entries; ++e) order[next[group[e]]++] = e;
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "lazy_adam", [&] {
    scalar_t* w = param.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const scalar_t* grads = values.data_ptr<scalar_t>();
    const scalar_t weight = scalar_t(1 - beta1), decay = scalar_t(beta2);
    const scalar_t new_share = scalar_t(1 - beta2), size = scalar_t(step_size);
    const scalar_t epsilon = scalar_t(eps);
    dynamic_for(0, n_rows, kGroupGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> grad(k);
      for (int64_t u = begin; u < end; ++u) {
        if (u + kPrefetchRows < end) {
          // rows of large tables are cache misses: ask for them ahead
          const int64_t ahead = rows[u + kPrefetchRows] * k;
          prefetch_row(w + ahead, k);
          prefetch_row(m + ahead, k);
          prefetch_row(v + ahead, k);
        }
        const scalar_t* first = grads + order[start[u]] * k;
        std::copy(first, first + k, grad.data());
        for (int64_t e = start[u] + 1; e < start[u + 1]; ++e)
          add_scaled(grad.data(), scalar_t(1), grads + order[e] * k, k);
        const int64_t row = rows[u] * k;
        adam_update(w + row, m + row, v + row, grad.data(), weight, decay, new_share,
                    size, epsilon, k);
      }
    });
  });
}

// Groups the pairs of a training batch by their two (feature, value)
// entries (group_pairs in skafm/_network.py, for_training), or declines
// (returns -1 groups) where grouping would not pay, by the same rules:
// more than max_entry_share of the entries distinct, the bound on distinct
// pairs sum_{l<r} min(d_l d_r, n_rows) (d_p: distinct entries at position
// p) above max_bound_share of the pairs, or more than max_group_share of
// the pairs distinct. One-hot rows without padding are keyed by feature.
// Groups are numbered by first occurrence (row after row, pairs in triu
// order). Returns each occurrence's group, the flat positions of each
// group's first occurrence (padded to whole chunks with occurrence 0's),
// and the number of groups.
std::tuple<at::Tensor, at::Tensor, at::Tensor, int64_t> training_pair_groups(
    const at::Tensor& index, const at::Tensor& value, double max_entry_share,
    double max_bound_share, double max_group_share, int64_t chunk) {
  TORCH_CHECK(value.scalar_type() == at::kFloat, "training_pair_groups: float32 values");
  const int64_t n_rows = index.size(0), width = index.size(1);
  const int64_t n_occupied = n_rows * width;
  const int64_t n_pairs = n_pairs_of(width), n_occurrences = n_rows * n_pairs;
  const int64_t* ids = index.data_ptr<int64_t>();
  const float* values = value.data_ptr<float>();
  const at::Tensor none = at::empty({0}, index.options());
  // the batch's entries, numbered
  std::vector<int64_t> entry(n_occupied);
  int64_t n_entries = 0;
  bool one_hot = true;
  for (int64_t e = 0; e < n_occupied && one_hot; ++e) one_hot = values[e] == 1.0f;
  if (one_hot) {
    for (int64_t e = 0; e < n_occupied; ++e) {
      entry[e] = ids[e];
      n_entries = std::max(n_entries, ids[e] + 1);
    }
  } else {
    KeyNumbers entries(n_occupied);
    bool added;
    for (int64_t e = 0; e < n_occupied; ++e) {
      uint32_t bits;
      std::memcpy(&bits, values + e, sizeof(bits));
      entry[e] = entries.number((ids[e] << 32) | bits, &added);
    }
    n_entries = entries.size();
    if (n_entries > max_entry_share * n_occupied) return {none, none, none, -1};
  }
  // the bound on distinct pairs, from the distinct entries per position
  std::vector<int64_t> per_position(width, 0);
  {
    KeyNumbers seen(n_occupied);
    bool added;
    for (int64_t e = 0; e < n_occupied; ++e) {
      seen.number((e % width) * n_entries + entry[e], &added);
      per_position[e % width] += added;
    }
  }
  double bound = 0;
  for (int64_t l = 0; l < width; ++l)
    for (int64_t r = l + 1; r < width; ++r)
      bound += std::min<double>(double(per_position[l]) * per_position[r], n_rows);
  if (bound > max_bound_share * n_occurrences) return {none, none, none, -1};
  // the pairs, grouped; given up as soon as too many are distinct
  const int64_t max_groups = static_cast<int64_t>(max_group_share * n_occurrences);
  at::Tensor inverse = at::empty({n_occurrences}, index.options());
  int64_t* inv = inverse.data_ptr<int64_t>();
  KeyNumbers groups(max_groups + 1);
  std::vector<int64_t> left, right;
  bool added;
  for (int64_t r = 0, o = 0; r < n_rows; ++r) {
    const int64_t* row = entry.data() + r * width;
    for (int64_t i = 0; i < width; ++i) {
      const int64_t base = row[i] * n_entries;
      for (int64_t j = i + 1; j < width; ++j, ++o) {
        inv[o] = groups.number(base + row[j], &added);
        if (added) {
          if (groups.size() > max_groups) return {none, none, none, -1};
          left.push_back(r * width + i);
          right.push_back(r * width + j);
        }
      }
    }
  }
  const int64_t n_groups = groups.size();
  const int64_t n_padded = n_groups + (chunk - n_groups % chunk) % chunk;
  left.resize(n_padded, 0);
  right.resize(n_padded, 1);
  at::Tensor left_t = at::empty({n_padded}, index.options());
  at::Tensor right_t = at::empty({n_padded}, index.options());
  std::copy(left.begin(), left.end(), left_t.data_ptr<int64_t>());
  std::copy(right.begin(), right.end(), right_t.data_ptr<int64_t>());
  return {inverse, left_t, right_t, n_groups};
}

// The rows' value-scaled embeddings v[index] * x, linear terms
// sum_i w[index_i] x_i and, with_penalty, each row's weighted squared norm
// of its entries' parameters, sum_i r_i (|v_i|^2 + |w_i|^2), r_i the entry's
// penalty weight (0 for padding; all 1 when none is given) (FeatureLookup
// in skafm/_network.py). Threads take whole rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> feature_lookup(
    const at::Tensor& index, const at::Tensor& value,
    const std::optional<at::Tensor>& penalty_weight, const at::Tensor& embedding,
    const at::Tensor& linear, bool with_penalty) {
  const int64_t n_rows = index.size(0), width = index.size(1);
  const int64_t k = embedding.size(1), n_out = linear.size(1);
  at::Tensor scaled = at::empty({n_rows, width, k}, embedding.options());
  at::Tensor linear_term = at::empty({n_rows, n_out}, embedding.options());
  at::Tensor norm = at::empty({with_penalty ? n_rows : 0}, embedding.options());
  const int64_t* ids = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(embedding.scalar_type(), "feature_lookup", [&] {
    const scalar_t* entry_weight = optional_data<scalar_t>(penalty_weight);
    const scalar_t* x = value.data_ptr<scalar_t>();
    const scalar_t* v = embedding.data_ptr<scalar_t>();
    const scalar_t* w = linear.data_ptr<scalar_t>();
    scalar_t* out = scaled.data_ptr<scalar_t>();
    scalar_t* terms = linear_term.data_ptr<scalar_t>();
    scalar_t* norms = with_penalty ? norm.data_ptr<scalar_t>() : nullptr;
    dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* term = terms + r * n_out;
        std::fill(term, term + n_out, scalar_t(0));
        scalar_t squared = 0;
        for (int64_t i = r * width; i < (r + 1) * width; ++i) {
          if (i + kPrefetchRows < n_rows * width) {
            // rows of large tables are cache misses: ask for them ahead
            prefetch_row(v + ids[i + kPrefetchRows] * k, k);
            prefetch_row(w + ids[i + kPrefetchRows] * n_out, n_out);
          }
          const scalar_t* row = v + ids[i] * k;
          const scalar_t* weights = w + ids[i] * n_out;
          scale(out + i * k, x[i], row, k);
          add_scaled(term, x[i], weights, n_out);
          if (norms) {
            const scalar_t norm = dot(row, row, k) + dot(weights, weights, n_out);
            squared += entry_weight ? entry_weight[i] * norm : norm;
          }
        }
        if (norms) norms[r] = squared;
      }
    });
  });
  return {scaled, linear_term, norm};
}

// The per-entry gradients of feature_lookup's two tables, as (n_rows *
// width, k) and (n_rows * width, n_out) values of sparse gradients:
// grad_scaled * x and x * grad_linear, plus 2 r_i grad_norm (v_i, w_i) when
// grad_norm is given (r_i the entry's penalty weight, 1 when none is given).
std::tuple<at::Tensor, at::Tensor> feature_lookup_backward(
    const at::Tensor& index, const at::Tensor& value,
    const std::optional<at::Tensor>& penalty_weight, const at::Tensor& embedding,
    const at::Tensor& linear, const at::Tensor& grad_scaled,
    const at::Tensor& grad_linear, const std::optional<at::Tensor>& grad_norm) {
  const int64_t n_rows = index.size(0), width = index.size(1);
  const int64_t k = embedding.size(1), n_out = linear.size(1);
  at::Tensor grad_rows = at::empty({n_rows * width, k}, embedding.options());
  at::Tensor grad_linear_rows = at::empty({n_rows * width, n_out}, embedding.options());
  const int64_t* ids = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(embedding.scalar_type(), "feature_lookup_backward", [&] {
    const scalar_t* entry_weight = optional_data<scalar_t>(penalty_weight);
    const scalar_t* x = value.data_ptr<scalar_t>();
    const scalar_t* v = embedding.data_ptr<scalar_t>();
    const scalar_t* w = linear.data_ptr<scalar_t>();
    const scalar_t* gs = grad_scaled.data_ptr<scalar_t>();
    const scalar_t* gl = grad_linear.data_ptr<scalar_t>();
    const scalar_t* gn = optional_data<scalar_t>(grad_norm);
    scalar_t* gr = grad_rows.data_ptr<scalar_t>();
    scalar_t* glr = grad_linear_rows.data_ptr<scalar_t>();
    dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t i = r * width; i < (r + 1) * width; ++i) {
          scale(gr + i * k, x[i], gs + i * k, k);
          scale(glr + i * n_out, x[i], gl + r * n_out, n_out);
          if (gn && i + kPrefetchRows < n_rows * width) {
            prefetch_row(v + ids[i + kPrefetchRows] * k, k);
            prefetch_row(w + ids[i + kPrefetchRows] * n_out, n_out);
          }
          if (gn && (!entry_weight || entry_weight[i] != scalar_t(0))) {
            const scalar_t weight =
                scalar_t(2) * gn[r] * (entry_weight ? entry_weight[i] : scalar_t(1));
            add_scaled(gr + i * k, weight, v + ids[i] * k, k);
            add_scaled(glr + i * n_out, weight, w + ids[i] * n_out, n_out);
          }
        }
      }
    });
  });
  return {grad_rows, grad_linear_rows};
}

// Dropout with a counter-based generator: element c of row r is kept when
// the top 24 bits of splitmix64(seeds[r] + (c + 1) * golden), read as a
// fraction, are at least `rate`; kept elements are scaled by 1 / (1 - rate).
// The mask is a function of (seed, position) alone, so the backward pass
// is the same call on the gradient, and no thread count or order changes
// it. One seed per row keeps a batch run in parts (bounded_parts in
// skafm/_training.py) the same as the whole batch. PyTorch's generator
// draws values one after another: 0.1 ms for a 512 x 64 batch.
template <typename T>
void dropout_row(const T* __restrict in, T* __restrict out, int64_t n, uint64_t seed,
                 uint64_t threshold, T kept_scale) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    uint64_t z = seed + static_cast<uint64_t>(c + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    out[c] = (z >> 40) >= threshold ? in[c] * kept_scale : T(0);
  }
}

at::Tensor dropout(const at::Tensor& x, double rate, const at::Tensor& seeds) {
  at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(input.sizes(), input.options());
  const int64_t n_rows = seeds.size(0);
  TORCH_CHECK(n_rows > 0 && input.numel() % n_rows == 0,
              "dropout: one seed per row of x");
  const int64_t row_length = input.numel() / n_rows;
  const int64_t* seed = seeds.data_ptr<int64_t>();
  // kept when u >= rate, with u = bits / 2^24: compare the integers
  const uint64_t threshold = static_cast<uint64_t>(std::ceil(rate * 16777216.0));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dropout", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t kept_scale = scalar_t(1.0 / (1.0 - rate));
    dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        dropout_row(in + r * row_length, o + r * row_length, row_length,
                    static_cast<uint64_t>(seed[r]), threshold, kept_scale);
    });
  });
  return out;
}

// The given rows of a CSR matrix as a padded batch (pad_rows in
// skafm/_batching.py): feature indices (int64, padding 0), values
// (float32, padding 0) and the mask of real entries, each (n, width) for
// the widest row.
template <typename I, typename V>
void fill_padded_rows(const I* indptr, const I* indices, const V* data,
                      const int64_t* rows, int64_t n, int64_t width, int64_t* index,
                      float* value, bool* mask) {
  dynamic_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t start = indptr[rows[r]], length = indptr[rows[r] + 1] - start;
      for (int64_t c = 0; c < length; ++c) {
        index[r * width + c] = indices[start + c];
        value[r * width + c] = static_cast<float>(data[start + c]);
        mask[r * width + c] = true;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pad_rows(const at::Tensor& indptr,
                                                        const at::Tensor& indices,
                                                        const at::Tensor& data,
                                                        const at::Tensor& rows) {
  TORCH_CHECK(indptr.scalar_type() == indices.scalar_type(),
              "pad_rows: indptr and indices of one type");
  const int64_t n = rows.size(0);
  const int64_t* row = rows.data_ptr<int64_t>();
  int64_t width = 0;
  AT_DISPATCH_INDEX_TYPES(indptr.scalar_type(), "pad_rows", [&] {
    const index_t* ptr = indptr.data_ptr<index_t>();
    for (int64_t r = 0; r < n; ++r)
      width = std::max<int64_t>(width, ptr[row[r] + 1] - ptr[row[r]]);
  });
  const auto options = rows.options();
  at::Tensor index = at::zeros({n, width}, options.dtype(at::kLong));
  at::Tensor value = at::zeros({n, width}, options.dtype(at::kFloat));
  at::Tensor mask = at::zeros({n, width}, options.dtype(at::kBool));
  AT_DISPATCH_INDEX_TYPES(indptr.scalar_type(), "pad_rows", [&] {
    AT_DISPATCH_FLOATING_TYPES(data.scalar_type(), "pad_rows", [&] {
      fill_padded_rows(indptr.data_ptr<index_t>(), indices.data_ptr<index_t>(),
                       data.data_ptr<scalar_t>(), row, n, width,
                       index.data_ptr<int64_t>(), value.data_ptr<float>(),
                       mask.data_ptr<bool>());
    });
  });
  return {index, value, mask};
}

// Adam's step on every element of a parameter with a dense gradient, with
// lazy_adam's arithmetic (all rows touched, it is plain Adam).
void adam_dense(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                const at::Tensor& grad, double step_size, double beta1, double beta2,
                double eps) {
  const int64_t n = param.numel();
  at::Tensor g = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adam_dense", [&] {
    scalar_t* w = param.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const scalar_t* gr = g.data_ptr<scalar_t>();
    dynamic_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      adam_update(w + begin, m + begin, v + begin, gr + begin, scalar_t(1 - beta1),
                  scalar_t(beta2), scalar_t(1 - beta2), scalar_t(step_size),
                  scalar_t(eps), end - begin);
    });
  });
}

// 32-byte vectors of T (GCC and Clang vector extensions): what one AVX
// register holds, and split into narrower registers where there is none.
template <typename T>
struct Vector {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t lanes = 32 / sizeof(T);
};

template <typename V, typename T>
inline V load_vector(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// Pairs scored at once by score_pair_block; with two vectors of hidden
// units per pair, their accumulators stay in registers while W's rows
// stream by.
constexpr int64_t kPairBlock = 4;

template <typename T>
constexpr int64_t hidden_block() { return 2 * Vector<T>::lanes; }

// Score h^T ReLU(W p + b) and terms p_o^T p of up to kPairBlock pair
// products. Each pair's arithmetic is the same, in the same order, whatever
// pairs share its block: a pair's results are a function of its product
// alone. `weight_t` is W transposed and padded with zero columns to
// `t_padded` (a multiple of hidden_block<T>()), `hidden_bias` and `query`
// likewise; `hidden` holds kPairBlock * t_padded values.
template <typename T>
void score_pair_block(const T* const* products, int64_t n, const T* weight_t,
                      const T* hidden_bias, const T* query,
                      const T* projection_t, int64_t k, int64_t t_padded,
                      int64_t n_outputs, T* hidden, T* scores, T* terms) {
  using V = typename Vector<T>::type;
  constexpr int64_t L = Vector<T>::lanes;
  for (int64_t block = 0; block < t_padded; block += 2 * L) {
    V acc[kPairBlock][2];
    const V b0 = load_vector<V>(hidden_bias + block);
    const V b1 = load_vector<V>(hidden_bias + block + L);
    for (int64_t q = 0; q < kPairBlock; ++q) {
      acc[q][0] = b0;
      acc[q][1] = b1;
    }
    for (int64_t f = 0; f < k; ++f) {
      const T* w = weight_t + f * t_padded + block;
      const V w0 = load_vector<V>(w), w1 = load_vector<V>(w + L);
      for (int64_t q = 0; q < kPairBlock; ++q) {
        const V a = V{} + products[q][f];
        acc[q][0] += a * w0;
        acc[q][1] += a * w1;
      }
    }
    for (int64_t q = 0; q < kPairBlock; ++q) {
      std::memcpy(hidden + q * t_padded + block, &acc[q][0], sizeof(V));
      std::memcpy(hidden + q * t_padded + block + L, &acc[q][1], sizeof(V));
    }
  }
  for (int64_t q = 0; q < n; ++q) {
    T* h = hidden + q * t_padded;
    relu(h, t_padded);
    scores[q] = dot(h, query, t_padded);
    for (int64_t o = 0; o < n_outputs; ++o)
      terms[q * n_outputs + o] = dot(products[q], projection_t + o * k, k);
  }
}

// Scores and terms of the pairs a thread has met, keyed by the two features
// and their values: rows of one-hot data share most of their pairs. A
// direct-mapped table whose slot keeps the key, the score and the first
// output's term in one cache line; a pair read from it has the bits it was
// computed with.
template <typename T>
struct PairCache {
  struct Slot {
    int64_t left, right;
    T left_value, right_value, score, term;
  };
  std::vector<Slot> slots;
  // the terms of outputs after the first, n_outputs - 1 per slot
  std::vector<T> more_terms;
  int64_t mask = 0, n_outputs = 1;

  PairCache(int64_t expected_pairs, int64_t outputs) : n_outputs(outputs) {
    int64_t size = 16;
    while (size < 2 * expected_pairs && size < (1 << 16)) size <<= 1;
    mask = size - 1;
    slots.assign(size, Slot{-1, -1, T(0), T(0), T(0), T(0)});
    more_terms.resize(size * (n_outputs - 1));
  }

  static int64_t key(int64_t a, int64_t b, T x, T y) {
    const float fx = static_cast<float>(x), fy = static_cast<float>(y);
    uint32_t bx, by;
    std::memcpy(&bx, &fx, sizeof(bx));
    std::memcpy(&by, &fy, sizeof(by));
    return (a * 1000003 + b) ^ (static_cast<int64_t>(bx) << 32 | by);
  }

  int64_t slot_of(int64_t a, int64_t b, T x, T y) const {
    return hashed_slot(key(a, b, x, y), mask);
  }

  bool holds(int64_t slot, int64_t a, int64_t b, T x, T y) const {
    const Slot& s = slots[slot];
    return s.left == a && s.right == b && s.left_value == x && s.right_value == y;
  }

  // score into *score and the terms into terms[0:n_outputs]
  void read(int64_t slot, T* score, T* terms) const {
    const Slot& s = slots[slot];
    *score = s.score;
    terms[0] = s.term;
    const T* more = more_terms.data() + slot * (n_outputs - 1);
    std::copy(more, more + n_outputs - 1, terms + 1);
  }

  void store(int64_t slot, int64_t a, int64_t b, T x, T y, T score, const T* terms) {
    slots[slot] = Slot{a, b, x, y, score, terms[0]};
    std::copy(terms + 1, terms + n_outputs, more_terms.data() + slot * (n_outputs - 1));
  }
};

// An attention model's outputs for rows of a CSR matrix, each row on its
// own: its scaled entries e_i = x_i v_i, each pair's score and terms
// (score_pair_block, or the thread's PairCache), the softmax of the row's
// scores, and bias + sum_i x_i w_i + sum_ij a_ij terms_ij. A row's output is
// the same bits whatever rows are predicted with it and however many
// threads run.
template <typename T, typename I, typename V>
void predict_attention_rows(const I* indptr, const I* indices, const V* data,
                            int64_t n_rows, const T* embedding, const T* linear,
                            const T* bias, const T* weight_t, const T* hidden_bias,
                            const T* query, const T* projection_t, int64_t k,
                            int64_t t_padded, int64_t n_outputs, T* out) {
  dynamic_for(0, n_rows, kRowGrain, [&](int64_t begin, int64_t end) {
    int64_t expected_pairs = 0;
    for (int64_t r = begin; r < end; ++r)
      expected_pairs += n_pairs_of(indptr[r + 1] - indptr[r]);
    PairCache<T> cache(expected_pairs, n_outputs);
    std::vector<T> entries, values, scores, terms, weights;
    std::vector<T> products(kPairBlock * k), block_scores(kPairBlock);
    std::vector<T> block_hidden(kPairBlock * t_padded);
    std::vector<T> block_terms(kPairBlock * n_outputs);
    std::vector<int64_t> features, pair_slots;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t start = indptr[r], width = indptr[r + 1] - start;
      const int64_t n_pairs = n_pairs_of(width);
      T* row_out = out + r * n_outputs;
      for (int64_t o = 0; o < n_outputs; ++o) row_out[o] = bias[o];
      entries.resize(width * k);
      values.resize(width);
      features.resize(width);
      for (int64_t c = 0; c < width; ++c) {
        const int64_t feature = indices[start + c];
        const T x = static_cast<T>(static_cast<float>(data[start + c]));
        features[c] = feature;
        values[c] = x;
        for (int64_t o = 0; o < n_outputs; ++o)
          row_out[o] += x * linear[feature * n_outputs + o];
        scale(entries.data() + c * k, x, embedding + feature * k, k);
      }
      if (n_pairs == 0) continue;
      scores.resize(n_pairs);
      terms.resize(n_pairs * n_outputs);
      weights.resize(n_pairs);
      // pairs not in the cache wait in a block: (pair number, slot, i, j)
      int64_t pending[kPairBlock][4];
      const T* block_products[kPairBlock];
      int64_t n_pending = 0;
      auto score_pending = [&]() {
        for (int64_t q = 0; q < kPairBlock; ++q)
          block_products[q] = products.data() + std::min(q, n_pending - 1) * k;
        score_pair_block(block_products, n_pending, weight_t, hidden_bias, query,
                         projection_t, k, t_padded, n_outputs, block_hidden.data(),
                         block_scores.data(), block_terms.data());
        for (int64_t q = 0; q < n_pending; ++q) {
          const int64_t p = pending[q][0], i = pending[q][2], j = pending[q][3];
          const T* pair_terms = block_terms.data() + q * n_outputs;
          scores[p] = block_scores[q];
          std::copy(pair_terms, pair_terms + n_outputs, terms.data() + p * n_outputs);
          cache.store(pending[q][1], features[i], features[j], values[i], values[j],
                      block_scores[q], pair_terms);
        }
        n_pending = 0;
      };
      // every pair's slot first, its cache line asked for: the table is
      // larger than the caches, and the row's lookups then overlap
      pair_slots.resize(n_pairs);
      int64_t p = 0;
      for (int64_t i = 0; i < width; ++i) {
        for (int64_t j = i + 1; j < width; ++j, ++p) {
          pair_slots[p] = cache.slot_of(features[i], features[j], values[i], values[j]);
          __builtin_prefetch(cache.slots.data() + pair_slots[p]);
        }
      }
      p = 0;
      for (int64_t i = 0; i < width; ++i) {
        for (int64_t j = i + 1; j < width; ++j, ++p) {
          const int64_t slot = pair_slots[p];
          if (cache.holds(slot, features[i], features[j], values[i], values[j])) {
            cache.read(slot, scores.data() + p, terms.data() + p * n_outputs);
            continue;
          }
          multiply(products.data() + n_pending * k, entries.data() + i * k,
                   entries.data() + j * k, k);
          pending[n_pending][0] = p;
          pending[n_pending][1] = slot;
          pending[n_pending][2] = i;
          pending[n_pending][3] = j;
          if (++n_pending == kPairBlock) score_pending();
        }
      }
      if (n_pending > 0) score_pending();
      row_softmax(scores.data(), static_cast<const bool*>(nullptr), n_pairs,
                  weights.data());
      for (int64_t q = 0; q < n_pairs; ++q)
        for (int64_t o = 0; o < n_outputs; ++o)
          row_out[o] += weights[q] * terms[q * n_outputs + o];
    }
  });
}

at::Tensor predict_attention(const at::Tensor& indptr, const at::Tensor& indices,
                             const at::Tensor& data, const at::Tensor& embedding_in,
                             const at::Tensor& linear_in, const at::Tensor& bias_in,
                             const at::Tensor& weight, const at::Tensor& hidden_bias,
                             const at::Tensor& query, const at::Tensor& projection) {
  const at::Tensor embedding = embedding_in.contiguous(), linear = linear_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  TORCH_CHECK(indptr.scalar_type() == indices.scalar_type(),
              "predict_attention: indptr and indices of one type");
  const int64_t n_rows = indptr.size(0) - 1, k = embedding.size(1);
  const int64_t t = weight.size(0), n_outputs = bias.size(0);
  const at::Tensor W = weight.contiguous(), b = hidden_bias.contiguous();
  const at::Tensor h = query.contiguous(), P = projection.contiguous();
  at::Tensor out = at::empty({n_rows, n_outputs}, embedding.options());
  AT_DISPATCH_FLOATING_TYPES(embedding.scalar_type(), "predict_attention", [&] {
    using T = scalar_t;
    // W and p transposed, in plain loops: ATen operations would cost more
    // than a row's arithmetic. Zero hidden units pad W to a whole register
    // block: their ReLU is 0 and their query weight 0, so they add nothing
    // to a score.
    constexpr int64_t block = hidden_block<T>();
    const int64_t t_padded = (t + block - 1) / block * block;
    std::vector<T> weight_t(k * t_padded, T(0)), padded_bias(t_padded, T(0));
    std::vector<T> padded_query(t_padded, T(0)), projection_t(n_outputs * k);
    const T* w = W.data_ptr<T>();
    for (int64_t u = 0; u < t; ++u) {
      for (int64_t f = 0; f < k; ++f) weight_t[f * t_padded + u] = w[u * k + f];
      padded_bias[u] = b.data_ptr<T>()[u];
      padded_query[u] = h.data_ptr<T>()[u];
    }
    for (int64_t f = 0; f < k; ++f)
      for (int64_t o = 0; o < n_outputs; ++o)
        projection_t[o * k + f] = P.data_ptr<T>()[f * n_outputs + o];
    AT_DISPATCH_INDEX_TYPES(indptr.scalar_type(), "predict_attention", [&] {
      using I = index_t;
      AT_DISPATCH_FLOATING_TYPES(data.scalar_type(), "predict_attention", [&] {
        predict_attention_rows(
            indptr.data_ptr<I>(), indices.data_ptr<I>(), data.data_ptr<scalar_t>(),
            n_rows, embedding.data_ptr<T>(), linear.data_ptr<T>(), bias.data_ptr<T>(),
            weight_t.data(), padded_bias.data(), padded_query.data(),
            projection_t.data(), k, t_padded, n_outputs, out.data_ptr<T>());
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(skafm, m) {
  m.def("pair_products(Tensor flat, Tensor left, Tensor right, Tensor(a!) out) -> ()",
        &pair_products);
  m.def(
      "pool_forward(Tensor scaled, Tensor scores, Tensor? inverse, Tensor? pair_mask, "
      "Tensor? keep, Tensor(a!) weights) -> Tensor",
      &pool_forward);
  m.def(
      "pool_backward(Tensor scaled, Tensor weights, Tensor? keep, Tensor grad_pooled, "
      "Tensor(a!) grad_scaled, Tensor(b!) grad_scores) -> ()",
      &pool_backward);
  m.def(
      "hidden_grad(Tensor grad_scores, Tensor? inverse, Tensor hidden, Tensor query, "
      "Tensor(a!) grad_groups, Tensor(b!) grad_hidden) -> (Tensor, Tensor)",
      &hidden_grad);
  m.def(
      "scatter_pair_grads(Tensor flat, Tensor grad_products, Tensor left, Tensor right, "
      "int n_groups, int width, Tensor(a!) grad_flat) -> ()",
      &scatter_pair_grads);
  m.def(
      "lazy_adam(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor indices, Tensor values, float step_size, float beta1, float beta2, "
      "float eps) -> ()",
      &lazy_adam);
  m.def(
      "adam_dense(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor grad, float step_size, float beta1, float beta2, float eps) -> ()",
      &adam_dense);
  m.def(
      "training_pair_groups(Tensor index, Tensor value, float max_entry_share, "
      "float max_bound_share, float max_group_share, int chunk) "
      "-> (Tensor, Tensor, Tensor, int)",
      &training_pair_groups);
  m.def(
      "feature_lookup(Tensor index, Tensor value, Tensor? penalty_weight, "
      "Tensor embedding, "
      "Tensor linear, bool with_penalty) -> (Tensor, Tensor, Tensor)",
      &feature_lookup);
  m.def(
      "feature_lookup_backward(Tensor index, Tensor value, Tensor? penalty_weight, "
      "Tensor embedding, Tensor linear, Tensor grad_scaled, Tensor grad_linear, "
      "Tensor? grad_norm) -> (Tensor, Tensor)",
      &feature_lookup_backward);
  m.def("relu_scores(Tensor(a!) hidden, Tensor query) -> Tensor", &relu_scores);
  m.def("dropout(Tensor x, float rate, Tensor seeds) -> Tensor", &dropout);
  m.def(
      "pad_rows(Tensor indptr, Tensor indices, Tensor data, Tensor rows) "
      "-> (Tensor, Tensor, Tensor)",
      &pad_rows);
  m.def(
      "predict_attention(Tensor indptr, Tensor indices, Tensor data, Tensor embedding, "
      "Tensor linear, Tensor bias, Tensor weight, Tensor hidden_bias, Tensor query, "
      "Tensor projection) -> Tensor",
      &predict_attention);
}
