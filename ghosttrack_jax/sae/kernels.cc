// CPU kernels for the sparse SAE ops (see sparse.py), registered as XLA FFI custom calls.
//
// COO convention: rows/cols int32 [N], count int32 [] (valid prefix), entries row-major (rows
// non-decreasing). Every kernel touches only the `count` valid entries, so its cost scales with L0.
// Work is split over XLA's intra-op thread pool. Each output element is written by exactly one thread
// and accumulated in entry order, so results do not depend on the number of threads (bit-identical
// runs, as the resume test requires).
//
// Built on first use by kernels.py (g++ -O3 -march=native); when no compiler is available the XLA
// implementations in sparse.py are used instead.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <climits>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs fn(task) for task in [0, n_tasks) on the caller and the pool. The caller claims tasks too and
// only waits for tasks that a helper has already started, so it never blocks on a queued helper (no
// deadlock when every pool thread is busy). Late helpers find nothing to claim and only touch the
// shared state, which they keep alive.
void ParallelFor(ffi::ThreadPool& pool, int64_t n_tasks, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    const std::function<void(int64_t)>* fn;
    int64_t n;
  };
  auto state = std::make_shared<State>();
  state->fn = &fn;
  state->n = n_tasks;
  auto work = [](State* s) {
    for (;;) {
      int64_t t = s->next.fetch_add(1);
      if (t >= s->n) return;
      (*s->fn)(t);
      s->done.fetch_add(1);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n_tasks) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([state, work]() { work(state.get()); });
  }
  work(state.get());
  while (state->done.load() < n_tasks) std::this_thread::yield();
}

int64_t NumTasks(ffi::ThreadPool& pool, int64_t work_items, int64_t min_per_task) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t by_size = std::max<int64_t>(1, work_items / std::max<int64_t>(1, min_per_task));
  return std::min(threads, by_size);
}

inline void Axpy(float* __restrict__ out, const float* __restrict__ x, float a, int64_t d) {
  for (int64_t j = 0; j < d; ++j) out[j] += a * x[j];
}

inline float Dot(const float* __restrict__ x, const float* __restrict__ y, int64_t d) {
  // A SIMD reduction (fixed lane order for a given build, independent of the thread split).
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) s += x[j] * y[j];
  return s;
}

// ---- compact: entries with pre[b, i] > thr[i], row-major -------------------------------------------
// One pass over `pre`: each task collects its rows' entries in a local buffer, then the buffers are
// copied out at prefix offsets (row-major overall). `total` is the uncapped number of entries.

ffi::Error CompactImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pre, ffi::Buffer<ffi::F32> thr,
                       ffi::ResultBuffer<ffi::S32> rows, ffi::ResultBuffer<ffi::S32> cols,
                       ffi::ResultBuffer<ffi::S32> count, ffi::ResultBuffer<ffi::S32> total) {
  auto dims = pre.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("compact: pre must be [B, M]");
  const int64_t B = dims[0], M = dims[1];
  const int64_t cap = rows->element_count();
  const float* p = pre.typed_data();
  const float* t = thr.typed_data();
  int32_t* r_out = rows->typed_data();
  int32_t* c_out = cols->typed_data();
  const int64_t n_tasks = NumTasks(pool, B, 64);
  std::vector<std::vector<int32_t>> found(n_tasks);  // (row, col) pairs, interleaved
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = B * task / n_tasks, hi = B * (task + 1) / n_tasks;
    std::vector<int32_t>& out = found[task];
    out.reserve(static_cast<size_t>(std::min<int64_t>(2 * cap / n_tasks + 64, 2 * (hi - lo) * M)));
    for (int64_t b = lo; b < hi; ++b) {
      const float* row = p + b * M;
      for (int64_t i = 0; i < M; ++i) {
        if (row[i] > t[i]) {
          out.push_back(static_cast<int32_t>(b));
          out.push_back(static_cast<int32_t>(i));
        }
      }
    }
  });
  int64_t n = 0;
  for (int64_t k = 0; k < n_tasks; ++k) {
    const std::vector<int32_t>& f = found[k];
    const int64_t m = static_cast<int64_t>(f.size() / 2);
    for (int64_t j = 0; j < m && n + j < cap; ++j) {
      r_out[n + j] = f[2 * j];
      c_out[n + j] = f[2 * j + 1];
    }
    n += m;
  }
  const int64_t kept = std::min<int64_t>(n, cap);
  if (kept < cap) {
    std::memset(r_out + kept, 0, sizeof(int32_t) * (cap - kept));
    std::memset(c_out + kept, 0, sizeof(int32_t) * (cap - kept));
  }
  count->typed_data()[0] = static_cast<int32_t>(kept);
  total->typed_data()[0] = static_cast<int32_t>(std::min<int64_t>(n, INT32_MAX));
  return ffi::Error::Success();
}

