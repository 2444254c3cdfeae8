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

// ---- vmapped calls ----------------------------------------------------------------------------------
// kernels.py registers every kernel with vmap_method="expand_dims": under vmap a call receives its
// arguments with the vmapped dimensions in front (of size 1 for an argument that is not mapped) and
// returns its outputs with them, so one call serves every layer of the stacked step (the "sequential"
// method wraps the call in a loop that copies each layer's slices in and out, ~9% of the default's
// step). `lead` is the number of such dimensions (an output's rank minus its own rank); a call runs
// its items one after the other, each split over the thread pool as before.

template <typename Dims>
int64_t LeadItems(const Dims& dims, size_t lead) {
  int64_t items = 1;
  for (size_t i = 0; i < lead; ++i) items *= dims[i];
  return items;
}

// Elements between consecutive items of a buffer with `lead` vmapped dimensions (0: one shared item).
template <typename Buf>
int64_t Stride(const Buf& buf, size_t lead) {
  const int64_t items = LeadItems(buf.dimensions(), lead);
  return items == 1 ? 0 : buf.element_count() / items;
}

int64_t ValidCount(const int32_t* count, int64_t cap) {
  return std::max<int64_t>(0, std::min<int64_t>(*count, cap));
}

// ---- compact: entries with pre[b, i] > thr[i], row-major -------------------------------------------
// One pass over `pre`: each task collects its rows' entries in a local buffer, then the buffers are
// copied out at prefix offsets (row-major overall). `total` is the uncapped number of entries.

void CompactOne(ffi::ThreadPool& pool, const float* p, const float* t, int64_t B, int64_t M, int64_t cap,
                int32_t* r_out, int32_t* c_out, int32_t* count, int32_t* total) {
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
  *count = static_cast<int32_t>(kept);
  *total = static_cast<int32_t>(std::min<int64_t>(n, INT32_MAX));
}

ffi::Error CompactImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pre, ffi::Buffer<ffi::F32> thr,
                       ffi::ResultBuffer<ffi::S32> rows, ffi::ResultBuffer<ffi::S32> cols,
                       ffi::ResultBuffer<ffi::S32> count, ffi::ResultBuffer<ffi::S32> total) {
  const size_t lead = count->dimensions().size();
  auto dims = pre.dimensions();
  if (dims.size() != lead + 2) return ffi::Error::InvalidArgument("compact: pre must be [..., B, M]");
  const int64_t B = dims[lead], M = dims[lead + 1];
  const int64_t cap = rows->dimensions().back();
  const int64_t ps = Stride(pre, lead), ts = Stride(thr, lead);
  for (int64_t b = 0; b < LeadItems(count->dimensions(), lead); ++b) {
    CompactOne(pool, pre.typed_data() + b * ps, thr.typed_data() + b * ts, B, M, cap,
               rows->typed_data() + b * cap, cols->typed_data() + b * cap, count->typed_data() + b,
               total->typed_data() + b);
  }
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

// bias (nullable): the entries are p[b, i] + bias[i] (the same float addition XLA makes), so that the
// pre-activations with their bias need not be written out before the selection.
void TopKOne(ffi::ThreadPool& pool, const float* p, const float* bias, int64_t B, int64_t M, int64_t k,
             int32_t* r_out, int32_t* c_out) {
  const int64_t G = std::min<int64_t>(M, 2 * k);
  const int64_t S = (M + G - 1) / G;
  const int64_t n_tasks = NumTasks(pool, B, 32);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = B * task / n_tasks, hi = B * (task + 1) / n_tasks;
    std::vector<int32_t> key(G * S, INT32_MIN), gmax(G);
    std::vector<int64_t> cand(M);
    for (int64_t b = lo; b < hi; ++b) {
      const float* row = p + b * M;
      if (bias == nullptr) {
        for (int64_t i = 0; i < M; ++i) key[i] = TotalOrderKey(row[i]);
      } else {
        for (int64_t i = 0; i < M; ++i) key[i] = TotalOrderKey(row[i] + bias[i]);
      }
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
}

ffi::Error TopK(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& pre, const ffi::Buffer<ffi::F32>* bias,
                ffi::ResultBuffer<ffi::S32>& rows, ffi::ResultBuffer<ffi::S32>& cols) {
  const size_t lead = rows->dimensions().size() - 1;
  auto dims = pre.dimensions();
  if (dims.size() != lead + 2) return ffi::Error::InvalidArgument("topk: pre must be [..., B, M]");
  const int64_t B = dims[lead], M = dims[lead + 1];
  const int64_t n_out = rows->dimensions().back();
  const int64_t k = n_out / std::max<int64_t>(B, 1);
  if (k < 1 || k > M) return ffi::Error::InvalidArgument("topk: need 1 <= k <= M");
  const int64_t ps = Stride(pre, lead), bs = bias ? Stride(*bias, lead) : 0;
  for (int64_t b = 0; b < LeadItems(rows->dimensions(), lead); ++b) {
    TopKOne(pool, pre.typed_data() + b * ps, bias ? bias->typed_data() + b * bs : nullptr, B, M, k,
            rows->typed_data() + b * n_out, cols->typed_data() + b * n_out);
  }
  return ffi::Error::Success();
}

ffi::Error TopKImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pre, ffi::ResultBuffer<ffi::S32> rows,
                    ffi::ResultBuffer<ffi::S32> cols) {
  return TopK(pool, pre, nullptr, rows, cols);
}

ffi::Error TopKBiasImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pre, ffi::Buffer<ffi::F32> bias,
                        ffi::ResultBuffer<ffi::S32> rows, ffi::ResultBuffer<ffi::S32> cols) {
  return TopK(pool, pre, &bias, rows, cols);
}

