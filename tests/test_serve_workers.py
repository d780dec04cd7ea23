"""`edgecompress serve --workers 2`: two real server processes behind one port, started
through the CLI, talked to over HTTP (httpx). A swap through one worker is served by every
worker, requests in flight during a swap do not fail, /metrics adds up both workers; and the
supervisor's thermal decision reaches every worker through the shared view.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import edgecompress as ec

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgecompress.serve import ServeConfig, ThermalPolicy, write_check  # noqa: E402
from edgecompress.serve.state import build_state  # noqa: E402
from edgecompress.serve.supervisor import Supervisor  # noqa: E402

from serve_helpers import free_port  # noqa: E402

TOKEN = "workers-token-0123456789abcdef"
X = {"inputs": np.zeros((1, 1, 16, 16)).tolist()}


def _export(weights, digits, folder, passes, name):
    dm = ec.Pipeline(passes, measure=False).run(copy.deepcopy(weights), digits)
    art = dm.export("onnx", folder / name, benchmark_runs=0)
    write_check(art, dm, samples=32)
    return art.path


@pytest.fixture(scope="module")
def models(_cnn_weights, digits, tmp_path_factory):
    """An INT8 ONNX to serve and a lighter FP32 ONNX to swap in (or fall back to)."""
    folder = tmp_path_factory.mktemp("models")
    int8 = _export(_cnn_weights, digits, folder,
                   [ec.passes.Fuse(), ec.passes.QuantizePTQ(samples=64)], "model.onnx")
    return int8, _export(_cnn_weights, digits, folder, [ec.passes.Fuse()], "light.onnx")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """``edgecompress serve --workers 2`` in its own process; yields (url, supervisor pid)."""
    tmp = tmp_path_factory.mktemp("workers")
    token = tmp / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    port = free_port()
    cmd = [sys.executable, "-m", "edgecompress", "serve", str(models[0]), "--port", str(port),
           "--workers", "2", "--infer-threads", "1", "--state-dir", str(tmp / "state"),
           "--token-file", str(token)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    yield url, proc.pid
    proc.terminate()
    assert proc.wait(timeout=60) == 0


def _fresh(url, path, n=4, method="get", **kw):
    """``n`` requests, each on a new connection (the supervisor deals connections out in
    turn, so consecutive ones reach different workers)."""
    return [getattr(httpx, method)(url + path, timeout=30, **kw) for _ in range(n)]


def _upload(path):
    from edgecompress.serve.verify import check_path

    return {"artifact": (path.name, path.read_bytes()),
            "check": (check_path(path).name, check_path(path).read_bytes())}


def _swap(url, path):
    r = httpx.post(url + "/model", files=_upload(path), timeout=120,
                   headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return r.json()["version"]


def test_two_worker_processes_answer_on_one_port(server):
    url, supervisor = server
    answers = [r.json() for r in _fresh(url, "/health")]
    pids = {a["pid"] for a in answers}
    assert len(pids) == 2 and supervisor not in pids
    assert all(a["workers"] == 2 and a["model_loaded"] for a in answers)


def test_metrics_add_up_every_worker(server):
    url, _ = server
    before = _predict_count(httpx.get(url + "/metrics").text)
    pids = {r.json()["pid"] for r in _fresh(url, "/health")}
    assert all(r.status_code == 200 for r in _fresh(url, "/predict", n=10, method="post", json=X))
    texts = [r.text for r in _fresh(url, "/metrics", n=2)]
    # each worker served 5 of the 10; each worker's /metrics counts all 10
    assert [_predict_count(t) - before for t in texts] == [10, 10]
    assert len(pids) == 2
    assert all("edgecompress_in_flight 0.0" in t for t in texts)


def _predict_count(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('edgecompress_requests_total{endpoint="/predict",status="200"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_swap_through_one_worker_is_served_by_every_worker(server, models):
    url, _ = server
    version = _swap(url, models[1])
    answers = _fresh(url, "/predict", n=4, method="post", json=X)
    assert [r.json()["model_version"] for r in answers] == [version] * 4
    described = [r.json() for r in _fresh(url, "/model")]
    assert {d["version"] for d in described} == {version}
    assert {d["path"] for d in described} == {described[0]["path"]}  # one stored copy
    health = [r.json() for r in _fresh(url, "/health")]
    assert len({h["pid"] for h in health}) == 2 and {h["version"] for h in health} == {version}


def test_requests_in_flight_during_a_swap_do_not_fail(server, models):
    url, _ = server
    start = httpx.get(url + "/model").json()["version"]
    failures, seen, stop = [], [], threading.Event()

    def hammer(i: int) -> None:
        versions = []
        with httpx.Client(base_url=url, timeout=30) as c:  # one keep-alive connection each
            while not stop.is_set():
                r = c.post("/predict", json=X)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    versions.append(r.json()["model_version"])
        seen.append(versions)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    version = _swap(url, models[0])
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert version == start + 1
    # every connection (two per worker) moved from the old version to the new one
    assert all(v[0] == start and v[-1] == version for v in seen)
    assert all(v == sorted(v) for v in seen)


def test_a_worker_that_dies_is_replaced_on_the_published_version(server):
    url, _ = server
    version = httpx.get(url + "/model").json()["version"]
    victim = httpx.get(url + "/health").json()["pid"]
    os.kill(victim, signal.SIGKILL)
    deadline, pids = time.monotonic() + 90, set()
    while time.monotonic() < deadline:
        answers = [r for r in _fresh(url, "/health") if r.status_code == 200]
        pids = {r.json()["pid"] for r in answers}
        if len(pids) == 2 and victim not in pids:
            break
        time.sleep(0.5)
    assert len(pids) == 2 and victim not in pids
    assert {r.json()["version"] for r in _fresh(url, "/health")} == {version}


def test_the_supervisors_thermal_fallback_reaches_every_worker(models, tmp_path):
    class Fake:
        value = 40.0

        def __call__(self) -> float:
            return self.value

    temp = Fake()
    config = ServeConfig(models[0], workers=2, infer_threads=1, fallback=models[1],
                         state_dir=tmp_path / "state", temperature_source=temp,
                         thermal=ThermalPolicy(hot_c=80, cool_c=70, action="fallback"))
    supervisor = Supervisor(config)
    workers = [build_state(config, worker=True) for _ in range(2)]
    try:
        temp.value = 85.0
        supervisor.watchdog.check()
        for w in workers:
            assert w.slot.stale()
            w.slot.sync()
        assert all(w.slot.current.path == models[1].resolve() for w in workers)
        assert all(w.thermal() == (85.0, True) for w in workers)
        temp.value = 60.0
        supervisor.watchdog.check()
        for w in workers:
            w.slot.sync()
        assert all(w.slot.current.path == models[0].resolve() for w in workers)
        kinds = [e["kind"] for e in workers[0].events.query()]
        assert kinds.count("fallback") == 1 and kinds.count("primary") == 1
    finally:
        for w in workers:
            w.stop()
        supervisor.stop()
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # nothing leaked into this process
