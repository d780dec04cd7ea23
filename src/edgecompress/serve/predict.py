"""``POST /predict`` as a raw ASGI handler, called before FastAPI sees the request.

For a model that runs in half a millisecond, FastAPI's per-request work (its telemetry check,
middleware, routing, dependency solving, response classes) cost more CPU than the inference
itself (profiled: most of the server's ~1.1 ms per request on 2 cores; see
benchmarks/results/serve_load.md).
This handler reads the body, decodes it, hands it to admission (micro-batching) and writes
the answer with nothing in between: JSON, or with ``Accept: application/octet-stream`` (or
``application/x-npy``) the output tensor itself, which skips top-k and JSON. Every other path
goes on to FastAPI.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import numpy as np

from ..errors import InputError
from ..runtime.preprocess import top_k
from .admission import Rejected
from .inputs import TENSOR_TYPES, RequestError, decode_image, decode_tensor, media_type

log = logging.getLogger("edgecompress")

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def read_body(receive: Receive, headers: dict[str, str], limit_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit_bytes`` (never read whole)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise RequestError(413, f"body of {int(declared):,} bytes exceeds the limit of "
                                f"{limit_bytes:,} bytes", limit_bytes=limit_bytes)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise RequestError(413, f"body exceeds the limit of {limit_bytes:,} bytes",
                               limit_bytes=limit_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def decode_input(scope: dict, headers: dict[str, str], body: bytes,
                       model: Any) -> tuple[Any, bool]:
    """The model input from the body, and whether it came from an image."""
    kind = media_type(headers.get("content-type"))
    if kind in TENSOR_TYPES:
        return decode_tensor(body, kind, headers, model), False
    if kind.startswith("image/"):
        return decode_image(body, model), True
    if kind == "multipart/form-data":
        from starlette.requests import Request

        request = Request(scope)
        request._body = body  # Starlette's form parser reads what was already read
        form = await request.form()
        upload = form.get("file") or form.get("image")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "the multipart form needs a file field named 'file'")
        return decode_image(await upload.read(), model), True
    raise RequestError(415, f"unsupported content type '{kind or '(none)'}': send an image "
                            f"(multipart field 'file' or image/*), application/json "
                            f'{{"inputs": [...]}}, application/x-npy or application/octet-stream '
                            f"with an X-Shape header")


def requested_top(scope: dict, default: int) -> int:
    query = scope.get("query_string") or b""
    if not query:
        return default
    values = parse_qs(query.decode("latin-1")).get("top")
    if not values:
        return default
    if not values[0].isdigit() or int(values[0]) < 1:
        raise RequestError(400, f"top must be a positive integer (got {values[0]!r})")
    return int(values[0])


def payload(model: Any, out: Any, k: int, seconds: float, rows: int,
            as_image: bool) -> dict[str, Any]:
    """The answer: version, sha256, the runner call's time and rows (``batch``), output shape,
    top-k for a (N, classes) output, and the raw outputs unless the input was an image."""
    result: dict[str, Any] = {"model_version": model.version, "sha256": model.sha256,
                              "inference_ms": round(seconds * 1000, 4), "batch": rows,
                              "output_shape": list(out.shape)}
    if out.ndim == 2:
        result["top_k"] = top_k(out, k, model.metadata.get("class_names"))
    if not as_image or out.ndim != 2:
        result["outputs"] = out.tolist()
    return result


# built once: json.dumps with non-default arguments builds an encoder per call (half its cost)
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    """JSON as Starlette writes it; outputs JSON cannot carry (NaN, inf) are a 500 that says so."""
    try:
        return status, _JSON.encode(body).encode()
    except ValueError:
        return encode(500, {"error": "the model returned NaN or infinite values, which JSON "
                                     "cannot carry; send application/x-npy to inspect them",
                            "status": 500})


JSON_TYPE = b"application/json"
BINARY_TYPES = ("application/octet-stream", "application/x-npy")
Reply = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]  # status, media type, body, headers


def json_reply(status: int, body: dict[str, Any], *headers: tuple[bytes, bytes]) -> Reply:
    status, data = encode(status, body)
    return status, JSON_TYPE, data, list(headers)


def binary_reply(out: np.ndarray, kind: str, model: Any, seconds: float, rows: int) -> Reply:
    """The output as raw little-endian bytes (X-Shape, X-Dtype) or a .npy file, what was asked
    for in ``Accept``; version, time and batch rows go in headers."""
    if kind == "application/x-npy":
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        data = buf.getvalue()
    else:
        data = out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes()
    headers = {"x-shape": ",".join(map(str, out.shape)), "x-dtype": str(out.dtype),
               "x-model-version": str(model.version), "x-inference-ms": f"{seconds * 1000:.4f}",
               "x-batch": str(rows)}
    return 200, kind.encode(), data, [(k.encode(), v.encode()) for k, v in headers.items()]


class PredictEndpoint:
    """The ASGI handler of ``/predict`` (every method: anything but POST is a 405).

    Counts its responses in the same metrics as the rest of the server.
    """

    def __init__(self, state: Any):
        self.s = state
        self._limit = int(state.config.max_body_mb * 1024 * 1024)

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            reply = json_reply(405, {"error": f"/predict takes POST, not {scope['method']}",
                                     "status": 405}, (b"allow", b"POST"))
        else:
            reply = await self._answer(scope, receive)
        status, kind, body, headers = reply
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})
        self.s.metrics.requests.labels("/predict", str(status)).inc()

    async def _answer(self, scope: dict, receive: Receive) -> Reply:
        s, t0 = self.s, time.perf_counter()
        try:
            return await self._predict(scope, receive, t0)
        except RequestError as exc:
            s.metrics.errors.labels("/predict", str(exc.status)).inc()
            s.stats.add(None, error=True)
            return json_reply(exc.status, {"error": exc.message, "status": exc.status,
                                           **exc.detail})
        except Rejected as exc:
            s.metrics.errors.labels("/predict", "503").inc()
            s.stats.add(None, rejected=True)
            return json_reply(503, {"error": exc.reason, "status": 503,
                                    "retry_after": exc.retry_after},
                              (b"retry-after", str(exc.retry_after).encode()))
        except Exception as exc:  # noqa: BLE001 - one request's failure is its own 500
            log.error("request POST /predict failed: %r", exc)
            return json_reply(500, {"error": f"internal error: {type(exc).__name__}: {exc}",
                                    "status": 500})

    async def _predict(self, scope: dict, receive: Receive, t0: float) -> Reply:
        s = self.s
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await read_body(receive, headers, self._limit)
        k = requested_top(scope, s.config.top_k)
        if s.slot.shared is not None:  # several workers: serve what one of them swapped in
            await s.refresh()
        with s.slot.acquire() as model:  # in flight on this model, even across a swap
            x, as_image = await decode_input(scope, headers, body, model)
            try:
                out, seconds, rows = await s.admission.predict(model, x)
            except InputError as exc:
                raise RequestError(400, str(exc)) from exc
            except (Rejected, RequestError):
                raise
            except Exception as exc:  # noqa: BLE001 - a runtime failure on one input is a 500
                log.error("the model failed on a request: %r", exc)
                raise RequestError(500, f"the model failed on this input: "
                                        f"{type(exc).__name__}: {exc}") from exc
        s.metrics.latency.observe(seconds)
        s.metrics.batch_rows.observe(rows)
        s.metrics.request_latency.observe(time.perf_counter() - t0)
        s.stats.add(seconds)
        accept = media_type(headers.get("accept"))
        if accept in BINARY_TYPES:
            return binary_reply(out, accept, model, seconds, rows)
        return json_reply(200, payload(model, out, k, seconds, rows, as_image))
