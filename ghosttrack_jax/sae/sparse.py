"""Sparse SAE ops on a flat COO list of active (token, latent) entries, with custom VJPs.

Only the encoder's forward pass is inherently dense. With the codes as a COO list of N entries
(N ~ batch x L0), decoding, the code gradients and both weight gradients cost O(N * d_model) instead of
O(batch * d_sae * d_model):

  decode      x_hat[b]      += v_n * W_dec[c_n]                 (spmm_rows)
  d codes     g_n            = dX[b_n] . W_dec[c_n]               (sddmm)
  d W_dec     dW_dec[c_n]   += v_n * dX[b_n]                      (spmm_t)
  d W_enc     dW_enc^T[c_n] += g_n * (x - b_pre)[b_n]             (spmm_tt: made in W_enc's layout)

The COO list has a static capacity (XLA needs static shapes); `count` entries are valid, the rest are
padding (row 0, col 0) whose values are forced to zero. Entries are in row-major order. A step whose
entries do not fit falls back to the dense path (decided per device in train.step, outside vmap).

Two implementations of the primitive ops: XLA gathers/segment sums (any platform; the reference), and
C++ kernels registered through the XLA FFI (`kernels.py`, CPU only), picked per platform at lowering time.
Both are tested against the dense math in tests/sae/test_sae_sparse.py.

The losses are written once against the entries interface (sae.common.Architecture.loss): `Coo` (values
at the listed entries) and `Dense` (the [B, M] batch, or a mask of it) have the same methods. The
pre-activations may come as `Preacts` (x W_enc and b_enc apart), whose readers add the bias.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ghosttrack_jax.sae import kernels


class Coo(NamedTuple):
  """Flat list of (row=token, col=latent) entries; the first `count` are valid, row-major.

  Also the sparse side of the entries interface the losses are written against (common.Architecture.loss):
  values live at the N entries ([N] arrays); `Dense` below is the dense side ([B, M] arrays).
  """

  rows: jax.Array  # int32 [N]
  cols: jax.Array  # int32 [N]
  count: jax.Array  # int32 []

  @property
  def capacity(self) -> int:
    return self.rows.shape[0]

  def valid(self) -> jax.Array:
    return jnp.arange(self.capacity, dtype=jnp.int32) < self.count

  # ---- the entries interface --------------------------------------------------------------------------

  def preact(self, x, b_pre, w_enc, b_enc, pre, dense_p=None):
    """Differentiable pre-activations at the entries (see gather_preact)."""
    del dense_p
    return gather_preact(x, b_pre, w_enc, b_enc, pre, self)

  def keep(self, v):
    """v with the entries outside the list (padding) set to 0."""
    return jnp.where(self.valid(), v, 0.0)

  def per_latent(self, a):
    """A per-latent array [M] at the entries."""
    return a[self.cols]

  def latent_sum(self, v, n_cols: int):
    """[M]: the sum of v over each latent's entries."""
    return col_sum(self, v, n_cols)

  def latent_any(self, active, n_cols: int):
    """[M] bool: some entry of the latent is active."""
    return col_sum(self, active.astype(jnp.float32), n_cols) > 0

  def decode(self, f, w_dec, n_rows: int):
    """[n_rows, D]: codes at the entries times the decoder rows (no bias)."""
    return decode(f, w_dec, self, n_rows)

  @staticmethod
  def top_k(scores, k: int) -> "Coo":
    """The entries of each row's k largest scores [B, M]."""
    return coo_topk(scores, k)


