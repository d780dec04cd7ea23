"""edgecompress serve: a real uvicorn server on 127.0.0.1 and a real HTTP client (httpx).

Every endpoint, each bad input, swaps to good and corrupt artifacts (rollback), a swap under
load, the thermal watchdog and the watched folder, all on real INT8/FP32 ONNX artifacts.
"""

from __future__ import annotations

import copy
import io
import shutil
import threading
import time

import numpy as np
import pytest

import edgecompress as ec

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgecompress.runtime.preprocess import image_to_input  # noqa: E402
from edgecompress.serve import ServeConfig, ThermalPolicy, create_app, write_check  # noqa: E402
from edgecompress.serve.admission import Admission, Rejected  # noqa: E402
from edgecompress.serve.events import EventLog  # noqa: E402

from serve_helpers import LiveServer  # noqa: E402

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def int8_onnx(_cnn_weights, digits, tmp_path_factory):
    """The trained CNN, fused and statically quantized, as an INT8 ONNX with stored samples."""
    dm = ec.Pipeline([ec.passes.Fuse(), ec.passes.QuantizePTQ(samples=64)], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)
    art = dm.export("onnx", tmp_path_factory.mktemp("int8") / "model.onnx", benchmark_runs=0)
    assert art.precision.startswith("int8")
    write_check(art, dm, samples=32)
    return art.path


@pytest.fixture(scope="module")
def fp32_onnx(_cnn_weights, digits, tmp_path_factory):
    dm = ec.Pipeline([ec.passes.Fuse()], measure=False).run(copy.deepcopy(_cnn_weights), digits)
    art = dm.export("onnx", tmp_path_factory.mktemp("fp32") / "light.onnx", benchmark_runs=0)
    write_check(art, dm, samples=32)
    return art.path


class FakeTemperature:
    """A temperature source the test sets."""

    def __init__(self, value: float = 40.0):
        self.value = value

    def __call__(self) -> float:
        return self.value


def _config(tmp_path, artifact, **kw) -> ServeConfig:
    kw.setdefault("token", TOKEN)
    return ServeConfig(artifact, infer_threads=2, queue=32, state_dir=tmp_path / "state", **kw)


@pytest.fixture()
def served(tmp_path, int8_onnx):
    with LiveServer(create_app(_config(tmp_path, int8_onnx))) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _digit_png(digits, index: int = 0) -> tuple[bytes, int]:
    """A real validation digit written back as an 8-bit PNG, and its label."""
    x, y = digits.val.dataset.tensors
    pre = digits.preprocess
    pixels = (x[index, 0].numpy() * pre.std[0] + pre.mean[0]) / pre.scale
    return _png(np.clip(np.round(pixels), 0, 255).astype(np.uint8)), int(y[index])


# -- read-only endpoints ------------------------------------------------------------------------
def test_health_reports_the_model_and_the_machine(served, int8_onnx):
    from edgecompress._io import sha256_file

    h = served.get("/health").json()
    assert h["status"] == "ok" and h["model_loaded"] is True and h["version"] == 1
    assert h["sha256"] == sha256_file(int8_onnx)
    assert h["uptime_s"] >= 0 and h["cpu_count"] >= 1 and h["memory"]["total_mb"] > 0
    assert h["process_rss_mb"] > 10
    assert {"temperature_c", "throttling", "cpu_percent", "queue_length"} <= set(h)


def test_model_reports_metadata_and_verification(served):
    m = served.get("/model").json()
    assert m["format"] == "onnx" and m["precision"].startswith("int8")
    assert m["inputs"][0]["shape"] == [None, 1, 16, 16]
    assert m["class_names"] == [str(i) for i in range(10)]
    assert m["parity"]["passed"] is True
    samples = m["verification"]["samples"]
    assert samples["passed"] and samples["samples"] == 32 and samples["top1_agreement"] >= 0.96
    assert m["verification"]["latency_p50_ms"] > 0


def test_predict_image_gives_top_k_with_class_names(served, int8_onnx, digits):
    from PIL import Image

    png, label = _digit_png(digits, 3)
    r = served.post("/predict", files={"file": ("d.png", png, "image/png")}, params={"top": 3})
    assert r.status_code == 200, r.text
    top = r.json()["top_k"][0]
    assert len(top) == 3 and top[0]["label"] == str(top[0]["index"])
    runner = ec.load(int8_onnx)
    x = image_to_input(Image.open(io.BytesIO(png)), runner.inputs[0], runner.metadata["preprocess"])
    assert top[0]["index"] == int(runner(x).argmax()) == label
    assert top[0]["probability"] >= top[1]["probability"]


