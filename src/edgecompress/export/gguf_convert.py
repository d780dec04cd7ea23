"""Hugging Face causal LM → GGUF, as plain functions (the Exporter in ``gguf.py`` adapts them).

Tensors are named with the ``gguf`` package's own HF → GGUF name map, hyperparameters go under
the keys llama.cpp reads for each architecture, and the tokenizer (a byte-level BPE) is embedded
as llama.cpp's ``gpt2`` tokenizer model. Weights are quantized with ``gguf.quants`` (F16, Q8_0,
Q4_0, Q4_1); the package cannot quantize K-quants, so Q4_K is made by llama.cpp's own quantizer
(``llama_model_quantize`` through llama-cpp-python) from an F32 GGUF written here. The layout
rules follow llama.cpp's ``convert_hf_to_gguf.py``: Llama's q/k rows are permuted back to the
interleaved RoPE order llama.cpp uses; GPT-2's ``Conv1D`` weights are transposed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch import nn

from .._extras import require
from ..errors import ConfigError, ExportError
from ..lm.models import architecture

log = logging.getLogger("edgecompress")

# type name -> (bits, symmetric) of the weight recipe it holds natively (None: float)
TYPES: dict[str, tuple[int, bool] | None] = {
    "f32": None, "f16": None, "q8_0": (8, True), "q4_0": (4, True), "q4_1": (4, False),
    "q4_k": (4, False),
}
BLOCK = 32  # weights per ggml block (Q4_K: 8 such blocks per 256-weight superblock)
ARCH_NAMES = {"llama": "LLAMA", "qwen2": "QWEN2", "gpt2": "GPT2"}


@dataclass(frozen=True)
class Plan:
    """What a GGUF file will hold: one ggml type for the recipe's weights, F16/F32 for the rest."""

    type: str
    precision: str
    layers: frozenset[str]  # HF module names whose weights are stored as ``type``
    note: str = ""
    fallback: str | None = None

    @property
    def quantized(self) -> bool:
        return TYPES[self.type] is not None


def _describe(bits_sym: tuple[int, bool]) -> str:
    return f"{bits_sym[0]}-bit {'symmetric' if bits_sym[1] else 'asymmetric'}"


def _auto_type(bits: int, symmetric: bool) -> str | None:
    return {(8, True): "q8_0", (4, True): "q4_0", (4, False): "q4_1"}.get((bits, symmetric))


def plan(recipe: Any, requested: str, allow_float_fallback: bool = False) -> Plan:
    """The ggml type that realises ``recipe``, or an ExportError saying what would work."""
    if requested != "auto" and requested not in TYPES:
        raise ConfigError(f"unknown GGUF type '{requested}'; choose one of auto, {', '.join(TYPES)}")
    if recipe is None:
        if requested in ("auto", "f16", "f32"):
            kind = "f16" if requested == "auto" else requested
            return Plan(kind, "fp16" if kind == "f16" else "fp32", frozenset())
        bits, sym = TYPES[requested]  # type: ignore[misc]
        raise ExportError(f"type '{requested}' stores {_describe((bits, sym))} weights, but the "
                          f"model carries no weight-only recipe, so nothing measured the quantized "
                          f"model. Add ec.passes.QuantizeWeights(bits={bits}, group_size=32, "
                          f"scheme='{'sym' if sym else 'asym'}') before exporting, or export "
                          f"type='f16'")
    if getattr(recipe, "scheme", None) != "weight":
        raise ExportError(f"GGUF holds weight-only quantization (float activations); this model "
                          f"carries an INT8 {recipe.scheme} recipe, which llama.cpp does not run. "
                          f"Quantize with ec.passes.QuantizeWeights instead, or export to onnx")
    if requested in ("f16", "f32"):
        if not allow_float_fallback:
            raise ExportError(f"type '{requested}' would store float weights, but the model carries "
                              f"a {recipe.describe()} recipe. Export type='auto' (realises it), or "
                              f"pass allow_float_fallback=True to write the float model")
        note = f"{recipe.describe()} recipe not realised: {requested} requested"
        return Plan(requested, "fp16" if requested == "f16" else "fp32", frozenset(), fallback=note)
    if recipe.group_size != BLOCK:
        raise ExportError(f"ggml's Q8_0 / Q4_0 / Q4_1 / Q4_K blocks hold {BLOCK} weights per scale, "
                          f"but the recipe uses groups of {recipe.group_size}. Use "
                          f"QuantizeWeights(group_size={BLOCK}) for a GGUF export")
    wanted = (recipe.bits, recipe.symmetric)
    auto = _auto_type(*wanted)
    kind = auto if requested == "auto" else requested
    if kind is None or TYPES[kind] != wanted:
        holds = _describe(TYPES[kind]) if kind and TYPES[kind] else "no"  # type: ignore[arg-type]
        fits = f"type='{auto}'" if auto else "QuantizeWeights(scheme='sym') (Q8_0)"
        raise ExportError(f"GGUF type '{kind or requested}' holds {holds} weights in blocks of "
                          f"{BLOCK}, but the recipe is {recipe.describe()}; writing it would store "
                          f"other weights than the ones measured. Use {fits}")
    if kind == "q4_k" and recipe.skip:
        raise ExportError(f"a Q4_K export quantizes every Linear layer (llama.cpp's quantizer), so "
                          f"skip={list(recipe.skip)} cannot be honoured; use type='q4_1'")
    note = ("Q4_K made by llama.cpp's quantizer from the float weights: it searches its own "
            "range per 32-weight block and stores 6-bit scales and minimums per 256-weight "
            "superblock, so weights lie within one step of the float ones and about one step "
            "of the simulated ones") if kind == "q4_k" else ""
    return Plan(kind, f"int{recipe.bits}-weight", frozenset(recipe.layers), note)