class Dense(NamedTuple):
  """Every entry of the [B, M] batch, or those where `mask` is True: the dense side of the entries
  interface (see Coo), the reference the sparse path is tested against."""

  mask: jax.Array | None = None  # [B, M] bool

  def preact(self, x, b_pre, w_enc, b_enc, pre, dense_p=None):
    """`dense_p`: the differentiable dense pre-activations already made for the same rows, reused so
    that the encoder's backward runs once."""
    return dense_preact(x, b_pre, w_enc, b_enc, as_dense(pre)) if dense_p is None else dense_p

  def keep(self, v):
    return v if self.mask is None else jnp.where(self.mask, v, 0.0)

  def per_latent(self, a):
    return a

  def latent_sum(self, v, n_cols: int):
    return jnp.sum(v.reshape(-1, n_cols), axis=0)

  def latent_any(self, active, n_cols: int):
    del n_cols
    return jnp.any(active, axis=0)

  def decode(self, f, w_dec, n_rows: int):
    del n_rows
    return f @ w_dec

  @staticmethod
  def top_k(scores, k: int) -> "Dense":
    scores = as_dense(scores)
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores), k)
    rows = jnp.arange(scores.shape[0])[:, None]
    return Dense(jnp.zeros(scores.shape, bool).at[rows, idx].set(True))


# ---- pre-activations ---------------------------------------------------------------------------------


class Preacts(NamedTuple):
  """Pre-activations kept as (x W_enc, b_enc) until an entry is read: the TopK path only reads the
  selected entries and the selection (which adds the bias itself), so `raw + bias` over the whole
  [B, M] batch, a pass as long as the encoder's output, is never made there. `dense()` makes it (the
  same float addition, so every reader sees the same values)."""

  raw: jax.Array  # [B, M]
  bias: jax.Array  # [M]

  def dense(self) -> jax.Array:
    return self.raw + self.bias


def as_dense(pre) -> jax.Array:
  """[B, M] pre-activations from an array or a `Preacts`."""
  return pre.dense() if isinstance(pre, Preacts) else pre


# ---- building the COO list -------------------------------------------------------------------------


def count_above(pre: jax.Array, col_threshold: jax.Array) -> jax.Array:
  """Number of entries with pre[b, i] > col_threshold[i] (int32): what a COO list would hold."""
  return jnp.sum(pre > col_threshold, dtype=jnp.int32)


def _compact_xla(pre, col_threshold, capacity):
  mask = (pre > col_threshold).reshape(-1)
  total = jnp.sum(mask, dtype=jnp.int32)
  (flat,) = jnp.nonzero(mask, size=capacity, fill_value=0)
  m = pre.shape[1]
  return (flat // m).astype(jnp.int32), (flat % m).astype(jnp.int32), jnp.minimum(total, capacity), total


def coo_above(pre: jax.Array, col_threshold: jax.Array, capacity: int) -> tuple[Coo, jax.Array]:
  """COO list of the entries with pre[b, i] > col_threshold[i], row-major; and their (uncapped) number.

  When more than `capacity` entries qualify only the first `capacity` are kept: callers compare the
  returned total with the capacity and take the dense path instead.
  """
  pre = jax.lax.stop_gradient(pre)
  col_threshold = jax.lax.stop_gradient(col_threshold).astype(pre.dtype)
  rows, cols, count, total = kernels.dispatch(
    "compact", functools.partial(_compact_xla, capacity=capacity), pre, col_threshold, capacity=capacity
  )
  return Coo(rows, cols, count), total


def _topk_xla(pre, *, k):
  _, idx = jax.lax.top_k(pre, k)
  b = pre.shape[0]
  return jnp.repeat(jnp.arange(b, dtype=jnp.int32), k), idx.reshape(-1).astype(jnp.int32)


def coo_topk(pre, k: int) -> Coo:
  """COO list of each row's k largest entries (exactly k per row, lax.top_k's order and ties); `pre` an
  array or a `Preacts` (whose bias the kernel adds as it reads)."""
  pre = jax.lax.stop_gradient(pre)
  if isinstance(pre, Preacts):
    xla = lambda raw, bias: _topk_xla(raw + bias, k=k)
    rows, cols = kernels.dispatch("topk_bias", xla, pre.raw, pre.bias, k=k)
  else:
    rows, cols = kernels.dispatch("topk", functools.partial(_topk_xla, k=k), pre, k=k)
  return Coo(rows, cols, jnp.asarray(rows.shape[0], jnp.int32))


def coo_from_topk(indices: jax.Array) -> Coo:
  """COO list from per-row top-k indices [B, k] (exactly k entries per row)."""
  b, k = indices.shape
  rows = jnp.repeat(jnp.arange(b, dtype=jnp.int32), k)
  return Coo(rows, indices.reshape(-1).astype(jnp.int32), jnp.asarray(b * k, jnp.int32))


def _kth_largest_bits_xla(r, k_total):
  """Bisection on the float bit pattern: 32 counting passes (see topk.batch_threshold_bits)."""
  r = jnp.maximum(r, 0.0)
  bits = jax.lax.bitcast_convert_type(r, jnp.int32)
  lo = jnp.asarray(0, jnp.int32)
  hi = jnp.max(bits) + 1

  def body(_, carry):
    lo, hi = carry
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits >= mid, dtype=jnp.int32) >= k_total
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return lo


