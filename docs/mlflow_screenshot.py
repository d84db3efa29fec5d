"""Re-take docs/images/mlflow-compare-runs.png: the MLflow UI comparing three training runs.

The script trains the demo model three times with different settings into a fresh SQLite
tracking store in a temporary directory, starts a real `mlflow ui` on 127.0.0.1, opens the
UI's compare-runs page for the three runs in headless Chromium (driven over the DevTools
protocol on a pipe, so no Playwright or extra Python package is needed) and saves a PNG.
The server and the browser are always stopped at the end and the temporary directory is
removed. It takes two to three minutes on two CPU cores.

Needs the project's virtual environment and Debian's Chromium (`apt-get install chromium`):

    export PATH=$PWD/.venv/bin:$PATH
    python docs/mlflow_screenshot.py       # writes docs/images/mlflow-compare-runs.png
    python docs/mlflow_screenshot.py --out /tmp/compare.png --chromium /usr/bin/chromium
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pipelines" / "configs" / "demo.yaml"
EXPERIMENT = "forecast-demo"  # tracking.experiment in CONFIG
HOST = "127.0.0.1"
WIDTH, HEIGHT = 1600, 1200  # the viewport; the picture grows taller to fit the page content
MAX_HEIGHT = 4000

# One entry per run: the `--set` overrides given to `forecast train`. The lookback stays
# the same, so the baselines score alike in every run and "Show diff only" hides them.
VARIANTS: list[list[str]] = [
    ["model.d_model=16", "model.n_layers=2", "train.lr=0.002"],
    ["model.d_model=32", "model.n_layers=2", "train.lr=0.002"],
    ["model.d_model=32", "model.n_layers=1", "train.lr=0.001"],
]
COMMON: list[str] = ["train.epochs=2", "train.max_windows_per_epoch=2000"]

TRAIN_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 120
PAGE_TIMEOUT_S = 90
CDP_TIMEOUT_S = 30

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
]

# The UI stores these in localStorage (useLocalStorage keys get a `_v<version>` suffix).
# Without them the MLflow Assistant panel opens by itself on a local server's first visit
# and covers a third of the page.
PRESET_STORAGE = """
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""

# True once the comparison has loaded: the title is there, the parameter table and the
# metric grid are filled in, and nothing is spinning any more.
PAGE_READY = """
(() => {
  const text = document.body ? document.body.innerText : "";
  return text.includes("Comparing %d Runs") && text.includes("model.d_model")
    && document.querySelector(".ReactVirtualized__Grid") !== null
    && !document.querySelector(
      ".ant-spin-spinning, [data-testid*='spinner'], [role='progressbar']");
})()
"""

# Turn on every "Show diff only" switch (parameters, metrics, tags), so that the tables
# list what differs between the runs rather than every key. Returns how many it found.
SHOW_DIFF_ONLY = """
(() => {
  const labels = [...document.querySelectorAll("label, span")]
    .filter(el => el.children.length === 0 && el.textContent.trim() === "Show diff only");
  let found = 0;
  for (const label of labels) {
    const toggle = label.closest("div").querySelector("[role='switch']");
    if (!toggle) continue;
    found += 1;
    if (toggle.getAttribute("aria-checked") !== "true") toggle.click();
  }
  return found;
})()
"""

# The metric grid shows at most 300 px (six and a half rows); the rest needs scrolling.
# Scroll it so that this row is the first one shown: with "Show diff only" on, it and the
# rows after it are skill_*, test_mae, test_mae_orig, test_mase and test_mse.
FIRST_METRIC_ROW = "skill_naive"

# The grid is two virtualized grids side by side, the names (overflow hidden) and the
# values; the names follow the values only a render late, so scroll each one itself.
# Returns false when the row is not there.
SCROLL_METRICS = """
((name, step) => {
  const [names, values] = document.querySelectorAll(".ReactVirtualized__Grid");
  const cell = names && [...names.querySelectorAll("div[style]")]
    .find(el => el.textContent.trim() === name);
  if (!cell || !values) return false;
  (step === 0 ? values : names).scrollTop = parseFloat(cell.style.top);
  return true;
})(%s, %d)
"""

# Fold up the sections below the metrics: the artifact preview is a tall empty frame
# until a file is picked, and the tags repeat what the run details already say.
FOLD_SECTIONS = """
(() => {
  const headers = [...document.querySelectorAll("[class*='collapse-header']")]
    .filter(el => ["Artifacts", "Tags"].includes(el.textContent.trim()));
  headers.forEach(el => el.click());
  return headers.length;
})()
"""

# Height of the page with the scrolling main pane unrolled: the viewport plus what the
# pane hides below its fold.
CONTENT_HEIGHT = """
(() => {
  const main = document.querySelector("main");
  return window.innerHeight + (main ? main.scrollHeight - main.clientHeight : 0);
})()
"""


