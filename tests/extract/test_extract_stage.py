"""The extract stage on the tiny config: a valid store with checksums, resume after SIGKILL, clear errors,
and a store of another model refused before any stage runs."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_pipeline import tiny_config  # pylint: disable=import-error  (tests/ is on sys.path)

from ghosttrack_jax.errors import DataError, StoreMismatchError
from ghosttrack_jax.extract import stage as extract
from ghosttrack_jax.extract import store as store_lib
from ghosttrack_jax.runtime import paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(workdir, *args, **kw):
  cmd = [
    sys.executable,
    "-m",
    "ghosttrack_jax.main",
    f"--config={REPO}/configs/tiny.py",
    f"--workdir={workdir}",
    "--stages=extract",
    *args,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
  )


def _tree_digest(path):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("extract"))
  config = tiny_config()
  extract.run(config, workdir)
  return config, workdir


def test_store_rows_are_the_models_block_outputs(tiny_store):
  from ghosttrack_jax import lm

  config, workdir = tiny_store
  store = store_lib.ActivationStore.open(
    paths.for_config(config, workdir).hidden_states,
    expect={"model": "tiny_gpt2", "d_model": 64, "layers": [0, 1]},
  )
  T = config.data.seq_len
  assert store.n_windows == -(-config.data.n_tokens // (T - 1))
  assert store.n_rows == store.n_windows * (T - 1)
  assert store.meta["dtype"] == "bfloat16" and store.layers == [0, 1]
  model = lm.load_model(config.model)
  ids = store.token_windows(3, 5)
  resid = np.asarray(model.residuals(jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32)))
  want = resid[:, :, 1:, :].reshape(2, -1, 64).astype(store.read(0, 0, 1).dtype)
  got = store.read(slice(0, 2), 3 * (T - 1), 5 * (T - 1))
  np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
  # Statistics the SAE recipe needs, over the stored (bf16) values.
  all_rows = store.read(slice(0, 2), 0, store.n_rows).astype(np.float32)
  np.testing.assert_allclose(store.mean_sq_norm(), np.mean(np.sum(all_rows**2, -1), 1), rtol=1e-4)
  assert not os.path.exists(os.path.join(store.path, store_lib.PROGRESS))


def test_rerun_of_a_complete_store_is_a_no_op(tiny_store):
  config, workdir = tiny_store
  path = paths.for_config(config, workdir).hidden_states
  before = _tree_digest(path)
  extract.run(config, workdir)
  assert _tree_digest(path) == before


def test_mismatched_store_fails_and_leaves_it_untouched(tiny_store):
  config, workdir = tiny_store
  path = paths.for_config(config, workdir).hidden_states
  before = _tree_digest(path)
  with pytest.raises(StoreMismatchError, match="seq_len: store has 32, config wants 16"):
    extract.run(tiny_config(**{"data.seq_len": 16}), workdir)
  assert _tree_digest(path) == before


def test_empty_corpus_is_a_clear_error(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(DataError, match="no complete window"):
    extract.run(tiny_config(**{"data.corpus": str(empty)}), str(tmp_path / "w"))


def test_command_line_errors_name_the_problem(tmp_path):
  out, _ = _main(tmp_path, "--config.sae.arch=dense").communicate(timeout=120)
  assert "config.sae.arch='dense'" in out
  out, _ = _main(tmp_path, "--config.sae.widht=3").communicate(timeout=120)
  assert "widht" in out
  p = _main(tmp_path, "--config.model.family=llama", f"--config.model.source={tmp_path}/nope.gguf")
  out, _ = p.communicate(timeout=120)
  # a missing model file is found by config_lib.validate before any stage starts
  assert p.returncode != 0 and "nope.gguf': no such file" in out and "ConfigError" in out
  assert not os.path.exists(tmp_path / "cache")


def test_sigkill_mid_extraction_then_resume_equals_uninterrupted(tmp_path):
  n_tokens = "--config.data.n_tokens=60000"  # ~1,900 windows: long enough to be killed mid-way
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  store = killed / "cache" / "tiny_gpt2" / "hidden_states"
  proc = _main(killed, n_tokens)
  deadline = time.time() + 240
  while time.time() < deadline:
    done = store_lib.groups_done(str(store)) if store.exists() else set()
    if done:
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert done, "extraction never got going"
  assert not (store / store_lib.COMPLETE).exists(), "extraction finished before it was killed"
  with pytest.raises(Exception, match="incomplete"):
    store_lib.ActivationStore.open(str(store))
  outputs = {}
  for workdir in (killed, clean):
    p = _main(workdir, n_tokens)
    outputs[workdir], _ = p.communicate(timeout=600)
    assert p.returncode == 0, outputs[workdir]
  assert "resuming extraction:" in outputs[killed]
  a = store_lib.ActivationStore.open(str(store))
  b = store_lib.ActivationStore.open(str(clean / "cache" / "tiny_gpt2" / "hidden_states"))
  assert a.n_rows == b.n_rows
  np.testing.assert_array_equal(
    a.read(slice(0, 2), 0, a.n_rows).view(np.uint16), b.read(slice(0, 2), 0, b.n_rows).view(np.uint16)
  )
  np.testing.assert_array_equal(a.token_windows(0, a.n_windows), b.token_windows(0, b.n_windows))
  for key in ("layer_stats", "n_rows", "n_windows"):
    assert a.meta[key] == b.meta[key]


def test_resume_with_another_batch_size_is_refused(tmp_path):
  config = tiny_config()
  path = paths.for_config(config, str(tmp_path)).hidden_states
  extract.run(config, str(tmp_path))
  # Turn the finished store back into a half-written one, as a kill after batch 2 would leave it.
  os.remove(os.path.join(path, store_lib.COMPLETE))
  from ghosttrack_jax.runtime import atomic_io

  meta = atomic_io.read_json(os.path.join(path, store_lib.META))
  atomic_io.atomic_write_json(
    os.path.join(path, store_lib.PROGRESS),
    {
      "phase": "activations",
      "n_windows": meta["n_windows"],
      "batches_done": 2,
      "batch_size": 8,
      "chunk_rows": config.extract.chunk_rows,
      "stats": {"sum_sq_norm": [0.0, 0.0], "sum_norm": [0.0, 0.0], "max_norm": [0.0, 0.0]},
    },
  )
  with pytest.raises(StoreMismatchError, match="extract.batch_size=8"):
    extract.run(tiny_config(**{"extract.batch_size": 4}), str(tmp_path))
  extract.run(config, str(tmp_path))  # the original geometry resumes and completes
  assert store_lib.ActivationStore.open(path).n_rows == meta["n_rows"]


def test_extraction_records_checksums_that_verify(tiny_store):
  config, workdir = tiny_store
  path = paths.for_config(config, workdir).hidden_states
  store = store_lib.ActivationStore.open(path)
  assert store.meta["format"] == store_lib.FORMAT
  assert store.checksums.shape == (2, store.n_chunks)
  assert set(store.meta["token_checksums"]) == {"token_ids", "doc_ids"}
  assert store.meta["source_fingerprint"].startswith("random gpt2: n_layer=2 d_model=64")
  assert not os.path.exists(os.path.join(path, store_lib.GROUPS))
  assert store_lib.verify_store(path) == []


def test_a_changed_model_stops_before_any_stage(tiny_store, tmp_path):
  """--config.model.random.d_model=96 with a complete store of the d_model-64 model in the workdir:
  the run stops before extract (which would skip) and train (which would fit SAEs on the old rows)."""
  config, workdir = tiny_store
  path = paths.for_config(config, workdir).hidden_states
  before = _tree_digest(path)
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "ghosttrack_jax.main",
      f"--config={REPO}/configs/tiny.py",
      f"--workdir={workdir}",
      "--config.model.random.d_model=96",
    ],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert p.returncode == 2, p.stderr[-3000:]
  assert "d_model: store has 64, config wants 96" in p.stderr
  assert f"delete {path} to extract again" in p.stderr
  assert "=== stage" not in p.stderr
  assert not os.path.exists(paths.for_config(config, workdir).checkpoints)
  assert _tree_digest(path) == before


def test_a_damaged_chunk_stops_training_with_the_store_the_chunk_and_the_fix(tiny_store, tmp_path):
  from ghosttrack_jax.errors import DamagedStoreError
  from ghosttrack_jax.train import stage as train_stage

  config, workdir = tiny_store
  src = paths.for_config(config, workdir).hidden_states
  work = str(tmp_path / "w")
  dst = paths.for_config(config, work).hidden_states
  shutil.copytree(src, dst)
  with open(store_lib.chunk_file(os.path.join(dst, "activations"), 1, 3, 0), "r+b") as f:
    f.truncate(100)
  with pytest.raises(DamagedStoreError) as e:
    train_stage.run(config, work)
  assert dst in str(e.value) and "chunk 3 of layer position 1" in str(e.value)
  assert "has 100 bytes" in str(e.value) and "--verify" in str(e.value)