def kth_largest_bits(x: jax.Array, k_total: int) -> jax.Array:
  """int32 bit pattern of the k_total-th largest entry of max(x, 0) (0 if fewer are positive)."""
  x = jax.lax.stop_gradient(x)
  return kernels.dispatch("kth_largest", _kth_largest_bits_xla, x, jnp.asarray(k_total, jnp.int32))


def gather(pre, coo: Coo) -> jax.Array:
  """pre[rows, cols] (zero on padding; `pre` an array or a `Preacts`); no gradient (use
  `gather_preact` for one)."""
  if isinstance(pre, Preacts):
    vals = pre.raw[coo.rows, coo.cols] + pre.bias[coo.cols]
  else:
    vals = pre[coo.rows, coo.cols]
  return jnp.where(coo.valid(), vals, 0.0)


# ---- primitive ops: XLA reference implementations ------------------------------------------------


def _spmm_rows_xla(rows, cols, count, vals, w, *, n_rows):
  valid = jnp.arange(rows.shape[0]) < count
  contrib = jnp.where(valid, vals, 0.0)[:, None] * w[cols]
  return jax.ops.segment_sum(contrib, rows, n_rows, indices_are_sorted=True)


def _sddmm_xla(rows, cols, count, a, w):
  valid = jnp.arange(rows.shape[0]) < count
  return jnp.where(valid, jnp.sum(a[rows] * w[cols], axis=-1), 0.0)


def _spmm_t_xla(rows, cols, count, vals, a, *, n_cols):
  valid = jnp.arange(rows.shape[0]) < count
  contrib = jnp.where(valid, vals, 0.0)[:, None] * a[rows]
  return jax.ops.segment_sum(contrib, cols, n_cols)


def _col_sum_xla(cols, count, vals, *, n_cols):
  valid = jnp.arange(cols.shape[0]) < count
  return jax.ops.segment_sum(jnp.where(valid, vals, 0.0), cols, n_cols)


def spmm_rows(coo: Coo, vals: jax.Array, w: jax.Array, n_rows: int) -> jax.Array:
  """out[r] = sum over entries n with rows[n] = r of vals[n] * w[cols[n]]: [n_rows, D]."""
  return kernels.dispatch(
    "spmm_rows",
    functools.partial(_spmm_rows_xla, n_rows=n_rows),
    coo.rows,
    coo.cols,
    coo.count,
    vals,
    w,
    n_rows=n_rows,
  )


def sddmm(coo: Coo, a: jax.Array, w: jax.Array) -> jax.Array:
  """g[n] = a[rows[n]] . w[cols[n]] (zero on padding): [N]."""
  return kernels.dispatch("sddmm", _sddmm_xla, coo.rows, coo.cols, coo.count, a, w)


def spmm_t(coo: Coo, vals: jax.Array, a: jax.Array, n_cols: int) -> jax.Array:
  """out[c] = sum over entries n with cols[n] = c of vals[n] * a[rows[n]]: [n_cols, D]."""
  return kernels.dispatch(
    "spmm_t",
    functools.partial(_spmm_t_xla, n_cols=n_cols),
    coo.rows,
    coo.cols,
    coo.count,
    vals,
    a,
    n_cols=n_cols,
  )


