"""`LanguageModel`: one transformers Flax causal LM behind the interface of docs/DESIGN.md.

Residual streams are the raw outputs of the transformer blocks ("layer l" = resid_post of block l, no
final norm), captured with Flax `capture_intermediates`; the last block's output is therefore included,
which `output_hidden_states` cannot give (its last entry has the final norm applied). The forward passes
run the model body (embeddings, blocks, final norm) and apply the LM head here, so a residuals-only call
never touches the [B, T, vocab] head. Every forward is jitted once per input shape; `params` is an
argument, not a closure constant. Position ids are `cumsum(mask) - 1`, so left- and right-padded batches
both give each real token its true position.
"""

import functools
import re
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.lm import generation
from ghosttrack_jax.lm.families import Family

# User text (a question, a passage, an answer to score) may contain a control token's text, "<|im_end|>"
# say, which the tokenizer would turn into the control token itself, so a question could close its own
# chat turn. The prompt builders wrap each such occurrence in these two private-use characters
# (`protect_control_text`) and `encode_text` tokenizes what they enclose as plain text. Text without
# a control token's text is not changed, nor its tokens.
TEXT_OPEN, TEXT_CLOSE = "\ue000", "\ue001"
_PROTECTED = re.compile(f"({TEXT_OPEN}.*?{TEXT_CLOSE})", re.S)


def protect_control_text(text: str, tokenizer) -> str:
  """`text` with every occurrence of one of the tokenizer's added or special tokens marked as text."""
  specials = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
  found = sorted((t for t in specials if t and t in text), key=len, reverse=True)
  if not found:
    return text
  pattern = re.compile("|".join(re.escape(t) for t in found))
  return pattern.sub(lambda m: TEXT_OPEN + m.group(0) + TEXT_CLOSE, text)