def test_predict_tensor_bodies_match_the_runner(served, int8_onnx, digits):
    x = digits.samples("val", 4).numpy()
    expected = ec.load(int8_onnx)(x)
    as_json = served.post("/predict", json={"inputs": x.tolist()}).json()
    buf = io.BytesIO()
    np.save(buf, x)
    as_npy = served.post("/predict", content=buf.getvalue(),
                         headers={"content-type": "application/x-npy"}).json()
    as_raw = served.post("/predict", content=x.astype("<f4").tobytes(),
                         headers={"content-type": "application/octet-stream",
                                  "x-shape": ",".join(map(str, x.shape))}).json()
    for payload in (as_json, as_npy, as_raw):
        np.testing.assert_allclose(np.asarray(payload["outputs"]), expected, rtol=1e-6, atol=1e-6)
        assert payload["output_shape"] == [4, 10] and len(payload["top_k"]) == 4


def test_metrics_are_prometheus_text(served):
    served.get("/health")
    served.post("/predict", json={"inputs": np.zeros((1, 1, 16, 16)).tolist()})
    text = served.get("/metrics").text
    assert 'edgecompress_requests_total{endpoint="/predict",status="200"} 1.0' in text
    assert "edgecompress_inference_seconds_bucket" in text
    assert "edgecompress_queue_length 0.0" in text
    assert "edgecompress_temperature_celsius" in text and "edgecompress_model_version 1.0" in text


# -- bad input ----------------------------------------------------------------------------------
def test_not_an_image_is_415(served):
    r = served.post("/predict", files={"file": ("x.png", b"this is text, not a PNG", "image/png")})
    assert r.status_code == 415 and "not an image" in r.json()["error"]


def test_wrong_tensor_shape_is_400_naming_the_expected_shape(served):
    r = served.post("/predict", json={"inputs": np.zeros((1, 3, 16, 16)).tolist()})
    assert r.status_code == 400
    body = r.json()
    assert "dimension 1 must be 1" in body["error"] and body["expected"]["shape"] == [None, 1, 16, 16]


