"""Language models: text data, weight-only quantization, GGUF files read back, llama.cpp runs.

The GGUF checks read files back with the ``gguf`` package's own reader; the llama.cpp checks
run when llama-cpp-python is installed (the ``[llm]`` extra builds it from source).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgecompress as ec
from edgecompress.errors import ConfigError, ExportError
from edgecompress.lm import perplexity, tiny_gpt2, tiny_llama, tiny_qwen2
from edgecompress.lm.groupquant import group_steps

gguf = pytest.importorskip("gguf", reason="the [llm] extra (gguf) is not installed")
pytest.importorskip("tokenizers", reason="the [llm] extra (tokenizers) is not installed")
try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA = True
except ImportError:
    HAVE_LLAMA = False
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed "
                                 "(pip install 'edgecompress[llm]' builds it from source)")


@pytest.fixture(scope="module")
def text():
    return ec.data.text(vocab_size=320, seq_len=32, batch_size=8, max_train_windows=96,
                        max_val_windows=8)


@pytest.fixture(scope="module")
def llama(text):
    """A tiny Llama trained for a few steps, so its next-token choices are not coin flips."""
    from edgecompress.lm import lm_loss
    from edgecompress.training import TrainConfig, train

    model = tiny_llama(text.vocab_size, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128)
    train(model, text.train, lm_loss, TrainConfig(epochs=2, lr=5e-3, best_on_val=False),
          desc="test-lm")
    return model.eval()


def _read(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def _dequantized(tensor):
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(
        [int(d) for d in reversed(tensor.shape)])


def _unpermute(w, heads):  # llama.cpp's interleaved RoPE rows back to HF's order
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- data ---------------------------------------------------------------------------------------

def test_text_bundle_holds_token_windows_and_a_round_tripping_tokenizer(text):
    x, y = next(iter(text.train))
    assert x.dtype == torch.int64 and x.shape == (8, 32) and torch.equal(x, y)
    sample = text.texts[0][:500]
    assert text.tokenizer.decode(text.tokenizer.encode(sample).ids) == sample
    assert text.describe()["task"] == "causal_lm"


def test_held_out_documents_are_not_in_training():
    from edgecompress.data.text import pydoc_documents, split_documents

    docs = pydoc_documents()
    train, held = split_documents(docs, 0.1, seed=0)
    assert not set(train) & set(held)
    assert 0.1 <= sum(map(len, held)) / sum(map(len, docs)) < 0.2


# -- QuantizeWeights ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits,scheme,levels", [(4, "sym", 16), (4, "asym", 16), (8, "sym", 255)])
def test_quantize_weights_puts_each_group_on_its_grid(llama, text, bits, scheme, levels):
    dm = ec.Pipeline([ec.passes.QuantizeWeights(bits=bits, scheme=scheme)],
                     measure=ec.Measure(latency=False, macs=False)).run(llama, text)
    sim = dm.model.model.layers[0].mlp.down_proj.weight.detach()
    assert max(len(torch.unique(g)) for g in sim.reshape(-1, 32)) <= levels
    orig = llama.model.layers[0].mlp.down_proj.weight.detach()
    step = group_steps(orig, bits, 32, scheme == "sym")
    err = (sim - orig).abs()
    # Q4_0's grid is d·(−8…7): the side opposite the extreme clips at 7·d, one step short
    assert float(err.max()) > 0 and bool((err <= step * 1.001 + 1e-8).all())
    assert float(err.mean()) < 0.3 * float(step.mean())
    assert dm.quant_recipe.precision == f"int{bits}-weight"
    stage = dm.report.stages[-1]
    assert stage.perplexity is not None and stage.perplexity > 1
    assert "lm_head" in dm.quant_recipe.layers and "model.embed_tokens" not in dm.quant_recipe.layers


def test_quantize_weights_refuses_groups_that_do_not_divide_a_row(llama, text):
    with pytest.raises(ConfigError, match="groups of 48"):
        ec.Pipeline([ec.passes.QuantizeWeights(group_size=48)], measure=False).run(llama, text)


# -- GGUF files read back -----------------------------------------------------------------------

@pytest.mark.parametrize("kind,bits,scheme", [("q8_0", 8, "sym"), ("q4_0", 4, "sym"),
                                              ("q4_1", 4, "asym")])
def test_gguf_tensors_dequantize_to_the_simulated_weights(llama, text, tmp_path, kind, bits,
                                                          scheme):
    dm = ec.Pipeline([ec.passes.QuantizeWeights(bits=bits, scheme=scheme, embeddings=True)],
                     measure=False).run(llama, text)
    art = dm.export("gguf", tmp_path / "m.gguf", verify=False)
    assert art.notes["ggml_type"] == kind.upper()
    _, tensors = _read(art.path)
    sim = dm.model.state_dict()
    cfg = llama.config
    pairs = {"blk.1.ffn_down.weight": sim["model.layers.1.mlp.down_proj.weight"],
             "token_embd.weight": sim["model.embed_tokens.weight"],
             "output.weight": sim["lm_head.weight"]}
    for name, want in pairs.items():
        assert tensors[name].tensor_type.name == kind.upper()
        np.testing.assert_array_equal(_dequantized(tensors[name]), want.numpy())
    k = _unpermute(_dequantized(tensors["blk.0.attn_k.weight"]), cfg.num_key_value_heads)
    np.testing.assert_array_equal(k, sim["model.layers.0.self_attn.k_proj.weight"].numpy())
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_gguf_f16_holds_the_float_model_within_float16_steps(llama, text, tmp_path):
    dm = ec.Pipeline([], measure=False).run(llama, text)
    art = dm.export("gguf", tmp_path / "f16.gguf", verify=False)
    _, tensors = _read(art.path)
    w = llama.model.layers[0].mlp.up_proj.weight.detach().numpy()
    got = _dequantized(tensors["blk.0.ffn_up.weight"])
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "F16"
    assert np.abs(got - w).max() <= np.abs(w).max() * 2 ** -11


def test_gguf_tokenizer_round_trips(llama, text, tmp_path):
    import tokenizers as tk

    art = ec.Pipeline([], measure=False).run(llama, text).export("gguf", tmp_path / "t.gguf",
                                                                  verify=False)
    reader, _ = _read(art.path)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode() for i in field.data]

    assert bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    rebuilt = tk.Tokenizer(tk.models.BPE({t: i for i, t in enumerate(tokens)},
                                         [tuple(m.split(" ")) for m in merges]))
    rebuilt.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    rebuilt.decoder = tk.decoders.ByteLevel()
    sample = text.texts[1][:2000]
    assert rebuilt.encode(sample).ids == text.tokenizer.encode(sample).ids
    assert rebuilt.decode(rebuilt.encode(sample).ids) == sample
    meta = json.loads(bytes(reader.fields["edgecompress.metadata"].parts[-1]).decode())
    assert meta["format"] == "gguf"


@pytest.mark.parametrize("build,names", [
    (tiny_qwen2, ("blk.0.attn_q.bias", "output.weight")),
    (tiny_gpt2, ("blk.0.attn_qkv.weight", "position_embd.weight", "output.weight"))])
def test_gguf_writes_qwen2_and_gpt2(text, tmp_path, build, names):
    model = build(text.vocab_size, hidden=64, layers=1, heads=2)
    dm = ec.Pipeline([ec.passes.QuantizeWeights(bits=8)], measure=False).run(model, text)
    reader, tensors = _read(dm.export("gguf", tmp_path / "m.gguf", verify=False).path)
    assert set(names) <= set(tensors)
    if build is tiny_gpt2:  # Conv1D (inputs × outputs) is stored transposed, as Linear rows
        want = dm.model.transformer.h[0].attn.c_attn.weight.detach().numpy().T
        np.testing.assert_array_equal(_dequantized(tensors["blk.0.attn_qkv.weight"]), want)


def test_gguf_refuses_what_a_type_cannot_hold(llama, text, tmp_path):
    q4 = ec.Pipeline([ec.passes.QuantizeWeights(bits=4)], measure=False).run(llama, text)
    with pytest.raises(ExportError, match="type='q4_0'"):
        q4.export("gguf", tmp_path / "a.gguf", type="q8_0", verify=False)
    with pytest.raises(ExportError, match="allow_float_fallback"):
        q4.export("gguf", tmp_path / "b.gguf", type="f16", verify=False)
    with pytest.raises(ExportError, match="cannot hold"):
        q4.export("onnx", tmp_path / "c.onnx")
    g64 = ec.Pipeline([ec.passes.QuantizeWeights(bits=4, group_size=64)], measure=False).run(
        llama, text)
    with pytest.raises(ExportError, match="group_size=32"):
        g64.export("gguf", tmp_path / "d.gguf", verify=False)
    plain = ec.Pipeline([], measure=False).run(llama, text)
    with pytest.raises(ExportError, match="QuantizeWeights"):
        plain.export("gguf", tmp_path / "e.gguf", type="q4_0", verify=False)
    assert not list(tmp_path.glob("*.gguf"))


def test_distill_trains_a_smaller_lm_student(llama, text):
    student = tiny_llama(text.vocab_size, hidden=32, layers=1, heads=2, ffn=64, seed=3)
    before = perplexity(student, text.val)["perplexity"]
    dm = ec.Pipeline([ec.Distill(student=student, epochs=1, lr=5e-3, measure=False)],
                     measure=ec.Measure(latency=False, macs=False)).run(llama, text)
    assert dm.report.stages[-1].params < dm.report.stages[0].params
    assert dm.report.stages[-1].perplexity < before


# -- llama.cpp ----------------------------------------------------------------------------------

@needs_llama
def test_f16_greedy_generation_matches_torch(llama, text, tmp_path):
    art = ec.Pipeline([], measure=False).run(llama, text).export("gguf", tmp_path / "f16.gguf",
                                                                  benchmark_runs=0)
    assert art.parity.passed, art.notes["lm_parity"]
    prompt = text.tokenizer.encode(text.texts[0][:120]).ids
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(12):
            nxt = llama(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    with ec.load(art.path) as runner:
        got = runner.generate(prompt, max_new_tokens=12, stop_at_eos=False)
        assert runner.tokenize(text.texts[0][:120]) == prompt
    assert got.tokens == ids[0, len(prompt):].tolist()


@needs_llama
def test_q4_0_artifact_records_parity_and_perplexity_through_llama_cpp(llama, text, tmp_path):
    dm = ec.Pipeline([ec.passes.QuantizeWeights(bits=4)], measure=False).run(llama, text)
    art = dm.export("gguf", tmp_path / "q4.gguf", benchmark_runs=0)
    record = art.metadata["lm_parity"]
    assert record["passed"] and record["next_token_agreement"] >= 0.9
    assert "perplexity_delta_vs_float" in record
    torch_ppl = perplexity(dm.model, text.val)["perplexity"]
    assert abs(art.perplexity / torch_ppl - 1) < 0.03
    with ec.load(art.path) as runner:
        stats = runner.benchmark_generation(text.texts[0][:200], new_tokens=8, runs=1)
    assert stats.decode_tok_s > 0 and stats.ttft_ms > 0 and stats.peak_rss_mb > 0


@needs_llama
def test_q4_k_lies_within_one_step_of_the_simulated_weights(text, tmp_path):
    model = tiny_llama(text.vocab_size, hidden=256, layers=1, heads=4, ffn=256)
    dm = ec.Pipeline([ec.passes.QuantizeWeights(bits=4, scheme="asym")], measure=False).run(
        model, text)
    # q4_k searches its own ranges, so next-token agreement with the simulated Q4_1-style
    # model can miss its bound on this tiny model: kept (marked FAIL then) to read its tensors
    art = dm.export("gguf", tmp_path / "k.gguf", type="q4_k", benchmark_runs=0,
                    on_parity_fail="keep")
    assert art.parity.passed or art.metadata["verification"].startswith("FAIL")
    _, tensors = _read(art.path)
    t = tensors["blk.0.ffn_up.weight"]
    assert t.tensor_type.name == "Q4_K"
    w = model.model.layers[0].mlp.up_proj.weight.detach()
    step = group_steps(w, 4, 32, False).numpy()
    sim = dm.model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    got = _dequantized(t)
    # llama.cpp searches its own 4-bit range per block: within one step of the float weights,
    # and so within about one step of the simulated ones (which are half a step from float)
    assert (np.abs(got - w.numpy()) <= step + 1e-6).all()
    assert (np.abs(got - sim) <= 1.5 * step + 1e-6).all()
    assert np.abs(got - w.numpy()).mean() < 0.3 * step.mean()
    assert art.notes["tensor_types"]["Q4_K"] == 8  # 7 Linear layers + the untied head
    assert "next_token_agreement" in art.metadata["lm_parity"]


def test_prune_ffn_removes_channels_and_exports(llama, text, tmp_path):
    from edgecompress.lm.prune import prune_ffn

    pruned = prune_ffn(llama, 0.5)
    assert pruned.config.intermediate_size == 64
    assert pruned.model.layers[0].mlp.down_proj.in_features == 64
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in llama.parameters())
    assert perplexity(pruned, text.val)["perplexity"] < 2 * perplexity(llama, text.val)["perplexity"]
    art = ec.Pipeline([], measure=False).run(pruned, text).export("gguf", tmp_path / "p.gguf",
                                                                   verify=False)
    reader, tensors = _read(art.path)
    assert int(reader.fields["llama.feed_forward_length"].parts[-1][0]) == 64
    assert [int(d) for d in tensors["blk.0.ffn_down.weight"].shape] == [64, 64]
