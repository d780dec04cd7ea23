"""Run GGUF language models with llama.cpp (through llama-cpp-python).

``ec.load("model.gguf")`` gives a :class:`LlamaRunner`: call it with token ids for logits (the
Runner interface, used by parity checks), :meth:`~LlamaRunner.generate` text greedily,
:meth:`~LlamaRunner.perplexity` on your own text through llama.cpp's tokenizer and kernels, and
:meth:`~LlamaRunner.benchmark_generation` for what the field reports: load time, time to first
token, prefill and decode tokens per second and peak RSS, with the system's state alongside.
No torch import here: a device needs only llama-cpp-python and numpy.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .._extras import require
from ..errors import InputError
from .base import Runner, TensorSpec
from .system import peak_rss_mb, system_status

log = logging.getLogger("edgecompress")


@dataclass
class Generation:
    """Greedy generation: the new token ids, their text and how long each phase took."""

    tokens: list[int]
    text: str
    prompt_tokens: int
    ttft_ms: float  # prompt evaluation + the first new token
    decode_ms: float  # the remaining new tokens


@dataclass
class GenerationStats:
    """What llama.cpp benchmarks report, measured here (medians over ``runs``)."""

    load_s: float
    prompt_tokens: int
    new_tokens: int
    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float
    peak_rss_mb: float
    runs: int
    threads: int | None
    system: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"load {self.load_s:.2f} s | TTFT {self.ttft_ms:.1f} ms ({self.prompt_tokens} "
                f"prompt tokens) | prefill {self.prefill_tok_s:.0f} tok/s | decode "
                f"{self.decode_tok_s:.1f} tok/s ({self.new_tokens} tokens) | peak RSS "
                f"{self.peak_rss_mb:.0f} MB")


class LlamaRunner(Runner):
    """A GGUF causal LM in llama.cpp. Input: int64 token ids ``(batch, seq)``; output: logits.

    Each row of a batch is evaluated from an empty context (no state carries over), so logits
    match a torch forward over the same window. ``n_ctx`` (default: 512) bounds the window.
    """

    format = "gguf"

    def __init__(self, path: Any, threads: int | None = None, n_ctx: int = 512, **options: Any):
        self.n_ctx = n_ctx
        super().__init__(path, threads=threads, **options)

    def _open(self, logits_all: bool) -> Any:
        llama_cpp = require("llama_cpp", "llm", "running GGUF models with llama.cpp")
        return llama_cpp.Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_batch=self.n_ctx,
                               n_threads=self.threads, n_threads_batch=self.threads,
                               logits_all=logits_all, verbose=False)

    def _load(self) -> None:
        t0 = time.perf_counter()
        self.llm = self._open(logits_all=True)
        self.load_s = time.perf_counter() - t0
        self._serving: Any = None  # a second context without per-position logits, for speed
        self.n_vocab = int(self.llm.n_vocab())
        self.gguf_metadata = dict(self.llm.metadata)
        self.inputs = [TensorSpec("input_ids", (None, None), "int64")]
        self.outputs = [TensorSpec("logits", (None, None, self.n_vocab), "float32")]

    # -- Runner interface -------------------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """``(len(ids), vocab)`` logits of one sequence evaluated from an empty context."""
        ids = [int(i) for i in ids]
        if not 0 < len(ids) <= self.n_ctx:
            raise InputError(f"{self.path.name}: a sequence must hold 1..{self.n_ctx} tokens "
                             f"(n_ctx); got {len(ids)}. Open with ec.load(path, n_ctx=...) for more")
        if min(ids) < 0 or max(ids) >= self.n_vocab:
            raise InputError(f"{self.path.name}: token ids must lie in 0..{self.n_vocab - 1}")
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2:
            raise InputError(f"{self.path.name}: input_ids must be (batch, seq), got {x.shape}")
        return np.stack([self.logits(row) for row in x])

    def sample_input(self, batch_size: int = 1, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, self.n_vocab, size=(batch_size, 32), dtype=np.int64)

    # -- language-model use -------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` by the tokenizer embedded in the file (no BOS added)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize([int(i) for i in ids]).decode("utf-8", errors="replace")

    def _serving_ctx(self) -> Any:
        if self._serving is None:
            self._serving = self._open(logits_all=False)
        return self._serving

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 32,
                 stop_at_eos: bool = True) -> Generation:
        """Greedy (argmax) continuation of ``prompt`` (text or token ids)."""
        llm = self._serving_ctx()
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids or len(ids) + max_new_tokens > self.n_ctx:
            raise InputError(f"{self.path.name}: prompt ({len(ids)} tokens) + max_new_tokens "
                             f"({max_new_tokens}) must be 1..{self.n_ctx} (n_ctx)")
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        out = [int(llm.sample(temp=0.0))]  # llama.cpp's own greedy sampler
        t1 = time.perf_counter()
        eos = llm.token_eos()
        while len(out) < max_new_tokens and not (stop_at_eos and out[-1] == eos):
            llm.eval([out[-1]])
            out.append(int(llm.sample(temp=0.0)))
        t2 = time.perf_counter()
        return Generation(out, self.detokenize(out), len(ids), 1000 * (t1 - t0), 1000 * (t2 - t1))

    def perplexity(self, text: str | Sequence[int], window: int | None = None) -> dict[str, float]:
        """Perplexity and next-token accuracy over ``text`` in non-overlapping windows."""
        ids = self.tokenize(text) if isinstance(text, str) else [int(i) for i in text]
        window = window or self.n_ctx
        nll, count, correct = 0.0, 0, 0
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window]
            if len(chunk) < 2:
                break
            logits = self.logits(chunk).astype(np.float64)
            target = np.asarray(chunk[1:])
            pred = logits[:-1]
            top = pred.max(axis=1, keepdims=True)
            logz = (top + np.log(np.exp(pred - top).sum(axis=1, keepdims=True)))[:, 0]
            nll += float((logz - pred[np.arange(len(target)), target]).sum())
            correct += int((pred.argmax(axis=1) == target).sum())
            count += len(target)
        if count == 0:
            raise InputError("perplexity needs a text of at least 2 tokens")
        return {"perplexity": math.exp(nll / count), "next_token_accuracy": correct / count,
                "tokens": count}

    def benchmark_generation(self, prompt: str | Sequence[int], new_tokens: int = 64,
                             runs: int = 3, warmup: int = 1) -> GenerationStats:
        """Median TTFT, prefill and decode speed of greedy generation (EOS does not stop it)."""
        results = []
        for i in range(warmup + runs):
            g = self.generate(prompt, new_tokens, stop_at_eos=False)
            if i >= warmup:
                results.append(g)
        ttft = float(np.median([g.ttft_ms for g in results]))
        decode = float(np.median([(len(g.tokens) - 1) / (g.decode_ms / 1000) for g in results]))
        n_prompt = results[0].prompt_tokens
        return GenerationStats(load_s=self.load_s, prompt_tokens=n_prompt, new_tokens=new_tokens,
                               ttft_ms=ttft, prefill_tok_s=n_prompt / (ttft / 1000),
                               decode_tok_s=decode, peak_rss_mb=peak_rss_mb(), runs=runs,
                               threads=self.threads, system=system_status(cpu_interval=0.05))

    def close(self) -> None:
        for llm in (getattr(self, "llm", None), getattr(self, "_serving", None)):
            if llm is not None and hasattr(llm, "close"):
                llm.close()
        self.llm = self._serving = None
