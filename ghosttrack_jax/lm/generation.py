"""Greedy batched generation with a KV cache, compiled once per (batch, prompt bucket, budget).

Prompts are sorted by length, grouped into batches of `batch_size` (the last one filled up with copies),
and left-padded to a bucket length (a multiple of 16 up to 64 tokens, then of 64), so a run over many
prompts compiles only a handful of programs. One program is the whole decode: a prefill of the padded
prompt into a cache of `bucket + max_new_tokens` slots, then a `lax.while_loop` that feeds one token per
step and stops when every row has produced EOS or the budget is spent. The caches are the transformers
Flax attention caches (`cached_key`, `cached_value`, `cache_index`), so the numbers are those of the
model's own incremental decoding.

Sampling (semantic entropy, EigenScore; docs/method.md §6.6): `generate(..., n_samples=S)` runs one
program per batch that prefills each prompt once, decodes the greedy answer from that cache, then tiles
the cache S times and draws S continuations at the given temperature. Each prompt has its own PRNG key
(from a per-question seed), so a sample never depends on the batch it ran in.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import ConfigError, DataError

_NONE = -1  # output slot after EOS / beyond the end


@dataclasses.dataclass(frozen=True)
class Sample:
  """One sampled continuation: ids (EOS excluded) and whether EOS came; per token of ids + [EOS] (EOS
  only when it came), the model's log probability of it (at T = 1) and the output of the embedding block
  at its position [., D]."""

  ids: list[int]
  logprobs: list[float]
  embeddings: np.ndarray
  hit_eos: bool


@dataclasses.dataclass(frozen=True)
class Generation:
  """One greedy continuation.

  prompt: the prompt text; prompt_ids: its token ids (as `LanguageModel.encode` gives them);
  answer_ids: the generated ids, EOS excluded; answer: `answer_ids` decoded (special tokens skipped);
  hit_eos: whether EOS was generated within the budget; samples: the sampled continuations of the same
  prompt (empty unless asked for).
  """

  prompt: str
  prompt_ids: list[int]
  answer_ids: list[int]
  answer: str
  hit_eos: bool
  samples: tuple = ()


def bucket_length(n: int) -> int:
  """Padded prompt length: a multiple of 16 up to 64 tokens, then a multiple of 64."""
  step = 16 if n <= 64 else 64
  return -(-n // step) * step


def _empty_cache(lm, batch: int, length: int):
  """Zeroed KV cache for `batch` rows and `length` slots (shapes from an abstract init, no compute)."""

  def init():
    z = jnp.zeros((batch, length), jnp.int32)
    return lm._body.init(
      jax.random.PRNGKey(0), input_ids=z, attention_mask=jnp.ones_like(z), position_ids=z, init_cache=True
    )["cache"]

  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init))


def _step_fn(lm, params, full_mask, embed_block=None):
  """One cached forward step: (cache, ids [B, n], pos [B, n]) -> (cache, logits of the last position [B, V],
  the output of block `embed_block` at the last position [B, D] or None)."""
  family, body, block_cls = lm._family, lm._body, lm._family.block_cls

  def capture(mdl, method_name):
    return method_name == "__call__" and isinstance(mdl, block_cls) and int(mdl.name) == embed_block

  def step(cache, tok, pos):
    kwargs = {"mutable": ["cache"]}
    if embed_block is not None:
      kwargs = {"mutable": ["cache", "intermediates"], "capture_intermediates": capture}
    out, variables = body.apply(
      {"params": params[family.prefix], "cache": cache},
      input_ids=tok,
      attention_mask=full_mask,
      position_ids=pos,
      deterministic=True,
      **kwargs,
    )
    logits = lm._head(params, out.last_hidden_state[:, -1])
    emb = None
    if embed_block is not None:
      emb = variables["intermediates"][family.blocks_key][str(embed_block)]["__call__"][0][0][:, -1]
      emb = emb.astype(jnp.float32)
    return variables["cache"], logits, emb

  return step


def _prefill(lm, params, ids, mask, max_new_tokens: int):
  """The prompt's KV cache ([B, P + max_new_tokens] slots) and the logits after its last token [B, V]."""
  batch, plen = ids.shape
  full_mask = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens), mask.dtype)], axis=1)
  step = _step_fn(lm, params, full_mask)
  cache = _empty_cache(lm, batch, plen + max_new_tokens)
  cache, logits, _ = step(cache, ids, jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0))
  return cache, logits, full_mask


