"""Bring your own model: small random-init models from the real libraries through static INT8,
dynamic INT8 and pruning, each artifact verified by its task's bound and holding int8 kernels.

Nothing is downloaded: every model is built from a config (Hugging Face, timm) with random
weights. The table is what issue #23 asks for and where each cell is tested; this file fills the
cells the others do not. Cells not asserted anywhere record what was measured here once:

| model | PTQ → ONNX | PTQ → TFLite | dynamic → ONNX | dynamic → TFLite | prune → ONNX |
|---|---|---|---|---|---|
| HF BERT (ids + mask) | here | here | test_multi_io | passes, not asserted (75 s at load 14) | here |
| HF GPT-2 (causal LM) | – | – | here (next token) | – | – |
| HF ViT | test_quant_robust | borderline | – (fails) | – (fails) | test_prune_transformers |
| timm DeiT (transformer) | here (layers_only) | – | – (fails) | – | here |
| torchvision SSDlite | passes, not asserted (118 s at load 14) | – | – | – | passes, not asserted |
| timm EdgeNeXt / LeViT (hybrid) | test_quant_robust | – | – | – | refused, naming blocks / a checked ignore= |
| torchvision LRASPP | test_task_verify | fails (96 steps) | – | – | passes, not asserted (50 s at load 15) |
| Ultralytics YOLOv8n | fails (38 steps)* | passes by cosine (150 s at load 15) | – | – | refused, checked ignore= |

TorchScript static INT8 of a model with several inputs is refused (torch.ao's FX calibration
takes one tensor), naming ONNX and TFLite. A dash: not tested. "fails": dynamic INT8 of HF ViT
and DeiT misses the mean bound (2.3 and 1.6 steps > 1.5: torch's dynamic Linear, the simulated
model, quantizes activations to 7 bits, ONNX Runtime to 8). "borderline": HF ViT static INT8
TFLite passes on 32 N(0, 1) images (max|diff| 0.0054) and fails on 16 U(0, 1) images (mean 2.2
steps > 1.5: TFLite's int8 FULLY_CONNECTED also rounds the layers' outputs, which the
simulation keeps float). *: test_quant_robust's YOLOv8n INT8 ONNX passes because its
random-init activations vanish (no box above the threshold); given BatchNorm statistics of one
batch and scoring boxes (docs/bring-your-own-model.md), the INT8 file misses its simulated model
by 37–38 steps on the box outputs, graph-wide, with layers_only and with the DFL kept float.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.errors import ExportError
from edgecompress.measure import count_params

transformers = pytest.importorskip("transformers")

FAST = ec.Measure(accuracy=False, latency=False, macs=False)
EXPORT = {"benchmark_runs": 0, "parity_samples": 16}
# the kernels ONNX Runtime runs int8 weights with (counted in the graph it optimises)
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "ConvInteger")


def _int8_kernels(art: ec.Artifact) -> int:
    return sum(v for k, v in art.notes["ort_kernels"].items() if k in INT8_KERNELS)


def _tokens(n: int = 16, seq: int = 12, vocab: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.int64)
    mask[n // 2:, seq - 3:] = 0  # padded sequences: the mask matters
    return ids, mask


def _images(n: int = 16, size: int = 32) -> ec.DataBundle:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    batches = [x[i:i + 8] for i in range(0, n, 8)]
    return ec.DataBundle(val=batches, calib=batches)


class Logits(nn.Module):
    """A Hugging Face classifier giving its ``logits`` tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


# -- HF BERT-like encoder: int64 input_ids + attention_mask ------------------------------------
def _bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=3,
                                  max_position_embeddings=32)
    return transformers.BertForSequenceClassification(cfg).eval()


def _bert_data() -> ec.DataBundle:
    ids, mask = _tokens()
    batches = [{"input_ids": ids[i:i + 8], "attention_mask": mask[i:i + 8]} for i in (0, 8)]
    return ec.DataBundle(val=batches, calib=batches)


@pytest.fixture(scope="module")
def bert_int8() -> ec.DeployableModel:
    return ec.Pipeline([ec.passes.QuantizePTQ(samples=16)], measure=FAST).run(_bert(), _bert_data())


def test_bert_static_int8_calibrates_on_both_named_inputs(bert_int8):
    calib = bert_int8.quant_recipe.calib_samples
    assert list(calib) == ["input_ids", "attention_mask"] and calib["input_ids"].dtype == torch.int64
    assert bert_int8.quant_recipe.calib_count == 16
    assert bert_int8.quant_recipe.layers_only  # HF BERT: fx cannot trace it
    with torch.no_grad():  # the simulated model really is quantized: it differs from the float one
        ids, mask = _tokens(4)
        sim = bert_int8.model(input_ids=ids, attention_mask=mask).logits
        ref = bert_int8.float_model(input_ids=ids, attention_mask=mask).logits
    assert 1e-4 < (sim - ref).abs().max() < 0.1


