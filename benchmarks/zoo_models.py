"""The models of benchmarks/model_zoo.py: random-init, small inputs, built without downloads.

Each entry builds ``(model, batches, fresh)``: the model in eval mode, a few seeded batches of
its inputs (a tensor, or a dict of named tensors, per batch: val and calibration data) and one
larger batch drawn with another seed (the independent re-check of a written artifact).
Libraries: timm, torchvision (classification, detection, segmentation), Hugging Face
transformers (tiny configs), Ultralytics (YOLO built from its yaml; test/benchmark use only).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

Batch = Any  # a tensor, or a dict of named tensors
Built = tuple[nn.Module, list[Batch], Batch]
IMAGE = 64  # classifiers and segmenters: 64×64 keeps 30+ models × 6 cells in reasonable time
DETECT = 128  # detectors (torchvision's resize to 320 inside the model anyway)
BATCHES, BATCH, FRESH = 4, 8, 16


def _images(size: int, seed: int, n: int) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def image_data(size: int) -> tuple[list[Batch], Batch]:
    """Seeded images in [0, 1) (detectors take that range; the classifiers do not mind)."""
    batches = [_images(size, i, BATCH) for i in range(BATCHES)]
    return batches, _images(size, 1000, FRESH)


def _tokens(seed: int, n: int, vocab: int, seq: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.int64)
    mask[n // 2:, seq - 4:] = 0  # padded sequences: the mask matters
    return {"input_ids": ids, "attention_mask": mask}


def token_data(vocab: int) -> tuple[list[Batch], Batch]:
    return [_tokens(i, BATCH, vocab) for i in range(BATCHES)], _tokens(1000, FRESH, vocab)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: list[Batch]) -> nn.Module:
    """Set every BatchNorm's running statistics from the batches (the model otherwise in eval).

    A random-init network keeps BatchNorm's default statistics (mean 0, variance 1), so its
    activations shrink layer after layer: timm's LCNet gives logits of ~1e-7, EfficientNet-B0
    ~1e-5, and every INT8 or float difference is then judged on noise. With the statistics of
    the data, activations keep a spread of order 1, as in a trained network.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    for x in batches:
        model(x)
    for m in norms:
        m.momentum = 0.1
        m.eval()
    return model


def _image_model(make: Callable[[], nn.Module], size: int = IMAGE) -> Callable[[], Built]:
    def build() -> Built:
        torch.manual_seed(0)
        batches, fresh = image_data(size)
        return calibrate_batchnorm(make().eval(), batches), batches, fresh

    return build


def _timm(name: str, **kw: Any) -> Callable[[], Built]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kw)

    return _image_model(make)


def _tv(name: str, **kw: Any) -> Callable[[], Built]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kw)

    return _image_model(make)


def _tv_detect(name: str) -> Callable[[], Built]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                            num_classes=3)

    return _image_model(make, DETECT)


def _yolo(cfg: str) -> Callable[[], Built]:
    def make() -> nn.Module:
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel(cfg, nc=3, verbose=False)

    return _image_model(make, DETECT)


def _hf_text(kind: str) -> Callable[[], Built]:
    def build() -> Built:
        import transformers as tf

        torch.manual_seed(0)
        small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, vocab_size=128, max_position_embeddings=32)
        if kind == "bert":
            model = tf.BertModel(tf.BertConfig(**small))
        elif kind == "distilbert":
            model = tf.DistilBertModel(tf.DistilBertConfig(
                vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                max_position_embeddings=32))
        elif kind == "gpt2":
            model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_positions=32, n_embd=64,
                                                     n_layer=2, n_head=4, use_cache=False))
        else:
            model = tf.LlamaForCausalLM(tf.LlamaConfig(**small, num_key_value_heads=2,
                                                       use_cache=False))
        return (model.eval(), *token_data(128))

    return build


def _hf_vision(kind: str) -> Callable[[], Built]:
    def make() -> nn.Module:
        import transformers as tf

        cfg = dict(image_size=IMAGE, patch_size=16, hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=128, num_labels=10)
        if kind == "vit":
            return tf.ViTForImageClassification(tf.ViTConfig(**cfg))
        return tf.DeiTForImageClassification(tf.DeiTConfig(**cfg))

    return _image_model(make)


MODELS: dict[str, Callable[[], Built]] = {
    # timm: CNNs, hybrids, small transformers
    "timm/resnet18": _timm("resnet18"),
    "timm/mobilenetv3_small_050": _timm("mobilenetv3_small_050"),
    "timm/mobilenetv2_050": _timm("mobilenetv2_050"),
    "timm/efficientnet_b0": _timm("efficientnet_b0"),
    "timm/lcnet_050": _timm("lcnet_050"),
    "timm/ghostnet_050": _timm("ghostnet_050"),
    "timm/regnetx_002": _timm("regnetx_002"),
    "timm/convnext_atto": _timm("convnext_atto"),
    "timm/repvgg_a0": _timm("repvgg_a0"),
    "timm/edgenext_xx_small": _timm("edgenext_xx_small"),
    "timm/mobilevit_xxs": _timm("mobilevit_xxs"),
    "timm/levit_128s": _timm("levit_128s", img_size=IMAGE),
    "timm/deit_tiny": _timm("deit_tiny_patch16_224", img_size=IMAGE),
    "timm/vit_tiny": _timm("vit_tiny_patch16_224", img_size=IMAGE),
    # torchvision: classification, detection, segmentation
    "tv/resnet18": _tv("resnet18", num_classes=10),
    "tv/mobilenet_v2": _tv("mobilenet_v2", num_classes=10),
    "tv/mobilenet_v3_small": _tv("mobilenet_v3_small", num_classes=10),
    "tv/shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5", num_classes=10),
    "tv/squeezenet1_1": _tv("squeezenet1_1", num_classes=10),
    "tv/mnasnet0_5": _tv("mnasnet0_5", num_classes=10),
    "tv/ssdlite320": _tv_detect("ssdlite320_mobilenet_v3_large"),
    "tv/fasterrcnn_mobile": _tv_detect("fasterrcnn_mobilenet_v3_large_320_fpn"),
    "tv/lraspp": _tv("lraspp_mobilenet_v3_large", weights_backbone=None, num_classes=3),
    "tv/deeplabv3_mobile": _tv("deeplabv3_mobilenet_v3_large", weights_backbone=None,
                               num_classes=3, aux_loss=False),
    # Hugging Face transformers: tiny random-init configs
    "hf/bert": _hf_text("bert"),
    "hf/distilbert": _hf_text("distilbert"),
    "hf/gpt2": _hf_text("gpt2"),
    "hf/llama": _hf_text("llama"),
    "hf/vit": _hf_vision("vit"),
    "hf/deit": _hf_vision("deit"),
    # Ultralytics: built from the yaml shipped in the package
    "ultralytics/yolov8n": _yolo("yolov8n.yaml"),
    "ultralytics/yolo11n": _yolo("yolo11n.yaml"),
}