@pytest.mark.parametrize("body,ctype,status,words", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"x": 1}', "application/json", 400, '"inputs"'),
    (b"\x00" * 10, "application/octet-stream", 400, "X-Shape"),
    (b"hello", "text/plain", 415, "unsupported content type"),
])
def test_malformed_bodies_say_what_was_wrong(served, body, ctype, status, words):
    r = served.post("/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status and words in r.json()["error"]


def test_a_50_mb_body_is_413_and_the_server_lives_on(served):
    big = b"\x00" * (50 * 1024 * 1024)
    try:
        r = served.post("/predict", content=big, headers={"content-type": "application/octet-stream",
                                                          "x-shape": "1,1,16,16"})
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    except httpx.TransportError:
        pass  # the server may answer 413 and close while the client is still sending
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(50):
            yield b"\x00" * (1024 * 1024)
    r = served.post("/predict", content=chunks(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 413
    assert served.get("/health").json()["status"] == "ok"
    assert 'status="413"' in served.get("/metrics").text


# -- model swap ---------------------------------------------------------------------------------
def _upload(path):
    from edgecompress.metadata import sidecar_path
    from edgecompress.serve.verify import check_path

    files = {"artifact": (path.name, path.read_bytes(), "application/octet-stream")}
    for field, companion in (("sidecar", sidecar_path(path)), ("check", check_path(path))):
        if companion.exists():
            files[field] = (companion.name, companion.read_bytes(), "application/octet-stream")
    return files


def test_swap_needs_the_token(served, fp32_onnx):
    assert served.post("/model", files=_upload(fp32_onnx)).status_code == 401
    wrong = served.post("/model", files=_upload(fp32_onnx), headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "token" in wrong.json()["error"]
    assert served.get("/model").json()["version"] == 1


def test_no_token_configured_disables_swapping(tmp_path, int8_onnx, fp32_onnx):
    with LiveServer(create_app(_config(tmp_path, int8_onnx, token=None))) as url:
        r = httpx.post(url + "/model", files=_upload(fp32_onnx),
                       headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and "disabled" in r.json()["error"]


def test_swap_to_a_good_artifact_then_a_corrupt_one_rolls_back(served, fp32_onnx, tmp_path):
    from edgecompress._io import sha256_file

    auth = {"authorization": f"Bearer {TOKEN}"}
    r = served.post("/model", files=_upload(fp32_onnx), headers=auth,
                    data={"sha256": sha256_file(fp32_onnx)})
    assert r.status_code == 200, r.text
    m = served.get("/model").json()
    assert m["version"] == 2 and m["sha256"] == sha256_file(fp32_onnx) and m["precision"] == "fp32"
    assert m["verification"]["manifest_sha256_checked"] is True

    corrupt = tmp_path / "bad.onnx"
    data = bytearray(fp32_onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights
    corrupt.write_bytes(bytes(data))
    r = served.post("/model", files=_upload(corrupt), headers=auth)
    assert r.status_code == 422 and r.json()["rolled_back"] is True
    assert served.get("/model").json()["version"] == 2
    ok = served.post("/predict", json={"inputs": np.zeros((1, 1, 16, 16)).tolist()})
    assert ok.status_code == 200 and ok.json()["model_version"] == 2
    kinds = [e["kind"] for e in served.get("/events").json()]
    assert kinds.count("swap") == 1 and kinds.count("rollback") == 1


def test_stored_samples_that_disagree_refuse_the_swap(served, fp32_onnx, int8_onnx, tmp_path):
    from edgecompress.metadata import sidecar_path  # noqa: F401 - ONNX keeps metadata inside
    from edgecompress.serve.verify import check_path

    other = tmp_path / "other.onnx"
    shutil.copy(fp32_onnx, other)
    with np.load(check_path(fp32_onnx)) as d:
        x, ref = d["inputs"], d["reference"]
    np.savez(check_path(other), inputs=x, reference=np.roll(ref, 1, axis=1))  # wrong labels
    r = served.post("/model", files=_upload(other), headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and "stored samples" in r.json()["error"]
    assert served.get("/model").json()["version"] == 1


def test_a_swap_under_load_fails_no_request(tmp_path, int8_onnx, fp32_onnx):
    app = create_app(_config(tmp_path, int8_onnx))
    x = {"inputs": np.zeros((1, 1, 16, 16)).tolist()}
    failures, versions, stop = [], set(), threading.Event()
    with LiveServer(app) as url:
        def hammer():
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/predict", json=x)
                    if r.status_code != 200:
                        failures.append(r.status_code)
                    else:
                        versions.add(r.json()["model_version"])
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        r = httpx.post(url + "/model", files=_upload(fp32_onnx),
                       headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
    assert r.status_code == 200, r.text
    assert failures == [] and versions == {1, 2}


def test_versions_beyond_keep_are_pruned(tmp_path, int8_onnx, fp32_onnx):
    app = create_app(_config(tmp_path, int8_onnx, keep=2))
    with LiveServer(app) as url:
        for _ in range(3):
            r = httpx.post(url + "/model", files=_upload(fp32_onnx),
                           headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
            assert r.status_code == 200
        kept = httpx.get(url + "/model").json()["versions_kept"]
    assert kept == [3, 4]
    assert sorted(p.name for p in (tmp_path / "state" / "versions").glob("v*")) == ["v0003", "v0004"]


def test_watched_folder_swaps_in_a_copied_artifact(tmp_path, int8_onnx, fp32_onnx):
    from edgecompress.serve.verify import check_path

    watch = tmp_path / "incoming"
    app = create_app(_config(tmp_path, int8_onnx, watch=watch, watch_interval_s=3600))
    watcher = app.state.server.watcher
    shutil.copy(fp32_onnx, watch / "new.onnx")
    shutil.copy(check_path(fp32_onnx), check_path(watch / "new.onnx"))
    assert watcher.poll() == []  # first sighting: wait until the copy has settled
    assert [p.name for p in watcher.poll()] == ["new.onnx"]
    assert app.state.server.slot.primary.version == 2
    assert watcher.poll() == []  # taken once
    assert (watch / "new.onnx").exists()  # the user's file is left where it was


# -- back-pressure and the thermal watchdog ------------------------------------------------------
def test_admission_refuses_beyond_workers_plus_queue():
    import asyncio

    gate = threading.Event()
    adm = Admission(workers=1, queue=1)

    async def scenario():
        first = asyncio.ensure_future(adm.submit(gate.wait))
        second = asyncio.ensure_future(adm.submit(gate.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(Rejected) as info:
            await adm.submit(gate.wait)
        assert adm.in_flight == 2 and adm.waiting == 1
        gate.set()
        await asyncio.gather(first, second)
        return info.value

    refused = asyncio.run(scenario())
    assert "queue full" in refused.reason and refused.retry_after >= 1
    assert adm.in_flight == 0
    adm.close()


def test_watchdog_switches_to_the_fallback_when_hot_and_back_when_cool(tmp_path, int8_onnx,
                                                                        fp32_onnx):
    temp = FakeTemperature(45.0)
    policy = ThermalPolicy(hot_c=75.0, cool_c=65.0, action="fallback", interval_s=0.05)
    app = create_app(_config(tmp_path, int8_onnx, fallback=fp32_onnx, thermal=policy,
                             temperature_source=temp))
    x = {"inputs": np.zeros((1, 1, 16, 16)).tolist()}

    def wait_for(predicate):
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/predict", json=x).json()["model_version"] == 1
        temp.value = 81.0
        wait_for(lambda: c.get("/health").json()["serving"] == "fallback")
        h = c.get("/health").json()
        assert h["status"] == "degraded" and h["temperature_c"] == 81.0
        assert c.post("/predict", json=x).json()["model_version"] == 0  # the fallback
        assert "edgecompress_temperature_celsius 81.0" in c.get("/metrics").text
        temp.value = 70.0  # between the thresholds: stays on the fallback
        time.sleep(0.3)
        assert c.get("/health").json()["serving"] == "fallback"
        temp.value = 60.0
        wait_for(lambda: c.get("/health").json()["serving"] == "primary")
        events = c.get("/events", params={"kind": "thermal"}).json()
    assert [e["message"].split(":")[0] for e in events] == ["hot", "cool"]


def test_throttle_policy_rate_limits_with_retry_after(tmp_path, int8_onnx):
    temp = FakeTemperature(90.0)
    policy = ThermalPolicy(hot_c=75.0, cool_c=65.0, action="throttle", max_rps=1.0, interval_s=0.05)
    app = create_app(_config(tmp_path, int8_onnx, thermal=policy, temperature_source=temp))
    x = {"inputs": np.zeros((1, 1, 16, 16)).tolist()}
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        deadline = time.monotonic() + 10
        while c.get("/health").json()["rate_limit_rps"] != 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        codes = [c.post("/predict", json=x) for _ in range(5)]
    refused = [r for r in codes if r.status_code == 503]
    assert len(refused) >= 3 and refused[0].headers["retry-after"] == "1"
    assert "rate limited" in refused[0].json()["error"]


# -- events -------------------------------------------------------------------------------------
def test_event_log_retention_and_the_cli(tmp_path):
    import subprocess
    import sys

    log = EventLog(tmp_path / "events.db", retention_days=1.0, max_rows=3)
    log._db.execute("INSERT INTO events (ts, kind, message) VALUES (0, 'swap', 'ancient')")
    for i in range(5):
        log.record("swap", f"swap {i}", version=i)
    log.prune()
    assert [e["message"] for e in log.query()] == ["swap 2", "swap 3", "swap 4"]
    log.close()
    out = subprocess.run([sys.executable, "-m", "edgecompress", "events", "--state-dir",
                          str(tmp_path), "--kind", "swap"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "swap 4" in out.stdout and '"version": 4' in out.stdout and "ancient" not in out.stdout


def test_rpi_camera_loop_classifies_through_the_server(served, int8_onnx, digits, tmp_path):
    import importlib.util
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "rpi_camera_loop.py"
    spec = importlib.util.spec_from_file_location("rpi_camera_loop", example)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frames = tmp_path / "frames"
    frames.mkdir()
    png, label = _digit_png(digits, 5)
    (frames / "a.png").write_bytes(png)
    summary = mod.main([str(int8_onnx), "--source", str(frames), "--max-frames", "3",
                        "--budget-ms", "5000", "--threads", "1", "--server", str(served.base_url)])
    assert summary["frames"] == 3 and summary["last"] == str(label)
    assert served.get("/metrics").text.count('endpoint="/predict",status="200"} 3.0') == 1