def spmm_tt(coo: Coo, vals: jax.Array, a: jax.Array, n_cols: int) -> jax.Array:
  """spmm_t(...).T, [D, n_cols], made in that layout (W_enc's: its optimizer update then reads it in
  order instead of transposing)."""
  return kernels.dispatch(
    "spmm_tt",
    lambda *args: _spmm_t_xla(*args, n_cols=n_cols).T,
    coo.rows,
    coo.cols,
    coo.count,
    vals,
    a,
    n_cols=n_cols,
  )


def col_sum(coo: Coo, vals: jax.Array, n_cols: int) -> jax.Array:
  """out[c] = sum over valid entries with cols[n] = c of vals[n]: [n_cols]."""
  return kernels.dispatch(
    "col_sum", functools.partial(_col_sum_xla, n_cols=n_cols), coo.cols, coo.count, vals, n_cols=n_cols
  )


# ---- differentiable building blocks ----------------------------------------------------------------


@jax.custom_vjp
def gather_preact(x, b_pre, w_enc, b_enc, pre, coo):
  """Pre-activations at the COO entries, pre = (x - b_pre) @ w_enc + b_enc, given the dense `pre`.

  The forward pass only gathers from the already computed `pre`; the backward pass gives w_enc, b_enc
  and b_pre their gradients in O(N * D) (x is data: its cotangent is zero).
  """
  del x, b_pre, w_enc, b_enc
  return gather(pre, coo)


def _gather_preact_fwd(x, b_pre, w_enc, b_enc, pre, coo):
  return gather(pre, coo), (x, b_pre, w_enc, coo)


def _gather_preact_bwd(res, g):
  x, b_pre, w_enc, coo = res
  g = jnp.where(coo.valid(), g, 0.0)
  n_cols = w_enc.shape[1]
  d_w_enc = spmm_tt(coo, g, x - b_pre, n_cols)
  d_b_enc = col_sum(coo, g, n_cols)
  d_b_pre = -(w_enc @ d_b_enc)
  return jnp.zeros_like(x), d_b_pre, d_w_enc, d_b_enc, None, None


gather_preact.defvjp(_gather_preact_fwd, _gather_preact_bwd)


@jax.custom_vjp
def dense_preact(x, b_pre, w_enc, b_enc, pre):
  """The dense counterpart of `gather_preact`: returns `pre`, backward through the encoder matmul."""
  del x, b_pre, w_enc, b_enc
  return pre


def _dense_preact_fwd(x, b_pre, w_enc, b_enc, pre):
  return pre, (x, b_pre, w_enc, pre.shape)


def _dense_preact_bwd(res, g):
  x, b_pre, w_enc, pre_shape = res
  d_w_enc = (x - b_pre).T @ g
  d_b_enc = jnp.sum(g, axis=0)
  d_b_pre = -(w_enc @ d_b_enc)
  del pre_shape
  return jnp.zeros_like(x), d_b_pre, d_w_enc, d_b_enc, None


dense_preact.defvjp(_dense_preact_fwd, _dense_preact_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def decode(vals, w_dec, coo, n_rows):
  """sum_n vals[n] * w_dec[cols[n]] into row rows[n]: [n_rows, D] (no bias)."""
  return spmm_rows(coo, vals, w_dec, n_rows)


def _decode_fwd(vals, w_dec, coo, n_rows):
  return spmm_rows(coo, vals, w_dec, n_rows), (vals, w_dec, coo)


def _decode_bwd(n_rows, res, g):
  del n_rows
  vals, w_dec, coo = res
  d_vals = sddmm(coo, g, w_dec)
  d_w_dec = spmm_t(coo, jnp.where(coo.valid(), vals, 0.0), g, w_dec.shape[0])
  return d_vals, d_w_dec, None


decode.defvjp(_decode_fwd, _decode_bwd)


def densify(coo: Coo, vals: jax.Array, n_rows: int, n_cols: int) -> jax.Array:
  """[n_rows, n_cols] dense matrix of a COO list (for tests and metrics on small batches)."""
  vals = jnp.where(coo.valid(), vals, 0.0)
  return jnp.zeros((n_rows, n_cols), vals.dtype).at[coo.rows, coo.cols].add(vals)