# -- tensors ------------------------------------------------------------------------------------

def _permute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half q/k row order → the interleaved pairs of llama.cpp's LLAMA RoPE."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(model: nn.Module) -> Iterator[tuple[str, str, np.ndarray]]:
    """(GGUF name, HF module name, float32 array in GGUF row order) of every parameter."""
    gguf = require("gguf", "llm", "writing GGUF files")
    arch, cfg = architecture(model), model.config
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCH_NAMES[arch]),
                                        cfg.num_hidden_layers)
    conv1d = {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    for name, param in model.named_parameters():  # a tied head is listed once, as the embedding
        module = name.rsplit(".", 1)[0]
        target = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ExportError(f"no GGUF name for tensor '{name}' of this {arch} model; the GGUF "
                              f"exporter supports the standard Hugging Face {arch} layout")
        w = param.detach().float().cpu().numpy()
        if module in conv1d and w.ndim == 2:
            w = w.T
        if arch == "llama" and module.endswith(("q_proj", "k_proj")):
            heads = cfg.num_attention_heads if module.endswith("q_proj") else \
                (cfg.num_key_value_heads or cfg.num_attention_heads)
            w = _permute_rope(w, heads)
        yield target, module, np.ascontiguousarray(w)
        if arch == "gpt2" and target == "token_embd.weight":
            yield "output.weight", module, np.ascontiguousarray(w)  # llama.cpp's gpt2 wants it


def tensor_type(p: Plan, module: str, w: np.ndarray) -> str:
    """ggml type of one tensor: the plan's for recipe layers, F32 for vectors, F16 otherwise."""
    if w.ndim < 2 or p.type == "f32":
        return "f32"
    if module in p.layers or (not p.quantized and p.type == "f16"):
        return p.type if p.quantized else "f16"
    return "f16"


# -- metadata and tokenizer ---------------------------------------------------------------------

def write_hparams(writer: Any, model: nn.Module, context: int | None) -> None:
    """The hyperparameters llama.cpp reads for the model's architecture."""
    arch, c = architecture(model), model.config
    writer.add_context_length(context or c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    if arch == "gpt2":
        writer.add_feed_forward_length(c.n_inner or 4 * c.hidden_size)
        writer.add_layer_norm_eps(c.layer_norm_epsilon)
        return
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count_kv(c.num_key_value_heads or c.num_attention_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta") or \
        getattr(c, "rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(c.vocab_size)


def byte_level_bpe(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` if it is a byte-level BPE (else refuse)."""
    tok = getattr(tokenizer, "backend_tokenizer", tokenizer)  # HF fast tokenizers wrap one
    if not hasattr(tok, "to_str"):
        raise ExportError(f"GGUF export needs a `tokenizers.Tokenizer` (or a Hugging Face fast "
                          f"tokenizer), got {type(tokenizer).__name__}")
    spec = json.loads(tok.to_str())
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in pre:
        raise ExportError("GGUF export embeds byte-level BPE tokenizers (GPT-2 style, as "
                          "ec.data.text trains); this tokenizer is a "
                          f"{spec['model']['type']} with pre-tokenizer {pre[:80]}")
    return tok


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Embed a byte-level BPE as llama.cpp's ``gpt2`` tokenizer; pad to the model's vocab."""
    gguf = require("gguf", "llm", "writing GGUF files")
    tok = byte_level_bpe(tokenizer)
    spec = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size:
        raise ExportError(f"the tokenizer has {len(vocab)} tokens but the model's vocabulary only "
                          f"{vocab_size}; export the model trained with this tokenizer")
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex, which ByteLevel uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = min(special) if special else 0
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)  # token ids exactly as the tokenizer gives them
    writer.add_add_eos_token(False)
    return {"tokens": len(vocab), "merges": len(merges), "eos_id": eos}


# -- the conversion -----------------------------------------------------------------------------

def convert(model: nn.Module, tokenizer: Any, path: Path, p: Plan,
            metadata: dict[str, Any] | None = None, context: int | None = None) -> dict[str, Any]:
    """Write ``model`` with ``tokenizer`` as GGUF at ``path`` under plan ``p``; return notes."""
    if p.type == "q4_k":
        return _convert_k_quant(model, tokenizer, path, p, metadata, context)
    gguf = require("gguf", "llm", "writing GGUF files")
    arch = architecture(model)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(type(model).__name__)
    write_hparams(writer, model, context)
    ftype = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}[p.type]
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tok_notes = write_tokenizer(writer, tokenizer, model.config.vocab_size)
    if metadata:
        writer.add_string("edgecompress.metadata", json.dumps(metadata, default=str))
    for name, module, w in hf_tensors(model):
        kind = tensor_type(p, module, w)
        qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
        data = w.astype(np.float16) if kind == "f16" else \
            w if kind == "f32" else gguf.quants.quantize(w, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if kind not in ("f16", "f32") else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"ggml_type": p.type.upper(), "architecture": arch,
            "tokenizer": tok_notes, **({"type_note": p.note} if p.note else {})}


def _convert_k_quant(model: nn.Module, tokenizer: Any, path: Path, p: Plan,
                     metadata: dict[str, Any] | None, context: int | None) -> dict[str, Any]:
    """Q4_K: write F32, then let llama.cpp's quantizer make the K-quant blocks."""
    llama_cpp = require("llama_cpp", "llm", "making Q4_K files with llama.cpp's quantizer")
    f32 = path.with_name(path.name + ".f32.tmp")
    try:
        notes = convert(model, tokenizer, f32, Plan("f32", "fp32", frozenset()), metadata, context)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S
        params.pure = True  # Q4_K everywhere: no Q5_K/Q6_K mixing for "important" tensors
        embed = model.get_input_embeddings()
        embed_name = next(n for n, m in model.named_modules() if m is embed)
        tied = "lm_head.weight" not in dict(model.named_parameters())
        q4k, f16 = llama_cpp.GGML_TYPE_Q4_K, llama_cpp.GGML_TYPE_F16
        params.token_embedding_type = q4k if embed_name in p.layers else f16
        head = embed_name if tied else "lm_head"
        params.output_tensor_type = q4k if head in p.layers else f16
        rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(path).encode(), params)
        if rc != 0:
            raise ExportError(f"llama.cpp's quantizer failed (code {rc}) making Q4_K")
    finally:
        f32.unlink(missing_ok=True)
    expected = {name: ("q4_k" if module in p.layers else "f16") for name, module, w in
                hf_tensors(model) if w.ndim == 2}
    _check_types(path, expected)
    notes.update(ggml_type="Q4_K", type_note=p.note)
    return notes


def _check_types(path: Path, expected: dict[str, str]) -> None:
    """Refuse a file whose tensors are not of the types the plan asked for."""
    gguf = require("gguf", "llm", "reading GGUF files")
    got = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors}
    wrong = {n: got.get(n) for n, want in expected.items() if got.get(n) != want}
    if wrong:
        name, kind = next(iter(wrong.items()))
        raise ExportError(f"llama.cpp stored {len(wrong)} tensor(s) in other types than the recipe "
                          f"asks (e.g. {name} as {kind}, expected {expected[name]}); K-quants need "
                          f"rows of a multiple of 256 weights: use type='q4_1' (blocks of 32)")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds (read back)."""
    gguf = require("gguf", "llm", "reading GGUF files")
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
