"""Regressions found by benchmarks/model_zoo.py (random-init models from timm, torchvision,
transformers, Ultralytics), each reduced to a tiny model that runs in seconds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.errors import ConfigError, ExportError

FAST = {"benchmark_runs": 0, "parity_samples": 32}


def _images(n: int = 32) -> ec.DataBundle:
    x = torch.rand((n, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    return ec.DataBundle(val=[x[i:i + 8] for i in range(0, n, 8)])


def test_near_constant_logits_int8_bound_is_a_step_of_their_value(tmp_path):
    # timm's random-init EfficientNet gives logits that differ by ~1e-12 across samples: their
    # range / 255 made the INT8 bound ~4e-15 and refused a faithful dynamic INT8 file
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[3].weight.mul_(1e-9)
        model[3].bias.uniform_(0.1, 0.2)
    dm = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(model, _images())
    art = dm.export("onnx", tmp_path / "m.onnx", **FAST)
    (out,) = art.parity.outputs
    assert art.parity.passed, art.parity
    # the step of an INT8 range that holds 0 and the logits (≤ 0.2): a real, not vanishing, bound
    assert 0.1 / 255 < out["step"] <= 0.2 / 255


def test_timm_linear_subclass_is_quantized_dynamically(tmp_path):
    # timm's MobileNetV3 / LCNet / GhostNet classifiers are timm.layers.Linear (an nn.Linear
    # subclass): QuantizeDynamic found "no Linear layer" and refused
    timm_layers = pytest.importorskip("timm.layers")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), timm_layers.Linear(192, 32), nn.ReLU(),
                          timm_layers.Linear(32, 10)).eval()
    dm = ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(model, _images())
    assert sum(isinstance(m, DynamicLinear) for m in dm.model.modules()) == 2
    art = dm.export("onnx", tmp_path / "m.onnx", **FAST)
    assert art.parity.passed and art.precision == "int8-dynamic", art.parity
    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    assert ops.count("MatMulInteger") == 2


def test_dynamic_int8_of_a_conv_only_net_says_to_use_static_int8():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(ConfigError, match="no Linear/LSTM/GRU layer .* use QuantizePTQ"):
        ec.Pipeline([ec.passes.QuantizeDynamic()], measure=False).run(model, _images())


def test_structured_prune_takes_named_inputs():
    # a BERT fed {input_ids, attention_mask} per batch: the pass sliced the dict (TypeError)
    transformers = pytest.importorskip("transformers")
    from edgecompress.measure import count_params

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16)).eval()
    ids = torch.randint(0, 64, (8, 10), generator=torch.Generator().manual_seed(1))
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": torch.ones(4, 10, dtype=torch.int64)}
               for i in (0, 4)]
    dm = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.5)], measure=False).run(
        model, ec.DataBundle(val=batches))
    assert count_params(dm.model) < 0.9 * count_params(model)
    with torch.no_grad():
        out = dm.model(**batches[0])
    assert out.last_hidden_state.shape == (4, 10, 32)  # the embedding width is kept whole


class _DictSegmenter(nn.Module):
    """torchvision's segmentation output: ``{"out": (N, classes, H, W)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)}


def test_ncnn_exports_a_single_output_inside_a_dict(tmp_path):
    # torchvision LRASPP / DeepLabV3: torch.jit.trace refused the dict output
    pytest.importorskip("pnnx")
    pytest.importorskip("ncnn")
    torch.manual_seed(0)
    dm = ec.Pipeline([], measure=False).run(_DictSegmenter().eval(), _images())
    art = dm.export("ncnn", tmp_path / "seg_ncnn", **FAST)
    assert art.parity.passed and art.parity.task == "segment", art.parity
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        want = dm.model(x)["out"].numpy()
    got = np.stack([ec.load(art.path)(x[i:i + 1].numpy())[0] for i in range(2)])
    assert np.abs(got - want).max() < 1e-4


def test_ncnn_refuses_several_outputs_naming_them(tmp_path):
    class TwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x)
            return y, y.mean((2, 3))

    dm = ec.Pipeline([], measure=False).run(TwoOut().eval(), _images())
    with pytest.raises(ExportError, match="2 outputs .* export to one of onnx"):
        dm.export("ncnn", tmp_path / "two_ncnn", **FAST)


class _PerImage(nn.Module):
    """A detector's output shape: one dict per image in the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        y = self.conv(x).flatten(2)
        return [{"boxes": y[i, :, :4], "scores": y[i].mean(0)} for i in range(x.shape[0])]


def test_torchscript_refuses_per_image_outputs_instead_of_a_fixed_batch_trace(tmp_path):
    # torchvision SSDlite: traced with 2 images, the .ptl then failed on 1 ("Expected 2
    # elements in a list but found 1") inside the runner
    dm = ec.Pipeline([], measure=False).run(_PerImage().eval(), _images())
    with pytest.raises(ExportError, match="one set of outputs per image.*'onnx'"):
        dm.export("torchscript", tmp_path / "det.ptl", **FAST)
    assert not (tmp_path / "det.ptl").exists()


def test_structured_prune_of_gpt2_names_its_conv1d_layers_and_what_to_use():
    # transformers' GPT-2 projections are Conv1D, not nn.Linear: the refusal said "no prunable
    # layers" and nothing about why or what would work
    transformers = pytest.importorskip("transformers")
    from edgecompress.errors import PassError

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, use_cache=False)).eval()
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(PassError, match="Conv1D ×4.*UnstructuredPrune"):
        ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=False).run(
            model, ec.DataBundle(val=[ids]))
