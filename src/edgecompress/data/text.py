"""Text data for causal language models: a tokenizer trained here and token-id batches.

:func:`text` turns plain text (by default the English documentation shipped inside the Python
standard library, ``pydoc_data``, which every machine has offline) into a :class:`TextBundle`:
documents are split into train and held-out sets *before* the tokenizer is trained, so held-out
perplexity measures text the tokenizer and the model have never seen. Batches are
``(input_ids, input_ids)`` pairs of fixed-length windows (the labels are the inputs; the loss
shifts them by one token).

This is the minimal text contract the pipeline needs today; it is kept apart from the image
bundle so a later generalisation of inputs can absorb it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from .._extras import require
from ..errors import DataError
from .bundle import DataBundle, split_batch

EOS = "<|endoftext|>"


def pydoc_documents() -> list[str]:
    """The topic pages of the Python documentation shipped with the interpreter (offline)."""
    from pydoc_data import topics

    return [topics.topics[k] for k in sorted(topics.topics)]


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style, ``tokenizers`` library) trained on ``texts``.

    Byte-level means every string round-trips, whatever characters it holds; the one special
    token is ``<|endoftext|>`` (id 0), used between documents and as BOS/EOS in GGUF files.
    """
    tk = require("tokenizers", "llm", "training a BPE tokenizer")
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def split_documents(docs: Sequence[str], held_out: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle documents with ``seed`` and hold out about ``held_out`` of the characters.

    Identical documents are kept once (``pydoc_data`` files one page under several topics), so
    no held-out page is also trained on."""
    if not 0 < held_out < 1:
        raise DataError(f"held_out must be between 0 and 1 (a fraction of the text), got {held_out}")
    docs = list(dict.fromkeys(docs))
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    total, budget, val = sum(len(d) for d in docs), 0, []
    for i in order:
        if budget >= held_out * total:
            break
        val.append(i)
        budget += len(docs[i])
    if len(val) in (0, len(docs)):
        raise DataError(f"cannot split {len(docs)} document(s) into train and held-out text; "
                        f"give more documents")
    held = set(val)
    return [docs[i] for i in order if i not in held], [docs[i] for i in sorted(held)]


def windows(ids: Sequence[int], seq_len: int) -> torch.Tensor:
    """Non-overlapping ``seq_len``-token windows of ``ids`` (the ragged tail is dropped)."""
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"the text has {len(ids)} tokens, fewer than one window of "
                        f"seq_len={seq_len}; give more text or a smaller seq_len")
    return torch.tensor(list(ids[:n * seq_len]), dtype=torch.int64).view(n, seq_len)


def encode_documents(tokenizer: Any, docs: Sequence[str]) -> list[int]:
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(list(docs)):
        ids.extend(enc.ids)
        ids.append(eos)
    return ids


@dataclass
class TextBundle(DataBundle):
    """A DataBundle of token-id windows for causal language models.

    ``train`` / ``val`` yield ``(input_ids, input_ids)`` int64 batches of shape
    ``(batch, seq_len)``; ``tokenizer`` is the ``tokenizers.Tokenizer`` that made them (the GGUF
    exporter embeds it); ``texts`` holds the held-out documents as text (for measuring
    perplexity through a runtime's own tokenizer).
    """

    task: ClassVar[str] = "causal_lm"
    tokenizer: Any = None
    vocab_size: int = 0
    seq_len: int = 0
    texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.train is None and self.val is None:
            raise DataError("TextBundle needs train or val batches of token ids")
        for role in ("train", "val"):
            self._check_tokens(role)
        if self.calib is None:
            self.calib = self.train
        if self.example_input is None:
            self.example_input = self._first_input()[:1].clone()

    def _check_tokens(self, role: str) -> None:
        loader = getattr(self, role)
        if loader is None:
            return
        x, _ = split_batch(next(iter(loader)))
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int64, torch.int32):
            raise DataError(f"TextBundle.{role} must yield int64 token ids, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if self.vocab_size and (int(x.max()) >= self.vocab_size or int(x.min()) < 0):
            raise DataError(f"TextBundle.{role} holds token ids outside 0..{self.vocab_size - 1}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "task": self.task, "vocab_size": self.vocab_size,
                "seq_len": self.seq_len}


def is_text(data: Any) -> bool:
    """True for bundles of token ids (causal language modelling)."""
    return getattr(data, "task", None) == "causal_lm"


def text(documents: Sequence[str] | None = None, *, tokenizer: Any = None,
         vocab_size: int = 2048, seq_len: int = 128, batch_size: int = 16,
         held_out: float = 0.1, seed: int = 0, max_train_windows: int | None = None,
         max_val_windows: int | None = None) -> TextBundle:
    """Token-id batches for a causal LM from ``documents`` (default: the ``pydoc_data`` docs).

    Args:
        documents: the texts; None uses the Python docs shipped with the interpreter.
        tokenizer: a ``tokenizers.Tokenizer``; None trains a byte-level BPE of ``vocab_size``
            on the training documents only.
        seq_len: tokens per window.
        held_out: fraction of the characters held out for validation (perplexity).
        max_train_windows / max_val_windows: caps for quick runs and tests.
    """
    docs = list(documents) if documents is not None else pydoc_documents()
    train_docs, val_docs = split_documents(docs, held_out, seed)
    if tokenizer is None:
        tokenizer = train_tokenizer(train_docs, vocab_size)
    train_x = windows(encode_documents(tokenizer, train_docs), seq_len)[:max_train_windows]
    val_x = windows(encode_documents(tokenizer, val_docs), seq_len)[:max_val_windows]
    gen = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x, train_x),
                                        batch_size=batch_size, shuffle=True, generator=gen)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val_x, val_x),
                                      batch_size=batch_size)
    return TextBundle(train=train, val=val, name="pydoc_data" if documents is None else "text",
                      tokenizer=tokenizer, vocab_size=tokenizer.get_vocab_size(),
                      seq_len=seq_len, texts=tuple(val_docs))
