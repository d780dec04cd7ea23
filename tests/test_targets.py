"""Target profiles fill options left at their defaults and say so in the report."""

from dataclasses import dataclass

import pytest

import edgecompress as ec
from edgecompress.options import option
from edgecompress.targets import TARGETS, get_target


@dataclass
class Knobs(ec.Pass):
    name = "knobs"
    round_to: int | None = option(None, "channel multiple")
    backend: str = option("x86", "engine", choices=("x86", "arm"))

    def run(self, model, ctx):
        ctx.note("seen", {"round_to": self.round_to, "backend": self.backend})
        return model


def test_all_named_devices_exist():
    assert {"rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "jetson-orin-nx",
            "jetson-agx-orin", "coral", "x86", "arm64"} <= set(TARGETS)
    assert get_target("Jetson_Orin_NX").name == "jetson-orin-nx"
    with pytest.raises(ec.ConfigError, match="unknown target 'pi9'. Known targets: rpi4"):
        get_target("pi9")


def test_profile_values_fill_defaults_only(trained_cnn, digits):
    pipe = ec.Pipeline([Knobs(), Knobs(round_to=4)], measure=False)
    dm = pipe.run(trained_cnn, digits, target="rpi5")
    seen = [s.notes["seen"] for s in dm.report.stages[1:]]
    assert seen[0] == {"round_to": 8, "backend": "arm"}
    assert seen[1] == {"round_to": 4, "backend": "arm"}  # the user's explicit 4 is kept
    assert dm.report.info["target"] == "rpi5"
    assert dm.report.info["from_target"] == {"1.knobs.round_to": 8, "1.knobs.backend": "arm",
                                             "2.knobs.backend": "arm"}
    assert pipe.passes[0].round_to is None  # the pipeline's own passes are not changed


def test_export_options_per_device():
    assert get_target("rpi4").export_options("onnx") == {"opset": 13}
    assert get_target("coral").export_options("tflite", "static") == {"int8_io": True}
    assert get_target("coral").export_options("tflite") == {}  # a float model keeps float IO
    assert get_target("rpi5").export_options("torchscript") == {"engine": "qnnpack"}
    assert get_target("x86").export_options("torchscript") == {"engine": "x86"}
    assert get_target("jetson-nano").tensorrt_int8 is False