def compact_json(value: list[str]) -> str:
    return json.dumps(value, separators=(",", ":"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def train_runs(workdir: Path, uri: str) -> None:
    """Train one run per entry of VARIANTS. The working directory is the temporary one,
    so anything MLflow would put under ./mlruns stays out of the repository."""
    forecast = Path(sys.executable).with_name("forecast")
    for i, overrides in enumerate(VARIANTS, 1):
        cmd = [str(forecast), "train", "--config", str(CONFIG), "--tracking-uri", uri,
               "--output-dir", str(workdir / "out")]
        for item in COMMON + overrides:
            cmd += ["--set", item]
        print(f"training run {i}/{len(VARIANTS)}: {' '.join(overrides)}", flush=True)
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                              timeout=TRAIN_TIMEOUT_S, check=False)
        if done.returncode != 0:
            sys.exit(f"forecast train failed ({done.returncode}):\n{done.stderr[-3000:]}")


def find_runs(uri: str) -> tuple[str, list[str]]:
    """The experiment id and the ids of its runs, oldest first."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        sys.exit(f"experiment {EXPERIMENT!r} not found in {uri}")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    if len(runs) != len(VARIANTS):
        sys.exit(f"expected {len(VARIANTS)} runs in {EXPERIMENT!r}, found {len(runs)}")
    return experiment.experiment_id, [run.info.run_id for run in runs]


def start_ui(workdir: Path, uri: str, port: int) -> subprocess.Popen[bytes]:
    """Start `mlflow ui` in its own process group (it forks uvicorn workers) and wait
    until /health answers. One worker and no job runner: the page needs neither more."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(workdir / "mlflow-ui.log", "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
             "--host", HOST, "--port", str(port), "--workers", "1"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / "mlflow-ui.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"mlflow ui did not answer within {SERVER_START_TIMEOUT_S}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session: SIGTERM to its process group, then,
    once it has exited or had 20 s, SIGKILL to whatever is left in the group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # nothing left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)


def _high_pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are numbered above 4, so that putting the browser's
    ends on fds 3 and 4 in the child cannot overwrite them."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5))
        os.close(fd)
    return ends[0], ends[1]


class DevTools:
    """Headless Chromium driven over --remote-debugging-pipe: the browser reads
    NUL-terminated JSON commands on its fd 3 and writes replies and events on its fd 4."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser, self._to_browser = _high_pipe()
        self._from_browser, from_browser = _high_pipe()

        def wire_pipes() -> None:  # runs in the child, between fork and exec
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        # close_fds=False: closing would take fds 3 and 4 too. Python opens its own files
        # close-on-exec, so nothing else leaks into the browser.
        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=wire_pipes, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def close(self) -> None:
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        stop(self.proc)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached page, once there is one) and return its result."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            command["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + CDP_TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:  # anything else is an event: ignore it
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def attach(self) -> None:
        pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        self.session = self.send("Target.attachToTarget", targetId=pages[0]["targetId"],
                                 flatten=True)["sessionId"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page was not ready within {timeout_s}s")
            time.sleep(0.5)


def screenshot(chromium: str, url: str, n_runs: int, out: Path, profile: Path) -> None:
    browser = DevTools(chromium, profile)
    try:
        browser.attach()
        browser.send("Page.enable")
        browser.send("Page.addScriptToEvaluateOnNewDocument", source=PRESET_STORAGE)
        browser.send("Page.navigate", url=url)
        browser.wait_for(PAGE_READY % n_runs, PAGE_TIMEOUT_S)
        if browser.evaluate(SHOW_DIFF_ONLY) == 0:
            print("warning: no 'Show diff only' switch found; every key is listed")
        time.sleep(1)  # the metric grid is rebuilt with fewer rows
        for step in (0, 1):
            if not browser.evaluate(SCROLL_METRICS % (json.dumps(FIRST_METRIC_ROW), step)):
                print(f"warning: no metric row {FIRST_METRIC_ROW!r} to scroll to")
                break
            time.sleep(0.5)
        if browser.evaluate(FOLD_SECTIONS) != 2:
            print("warning: did not find the Artifacts and Tags sections to fold up")
        time.sleep(1.5)  # the folding is animated
        height = min(int(browser.evaluate(CONTENT_HEIGHT)), MAX_HEIGHT)
        browser.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height,
                     deviceScaleFactor=1, mobile=False)
        time.sleep(2)  # let the charts redraw at the new size
        png = browser.send("Page.captureScreenshot", format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(png))
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "images" / "mlflow-compare-runs.png",
                        help="where to write the PNG (default: %(default)s)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium",
                        help="the Chromium binary (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlflow-screenshot-") as tmp:
        workdir = Path(tmp)
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        train_runs(workdir, uri)
        experiment_id, run_ids = find_runs(uri)
        port = free_port()
        server = start_ui(workdir, uri, port)
        try:
            url = (f"http://{HOST}:{port}/#/compare-runs?runs={compact_json(run_ids)}"
                   f"&experiments={compact_json([experiment_id])}")
            print(f"opening {url}", flush=True)
            profile = workdir / "chromium-profile"
            profile.mkdir()
            screenshot(args.chromium, url, len(run_ids), args.out, profile)
        finally:
            stop(server)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