// ---- topk: the k largest entries of each row (descending, ties to the lower index) ---------------
// lax.top_k's selection and order (its total order of floats: -0 below +0, NaN above +inf), per row on
// int32 keys that order like the floats (the row stays in L1):
//  1. a lower bound t of the k-th largest key: cut the row into G = 2k groups (S keys each, the last
//     padded) and take the k-th largest group maximum: k groups hold a key >= t, so at least k keys
//     are >= t (at least G/2 >= k groups hold real keys);
//  2. the candidates, every entry with key >= t (all of the top k, ties at the k-th value included;
//     ~1.3 k on SAE pre-activations), packed as (key, ~index) in an int64 so that one integer order is
//     lax.top_k's;
//  3. a partial sort of the candidates.
// 2x faster than a bounded heap (benchmarks/train_loop.py --profile), whose replacements (k ln(M/k) per
// row on unordered data) cost more than these passes.

inline int32_t TotalOrderKey(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits ^ ((bits >> 31) & 0x7fffffff);  // negative floats: reverse their magnitude order
}

ffi::Error TopKImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pre, ffi::ResultBuffer<ffi::S32> rows,
                    ffi::ResultBuffer<ffi::S32> cols) {
  auto dims = pre.dimensions();
  const int64_t B = dims[0], M = dims[1];
  const int64_t k = rows->element_count() / std::max<int64_t>(B, 1);
  if (k < 1 || k > M) return ffi::Error::InvalidArgument("topk: need 1 <= k <= M");
  const float* p = pre.typed_data();
  int32_t* r_out = rows->typed_data();
  int32_t* c_out = cols->typed_data();
  const int64_t G = std::min<int64_t>(M, 2 * k);
  const int64_t S = (M + G - 1) / G;
  const int64_t n_tasks = NumTasks(pool, B, 32);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = B * task / n_tasks, hi = B * (task + 1) / n_tasks;
    std::vector<int32_t> key(G * S, INT32_MIN), gmax(G);
    std::vector<int64_t> cand(M);
    for (int64_t b = lo; b < hi; ++b) {
      const float* row = p + b * M;
      for (int64_t i = 0; i < M; ++i) key[i] = TotalOrderKey(row[i]);
      for (int64_t g = 0; g < G; ++g) {  // 1.
        const int32_t* kg = key.data() + g * S;
        int32_t mx = INT32_MIN;
        for (int64_t i = 0; i < S; ++i) mx = std::max(mx, kg[i]);
        gmax[g] = mx;
      }
      std::nth_element(gmax.begin(), gmax.begin() + (k - 1), gmax.end(), std::greater<int32_t>());
      const int32_t t = gmax[k - 1];
      int64_t n = 0;  // 2. (branch-free)
      for (int64_t i = 0; i < M; ++i) {
        cand[n] = (static_cast<int64_t>(key[i]) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
        n += key[i] >= t;
      }
      std::partial_sort(cand.begin(), cand.begin() + k, cand.begin() + n, std::greater<int64_t>());  // 3.
      for (int64_t j = 0; j < k; ++j) {
        r_out[b * k + j] = static_cast<int32_t>(b);
        c_out[b * k + j] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(cand[j]));
      }
    }
  });
  return ffi::Error::Success();
}

// ---- kth_largest: bit pattern of the k-th largest of max(pre, 0) over the whole array -------------
// Exact radix select on the float bit patterns (non-negative floats order like their int32 bits):
// a histogram of the high 16 bits finds the bucket, then nth_element inside it. 0 if fewer than k
// entries are positive.

ffi::Error KthLargestImpl(ffi::Buffer<ffi::F32> pre, ffi::Buffer<ffi::S32> k_buf,
                          ffi::ResultBuffer<ffi::S32> out) {
  const int64_t n = pre.element_count();
  const int64_t k = k_buf.typed_data()[0];
  const float* p = pre.typed_data();
  std::vector<int64_t> hist(1 << 16, 0);
  int64_t positive = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] > 0.0f) {
      uint32_t bits;
      std::memcpy(&bits, p + i, 4);
      ++hist[bits >> 16];
      ++positive;
    }
  }
  if (k < 1 || positive < k) {
    out->typed_data()[0] = 0;
    return ffi::Error::Success();
  }
  int64_t above = 0, bucket = (1 << 16) - 1;
  for (; bucket >= 0; --bucket) {
    if (above + hist[bucket] >= k) break;
    above += hist[bucket];
  }
  std::vector<uint32_t> in_bucket;
  in_bucket.reserve(hist[bucket]);
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] > 0.0f) {
      uint32_t bits;
      std::memcpy(&bits, p + i, 4);
      if (static_cast<int64_t>(bits >> 16) == bucket) in_bucket.push_back(bits);
    }
  }
  const int64_t rank = k - above - 1;  // 0-based rank from the top within the bucket
  std::nth_element(in_bucket.begin(), in_bucket.begin() + rank, in_bucket.end(),
                   std::greater<uint32_t>());
  out->typed_data()[0] = static_cast<int32_t>(in_bucket[rank]);
  return ffi::Error::Success();
}