def encode_text(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
  """Token ids of `text`; the parts `protect_control_text` marked are tokenized as plain text."""
  if TEXT_OPEN not in text:
    return [int(t) for t in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]
  ids = [int(t) for t in tokenizer("", add_special_tokens=add_special_tokens)["input_ids"]]  # BOS, if any
  for part in _PROTECTED.split(text):
    literal = part.startswith(TEXT_OPEN) and part.endswith(TEXT_CLOSE)
    body = part[1:-1] if literal else part
    if body:
      ids += tokenizer(body, add_special_tokens=False, split_special_tokens=literal)["input_ids"]
  return [int(t) for t in ids]


def positions(mask: jax.Array) -> jax.Array:
  """Position ids [B, T] from an attention mask: 0, 1, ... over the real tokens, 0 on left padding."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


class LanguageModel:
  """A causal LM with residual-stream access (see docs/DESIGN.md, "Model interface").

  Attributes:
    name: `config.model.name`.
    family: "gpt2" or "llama".
    hf_config: the transformers config of the model.
    params: Flax params pytree, in the layout of the transformers `Flax*LMHeadModel`/`ForCausalLM`.
    tokenizer: HF fast tokenizer with pad and eos tokens set.
    layers: block indices returned by `residuals` (config.model.layers; all blocks by default).
    n_layers: len(layers), the leading axis of `residuals`.
    n_blocks: number of transformer blocks in the model.
    d_model, vocab_size: residual width and number of logits.
    eos_id, pad_id: token ids; bos_id: the BOS id when `encode` prepends it, else None.
  """

  def __init__(
    self,
    *,
    name: str,
    family: Family,
    hf_config,
    params,
    tokenizer,
    dtype=jnp.float32,
    layers: Optional[Sequence[int]] = None,
  ):
    self.name = name
    self._family = family
    self.family = family.name
    self.hf_config = hf_config
    self.params = params
    self.tokenizer = tokenizer
    self.dtype = dtype
    self.n_blocks = family.n_layers(hf_config)
    self.layers = check_layers(layers, self.n_blocks)
    self.n_layers = len(self.layers)
    self.d_model = int(hf_config.hidden_size)
    self.vocab_size = int(hf_config.vocab_size)
    self.max_positions = family.n_positions(hf_config)
    self.eos_id = int(tokenizer.eos_token_id)
    self.pad_id = int(tokenizer.pad_token_id)
    probe = tokenizer("a")["input_ids"]
    self.bos_id = (
      int(tokenizer.bos_token_id)
      if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id
      else None
    )
    self._body = family.body_cls(hf_config, dtype=dtype)
    self.residuals_fn = jax.jit(functools.partial(self._forward, with_logits=False))
    self.logits_and_residuals_fn = jax.jit(functools.partial(self._forward, with_logits=True))
    self.logits_fn = jax.jit(self._logits)
    self.logits_with_replacement_fn = jax.jit(self._logits_with_replacement)
    self.token_logprobs_fn = jax.jit(self._token_logprobs)
    self.next_token_logprobs_fn = jax.jit(self._next_token_logprobs)
    self._generate_fn = jax.jit(
      functools.partial(generation.greedy_batch, self), static_argnames=("max_new_tokens",)
    )
    self._sample_fn = jax.jit(
      functools.partial(generation.greedy_and_samples_batch, self),
      static_argnames=("max_new_tokens", "n_samples", "temperature", "embed_block"),
    )

  def __repr__(self):
    return (
      f"LanguageModel({self.name!r}, family={self.family}, blocks={self.n_blocks}, "
      f"d_model={self.d_model}, vocab={self.vocab_size}, layers={list(self.layers)})"
    )

  # ---- tokenizer -------------------------------------------------------------------------------

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, with BOS prepended when the tokenizer does so (see `bos_id`); control-token
    text that the prompt builders marked (`protect_control_text`) is encoded as text."""
    return encode_text(self.tokenizer, text)

  def encode_batch(
    self, texts: Sequence[str], length: Optional[int] = None, padding_side: str = "right"
  ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), both int32 [B, length], padded with `pad_id`; longer texts are truncated on the right.

    `length` defaults to the longest text.
    """
    enc = [self.encode(t) for t in texts]
    length = length or max(len(e) for e in enc)
    ids = np.full((len(enc), length), self.pad_id, np.int32)
    mask = np.zeros((len(enc), length), np.int32)
    for i, e in enumerate(enc):
      e = e[:length]
      sl = slice(0, len(e)) if padding_side == "right" else slice(length - len(e), length)
      ids[i, sl], mask[i, sl] = e, 1
    return ids, mask

  def format_prompt(self, question: str, use_chat_template: Optional[bool] = None) -> str:
    """The prompt text for `question`: one user turn of the chat template, or the question as is.

    use_chat_template: True requires a chat template (SmolLM2-Instruct's ChatML, with its default
    system turn and the assistant header appended), False never uses one, None uses it when the
    tokenizer has one.
    """
    has_template = bool(getattr(self.tokenizer, "chat_template", None))
    if use_chat_template and not has_template:
      raise ConfigError(f"model {self.name!r} has no chat template; format prompts without it")
    if use_chat_template is False or not has_template:
      return question
    return self.tokenizer.apply_chat_template(
      [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )

  # ---- forward passes ----------------------------------------------------------------------------

  def _apply_body(self, params, ids, mask, **kwargs):
    return self._body.apply(
      {"params": params[self._family.prefix]},
      input_ids=ids,
      attention_mask=mask,
      position_ids=positions(mask),
      deterministic=True,
      **kwargs,
    )

  def _head(self, params, hidden):
    return self._family.logits(self.hf_config, params, hidden).astype(jnp.float32)

  def _forward(self, params, ids, mask, *, with_logits: bool):
    wanted = frozenset(self.layers)
    block_cls = self._family.block_cls

    def capture(mdl, method_name):
      return method_name == "__call__" and isinstance(mdl, block_cls) and int(mdl.name) in wanted

    out, state = self._apply_body(params, ids, mask, capture_intermediates=capture, mutable=["intermediates"])
    blocks = state["intermediates"][self._family.blocks_key]
    # [0]: first (only) call of the block; [0]: hidden states of the tuple the block returns.
    resid = jnp.stack([blocks[str(i)]["__call__"][0][0] for i in self.layers]).astype(jnp.float32)
    if not with_logits:  # blocks after max(layers), the final norm and the head are dead code
      return resid
    return self._head(params, out.last_hidden_state), resid

  def _logits(self, params, ids, mask):
    return self._head(params, self._apply_body(params, ids, mask).last_hidden_state)

  def _token_logprobs(self, params, ids, mask):
    """[B, T] log p(ids[t] | ids[<t]) (0 at t = 0)."""
    logp = jax.nn.log_softmax(self._logits(params, ids, mask)[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)

  def _next_token_logprobs(self, params, ids, mask, candidates):
    """[B, C] log p(candidate | the row's real tokens) at each right-padded row's last real position."""
    hidden = self._apply_body(params, ids, mask).last_hidden_state
    last = jnp.maximum(jnp.sum(mask, axis=-1) - 1, 0)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(self._head(params, h), axis=-1)[:, candidates]

  def _logits_with_replacement(self, params, ids, mask, layer, new_resid):
    block_cls = self._family.block_cls
    layer = jnp.asarray(layer, jnp.int32)
    replaced = (layer >= 0) & (layer < self.n_blocks)

    def replace(next_fun, args, kwargs, context):
      if context.method_name != "__call__" or not isinstance(context.module, block_cls):
        return next_fun(*args, **kwargs)
      i = int(context.module.name)
      # Blocks 0..layer need not run: block `layer`'s output is replaced whatever they compute. A
      # data-dependent cond runs one branch, so a call costs the blocks after `layer` (one compile for
      # every layer still). Only the hidden states are returned: the body asks for no other output.
      run = lambda hidden: next_fun(hidden, *args[1:], **kwargs)[0]
      skip = lambda hidden: jnp.where(layer == i, new_resid.astype(hidden.dtype), hidden)
      return (jax.lax.cond(replaced & (i <= layer), skip, run, args[0]),)

    with nn.intercept_methods(replace):
      hidden = self._apply_body(params, ids, mask).last_hidden_state
    return self._head(params, hidden)

  @staticmethod
  def _inputs(ids, mask):
    ids = jnp.asarray(ids, jnp.int32)
    mask = jnp.ones_like(ids) if mask is None else jnp.asarray(mask, jnp.int32)
    return ids, mask

  def residuals(self, ids, mask=None) -> jax.Array:
    """[n_layers, B, T, D] float32 raw block outputs for `self.layers` (no LM head computed)."""
    return self.residuals_fn(self.params, *self._inputs(ids, mask))

  def logits_and_residuals(self, ids, mask=None) -> tuple[jax.Array, jax.Array]:
    """([B, T, V] float32 logits, [n_layers, B, T, D] float32 residuals) from one forward pass."""
    return self.logits_and_residuals_fn(self.params, *self._inputs(ids, mask))

  def logits(self, ids, mask=None) -> jax.Array:
    """[B, T, V] float32 logits."""
    return self.logits_fn(self.params, *self._inputs(ids, mask))

  def token_logprobs(self, ids, mask=None) -> jax.Array:
    """[B, T] float32: the log probability of each token given the ones before it (0 at position 0).
    Right-padded rows: values at padded positions are meaningless."""
    return self.token_logprobs_fn(self.params, *self._inputs(ids, mask))

  def next_token_logprobs(self, ids, mask, candidates) -> jax.Array:
    """[B, C] float32: log p of each candidate token id as the next token after each right-padded row."""
    ids, mask = self._inputs(ids, mask)
    return self.next_token_logprobs_fn(self.params, ids, mask, jnp.asarray(candidates, jnp.int32))

  def logits_with_replacement(self, ids, mask, layer, new_resid) -> jax.Array:
    """[B, T, V] logits with the output of block `layer` replaced by `new_resid` [B, T, D].

    `layer` is a block index (0..n_blocks-1, as in `self.layers`), passed as a traced int32: one
    compile serves every layer. An index that matches no block leaves the model unchanged. Only the
    blocks after `layer` run (the logits are those of the full pass, bit for bit).
    """
    ids, mask = self._inputs(ids, mask)
    return self.logits_with_replacement_fn(
      self.params, ids, mask, jnp.asarray(layer, jnp.int32), jnp.asarray(new_resid)
    )

  # ---- generation --------------------------------------------------------------------------------

  def generate(
    self, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8, **sampling
  ) -> list[generation.Generation]:
    """Greedy continuations of `prompts` (KV cache, stops at EOS), optionally with samples from the
    same prefill (`n_samples`, `temperature`, `seeds`, `embed_block`); see `generation.generate`."""
    return generation.generate(self, prompts, max_new_tokens, batch_size, **sampling)


def check_layers(layers, n_blocks: int) -> tuple[int, ...]:
  """The block indices to use: all when `layers` is empty, else a strictly increasing subset."""
  if not layers:
    return tuple(range(n_blocks))
  layers = tuple(int(l) for l in layers)
  if any(l < 0 or l >= n_blocks for l in layers) or list(layers) != sorted(set(layers)):
    raise ConfigError(
      f"config.model.layers={list(layers)}: give strictly increasing block indices in "
      f"0..{n_blocks - 1} (the model has {n_blocks} blocks), or () for all"
    )
  return layers