def _greedy_loop(lm, params, cache, logits, full_mask, mask, stop, max_new_tokens: int):
  """Greedy tokens [B, max_new_tokens] from a prefilled cache; _NONE after the first stop token (`stop`:
  [V] bool, EOS and optionally every token containing a newline)."""
  batch = mask.shape[0]
  step = _step_fn(lm, params, full_mask)
  tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  out = jnp.full((batch, max_new_tokens), _NONE, jnp.int32).at[:, 0].set(tok)
  done = stop[tok]
  pos = jnp.sum(mask, axis=-1).astype(jnp.int32)  # position of `tok`, the next token fed

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body_fn(state):
    i, cache, tok, done, out, pos = state
    cache, logits, _ = step(cache, tok[:, None], pos[:, None])
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    out = out.at[:, i].set(jnp.where(done, _NONE, tok))
    return i + 1, cache, tok, done | stop[tok], out, pos + 1

  state = (jnp.int32(1), cache, tok, done, out, pos)
  return jax.lax.while_loop(cond, body_fn, state)[4]


def greedy_batch(lm, params, ids, mask, stop, *, max_new_tokens: int):
  """Greedy tokens [B, max_new_tokens] for left-padded prompts ids/mask [B, P]; _NONE after a stop token."""
  cache, logits, full_mask = _prefill(lm, params, ids, mask, max_new_tokens)
  return _greedy_loop(lm, params, cache, logits, full_mask, mask, stop, max_new_tokens)


def greedy_and_samples_batch(
  lm,
  params,
  ids,
  mask,
  stop,
  keys,
  *,
  max_new_tokens: int,
  n_samples: int,
  temperature: float,
  embed_block: int,
):
  """The greedy continuation and `n_samples` sampled ones of each prompt, from ONE prefill of the prompt.

  keys: [B, 2] uint32, one PRNG key per prompt (per question, so a resumed or re-batched run draws the
  same samples); sample j's token i is drawn with fold_in(fold_in(key, j), i) from softmax(logits / T).
  Returns (greedy [B, M], tokens [B, S, M] (_NONE after EOS), logp [B, S, M] (the model's own log
  probability of each sampled token, at T = 1), emb [B, S, M, D] (the output of block `embed_block` at
  each sampled token's position, for EigenScore)).
  """
  batch, m, s = ids.shape[0], max_new_tokens, n_samples
  cache, logits, full_mask = _prefill(lm, params, ids, mask, m)
  greedy = _greedy_loop(lm, params, cache, logits, full_mask, mask, stop, m)
  rows = batch * s
  tile = lambda x: jnp.repeat(x, s, axis=0) if x.ndim else x  # noqa: E731  (cache_index is a scalar)
  cache, logits, full_mask = jax.tree.map(tile, cache), tile(logits), tile(full_mask)
  row_keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(s)))(keys)
  row_keys = row_keys.reshape(rows, -1)
  step = _step_fn(lm, params, full_mask, embed_block)
  pos0 = jnp.repeat(jnp.sum(mask, axis=-1).astype(jnp.int32), s)
  d = lm.d_model

  def draw(i, logits):
    ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
    tok = jax.vmap(lambda k, l: jax.random.categorical(k, l / temperature))(ks, logits).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
    return tok, logp

  def cond(state):
    i, _, _, done, *_ = state
    return (i < m) & ~jnp.all(done)

  def body_fn(state):
    # draws token i from the logits after token i-1, then feeds it (its block output is its embedding)
    i, cache, logits, done, toks, logps, embs = state
    tok, logp = draw(i, logits)
    toks = toks.at[:, i].set(jnp.where(done, _NONE, tok))
    logps = logps.at[:, i].set(jnp.where(done, 0.0, logp))
    cache, logits, emb = step(cache, tok[:, None], (pos0 + i)[:, None])
    embs = embs.at[:, i].set(emb)
    return i + 1, cache, logits, done | stop[tok], toks, logps, embs

  state = (
    jnp.int32(0),
    cache,
    logits,
    jnp.zeros((rows,), bool),
    jnp.full((rows, m), _NONE, jnp.int32),
    jnp.zeros((rows, m), jnp.float32),
    jnp.zeros((rows, m, d), jnp.float32),
  )
  _, _, _, _, toks, logps, embs = jax.lax.while_loop(cond, body_fn, state)
  return greedy, toks.reshape(batch, s, m), logps.reshape(batch, s, m), embs.reshape(batch, s, m, d)


def prompt_keys(seeds) -> np.ndarray:
  """[N, 2] uint32 PRNG keys, one per prompt seed (jax.random.PRNGKey(seed) of each)."""
  return np.asarray(jax.vmap(jax.random.PRNGKey)(jnp.asarray(np.asarray(seeds, np.uint32))))


