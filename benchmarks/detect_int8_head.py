"""INT8 of a YOLOv8n raw head: which parts kept float (decode tail always; DFL conv; last box
convs), matched-box agreement with the simulated INT8 model and mAP against the FP32 model's
own detections (pseudo-labels: the FP32 model scores 1.0). Random init (BatchNorm statistics
from one batch, class biases zeroed): a proxy until a trained detector is used, see
benchmarks/results/detect_int8_head.md.

    PYTHONPATH=src:tests python benchmarks/detect_int8_head.py 64 onnx,tflite all_int8,dfl_float
"""
import sys, time, json, torch, numpy as np, edgecompress as ec
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from test_detect_formats import yolov8n
from edgecompress.data.bundle import Preprocess
from edgecompress.runtime.detect import decode
from edgecompress.convert.detector import prepare
size = int(sys.argv[1]); fmts = sys.argv[2].split(",")
yolo = yolov8n()
torch.manual_seed(1)
x = torch.rand(32, 3, size, size)
wrapped = prepare(yolo, x[:1]); head = wrapped.edgecompress_detection
with torch.no_grad():
    targets = decode({"output": wrapped(x).numpy()}, head, (size, size))
data = ec.DataBundle(example_input=x[:1], val=[(x[i:i+8], targets[i:i+8]) for i in range(0, 32, 8)], calib=[x], preprocess=Preprocess(resize="letterbox"))
box_convs = [f"model.model.22.cv2.{i}.2" for i in range(3)]
variants = {"all_int8": [], "dfl_float": ["model.model.22.dfl.conv"], "dfl_and_box_convs_float": ["model.model.22.dfl.conv", *box_convs]}
for name in sys.argv[3].split(","):
    skip = variants[name]
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=32, skip=tuple(skip))], measure=False).run(yolo, data)
    for fmt in fmts:
        path = {"onnx": "/tmp/v8.onnx", "tflite": "/tmp/v8.tflite", "ncnn": "/tmp/v8_ncnn"}[fmt]
        t = time.time()
        try:
            art = dm.export(fmt, path, benchmark_runs=0, overwrite=True, on_parity_fail="keep")
            e = art.parity.metric_extra; m = art.metadata.get("detection_map") or {}
            print(json.dumps({"variant": name, "fmt": fmt, "s": round(time.time()-t, 1), "max_abs_diff": art.parity.max_abs_diff, "agreement": art.parity.metric_value, "strict": e.get("strict_agreement"), "map50": m.get("map50"), "sim_map50": m.get("reference_map50"), "map50_95": m.get("map50_95"), "sim_map50_95": m.get("reference_map50_95"), "float_tail": art.notes.get("float_detection_tail")}), flush=True)
        except Exception as exc:
            print(name, fmt, "FAILED", type(exc).__name__, str(exc)[:500], flush=True)
