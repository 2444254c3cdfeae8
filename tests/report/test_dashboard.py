"""The per-answer dashboard in a real headless Chromium: no console errors, every layer shown, not blank.

Chromium and chromedriver come from the Debian packages `chromium` and `chromium-driver` (.ci/run
installs them); the browser tests skip with that reason where they are missing.
"""

import io
import os

import chromium_driver as webdriver  # tests/ is on sys.path under pytest
import numpy as np
import pytest
import tiny_pipeline

from ghosttrack_jax.errors import DataError
from ghosttrack_jax.report import dashboard

BROWSER, DRIVER = webdriver.find_browser()
needs_chromium = pytest.mark.skipif(
  BROWSER is None or DRIVER is None,
  reason="headless Chromium not installed: apt-get install --no-install-recommends chromium chromium-driver",
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  return tiny_pipeline.get(tmp_path_factory)


def synthetic_summary(n_layers=24, n_tracks=30, seed=0, layers=None):
  """An answer summary with the shapes of GPT-2 medium (24 layers, 5120 latents)."""
  rng = np.random.default_rng(seed)
  birth = np.sort(rng.integers(0, n_layers, n_tracks))
  death = np.array([rng.integers(b, n_layers) if rng.random() < 0.7 else -1 for b in birth])
  act = np.zeros((n_tracks, n_layers))
  fid = np.full((n_tracks, n_layers), -1)
  for i in range(n_tracks):
    end = death[i] if death[i] >= 0 else n_layers - 1
    act[i, birth[i] : end + 1] = rng.random(end - birth[i] + 1) * 5 + 0.1
    fid[i, birth[i] : end + 1] = rng.integers(0, 5120, end - birth[i] + 1)
  return {
    "id": "nq_open-000007",
    "model": "gpt2_medium",
    "dataset": "nq_open",
    "mode": "own_answer",
    "question": 'who wrote <the origin> & "species"?',
    "answer": "Charles </script> Darwin",
    "gold": ["Charles Darwin"],
    "label": 0,
    "probability": 0.71,
    "threshold": 0.5,
    "classifier": "logistic",
    "metrics": {"entropy_mean": 1.25, "total_births": 30.0},
    "answer_scalars": {"mean_nll": 2.5},
    "layers": layers or list(range(n_layers)),
    "per_layer": {"entropy": rng.random(n_layers).tolist(), "density": rng.random(n_layers).tolist()},
    "tracks": {"birth": birth.tolist(), "death": death.tolist(), "act": act.tolist(), "fid": fid.tolist()},
  }


def test_layer_rows_count_births_and_deaths():
  s = synthetic_summary(n_layers=6, n_tracks=8, seed=1)
  rows = dashboard.layer_rows(s)
  assert [r["layer"] for r in rows] == list(range(6))
  birth, death = np.array(s["tracks"]["birth"]), np.array(s["tracks"]["death"])
  assert [r["births"] for r in rows] == [int(np.sum(birth == p)) for p in range(6)]
  assert [r["deaths"] for r in rows] == [int(np.sum(death == p)) for p in range(6)]
  act = np.array(s["tracks"]["act"])
  for r in rows:
    acts = [a for _, a, _ in r["top"]]
    assert acts == sorted(acts, reverse=True)
    assert r["active"] == int(np.sum(act[:, r["pos"]] > 0))
  tops = dashboard.top_tracks(s, n=3)
  assert [t["peak"] for t in tops] == sorted(act.max(1), reverse=True)[:3]


def test_html_escapes_text_and_handles_no_detector():
  s = synthetic_summary(n_layers=3, n_tracks=2)
  page = dashboard.render_dashboard(s)
  assert "Charles </script> Darwin" not in page and "Charles &lt;/script&gt; Darwin" in page
  s.update(probability=None, threshold=None, decision=None)
  assert "not scored" in dashboard.render_dashboard(s)
  with pytest.raises(DataError, match="no layers"):
    dashboard.render_dashboard({"tracks": {}})


def test_block_indices_label_the_layers():
  s = synthetic_summary(n_layers=4, n_tracks=3, layers=[2, 5, 7, 11])
  page = dashboard.render_dashboard(s)
  for layer in (2, 5, 7, 11):
    assert f'data-layer="{layer}"' in page and f'data-axis-layer="{layer}"' in page


def _check_in_browser(path: str, n_layers: int, layers=None) -> dict:
  from matplotlib import image as mpimg  # pylint: disable=import-outside-toplevel

  layers = layers or list(range(n_layers))
  with webdriver.Chrome(BROWSER, DRIVER) as chrome:
    chrome.get("file://" + os.path.abspath(path))
    errors = [e for e in chrome.console_log() if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors: {errors}"
    shown = chrome.execute(
      "return Array.from(document.querySelectorAll('#layers tr[data-layer]'))"
      ".filter(r => r.offsetParent !== null).map(r => parseInt(r.dataset.layer))"
    )
    assert shown == layers
    axis = chrome.execute(
      "return Array.from(document.querySelectorAll('[data-axis-layer]'))"
      ".map(e => parseInt(e.dataset.axisLayer))"
    )
    assert axis[0] == layers[0] and axis[-1] == layers[-1]
    n_tracks = chrome.execute("return document.querySelectorAll('#track-chart g.track').length")
    # Interaction works: clicking a top-features row highlights its track and fills the info line.
    info = (
      ["track (none)", 1]
      if not n_tracks
      else chrome.execute(
        "document.querySelector('#top-tracks tbody tr').click();"
        "return [document.getElementById('info').textContent,"
        " document.querySelectorAll('#track-chart g.track.hl').length]"
      )
    )
    assert info[0].startswith("track ") and info[1] == 1
    assert not [e for e in chrome.console_log() if e["level"] in ("SEVERE", "ERROR")]
    png = chrome.screenshot_png()
  img = mpimg.imread(io.BytesIO(png), format="png")
  rgb = img[..., :3].reshape(-1, 3)
  assert img.shape[0] > 500 and img.shape[1] > 500
  non_white = float(np.mean(np.any(rgb < 0.9, axis=1)))
  colours = len(np.unique((rgb * 255).astype(np.uint8), axis=0))
  assert non_white > 0.03 and colours > 20, f"screenshot looks blank: {non_white:.3f} ink, {colours} colours"
  return {"tracks": n_tracks, "ink": non_white}


@needs_chromium
def test_dashboard_in_headless_chromium(tmp_path):
  s = synthetic_summary()
  path = dashboard.write_dashboard(s, str(tmp_path / "dash.html"))
  seen = _check_in_browser(path, 24)
  assert seen["tracks"] == 30


@needs_chromium
def test_harness_sees_console_errors(tmp_path):
  """The console check is real: a page that throws is caught."""
  bad = tmp_path / "bad.html"
  bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>null.f()</script></body></html>")
  with webdriver.Chrome(BROWSER, DRIVER) as chrome:
    chrome.get("file://" + str(bad))
    assert any(e["level"] == "SEVERE" for e in chrome.console_log())


@needs_chromium
def test_dashboard_of_a_tiny_pipeline_run(tiny_run, tmp_path):
  """`summary_from_outputs` on real track/detect outputs of configs/tiny.py renders in the browser."""
  config, workdir = tiny_run
  from ghosttrack_jax.runtime import paths  # pylint: disable=import-outside-toplevel

  tdir = os.path.join(paths.for_config(config, workdir).tracking, config.qa.dataset)
  with np.load(os.path.join(tdir, "tracks.npz")) as z:
    example_id = str(z["example_id"][int(np.argmax(z["n_tracks"]))])
  s = dashboard.summary_from_outputs(config, workdir, example_id)
  assert s["probability"] is not None and len(s["metrics"]) == 26
  path = dashboard.write_dashboard(s, str(tmp_path / "case.html"))
  _check_in_browser(path, len(s["layers"]), s["layers"])
  with pytest.raises(DataError, match="no stored tracks"):
    dashboard.summary_from_outputs(config, workdir, "no-such-example")
