"""SAEs trained elsewhere (`config.sae.source`, sae.external): SAELens folders (version 6 and older configs)
and Gemma Scope params.npz read into our conventions with the SAE's own codes, misfits named by field and
value, and the pipeline's answer..report on our own export read back this way giving the feature table
of our checkpoints."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import saelens_env  # tests/ is on sys.path under pytest
import tiny_pipeline
from safetensors.numpy import save_file

from ghosttrack_jax import config_lib
from ghosttrack_jax.errors import ConfigError
from ghosttrack_jax.runtime import paths
from ghosttrack_jax.sae import trained
from ghosttrack_jax.track import feature_table

D, M = 64, 96  # configs/tiny.py's d_model; SAE width


def _config(source, layers=()):
  c = config_lib.base_config()
  c.model.name, c.model.family, c.model.source = "tiny", "gpt2", "random"  # 2 blocks, d_model 64
  c.model.layers, c.sae.source = layers, str(source)
  return c


def _params(seed, d=D, m=M):
  rng = np.random.default_rng(seed)
  return {
    "W_enc": rng.normal(size=(d, m)).astype(np.float32) / 8,
    "W_dec": rng.normal(size=(m, d)).astype(np.float32) / 8,
    "b_enc": rng.normal(size=m).astype(np.float32) / 4,
    "b_dec": rng.normal(size=d).astype(np.float32),
    "threshold": np.abs(rng.normal(size=m)).astype(np.float32) / 4,
  }


def _saelens(directory, hook, arch="jumprelu", seed=0, v6=True, **cfg_fields):
  """A SAELens folder; returns its params. Fields given by name override the config's."""
  os.makedirs(directory, exist_ok=True)
  p = _params(seed)
  tensors = {k: v for k, v in p.items() if k != "threshold" or arch == "jumprelu"}
  save_file(tensors, os.path.join(directory, "sae_weights.safetensors"))
  meta = {"model_name": "gpt2", "hook_name": hook, "hook_head_index": None, "prepend_bos": False}
  meta["model_from_pretrained_kwargs"] = cfg_fields.pop("model_from_pretrained_kwargs", {})
  if v6:
    cfg = {"architecture": arch, "d_in": D, "d_sae": M, "dtype": "float32", "apply_b_dec_to_input": True}
    cfg.update(normalize_activations="none", metadata={"sae_lens_version": "6.18.0", **meta})
  else:  # SAELens < 6: flat, hook_point, activation_fn_str
    cfg = {"d_in": D, "d_sae": M, "dtype": "torch.float32", "hook_point": hook, "model_name": "gpt2"}
  cfg.update(cfg_fields)
  with open(os.path.join(directory, "cfg.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f)
  return p


def _their_codes(p, x, arch, apply_b_dec=True, centre=False, k=0):
  """What SAELens computes: relu(pre) * (pre > theta) for JumpReLU, relu of the top k for TopK."""
  x = x - x.mean(-1, keepdims=True) if centre else x
  pre = (x - apply_b_dec * p["b_dec"]) @ p["W_enc"] + p["b_enc"]
  if arch == "topk":
    keep = np.argsort(-pre, axis=-1)[:, :k]
    out = np.zeros_like(pre)
    np.put_along_axis(out, keep, np.maximum(np.take_along_axis(pre, keep, -1), 0), -1)
    return out
  theta = p["threshold"] if arch == "jumprelu" else 0.0
  return np.maximum(pre, 0) * (pre > theta)


X = np.random.default_rng(7).normal(size=(5, D)).astype(np.float32) * 3


@pytest.mark.parametrize(
  "arch,apply_b_dec,centre", [("jumprelu", True, False), ("jumprelu", False, True), ("standard", True, True)]
)
def test_saelens_folders_give_their_own_codes(tmp_path, arch, apply_b_dec, centre):
  """resid_pre of block N + 1 is our layer N; b_dec subtraction and TransformerLens's centring folded in."""
  kwargs = {"center_writing_weights": True} if centre else {}
  p0 = _saelens(tmp_path / "a", "blocks.1.hook_resid_pre", arch, 0, apply_b_dec_to_input=apply_b_dec,
                model_from_pretrained_kwargs=kwargs)  # fmt: skip
  p1 = _saelens(tmp_path / "b", "blocks.1.hook_resid_post", arch, 1, apply_b_dec_to_input=apply_b_dec,
                model_from_pretrained_kwargs=kwargs)  # fmt: skip
  _saelens(tmp_path / "c", "blocks.0.hook_resid_pre", arch, 2)  # the embeddings: not a layer, unused
  saes = trained.load_trained_saes(_config(tmp_path), "/nonexistent")
  assert saes.layers == [0, 1] and saes.arch == "jumprelu"
  codes = np.asarray(saes.encode(np.stack([X, X])))
  for i, p in enumerate((p0, p1)):
    np.testing.assert_allclose(codes[i], _their_codes(p, X, arch, apply_b_dec, centre), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(saes.params["W_dec"][i], p["W_dec"])  # decoders as given


def test_topk_old_config_and_gemma_scope(tmp_path):
  """A SAELens < 6 TopK config (activation_fn_str topk) without b_dec subtraction, and Gemma Scope npz."""
  for layer in (0, 1):
    p = _saelens(tmp_path / "old" / f"l{layer}", f"blocks.{layer}.hook_resid_post", seed=layer, v6=False,
                 activation_fn_str="topk", activation_fn_kwargs={"k": 7}, apply_b_dec_to_input=False)  # fmt: skip
  saes = trained.load_trained_saes(_config(tmp_path / "old"), "/nonexistent")
  assert (saes.arch, saes.k, saes.apply_b_dec_to_input) == ("topk", 7, True)
  codes = np.asarray(saes.encode(np.stack([X, X])))[1]
  np.testing.assert_allclose(codes, _their_codes(p, X, "topk", apply_b_dec=False, k=7), rtol=1e-4, atol=1e-4)

  scope = tmp_path / "scope"
  for layer in (0, 1):
    (scope / f"layer_{layer}" / "width_96" / "average_l0_9").mkdir(parents=True)
    p = _params(layer)
    np.savez(scope / f"layer_{layer}" / "width_96" / "average_l0_9" / "params.npz", **p)
  saes = trained.load_trained_saes(_config(scope), "/nonexistent")
  assert saes.arch == "jumprelu" and not saes.apply_b_dec_to_input
  codes = np.asarray(saes.encode(np.stack([X, X])))[1]
  np.testing.assert_allclose(codes, _their_codes(p, X, "jumprelu", apply_b_dec=False), rtol=1e-5, atol=1e-5)

  scope2 = tmp_path / "scope2" / "resid_post"  # Gemma Scope 2: params.safetensors, lower-case w_
  for layer in (0, 1):
    (scope2 / f"layer_{layer}_width_96_l0_small").mkdir(parents=True)
    p = {k.replace("W_", "w_"): v for k, v in _params(layer).items()}
    save_file(p, str(scope2 / f"layer_{layer}_width_96_l0_small" / "params.safetensors"))
  codes = np.asarray(trained.load_trained_saes(_config(scope2), "/nonexistent").encode(np.stack([X, X])))[1]
  np.testing.assert_allclose(
    codes, _their_codes(_params(1), X, "jumprelu", apply_b_dec=False), rtol=1e-5, atol=1e-5
  )
  (scope2 / "mlp_out" / "layer_0_width_96").mkdir(parents=True)
  np.savez(scope2 / "mlp_out" / "layer_0_width_96" / "params.npz", **_params(0))
  with pytest.raises(ConfigError, match="hook point 'mlp'"):
    trained.load_trained_saes(_config(scope2), "/nonexistent")


@pytest.mark.parametrize(
  "setup,match",
  [
    (lambda d: _saelens(d / "a", "blocks.0.hook_mlp_out"), "hook_name='blocks.0.hook_mlp_out'"),
    (lambda d: _saelens(d / "a", "blocks.0.hook_resid_post", d_in=32), r"d_in=32 and d_sae=96 need \(32, 96\)"),
    (lambda d: _saelens(d / "a", "blocks.0.hook_resid_post", normalize_activations="layer_norm"),
     "normalize_activations='layer_norm'"),
    (lambda d: _saelens(d / "a", "blocks.0.hook_resid_post", dtype="int8"), "dtype='int8'"),
    (lambda d: _saelens(d / "a", "blocks.0.hook_resid_post", architecture="gated"), "architecture='gated'"),
    (lambda d: _saelens(d / "a", "blocks.0.hook_resid_post"), r"0 SAEs for layer 1 .* it has layers \[0\]"),
    (lambda d: [_saelens(d / n, "blocks.0.hook_resid_post") for n in "ab"], "2 SAEs for layer 0"),
    (lambda d: None, "holds no SAE"),
  ],
)  # fmt: skip
def test_a_folder_that_does_not_fit_names_the_field_and_value(tmp_path, setup, match):
  setup(tmp_path)
  with pytest.raises(ConfigError, match=match):
    trained.load_trained_saes(_config(tmp_path), "/nonexistent")


SAELENS_SAVE = """
import sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
from sae_lens import SAE
root, x = sys.argv[1], torch.from_numpy(np.load(sys.argv[1] + "/x.npy"))
for arch in ("jumprelu", "topk", "standard"):
  for layer in (0, 1):
    cfg = {"architecture": arch, "d_in": x.shape[1], "d_sae": 96, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": arch != "jumprelu", "normalize_activations": "none", "k": 7,
           "metadata": {"model_name": "gpt2", "hook_name": f"blocks.{layer}.hook_resid_post"}}
    sae = SAE.from_dict(cfg if arch == "topk" else {k: v for k, v in cfg.items() if k != "k"})
    g = torch.Generator().manual_seed(layer)
    with torch.no_grad():
      for name, p in sae.named_parameters():
        p.copy_(torch.randn(p.shape, generator=g) / 4 + (0.2 if "threshold" in name else 0))
    sae.save_model(f"{root}/{arch}/layer_{layer}")
    np.save(f"{root}/{arch}/codes_{layer}.npy", sae.encode(x).detach().numpy())
"""


@pytest.mark.skipif(saelens_env.python() is None, reason=saelens_env.SKIP_REASON)
def test_saes_saved_by_saelens_give_saelens_codes(tmp_path):
  """SAELens's own `save_model` output of each architecture, read through config.sae.source."""
  np.save(tmp_path / "x.npy", X)
  proc = subprocess.run(
    [saelens_env.python(), "-c", SAELENS_SAVE, str(tmp_path)], capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for arch in ("jumprelu", "topk", "standard"):
    codes = np.asarray(
      trained.load_trained_saes(_config(tmp_path / arch), "/nonexistent").encode(np.stack([X, X]))
    )
    for layer in (0, 1):
      theirs = np.load(tmp_path / arch / f"codes_{layer}.npy")
      np.testing.assert_allclose(codes[layer], theirs, rtol=1e-5, atol=1e-5, err_msg=arch)
      assert (theirs > 0).sum() >= 10  # not a vacuous comparison


def test_layers_subset_and_a_missing_folder(tmp_path):
  _saelens(tmp_path / "a", "blocks.1.hook_resid_post")
  assert trained.load_trained_saes(_config(tmp_path, layers=(1,)), "/nonexistent").layers == [1]
  problems = config_lib.problems(_config(tmp_path / "nowhere"), ("track",))
  assert any("config.sae.source=" in p and "no such folder" in p for p in problems)


def test_answer_to_report_on_our_export_gives_our_feature_table(tiny_default_run, tmp_path):
  """The tiny default run's own SAELens export, read through config.sae.source in a fresh workdir (its
  answers copied in): no extract or train, and track writes the same features as from our checkpoints."""
  config, run_dir, qa_file = tiny_default_run
  mine = paths.for_config(config, run_dir)
  dataset = config.qa.dataset
  workdir = str(tmp_path / "run")
  shutil.copytree(mine.answers(dataset), paths.for_config(config, workdir).answers(dataset))
  flags = (
    f"--config.qa.wikidata_file={qa_file}",
    "--config.qa.exclude_non_answers=False",
    f"--config.sae.source={mine.sae_export}",
  )
  _, log = tiny_pipeline.run_pipeline(workdir, flags=flags, config=tiny_pipeline.DEFAULT_CONFIG)
  assert "stages ('extract', 'train') do not run" in log
  theirs = paths.for_config(config, workdir)
  assert not os.path.exists(theirs.hidden_states) and not os.path.exists(theirs.sae_export)
  ours_dir, their_dir = (feature_table.directory(config, w, dataset) for w in (run_dir, workdir))
  ours, got = (np.load(os.path.join(d, "features.npz")) for d in (ours_dir, their_dir))
  assert sorted(ours.files) == sorted(got.files)
  for key in ours.files:
    np.testing.assert_array_equal(got[key], ours[key], err_msg=key)
  with open(os.path.join(theirs.evaluation, "report.md"), encoding="utf-8") as f:
    assert "SAEs trained elsewhere (config.sae.source=" in f.read()