// ---- kth_largest: bit pattern of the k-th largest of max(pre, 0) over the whole array -------------
// Exact radix select on the float bit patterns (non-negative floats order like their int32 bits):
// a histogram of the high 16 bits finds the bucket, then nth_element inside it. 0 if fewer than k
// entries are positive.

int32_t KthLargestOne(const float* p, int64_t n, int64_t k) {
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
  if (k < 1 || positive < k) return 0;
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
  return static_cast<int32_t>(in_bucket[rank]);
}

ffi::Error KthLargestImpl(ffi::Buffer<ffi::F32> pre, ffi::Buffer<ffi::S32> k_buf,
                          ffi::ResultBuffer<ffi::S32> out) {
  const size_t lead = out->dimensions().size();
  const int64_t items = LeadItems(out->dimensions(), lead);
  const int64_t n = pre.element_count() / std::max<int64_t>(1, LeadItems(pre.dimensions(), lead));
  const int64_t ps = Stride(pre, lead), ks = Stride(k_buf, lead);
  for (int64_t b = 0; b < items; ++b) {
    out->typed_data()[b] = KthLargestOne(pre.typed_data() + b * ps, n, k_buf.typed_data()[b * ks]);
  }
  return ffi::Error::Success();
}

// ---- spmm_rows: out[rows[n]] += vals[n] * w[cols[n]] ------------------------------------------------

void SpmmRowsOne(ffi::ThreadPool& pool, const int32_t* r, const int32_t* c, int64_t N, const float* v,
                 const float* W, int64_t B, int64_t D, float* o) {
  const int64_t n_tasks = NumTasks(pool, N, 2048);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    // Output rows [lo, hi) belong to this task; entries are row-sorted, so they are contiguous.
    const int64_t lo = B * task / n_tasks, hi = B * (task + 1) / n_tasks;
    std::memset(o + lo * D, 0, sizeof(float) * (hi - lo) * D);
    int64_t n = std::lower_bound(r, r + N, static_cast<int32_t>(lo)) - r;
    for (; n < N && r[n] < hi; ++n) Axpy(o + int64_t(r[n]) * D, W + int64_t(c[n]) * D, v[n], D);
  });
}

