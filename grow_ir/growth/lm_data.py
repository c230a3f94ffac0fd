"""Language-model data: token streams cut into next-token windows.

Three sources, no download:

- ``pydoc`` (the default text corpus): the text of the Python documentation topics that
  ship with CPython's standard library (``pydoc_data.topics``, about 465,000 characters:
  the reference manual's sections on statements, operators, types...), joined in the order
  of their names;
- ``FILE.txt``: any UTF-8 text file;
- ``FILE.npz`` holding ``tokens`` (a 1-D array of int64 token ids; optional
  ``vocab_size``): data already tokenised by the user's tokenizer.

Text is tokenised by bytes (UTF-8), so the vocabulary is 256 and every text fits. A stream
of ``n`` tokens is split contiguously into train / validation / test (the last two each
``val_fraction`` of it), each cut into non-overlapping windows of ``seq_len + 1`` tokens:
the input is the first ``seq_len`` tokens, the target the same window shifted by one.
The result is an ordinary :class:`~grow_ir.growth.data.Dataset` whose inputs are int64
``[N, seq_len]`` and whose labels are ``[N, seq_len]`` (one next token per position).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from grow_ir.errors import GrowError

CORPORA = ("pydoc",)
"""Names of the embedded text corpora."""

BYTE_VOCAB = 256


def is_lm_source(source: str) -> bool:
    """Whether ``source`` names language-model data: an embedded corpus, a ``.txt`` file or
    a ``.npz`` holding ``tokens``."""
    if source in CORPORA or source.endswith(".txt"):
        return True
    if source.endswith(".npz") and Path(source).is_file():
        try:
            with np.load(source, allow_pickle=False) as z:
                return "tokens" in z.files
        except (OSError, ValueError):
            return False  # the classification loader names what is wrong with the file
    return False


def pydoc_text() -> str:
    """The embedded corpus: CPython's documentation topics, joined by name order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def tokens_of(source: str) -> tuple[np.ndarray, int]:
    """The token stream of ``source`` and its vocabulary size.

    Raises:
        GrowError: no such file, text that is not UTF-8, or a tokens array that is not a
            1-D array of non-negative integers below ``vocab_size``.
    """
    if source == "pydoc":
        return np.frombuffer(pydoc_text().encode("utf-8"), dtype=np.uint8).astype(np.int64), 256
    path = Path(source)
    if not path.is_file():
        raise GrowError("no such data file", file=source, expected="a readable file", found="none")
    if source.endswith(".txt"):
        try:
            data = path.read_bytes()
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GrowError(
                "the text is not UTF-8",
                file=source,
                expected="a UTF-8 text file",
                found=f"byte {exc.start} is not UTF-8",
            ) from None
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64), BYTE_VOCAB
    from grow_ir.growth.data import read_npz

    arrays = read_npz(source)
    tokens = arrays["tokens"]
    vocab = int(arrays["vocab_size"]) if "vocab_size" in arrays else None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise GrowError(
            "tokens must be a 1-D array of integer ids",
            file=source,
            field="tokens",
            expected="int array of shape [n]",
            found=f"{tokens.dtype} array of shape {list(tokens.shape)}",
        )
    tokens = tokens.astype(np.int64)
    if len(tokens) and tokens.min() < 0:
        raise GrowError(
            "token ids must be non-negative",
            file=source,
            field="tokens",
            expected="ids >= 0",
            found=str(int(tokens.min())),
        )
    top = int(tokens.max()) + 1 if len(tokens) else 1
    if vocab is None:
        vocab = top
    elif top > vocab:
        raise GrowError(
            "a token id is not below vocab_size",
            file=source,
            field="tokens",
            expected=f"ids below vocab_size {vocab}",
            found=f"id {top - 1}",
        )
    return tokens, vocab


def windows(stream: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping next-token windows of ``stream``: inputs and targets ``[N, seq_len]``."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        return torch.zeros((0, seq_len), dtype=torch.int64), torch.zeros(
            (0, seq_len), dtype=torch.int64
        )
    x = stream[: n * seq_len].reshape(n, seq_len)
    y = stream[1 : n * seq_len + 1].reshape(n, seq_len)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def load_lm(source: str, *, seq_len: int, val_fraction: float):
    """The language-model data set of ``source`` with windows of ``seq_len`` tokens.

    Guarantees: int64 inputs and targets ``[N, seq_len]`` (targets are the inputs shifted
    by one token), ids below ``num_classes`` (the vocabulary size); contiguous splits fixed
    by the data alone (no seed), each with at least one window.

    Raises:
        GrowError: a bad file, or too few tokens for one window per split.
    """
    from grow_ir.growth.data import Dataset

    stream, vocab = tokens_of(source)
    n = len(stream)
    held = int(n * val_fraction)
    cut = n - 2 * held
    parts = [stream[:cut], stream[cut : cut + held], stream[cut + held :]]
    split = [windows(p, seq_len) for p in parts]
    if any(len(x) == 0 for x, _ in split):
        raise GrowError(
            "too few tokens for one window in every split",
            file=source,
            field="tokens",
            expected=f"at least {seq_len + 1} tokens in each of train / validation / test "
            f"(val_fraction {val_fraction:g} of the stream each; about "
            f"{int((seq_len + 1) / val_fraction) + 1} tokens)",
            found=f"{n} tokens",
        )
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = split
    name = source if source in CORPORA else Path(source).name
    return Dataset(name, x_tr, y_tr, x_va, y_va, x_te, y_te, vocab)
