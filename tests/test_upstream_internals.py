"""Private upstream internals edgecompress relies on: each test fails loudly when a new version of
Torch-Pruning or LiteRT changes one (their versions are bounded in pyproject.toml)."""

import inspect

import pytest
import torch
from torch import nn

tp = pytest.importorskip("torch_pruning")


class _CatReshape(nn.Module):
    """Two conv branches concatenated, then flattened by a view: a concat and a reshape node."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(y.view(y.size(0), -1))


def test_torch_pruning_round_to_is_the_hook_our_pruner_overrides():
    """engine._Pruner overrides BasePruner._round_to(n_pruned, current_channels, round_to)."""
    from edgecompress.passes.pruning.engine import _pruner_class

    params = list(inspect.signature(tp.pruner.BasePruner._round_to).parameters)
    assert params == ["self", "n_pruned", "current_channels", "round_to"], params
    calls = []

    class Counting(_pruner_class()):
        def _round_to(self, n_pruned, current_channels, round_to):
            calls.append((n_pruned, current_channels, round_to))
            return super()._round_to(n_pruned, current_channels, round_to)

    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 10))
    pruner = Counting(model, torch.randn(1, 1, 8, 8), importance=tp.importance.MagnitudeImportance(),
                      pruning_ratio=0.3, round_to=4, ignored_layers=[model[4]])
    pruner.step()
    assert calls, "Torch-Pruning no longer calls _round_to: the round_to override is dead"
    assert model[0].out_channels % 4 == 0 and model[0].out_channels == 12  # nearest multiple kept


def test_torch_pruning_index_mapping_is_looked_up_at_call_time(monkeypatch):
    """adapters.graph_build_guards swaps these two module functions while a graph is built."""
    from torch_pruning.dependency import index_mapping

    calls = []
    for name in ("update_reshape_index_mapping", "update_concat_index_mapping"):
        original = getattr(index_mapping, name)
        assert list(inspect.signature(original).parameters)[0] == "graph"
        assert len(inspect.signature(original).parameters) == 2

        def wrapped(graph, node, _original=original, _name=name):
            calls.append(_name)
            return _original(graph, node)

        monkeypatch.setattr(index_mapping, name, wrapped)
    tp.DependencyGraph().build_dependency(_CatReshape(), example_inputs=torch.randn(1, 1, 4, 4))
    assert set(calls) == {"update_reshape_index_mapping", "update_concat_index_mapping"}, calls


def test_litert_interpreter_ops_details(tmp_path):
    """inspect_tflite and the skip= matching read Interpreter._get_ops_details()."""
    pytest.importorskip("litert_torch")
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    from edgecompress.export.tflite import convert_float

    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path / "m.tflite"
    convert_float(model, torch.randn(1, 2, 8, 8), path)
    interp = litert.Interpreter(model_path=str(path))
    ops = interp._get_ops_details()  # noqa: SLF001 - the contract under test
    assert ops and all({"op_name", "inputs", "outputs"} <= set(op) for op in ops), ops[:1]
    names = {op["op_name"] for op in ops}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= names, names
    tensors = {d["index"] for d in interp.get_tensor_details()}
    assert all(int(i) in tensors for op in ops for i in op["inputs"] if int(i) >= 0)


class _Heads(nn.Module):
    """A fused-qkv self-attention (timm's layout) followed by a classifier over the mean token."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj, self.fc = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 5)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return self.fc(self.proj(y.transpose(1, 2).reshape(b, n, -1)).mean(1))


def test_torch_pruning_checks_the_group_just_before_rounding_it():
    """engine._Pruner reads a group's channel-group count in _is_atten_group(group), which
    BasePruner._prune calls for each group right before _round_to; and it skips a group whose
    estimate_importance(group) returns None (how an unmappable group is left out)."""
    from edgecompress.passes.pruning.engine import _pruner_class

    assert list(inspect.signature(tp.pruner.BasePruner._is_atten_group).parameters) == ["self", "group"]
    assert list(inspect.signature(tp.pruner.BasePruner.estimate_importance).parameters) == ["self", "group"]
    assert "num_heads" in inspect.signature(tp.pruner.BasePruner).parameters
    calls = []

    class Recording(_pruner_class()):
        def _is_atten_group(self, group):
            calls.append("check")
            return super()._is_atten_group(group)

        def _round_to(self, n_pruned, current_channels, round_to):
            calls.append(("round", self._groups_of_current))
            return super()._round_to(n_pruned, current_channels, round_to)

    model = _Heads()
    pruner = Recording(model, torch.randn(1, 6, 32), importance=tp.importance.MagnitudeImportance(),
                       pruning_ratio=0.5, round_to=8, num_heads={model.qkv: 4},
                       ignored_layers=[model.fc])
    pruner.step()
    rounds = [i for i, c in enumerate(calls) if isinstance(c, tuple)]
    assert rounds and all(calls[i - 1] == "check" for i in rounds), calls
    assert ("round", 4) in calls  # the attention group was rounded per head
    assert model.qkv.out_features % (3 * 4) == 0 and model.qkv.out_features < 96

    skipped = Recording(_Heads(), torch.randn(1, 6, 32), importance=lambda group: None,
                        pruning_ratio=0.5, ignored_layers=[])
    before = sum(p.numel() for p in skipped.model.parameters())
    skipped.step()
    assert sum(p.numel() for p in skipped.model.parameters()) == before


def test_uvicorn_internals_the_handed_over_connections_use():
    """serve/workers.py overrides ``uvicorn.Server.startup`` and builds the HTTP protocol itself
    (as uvicorn's own startup does): the pieces it relies on must still be there."""
    uvicorn = pytest.importorskip("uvicorn")
    server = uvicorn.Server(uvicorn.Config(lambda scope, receive, send: None, lifespan="on"))
    assert inspect.iscoroutinefunction(uvicorn.Server.startup)
    server.config.load()
    assert hasattr(server.config, "http_protocol_class")
    params = inspect.signature(server.config.http_protocol_class.__init__).parameters
    assert {"config", "server_state", "app_state", "_loop"} <= set(params), sorted(params)
    assert hasattr(server, "server_state")
    assert "self.lifespan" in inspect.getsource(uvicorn.Server._serve)  # set before startup()
    lifespan = server.config.lifespan_class(server.config)
    assert inspect.iscoroutinefunction(lifespan.startup)
    assert hasattr(lifespan, "should_exit") and hasattr(lifespan, "state")