ffi::Error SpmmRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                        ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals,
                        ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> out) {
  const size_t lead = out->dimensions().size() - 2;
  const int64_t B = out->dimensions()[lead], D = out->dimensions()[lead + 1];
  const int64_t cap = rows.dimensions().back();
  const int64_t rs = Stride(rows, lead), cs = Stride(cols, lead), ns = Stride(count, lead);
  const int64_t vs = Stride(vals, lead), ws = Stride(w, lead);
  for (int64_t b = 0; b < LeadItems(out->dimensions(), lead); ++b) {
    SpmmRowsOne(pool, rows.typed_data() + b * rs, cols.typed_data() + b * cs,
                ValidCount(count.typed_data() + b * ns, cap), vals.typed_data() + b * vs,
                w.typed_data() + b * ws, B, D, out->typed_data() + b * B * D);
  }
  return ffi::Error::Success();
}

// ---- sddmm: g[n] = a[rows[n]] . w[cols[n]] ----------------------------------------------------------

void SddmmOne(ffi::ThreadPool& pool, const int32_t* r, const int32_t* c, int64_t N, int64_t cap,
              const float* A, const float* W, int64_t D, float* g) {
  const int64_t n_tasks = NumTasks(pool, N, 2048);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = N * task / n_tasks, hi = N * (task + 1) / n_tasks;
    for (int64_t n = lo; n < hi; ++n) g[n] = Dot(A + int64_t(r[n]) * D, W + int64_t(c[n]) * D, D);
  });
  if (N < cap) std::memset(g + N, 0, sizeof(float) * (cap - N));
}

ffi::Error SddmmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                     ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> out) {
  const size_t lead = out->dimensions().size() - 1;
  const int64_t cap = out->dimensions()[lead];
  const int64_t D = w.dimensions().back();
  const int64_t rs = Stride(rows, lead), cs = Stride(cols, lead), ns = Stride(count, lead);
  const int64_t as = Stride(a, lead), ws = Stride(w, lead);
  for (int64_t b = 0; b < LeadItems(out->dimensions(), lead); ++b) {
    SddmmOne(pool, rows.typed_data() + b * rs, cols.typed_data() + b * cs,
             ValidCount(count.typed_data() + b * ns, cap), cap, a.typed_data() + b * as,
             w.typed_data() + b * ws, D, out->typed_data() + b * cap);
  }
  return ffi::Error::Success();
}

// ---- spmm_t: out[cols[n]] += vals[n] * a[rows[n]] ---------------------------------------------------
// The valid entries are first put in column order by a stable counting sort, so each output row is
// summed in one go while it sits in L1 (instead of read-modify-writes scattered over all of `out`),
// in the same entry order as before (a column's entries keep their row order): the same sums, bit for
// bit. The tasks own contiguous ranges of output rows.

// transposed: out is [D, M] (out[j, c]), the layout of W_enc, written in blocks of 16 columns (one cache
// line of each row of out) from the same per-column sums.
bool SpmmTOne(ffi::ThreadPool& pool, const int32_t* r, const int32_t* c, int64_t N, const float* v,
              const float* A, int64_t M, int64_t D, float* o, bool transposed) {
  std::vector<int32_t> start(M + 1, 0), order(N);
  for (int64_t n = 0; n < N; ++n) {
    if (c[n] < 0 || c[n] >= M) return false;
    ++start[c[n] + 1];
  }
  for (int64_t m = 0; m < M; ++m) start[m + 1] += start[m];
  {
    std::vector<int32_t> next(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) order[next[c[n]]++] = static_cast<int32_t>(n);
  }
  constexpr int64_t kBlock = 16;
  const int64_t n_blocks = (M + kBlock - 1) / kBlock;
  const int64_t n_tasks = std::min(NumTasks(pool, N, 4096), n_blocks);
  ParallelFor(pool, n_tasks, [&](int64_t task) {
    const int64_t lo = n_blocks * task / n_tasks * kBlock, hi = std::min(M, n_blocks * (task + 1) / n_tasks * kBlock);
    std::vector<float> block(transposed ? kBlock * D : 0);
    for (int64_t c0 = lo; c0 < hi; c0 += kBlock) {
      const int64_t width = std::min(kBlock, hi - c0);
      for (int64_t col = c0; col < c0 + width; ++col) {
        float* oc = transposed ? block.data() + (col - c0) * D : o + col * D;
        std::memset(oc, 0, sizeof(float) * D);
        for (int32_t e = start[col]; e < start[col + 1]; ++e) {
          const int32_t n = order[e];
          Axpy(oc, A + int64_t(r[n]) * D, v[n], D);
        }
      }
      if (transposed) {
        for (int64_t j = 0; j < D; ++j) {
          for (int64_t i = 0; i < width; ++i) o[j * M + c0 + i] = block[i * D + j];
        }
      }
    }
  });
  return true;
}

