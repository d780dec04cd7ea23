"""Micro-batching and the lean /predict path of edgecompress serve, on a real uvicorn server
on 127.0.0.1 and a real HTTP client (httpx).

A worker that waits (``batch_wait_ms``) stacks requests that arrive meanwhile into one runner
call; each answer must equal the model's answer to that request alone, and a request the
runtime refuses must fail by itself.
"""

from __future__ import annotations

import copy
import io
import threading

import numpy as np
import pytest

import edgecompress as ec

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgecompress.serve import ServeConfig, create_app  # noqa: E402

from serve_helpers import LiveServer  # noqa: E402


@pytest.fixture(scope="module")
def int8_onnx(_cnn_weights, digits, tmp_path_factory):
    dm = ec.Pipeline([ec.passes.Fuse(), ec.passes.QuantizePTQ(samples=64)], measure=False).run(
        copy.deepcopy(_cnn_weights), digits)
    art = dm.export("onnx", tmp_path_factory.mktemp("int8") / "model.onnx", benchmark_runs=0)
    assert art.precision.startswith("int8")
    return art.path


@pytest.fixture(scope="module")
def lookup_onnx(tmp_path_factory):
    """A real ONNX graph that ONNX Runtime refuses on some inputs: each of the 4 values is cast
    to an index into a 10-row table (Gather), so a value outside [-10, 9] fails at run time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.arange(30, dtype=np.float32).reshape(10, 3)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0),
         helper.make_node("Flatten", ["rows"], ["y"], axis=1)],
        "lookup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        [numpy_helper.from_array(table, "table")])
    path = tmp_path_factory.mktemp("lookup") / "lookup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, table


def _serve(tmp_path, artifact, **kw):
    config = ServeConfig(artifact, infer_threads=1, queue=32, state_dir=tmp_path / "state", **kw)
    return LiveServer(create_app(config))


def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at once, one connection each; the answers in the order of the bodies."""
    answers: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            start.wait()
            answers[i] = client.post("/predict", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_stacked_requests_get_exactly_their_single_call_outputs(tmp_path, int8_onnx, digits):
    runner = ec.load(int8_onnx)
    x = digits.samples("val", 7).numpy()
    bodies = [{"inputs": x[i:i + 1].tolist()} for i in range(5)] + [{"inputs": x[5:7].tolist()}]
    with _serve(tmp_path, int8_onnx, max_batch=16, batch_wait_ms=300) as url:
        answers = _concurrently(url, bodies)
        metrics = httpx.get(url + "/metrics").text
    assert [a.status_code for a in answers] == [200] * 6
    for body, answer in zip(bodies, answers):
        alone = runner(np.asarray(body["inputs"], dtype=np.float32))
        np.testing.assert_array_equal(np.asarray(answer.json()["outputs"], np.float32), alone)
        assert answer.json()["top_k"][0][0]["index"] == int(alone[0].argmax())
    assert max(a.json()["batch"] for a in answers) > 2  # they really shared runner calls
    assert "edgecompress_batch_rows_count 6.0" in metrics


def test_a_request_the_runtime_refuses_fails_alone_in_its_batch(tmp_path, lookup_onnx):
    path, table = lookup_onnx
    good = [[float(i), 1.0, 2.0, -1.0] for i in range(4)]
    bodies = [{"inputs": [row]} for row in good]
    bodies.insert(2, {"inputs": [[0.0, 99.0, 1.0, 2.0]]})  # index 99 of a 10-row table
    with _serve(tmp_path, path, max_batch=16, batch_wait_ms=300) as url:
        answers = _concurrently(url, bodies)
        alive = httpx.post(url + "/predict", json=bodies[0]).status_code
    bad = answers.pop(2)
    assert bad.status_code == 500 and "the model failed on this input" in bad.json()["error"]
    for row, answer in zip(good, answers):
        assert answer.status_code == 200, answer.text
        expected = table[np.asarray(row, dtype=np.int64)].reshape(1, 12)
        np.testing.assert_array_equal(np.asarray(answer.json()["outputs"]), expected)
    assert max(a.json()["batch"] for a in answers) > 1  # the bad one was stacked with them
    assert alive == 200


def test_max_batch_1_never_stacks(tmp_path, int8_onnx, digits):
    x = digits.samples("val", 4).numpy()
    with _serve(tmp_path, int8_onnx, max_batch=1, batch_wait_ms=300) as url:
        answers = _concurrently(url, [{"inputs": x[i:i + 1].tolist()} for i in range(4)])
    assert [a.json()["batch"] for a in answers] == [1, 1, 1, 1]


def test_predict_takes_only_post_and_a_positive_top(tmp_path, int8_onnx):
    with _serve(tmp_path, int8_onnx) as url, httpx.Client(base_url=url) as client:
        get = client.get("/predict")
        bad_top = client.post("/predict", params={"top": "lots"},
                              json={"inputs": np.zeros((1, 1, 16, 16)).tolist()})
        top2 = client.post("/predict", params={"top": 2},
                           json={"inputs": np.zeros((1, 1, 16, 16)).tolist()})
        counted = client.get("/metrics").text
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert bad_top.status_code == 400 and "top must be a positive integer" in bad_top.json()["error"]
    assert top2.status_code == 200 and len(top2.json()["top_k"][0]) == 2
    assert 'edgecompress_requests_total{endpoint="/predict",status="405"} 1.0' in counted


def test_bad_batching_options_are_refused():
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-batch"):
        ServeConfig("model.onnx", max_batch=0)
    with pytest.raises(ConfigError, match="--batch-wait-ms"):
        ServeConfig("model.onnx", batch_wait_ms=-1)


def test_a_binary_answer_is_the_output_tensor(tmp_path, int8_onnx, digits):
    x = digits.samples("val", 3).numpy()
    expected = ec.load(int8_onnx)(x)
    raw_in = {"content-type": "application/octet-stream", "x-shape": "3,1,16,16"}
    with _serve(tmp_path, int8_onnx) as url, httpx.Client(base_url=url) as client:
        raw = client.post("/predict", content=x.astype("<f4").tobytes(),
                          headers={**raw_in, "accept": "application/octet-stream"})
        npy = client.post("/predict", json={"inputs": x.tolist()},
                          headers={"accept": "application/x-npy"})
        bad = client.post("/predict", content=b"\0" * 8,
                          headers={**raw_in, "accept": "application/octet-stream"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["x-shape"] == "3,10" and raw.headers["x-dtype"] == "float32"
    assert raw.headers["x-model-version"] == "1" and float(raw.headers["x-inference-ms"]) > 0
    got = np.frombuffer(raw.content, dtype="<f4").reshape(3, 10)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content), allow_pickle=False), expected)
    assert bad.status_code == 400 and "needs 3072 bytes" in bad.json()["error"]  # errors stay JSON