def generate(
  lm,
  prompts: Sequence[str],
  max_new_tokens: int,
  batch_size: int,
  *,
  n_samples: int = 0,
  temperature: float = 1.0,
  seeds: Sequence[int] | None = None,
  embed_block: int | None = None,
  stop_at_newline: bool = False,
) -> list[Generation]:
  """Greedy continuations of `prompts`, in the order given; with `n_samples` > 0 also that many
  samples at `temperature` per prompt from the same prefill (`seeds`: one PRNG seed per prompt;
  `embed_block`: the block whose output is kept per sampled token, default the middle one). With
  `stop_at_newline` a continuation also ends after its first token containing a newline (the answer stage
  cuts there anyway, and most short answers end within a few tokens: decoding stops when every row has)."""
  if max_new_tokens < 1 or batch_size < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
  if n_samples and (seeds is None or len(seeds) != len(prompts)):
    raise ConfigError("sampling needs one seed per prompt")
  if n_samples and not temperature > 0:
    raise ConfigError(f"temperature={temperature} must be > 0")
  embed_block = lm.n_blocks // 2 if embed_block is None else int(embed_block)
  encoded = [lm.encode(p) for p in prompts]
  for p, e in zip(prompts, encoded):
    if not e:
      raise DataError(f"prompt {p!r} encodes to no tokens; give a non-empty prompt")
  longest = max((len(e) for e in encoded), default=0)
  if bucket_length(longest) + max_new_tokens > lm.max_positions:
    raise ConfigError(
      f"a prompt of {longest} tokens (padded to {bucket_length(longest)}) plus "
      f"max_new_tokens={max_new_tokens} exceeds the model's {lm.max_positions} positions; "
      "shorten the prompts or lower config.qa.max_new_tokens"
    )
  keys = prompt_keys(seeds) if n_samples else None
  stop = jnp.asarray(stop_token_mask(lm, stop_at_newline))
  order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
  results: list = [None] * len(prompts)
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    rows_full = rows + [rows[0]] * (batch_size - len(rows))  # fixed batch shape: fill with copies
    plen = bucket_length(max(len(encoded[i]) for i in rows))
    ids = np.full((batch_size, plen), lm.pad_id, np.int32)
    mask = np.zeros((batch_size, plen), np.int32)
    for r, i in enumerate(rows_full):
      ids[r, plen - len(encoded[i]) :] = encoded[i]
      mask[r, plen - len(encoded[i]) :] = 1
    args = (lm.params, jnp.asarray(ids), jnp.asarray(mask), stop)
    samples = [()] * batch_size
    if n_samples:
      out = lm._sample_fn(
        *args,
        jnp.asarray(keys[rows_full]),
        max_new_tokens=max_new_tokens,
        n_samples=int(n_samples),
        temperature=float(temperature),
        embed_block=embed_block,
      )
      toks, s_tok, s_logp, s_emb = (np.asarray(x) for x in jax.device_get(out))
      samples = [
        tuple(_sample(s_tok[r, j], s_logp[r, j], s_emb[r, j], lm.eos_id) for j in range(n_samples))
        for r in range(len(rows))
      ]
    else:
      toks = np.asarray(lm._generate_fn(*args, max_new_tokens=max_new_tokens))
    for r, i in enumerate(rows):
      answer, hit_eos = _until_eos(toks[r], lm.eos_id)
      results[i] = Generation(
        prompt=prompts[i],
        prompt_ids=encoded[i],
        answer_ids=answer,
        answer=lm.tokenizer.decode(answer, skip_special_tokens=True),
        hit_eos=hit_eos,
        samples=samples[r],
      )
  return results


def stop_token_mask(lm, newline: bool) -> np.ndarray:
  """[V] bool: EOS, and with `newline` every token whose text contains a newline (cached per model)."""
  cache = lm.__dict__.setdefault("_stop_masks", {})
  if newline not in cache:
    m = np.zeros(lm.vocab_size, bool)
    m[lm.eos_id] = True
    if newline:
      pieces = lm.tokenizer.convert_ids_to_tokens(list(range(min(lm.vocab_size, len(lm.tokenizer)))))
      for i, p in enumerate(pieces):
        if p is not None and "\n" in lm.tokenizer.convert_tokens_to_string([p]):
          m[i] = True
    cache[newline] = m
  return cache[newline]


def _until_eos(row, eos_id: int) -> tuple[list[int], bool]:
  row = [int(t) for t in row if t != _NONE]
  return (row[: row.index(eos_id)], True) if eos_id in row else (row, False)


def _sample(tok, logp, emb, eos_id: int) -> Sample:
  ids, hit_eos = _until_eos(tok, eos_id)
  n = len(ids) + int(hit_eos)
  return Sample(ids, [float(x) for x in logp[:n]], np.asarray(emb[:n], np.float32), hit_eos)
