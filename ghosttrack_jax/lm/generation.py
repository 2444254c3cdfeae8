"""Greedy batched generation with a KV cache, compiled once per (batch, prompt bucket, budget).

Prompts are sorted by length, grouped into batches of `batch_size` (the last one filled up with copies),
and left-padded to a bucket length (a multiple of 16 up to 64 tokens, then of 64), so a run over many
prompts compiles only a handful of programs. One program is the whole decode: a prefill of the padded
prompt into a cache of `bucket + max_new_tokens` slots, then a `lax.while_loop` that feeds one token per
step and stops when every row has produced EOS or the budget is spent. The caches are the transformers
Flax attention caches (`cached_key`, `cached_value`, `cache_index`), so the numbers are those of the
model's own incremental decoding.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import ConfigError, DataError

_NONE = -1  # output slot after EOS / beyond the end


@dataclasses.dataclass(frozen=True)
class Generation:
  """One greedy continuation.

  prompt: the prompt text; prompt_ids: its token ids (as `LanguageModel.encode` gives them);
  answer_ids: the generated ids, EOS excluded; answer: `answer_ids` decoded (special tokens skipped);
  hit_eos: whether EOS was generated within the budget.
  """

  prompt: str
  prompt_ids: list[int]
  answer_ids: list[int]
  answer: str
  hit_eos: bool


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


def greedy_batch(lm, params, ids, mask, eos_id, *, max_new_tokens: int):
  """Greedy tokens [B, max_new_tokens] for left-padded prompts ids/mask [B, P]; _NONE after EOS."""
  batch, plen = ids.shape
  family, body = lm._family, lm._body
  full_mask = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens), mask.dtype)], axis=1)

  def step(cache, tok, pos):
    out, variables = body.apply(
      {"params": params[family.prefix], "cache": cache},
      input_ids=tok,
      attention_mask=full_mask,
      position_ids=pos,
      deterministic=True,
      mutable=["cache"],
    )
    logits = lm._head(params, out.last_hidden_state[:, -1])
    return variables["cache"], jnp.argmax(logits, axis=-1).astype(jnp.int32)

  cache = _empty_cache(lm, batch, plen + max_new_tokens)
  cache, tok = step(cache, ids, jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0))  # prefill
  out = jnp.full((batch, max_new_tokens), _NONE, jnp.int32).at[:, 0].set(tok)
  done = tok == eos_id
  pos = jnp.sum(mask, axis=-1).astype(jnp.int32)  # position of `tok`, the next token fed

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body_fn(state):
    i, cache, tok, done, out, pos = state
    cache, tok = step(cache, tok[:, None], pos[:, None])
    out = out.at[:, i].set(jnp.where(done, _NONE, tok))
    return i + 1, cache, tok, done | (tok == eos_id), out, pos + 1

  state = (jnp.int32(1), cache, tok, done, out, pos)
  return jax.lax.while_loop(cond, body_fn, state)[4]


def generate(lm, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[Generation]:
  """Greedy continuations of `prompts`, in the order given."""
  if max_new_tokens < 1 or batch_size < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
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
    toks = np.asarray(
      lm._generate_fn(
        lm.params, jnp.asarray(ids), jnp.asarray(mask), jnp.int32(lm.eos_id), max_new_tokens=max_new_tokens
      )
    )
    for r, i in enumerate(rows):
      row = [int(t) for t in toks[r] if t != _NONE]
      hit_eos = lm.eos_id in row
      answer = row[: row.index(lm.eos_id)] if hit_eos else row
      results[i] = Generation(
        prompt=prompts[i],
        prompt_ids=encoded[i],
        answer_ids=answer,
        answer=lm.tokenizer.decode(answer, skip_special_tokens=True),
        hit_eos=hit_eos,
      )
  return results
