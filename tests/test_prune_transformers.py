"""StructuredPrune beyond CNNs: attention heads pruned consistently (Hugging Face ViT and BERT),
segmentation heads kept whole, and couplings the graph cannot map refused with the layers
named and an ignore= that was checked to work. Random-init models from the real libraries."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import edgecompress as ec
from edgecompress.context import PassContext
from edgecompress.errors import PassError
from edgecompress.measure import count_macs, count_params

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")

CHEAP = ec.Measure(accuracy=False, latency=False)


class Logits(nn.Module):
    """A Hugging Face classifier giving its logits tensor (what the exporters verify today)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class LastHidden(nn.Module):
    """A BERT encoder fed token ids only, giving its last hidden state."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids).last_hidden_state


def _vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
    return transformers.ViTForImageClassification(cfg).eval()


def _context(example: torch.Tensor) -> PassContext:
    # the pass reads only the example input; DataBundle takes float inputs only until the
    # inputs part of #23 lands, and BERT's are int64 token ids
    return PassContext(data=SimpleNamespace(example_input=example))


def _attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "q_proj") or hasattr(m, "query")]


def test_vit_heads_pruned_consistently_smaller_and_onnx_parity(tmp_path):
    model = Logits(_vit())
    data = ec.data.digits(image_size=32, channels=3)
    dm = ec.Pipeline([ec.passes.StructuredPrune(ratio=0.3)], measure=CHEAP).run(model, data)
    dense, pruned = dm.report.stages[0], dm.report.stages[-1]
    assert pruned.params < 0.7 * dense.params and pruned.macs < 0.7 * dense.macs
    for attn in _attentions(dm.model):  # 4 heads kept, each narrower by the same amount
        assert attn.num_attention_heads == 4
        assert attn.q_proj.out_features == attn.k_proj.out_features == 4 * attn.head_dim
        assert attn.head_dim < 16 and attn.o_proj.in_features == attn.q_proj.out_features
    x = data.samples("val", 4)
    assert dm.model(x).shape == (4, 10)
    art = dm.export("onnx", tmp_path / "vit.onnx", benchmark_runs=0)
    assert art.parity.passed and art.parity.max_abs_diff < 1e-4


def test_vit_pruned_without_wrapper_keeps_its_model_output():
    model = _vit()
    x = torch.randn(1, 3, 32, 32)
    out = ec.passes.StructuredPrune(ratio=0.3).run(model, _context(x))
    assert count_params(out.model) < 0.7 * count_params(model)
    assert out.model(x).logits.shape == (1, 10)
    assert model.classifier.out_features == 10 and out.model.classifier.out_features == 10


def test_bert_encoder_pruned_heads_and_hidden_width_kept():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128,
                                  max_position_embeddings=32)
    model = LastHidden(transformers.BertModel(cfg, add_pooling_layer=False)).eval()
    ids = torch.randint(0, 100, (1, 16))
    out = ec.passes.StructuredPrune(ratio=0.4).run(model, _context(ids))
    pruned = out.model
    # the output is the residual width: it stays 64; heads and MLP hidden widths shrink
    assert pruned(ids).shape == (1, 16, 64)
    assert count_macs(pruned, ids) < 0.8 * count_macs(model, ids)
    for attn in _attentions(pruned):
        assert attn.num_attention_heads == 4
        assert attn.query.out_features == 4 * attn.attention_head_size == attn.all_head_size
        assert attn.attention_head_size < 16
    assert all(layer.intermediate.dense.out_features < 128 for layer in pruned.bert.encoder.layer)
    assert torch.isfinite(pruned(torch.randint(0, 100, (2, 16)))).all()


def test_segmentation_head_kept_whole():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    ctx = _context(x)
    out = ec.passes.StructuredPrune(ratio=0.4).run(model, ctx)
    assert set(ctx.notes["kept_whole"]) == {"classifier.low_classifier",
                                            "classifier.high_classifier"}
    assert out.model(x)["out"].shape == (1, 3, 64, 64)
    assert count_params(out.model) < 0.7 * count_params(model)


class HalfSplit(nn.Module):
    """Splits the stem's channels at a width fixed at construction, which the graph cannot see:
    pruning the stem breaks the split."""

    def __init__(self) -> None:
        super().__init__()
        self.half = 8
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(8, 16, 3, padding=1)
        self.right = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.left(y[:, :self.half]) + self.right(y[:, self.half:])
        return self.head(z.mean((2, 3)))


def test_unprunable_coupling_names_layers_and_a_checked_ignore():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(PassError) as info:
        ec.passes.StructuredPrune(ratio=0.5).run(HalfSplit().eval(), _context(x))
    message = str(info.value)
    assert "Layers involved: ['stem']" in message
    assert "ignore=['stem'] (checked" in message
    out = ec.passes.StructuredPrune(ratio=0.5, ignore=("stem",)).run(HalfSplit().eval(),
                                                                      _context(x))
    assert out.model(x).shape == (1, 10)
    assert out.model.left.out_channels < 16  # the rest was pruned


def test_time_limit_stops_a_slow_graph_build_with_progress(caplog):
    from edgecompress.passes.pruning import watchdog

    caplog.set_level(logging.INFO, logger="edgecompress")
    with pytest.raises(watchdog.GraphTimeout):
        with watchdog.time_limit(0.5, "slow build", every=0.1):
            while True:  # pure Python, as Torch-Pruning's index mapping is
                sum(range(1000))
    assert any("slow build: still working" in r.getMessage() for r in caplog.records)
    with watchdog.time_limit(5, "fast build"):
        pass  # ends before the limit: nothing is raised later
    sum(range(10_000_000))


def test_time_limit_option_refuses_with_what_to_do():
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(PassError, match=r"took longer than time_limit=0\.001 s.*Raise time_limit"):
        ec.passes.StructuredPrune(ratio=0.3, time_limit=0.001).run(_vit(), _context(x))
