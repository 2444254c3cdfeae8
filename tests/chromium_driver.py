"""A minimal W3C WebDriver client for headless Chromium (Debian packages `chromium`, `chromium-driver`).

Standard library only: it talks JSON over HTTP to `chromedriver`, which drives the browser. Enough for
the dashboard test: open a file, run a script, read the browser console log, take a screenshot.
"""

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> tuple[str | None, str | None]:
  """(browser binary, chromedriver binary), None where missing."""
  browser = next((shutil.which(b) for b in CHROMIUM_CANDIDATES if shutil.which(b)), None)
  return browser, shutil.which("chromedriver")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Chrome:
  """One headless browser session; use as a context manager."""

  def __init__(self, browser: str, driver: str, width: int = 1280, height: int = 1600):
    self.port = _free_port()
    self.proc = subprocess.Popen(
      [driver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    self.base = f"http://127.0.0.1:{self.port}"
    deadline = time.time() + 20
    while True:
      try:
        if self._call("GET", "/status")["value"].get("ready"):
          break
      except (urllib.error.URLError, ConnectionError):
        pass
      if time.time() > deadline:
        self.proc.kill()
        raise RuntimeError("chromedriver did not start within 20 s")
      time.sleep(0.1)
    caps = {
      "capabilities": {
        "alwaysMatch": {
          "browserName": "chrome",
          "goog:chromeOptions": {
            "binary": browser,
            "args": [
              "--headless=new",
              "--no-sandbox",
              "--disable-gpu",
              "--disable-dev-shm-usage",
              "--no-first-run",
              f"--window-size={width},{height}",
            ],
          },
          "goog:loggingPrefs": {"browser": "ALL"},
        }
      }
    }
    try:
      self.session = self._call("POST", "/session", caps)["value"]["sessionId"]
    except Exception:
      self.proc.kill()
      raise

  def _call(self, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
      self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
      with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
      raise RuntimeError(f"WebDriver {method} {path}: {e.code} {e.read()[:500]!r}") from e

  def _s(self, method: str, path: str, body: dict | None = None):
    return self._call(method, f"/session/{self.session}{path}", body)["value"]

  def get(self, url: str) -> None:
    self._s("POST", "/url", {"url": url})

  def execute(self, script: str, *args):
    return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

  def console_log(self) -> list[dict]:
    """Browser console entries since the last call: dicts with level ("SEVERE", ...) and message."""
    return self._s("POST", "/se/log", {"type": "browser"})

  def screenshot_png(self) -> bytes:
    return base64.b64decode(self._s("GET", "/screenshot"))

  def close(self) -> None:
    try:
      self._call("DELETE", f"/session/{self.session}")
    finally:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