def test_bert_static_int8_onnx_runs_int8_kernels_and_passes(bert_int8, tmp_path):
    art = bert_int8.export("onnx", tmp_path / "bert.onnx", **EXPORT)
    assert art.parity.passed and art.parity.task == "classify", art.parity
    assert art.parity.max_abs_diff < 5e-3
    assert _int8_kernels(art) == 14, art.notes["ort_kernels"]  # q k v o + 2 MLP per layer, pooler, head
    assert not art.notes["ort_kernels"].get("QLinearSoftmax")  # attention stays float, as simulated
    runner = ec.load(tmp_path / "bert.onnx")
    assert [(s.name, s.dtype) for s in runner.inputs] == [("input_ids", "int64"),
                                                            ("attention_mask", "int64")]


def test_bert_static_int8_tflite_calibrates_every_signature_input(bert_int8, tmp_path):
    pytest.importorskip("litert_torch")
    art = bert_int8.export("tflite", tmp_path / "bert.tflite", **EXPORT)
    assert art.parity.passed, art.parity
    assert art.notes["calib_count"] == 16
    assert art.notes["weight_dtypes"]["int8"] == 14 and art.notes["kernel_input_dtypes"]["int8"] == 14


def test_bert_static_int8_from_an_ecm_file_keeps_its_named_samples(bert_int8, tmp_path):
    bert_int8.save(tmp_path / "bert.ecm", keep_samples=True, portable=False)  # rebuilt by _bert
    back = ec.DeployableModel.load(tmp_path / "bert.ecm", builder=_bert)
    assert torch.equal(back.quant_recipe.calib_samples["attention_mask"],
                       bert_int8.quant_recipe.calib_samples["attention_mask"])
    art = back.export("onnx", tmp_path / "again.onnx", **EXPORT)
    assert art.parity.passed and _int8_kernels(art) == 14, art.parity


def test_torchscript_refuses_static_int8_with_several_inputs_naming_what_works(bert_int8, tmp_path):
    with pytest.raises(ExportError, match="'onnx' or 'tflite'"):
        bert_int8.export("torchscript", tmp_path / "bert.ptl", **EXPORT)


def test_bert_pruned_with_both_inputs_exports_onnx_with_parity(tmp_path):
    pytest.importorskip("torch_pruning")
    model = _bert()
    dm = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=FAST).run(model, _bert_data())
    assert count_params(dm.model) < 0.9 * count_params(model)
    art = dm.export("onnx", tmp_path / "bert.onnx", **EXPORT)
    assert art.parity.passed, art.parity


# -- HF GPT-2 decoder: causal LM, dynamic INT8 ---------------------------------------------------
def test_gpt2_dynamic_int8_onnx_keeps_the_next_token(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids, _ = _tokens(16, 12, 64)
    data = ec.DataBundle(val=[{"input_ids": ids[i:i + 8]} for i in (0, 8)])
    dm = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=FAST).run(model, data)
    art = dm.export("onnx", tmp_path / "gpt2.onnx", **EXPORT)
    assert art.parity.passed and art.parity.task == "causal_lm", art.parity
    assert art.parity.metric == "next_token_agreement" and art.parity.metric_value >= 0.9
    assert _int8_kernels(art) >= 9, art.notes["ort_kernels"]  # 4 per block + the LM head
    runner = ec.load(tmp_path / "gpt2.onnx")
    logits = runner.run_named({"input_ids": ids[:2].numpy()})["logits"]
    with torch.no_grad():
        want = dm.float_model(input_ids=ids[:2]).logits.numpy()
    assert (logits.argmax(-1) == want.argmax(-1)).mean() >= 0.9  # and against the float model


# -- timm DeiT: static INT8 of the layers ---------------------------------------------------------
def _deit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                             patch_size=8, embed_dim=32, depth=2, num_heads=2).eval()


def test_timm_deit_static_int8_of_the_layers_passes(tmp_path):
    """Graph-wide, DeiT's INT8 file misses the simulated model by 35 steps (issue #23) and the
    refusal suggests ``layers_only=True``; with it the file passes on int8 kernels."""
    dm = ec.Pipeline([ec.passes.QuantizePTQ(samples=16, layers_only=True)], measure=FAST).run(
        _deit(), _images())
    art = dm.export("onnx", tmp_path / "deit.onnx", **EXPORT)
    assert art.parity.passed, art.parity
    kernels = art.notes["ort_kernels"]
    assert kernels.get("QLinearConv") == 1 and _int8_kernels(art) == 10, kernels  # patch + 2×4 + head


def test_timm_deit_pruned_exports_onnx_with_parity(tmp_path):
    pytest.importorskip("torch_pruning")
    model = _deit()
    dm = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=FAST).run(model, _images())
    assert count_params(dm.model) < 0.9 * count_params(model)
    art = dm.export("onnx", tmp_path / "deit.onnx", **EXPORT)
    assert art.parity.passed, art.parity
