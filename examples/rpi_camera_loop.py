"""Run an artifact on a camera, a video or a folder of images within a frame budget (Raspberry Pi).

    python examples/rpi_camera_loop.py model.tflite --source camera --budget-ms 50
    python examples/rpi_camera_loop.py model.onnx --source frames/ --seconds 30
    python examples/rpi_camera_loop.py model.onnx --source camera --server http://127.0.0.1:8080

It needs only the device install (``pip install "edgecompress-device[tflite]"``, no torch). It
benchmarks the artifact first (latency percentiles and the board's status: CPU temperature,
throttling, load, memory), then classifies frames, counting how many met the frame budget and
printing the system status every few seconds. Preprocessing (size, mean/std, layout) and class
names come from the artifact's own metadata (``edgecompress.runtime.preprocess``). With
``--server`` the frames go to a running ``edgecompress serve`` instead (``POST /predict``), which
then also watches the temperature and can swap models while the loop runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import edgecompress as ec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def frames_from_folder(folder: Path) -> Iterator[np.ndarray]:
    from PIL import Image

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folder}")
    while True:
        for f in files:
            yield np.asarray(Image.open(f).convert("RGB"))


def frames_from_cv2(source: str) -> Iterator[np.ndarray]:
    try:
        import cv2
    except ImportError:
        raise SystemExit("camera/video input needs OpenCV: pip install opencv-python-headless") from None
    cap = cv2.VideoCapture(0 if source == "camera" else source)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source}")
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame[:, :, ::-1]  # BGR → RGB


def local_classifier(runner: ec.Runner) -> Callable[[np.ndarray], str]:
    """Frame → top-1 label on this process's runner."""
    from PIL import Image

    from edgecompress.runtime.preprocess import image_to_input, top_k

    names, pre = runner.metadata.get("class_names"), runner.metadata.get("preprocess")

    def classify(frame: np.ndarray) -> str:
        x = image_to_input(Image.fromarray(frame), runner.inputs[0], pre)
        return top_k(runner(x), 1, names)[0][0]["label"]

    return classify


def server_classifier(url: str) -> Callable[[np.ndarray], str]:
    """Frame → top-1 label from a running ``edgecompress serve`` (PNG upload to /predict)."""
    import io

    import httpx
    from PIL import Image

    client = httpx.Client(base_url=url, timeout=10)

    def classify(frame: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        r = client.post("/predict", files={"file": ("frame.png", buf.getvalue(), "image/png")},
                        params={"top": 1})
        if r.status_code == 503:  # the server is busy or cooling down: skip this frame
            return f"(skipped: {r.json()['error']})"
        r.raise_for_status()
        return r.json()["top_k"][0][0]["label"]

    return classify


def run(artifact: Path, source: str, budget_ms: float, seconds: float, max_frames: int | None,
        threads: int | None, status_every: float = 5.0, server: str | None = None) -> dict:
    runner = ec.load(artifact, threads=threads)
    stats = runner.benchmark(warmup=5, runs=30)
    print(f"benchmark: {stats}")
    print(f"system: {json.dumps(stats.system)}")
    classify = server_classifier(server) if server else local_classifier(runner)
    frames = frames_from_folder(Path(source)) if Path(source).is_dir() else frames_from_cv2(source)
    met = total = 0
    label = None
    t_end, t_status = time.monotonic() + seconds, time.monotonic() + status_every
    for frame in frames:
        t0 = time.perf_counter()
        label = classify(frame)
        ms = (time.perf_counter() - t0) * 1000
        total += 1
        met += ms <= budget_ms
        if time.monotonic() >= t_status:
            print(f"[{total} frames] last: {label} in {ms:.1f} ms; "
                  f"{100 * met / total:.1f}% within {budget_ms} ms; {json.dumps(ec.system_status())}")
            t_status += status_every
        if time.monotonic() >= t_end or (max_frames and total >= max_frames):
            break
    summary = {"frames": total, "within_budget": met, "budget_ms": budget_ms, "last": label,
               "p50_ms": stats.p50_ms, "system": ec.system_status()}
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--source", default="camera", help="'camera', a video file or an image folder")
    ap.add_argument("--budget-ms", type=float, default=33.3, help="frame budget (33 ms = 30 FPS)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--server", default=None,
                    help="URL of a running `edgecompress serve` to classify through (default: "
                         "run the artifact in this process)")
    args = ap.parse_args(argv)
    return run(args.artifact, args.source, args.budget_ms, args.seconds, args.max_frames,
               args.threads, server=args.server)


if __name__ == "__main__":
    main()