int64_t ValidCount(const ffi::Buffer<ffi::S32>& count, int64_t cap) {
  return std::max<int64_t>(0, std::min<int64_t>(count.typed_data()[0], cap));
}

// ---- spmm_rows: out[rows[n]] += vals[n] * w[cols[n]] ------------------------------------------------

ffi::Error SpmmRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                        ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals,
                        ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> out) {
  const int64_t N = ValidCount(count, rows.element_count());
  const int64_t D = w.dimensions()[1];
  const int64_t B = out->dimensions()[0];
  const int32_t* r = rows.typed_data();
  const int32_t* c = cols.typed_data();
  const float* v = vals.typed_data();
  const float* W = w.typed_data();
  float* o = out->typed_data();
  const int64_t n_tasks = NumTasks(pool, N, 2048);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    // Output rows [lo, hi) belong to this task; entries are row-sorted, so they are contiguous.
    const int64_t lo = B * task / n_tasks, hi = B * (task + 1) / n_tasks;
    std::memset(o + lo * D, 0, sizeof(float) * (hi - lo) * D);
    int64_t n = std::lower_bound(r, r + N, static_cast<int32_t>(lo)) - r;
    for (; n < N && r[n] < hi; ++n) Axpy(o + int64_t(r[n]) * D, W + int64_t(c[n]) * D, v[n], D);
  });
  return ffi::Error::Success();
}

// ---- sddmm: g[n] = a[rows[n]] . w[cols[n]] ----------------------------------------------------------

ffi::Error SddmmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                     ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> out) {
  const int64_t cap = rows.element_count();
  const int64_t N = ValidCount(count, cap);
  const int64_t D = w.dimensions()[1];
  const int32_t* r = rows.typed_data();
  const int32_t* c = cols.typed_data();
  const float* A = a.typed_data();
  const float* W = w.typed_data();
  float* g = out->typed_data();
  const int64_t n_tasks = NumTasks(pool, N, 2048);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = N * task / n_tasks, hi = N * (task + 1) / n_tasks;
    for (int64_t n = lo; n < hi; ++n) g[n] = Dot(A + int64_t(r[n]) * D, W + int64_t(c[n]) * D, D);
  });
  if (N < cap) std::memset(g + N, 0, sizeof(float) * (cap - N));
  return ffi::Error::Success();
}

// ---- spmm_t: out[cols[n]] += vals[n] * a[rows[n]] ---------------------------------------------------
// The valid entries are first put in column order by a stable counting sort, so each output row is
// summed in one go while it sits in L1 (instead of read-modify-writes scattered over all of `out`),
// in the same entry order as before (a column's entries keep their row order): the same sums, bit for
// bit. The tasks own contiguous ranges of output rows.

ffi::Error SpmmTImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                     ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals, ffi::Buffer<ffi::F32> a,
                     ffi::ResultBuffer<ffi::F32> out) {
  const int64_t N = ValidCount(count, rows.element_count());
  const int64_t D = a.dimensions()[1];
  const int64_t M = out->dimensions()[0];
  const int32_t* r = rows.typed_data();
  const int32_t* c = cols.typed_data();
  const float* v = vals.typed_data();
  const float* A = a.typed_data();
  float* o = out->typed_data();
  std::vector<int32_t> start(M + 1, 0), order(N);
  for (int64_t n = 0; n < N; ++n) {
    if (c[n] < 0 || c[n] >= M) return ffi::Error::InvalidArgument("spmm_t: a column outside [0, n_cols)");
    ++start[c[n] + 1];
  }
  for (int64_t m = 0; m < M; ++m) start[m + 1] += start[m];
  {
    std::vector<int32_t> next(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) order[next[c[n]]++] = static_cast<int32_t>(n);
  }
  const int64_t n_tasks = NumTasks(pool, N, 4096);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = M * task / n_tasks, hi = M * (task + 1) / n_tasks;
    for (int64_t col = lo; col < hi; ++col) {
      float* oc = o + col * D;
      std::memset(oc, 0, sizeof(float) * D);
      for (int32_t e = start[col]; e < start[col + 1]; ++e) {
        const int32_t n = order[e];
        Axpy(oc, A + int64_t(r[n]) * D, v[n], D);
      }
    }
  });
  return ffi::Error::Success();
}

// ---- col_sum: out[cols[n]] += vals[n] ----------------------------------------------------------------

ffi::Error ColSumImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals,
                      ffi::ResultBuffer<ffi::F32> out) {
  const int64_t N = ValidCount(count, cols.element_count());
  const int64_t M = out->element_count();
  const int32_t* c = cols.typed_data();
  const float* v = vals.typed_data();
  float* o = out->typed_data();
  std::memset(o, 0, sizeof(float) * M);
  for (int64_t n = 0; n < N; ++n) o[c[n]] += v[n];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtCompact, CompactImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtKthLargest, KthLargestImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtSpmmRows, SpmmRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtSddmm, SddmmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtSpmmT, SpmmTImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtColSum, ColSumImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
