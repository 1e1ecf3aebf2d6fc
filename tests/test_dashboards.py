"""What a user reads: a real TensorBoard server over a short run's logs (scalars, the custom-scalars
layout, HParams) and the learning-curve plot."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import pytest

from training.logger import HPARAM_METRICS
from training.ppo.train import PPO_DASHBOARD_LAYOUT as DASHBOARD_LAYOUT

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(short_cartpole_run):
    _, result = short_cartpole_run
    port = _free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(result.run_dir.parent), "--host", "127.0.0.1",
           "--port", str(port), "--load_fast", "false", "--reload_interval", "1"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def get(path: str, body: dict | None = None, timeout: float = 60.0):
        """GET (or POST body as JSON), retried until the answer is non-empty: runs and tags appear a few
        seconds after the server starts."""
        deadline = time.time() + timeout
        while True:
            try:
                data = None if body is None else json.dumps(body).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as reply:
                    answer = json.loads(reply.read())
                if answer:
                    return answer
            except (urllib.error.URLError, ConnectionError):
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"no answer from {path}"
            time.sleep(0.5)

    yield get, result.run_dir.name
    server.terminate()
    server.wait(timeout=10)


def test_tensorboard_serves_our_scalars(tensorboard, short_cartpole_run):
    get, run = tensorboard
    assert run in get("/data/runs")
    query = urllib.parse.urlencode({"run": run, "tag": "eval/episodic_return"})
    points = get(f"/data/plugin/scalars/scalars?{query}")
    _, result = short_cartpole_run
    assert [p[1] for p in points] == [2048, 4096] and points[-1][2] == pytest.approx(result.eval_return)
    tags = get("/data/plugin/scalars/tags")[run]
    assert {"charts/episodic_return", "charts/SPS", "losses/approx_kl", "time/update_seconds"} <= set(tags)


def test_tensorboard_shows_the_custom_layout_and_hparams(tensorboard):
    get, run = tensorboard
    layout = get("/data/plugin/custom_scalars/layout")
    assert [c["title"] for c in layout["category"]] == list(DASHBOARD_LAYOUT)
    experiment = get("/data/plugin/hparams/experiment", body={"experimentName": ""})
    assert {"learning_rate", "num_envs", "env_id"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HPARAM_METRICS)


def test_plot_draws_a_png_from_run_folders(short_cartpole_run, tmp_path):
    _, result = short_cartpole_run
    out = tmp_path / "curve.png"
    cmd = [sys.executable, str(ROOT / "launch" / "plot.py"), str(result.run_dir.parent), "--tag",
           "charts/episodic_return", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CartPole-v1__ppo: 1 run(s)" in proc.stdout and iio.imread(out).shape[2] in (3, 4)
    proc = subprocess.run([*cmd[:3], "--tag", "no/such_tag"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "none of the runs logged 'no/such_tag'" in proc.stderr
