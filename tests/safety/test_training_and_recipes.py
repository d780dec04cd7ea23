"""Recipes are bounded and typed; training resumes exactly; silent wrong results are errors."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

import edgecompress as ec
from edgecompress.errors import ConfigError, DataError
from edgecompress.models import small_cnn
from edgecompress.training import FineTune, TrainConfig, accuracy, cross_entropy_loss, train

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 threads spin against each other here


def state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- recipes ---------------------------------------------------------------------------------
BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                 + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
                 + ["passes: *i"])


def test_yaml_alias_bomb_is_refused_within_seconds(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)  # 9**9 = 387 million strings once expanded
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        ec.Pipeline.from_recipe(path)
    assert time.perf_counter() - t0 < 5


def test_huge_recipe_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("passes:\n" + "  - {pass: fuse}\n" * 100_000)
    with pytest.raises(ConfigError, match="at most"):
        ec.Pipeline.from_recipe(path)


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("passes:\n"
                    "  - {pass: structured_prune, ratio: 0.2, finetune: &ft {epochs: 1, lr: 0.001}}\n"
                    "  - {pass: structured_prune, ratio: 0.1, finetune: *ft}\n")
    pipe = ec.Pipeline.from_recipe(path)
    assert pipe.passes[1].finetune.lr == 0.001


@pytest.mark.parametrize("text,match", [
    ("seed: 1.9\npasses: [{pass: fuse}]", "seed"),
    ("seed: true\npasses: [{pass: fuse}]", "seed"),
    ("passes: [{pass: structured_prune, ratio: .nan}]", "NaN"),
    ("passes: [{pass: structured_prune, ratio: '0.3'}]", "expected float"),
    ("passes: [{pass: quantize_ptq, samples: 1.5}]", "expected int"),
])
def test_wrong_types_and_nan_are_errors_not_coerced(tmp_path, text, match):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        ec.Pipeline.from_recipe(path)


def test_json_nan_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"passes": [{"pass": "structured_prune", "ratio": NaN}]}')
    with pytest.raises(ConfigError, match="NaN"):
        ec.Pipeline.from_recipe(path)


def test_pipeline_seed_must_be_an_integer():
    with pytest.raises(ConfigError, match="seed"):
        ec.Pipeline([ec.passes.Fuse()], seed=1.9)


# -- exact resume ------------------------------------------------------------------------------
def _run(digits, checkpoint, stop_after=None, lr=2e-3, width=8):
    torch.manual_seed(0)
    model = small_cnn(width=width)
    # best_on_val=False: the final weights, not the best epoch's (which may be epoch 1's)
    cfg = TrainConfig(epochs=3, lr=lr, max_batches=4, best_on_val=False,
                      checkpoint=str(checkpoint))

    def interrupt(epoch):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt  # Ctrl-C during the epoch after the checkpointed one

    with digits.rewound():
        train(model, digits.train, cross_entropy_loss, cfg, val_loader=digits.val, seed=0,
              on_epoch_end=interrupt)
    return model


def test_resume_equals_uninterrupted(digits, tmp_path):
    straight = state_hash(_run(digits, tmp_path / "a.ckpt"))
    with pytest.raises(KeyboardInterrupt):
        _run(digits, tmp_path / "b.ckpt", stop_after=1)
    resumed = state_hash(_run(digits, tmp_path / "b.ckpt"))
    assert resumed == straight


def test_stale_checkpoint_from_another_config_is_refused_by_name(digits, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(digits, ckpt, stop_after=1)
    with pytest.raises(ConfigError, match="lr was 0.002, now 0.001"):
        _run(digits, ckpt, lr=1e-3)
    with pytest.raises(ConfigError, match="parameter .* has shape"):
        _run(digits, ckpt, width=16)


# -- silent wrong results ----------------------------------------------------------------------
def test_nan_in_a_later_validation_batch_is_an_error():
    model = small_cnn(width=8).eval()
    x = torch.randn(64, 1, 16, 16)
    x[40, 0, 3, 3] = float("nan")
    batches = [(x[i:i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, 64, 16)]
    with pytest.raises(DataError, match="validation batch 3 holds NaN"):
        accuracy(model, batches)


def test_num_classes_disagreeing_with_the_model_is_an_error(digits):
    with pytest.raises(ConfigError, match="num_classes=10, but the model gives 7"):
        ec.Pipeline([ec.passes.Fuse()], measure=False).run(small_cnn(width=8, num_classes=7),
                                                           digits)


def test_one_shot_generator_as_train_is_an_error(digits):
    batches = list(digits.train)[:3]
    one_shot = (b for b in batches)
    with pytest.raises(DataError, match="read only once"):
        train(small_cnn(width=8), one_shot, cross_entropy_loss, TrainConfig(epochs=2))


def test_pipeline_device_reaches_recovery_training(digits):
    """The pipeline's device (PassContext.device) reaches FineTune: on the 'meta' device
    training fails loudly, where an ignored device would silently train on CUDA/CPU instead."""
    from edgecompress.passes.base import PassContext

    ctx = PassContext(data=digits, seed=0, device="meta")
    model = small_cnn(width=8)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises on meta tensors
        FineTune(epochs=1, max_batches=1).recover(model, ctx)
    assert next(model.parameters()).device.type == "meta"
    own = FineTune(epochs=1, max_batches=1, device="cpu")  # its own device wins
    own.recover(small_cnn(width=8), ctx)


@pytest.mark.parametrize("argv", [["bench", "x.onnx", "--batch-size", "0"],
                                  ["bench", "x.onnx", "--threads", "-2"],
                                  ["bench", "x.onnx", "--runs", "0"]])
def test_cli_rejects_nonsense_numbers(argv, capsys):
    from edgecompress.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "must be at least" in capsys.readouterr().err