ffi::Error SpmmT(ffi::ThreadPool& pool, ffi::Buffer<ffi::S32>& rows, ffi::Buffer<ffi::S32>& cols,
                 ffi::Buffer<ffi::S32>& count, ffi::Buffer<ffi::F32>& vals, ffi::Buffer<ffi::F32>& a,
                 ffi::ResultBuffer<ffi::F32>& out, bool transposed) {
  const size_t lead = out->dimensions().size() - 2;
  const int64_t M = out->dimensions()[lead + (transposed ? 1 : 0)];
  const int64_t D = out->dimensions()[lead + (transposed ? 0 : 1)];
  const int64_t cap = rows.dimensions().back();
  const int64_t rs = Stride(rows, lead), cs = Stride(cols, lead), ns = Stride(count, lead);
  const int64_t vs = Stride(vals, lead), as = Stride(a, lead);
  for (int64_t b = 0; b < LeadItems(out->dimensions(), lead); ++b) {
    if (!SpmmTOne(pool, rows.typed_data() + b * rs, cols.typed_data() + b * cs,
                  ValidCount(count.typed_data() + b * ns, cap), vals.typed_data() + b * vs,
                  a.typed_data() + b * as, M, D, out->typed_data() + b * M * D, transposed)) {
      return ffi::Error::InvalidArgument("spmm_t: a column outside [0, n_cols)");
    }
  }
  return ffi::Error::Success();
}

ffi::Error SpmmTImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                     ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals, ffi::Buffer<ffi::F32> a,
                     ffi::ResultBuffer<ffi::F32> out) {
  return SpmmT(pool, rows, cols, count, vals, a, out, false);
}

ffi::Error SpmmTTImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                      ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals, ffi::Buffer<ffi::F32> a,
                      ffi::ResultBuffer<ffi::F32> out) {
  return SpmmT(pool, rows, cols, count, vals, a, out, true);
}

// ---- col_sum: out[cols[n]] += vals[n] ----------------------------------------------------------------

ffi::Error ColSumImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> vals,
                      ffi::ResultBuffer<ffi::F32> out) {
  const size_t lead = out->dimensions().size() - 1;
  const int64_t M = out->dimensions()[lead];
  const int64_t cap = cols.dimensions().back();
  const int64_t cs = Stride(cols, lead), ns = Stride(count, lead), vs = Stride(vals, lead);
  for (int64_t b = 0; b < LeadItems(out->dimensions(), lead); ++b) {
    const int64_t N = ValidCount(count.typed_data() + b * ns, cap);
    const int32_t* c = cols.typed_data() + b * cs;
    const float* v = vals.typed_data() + b * vs;
    float* o = out->typed_data() + b * M;
    std::memset(o, 0, sizeof(float) * M);
    for (int64_t n = 0; n < N; ++n) o[c[n]] += v[n];
  }
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtTopKBias, TopKBiasImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(GtSpmmTT, SpmmTTImpl,
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
