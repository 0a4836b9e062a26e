"""Text in, token ids out: tokenizer and corpus loading, a token cache, and training/evaluation batches.

Each split is one continuous stream of text, tokenized once and cached as a ``uint16`` memory-mapped file
keyed by the source, the split and the tokenizer. Training draws windows of ``block_size + 1`` tokens in an
order that is a pure function of the seed and a sample counter, so it resumes exactly and splits across
processes without coordination.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minigpt.config import WIKITEXT_DATASETS, DataConfig
from minigpt.storage import atomic_write_bytes, atomic_write_json

SPLITS = ("train", "val", "test")
_WIKITEXT_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
_SALESFORCE_SPLIT_NAMES = {"train": "train", "val": "valid", "test": "test"}


class DataError(RuntimeError):
    """A missing or unusable dataset, split, tokenizer or cache; the message says where it looked."""


def data_root(config: DataConfig) -> Path | None:
    """The local asset root: ``config.data_dir``, else ``$MINIGPT_DATA_DIR``, else none."""
    root = config.data_dir or os.environ.get("MINIGPT_DATA_DIR", "")
    return Path(root).expanduser() if root else None


def cache_root(config: DataConfig) -> Path:
    root = config.cache_dir or os.environ.get("MINIGPT_CACHE_DIR", "") or "~/.cache/minigpt"
    return Path(root).expanduser()


# ----------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(config: DataConfig):  # -> transformers.PreTrainedTokenizerFast
    """The tokenizer named by ``config.tokenizer``: a local directory, the asset root's copy, or the Hub."""
    from transformers import AutoTokenizer

    name = config.tokenizer
    root = data_root(config)
    looked = []
    candidates = [Path(name).expanduser()]
    if root is not None:
        candidates.append(root / f"{name}-tokenizer")
        candidates.append(root / name)
    for candidate in candidates:
        looked.append(str(candidate))
        if candidate.is_dir():
            return AutoTokenizer.from_pretrained(str(candidate))
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise DataError(
            f"tokenizer {name!r} not found: looked in {', '.join(looked)} and on the Hugging Face Hub ({e}). "
            "Point --tokenizer at a tokenizer directory, or set MINIGPT_DATA_DIR to an asset root holding "
            f"{name}-tokenizer/."
        ) from None


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides the token ids."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- raw text


@dataclass(frozen=True)
class TextSource:
    """Where a split's text comes from: a local file, or a dataset on the Hub."""

    key: str
    """Identifies the source in cache names, e.g. ``wikitext-2-v1`` or ``text-<hash>``."""
    split: str
    path: Path | None = None
    hub_name: str | None = None

    def read(self) -> str:
        if self.path is not None:
            opener = lzma.open if self.path.suffix == ".xz" else open
            with opener(self.path, "rt", encoding="utf-8", newline="") as f:
                return f.read()
        from datasets import load_dataset

        rows = load_dataset("wikitext", self.hub_name, split=_WIKITEXT_SPLIT_NAMES[self.split])["text"]
        # The Hub stores a blank line as "" but the released files have " \n"; restore the file exactly.
        return "".join(row if row else " \n" for row in rows)

    def fingerprint(self) -> str:
        if self.path is None:
            return f"hub:wikitext/{self.hub_name}/{self.split}"
        stat = self.path.stat()
        return f"file:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def resolve_source(config: DataConfig, split: str) -> TextSource:
    """Find a split locally (asset root, Salesforce layout, optionally ``.xz``) or fall back to the Hub."""
    if config.dataset == "text":
        name = {"train": config.train_file, "val": config.val_file, "test": config.test_file}[split]
        if not name:
            raise DataError(f"no {split} file: set --data.{split}_file=PATH (dataset 'text')")
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"{split} text file {path} does not exist")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        return TextSource(key=f"text-{path.stem}-{digest}", split=split, path=path)

    extension = "raw" if "-raw-" in config.dataset else "tokens"
    filename = f"wiki.{_SALESFORCE_SPLIT_NAMES[split]}.{extension}"
    looked: list[str] = []
    root = data_root(config)
    if root is not None:
        for candidate in (root / config.dataset / filename, root / config.dataset / f"{filename}.xz"):
            looked.append(str(candidate))
            if candidate.is_file():
                return TextSource(key=config.dataset, split=split, path=candidate)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        where = "; ".join(looked) if looked else "no local asset root is set (MINIGPT_DATA_DIR)"
        raise DataError(
            f"{config.dataset} {split} split not found: looked in {where}, and the Hub is offline. "
            f"Put {filename} (or {filename}.xz) in <asset root>/{config.dataset}/ and set MINIGPT_DATA_DIR, "
            "or choose another --dataset" + _local_alternatives(root, split)
        )
    return TextSource(key=config.dataset, split=split, hub_name=config.dataset)


def _local_alternatives(root: Path | None, split: str) -> str:
    if root is None:
        return "."
    have = [
        name
        for name in WIKITEXT_DATASETS
        if any((root / name).glob(f"wiki.{_SALESFORCE_SPLIT_NAMES[split]}.*"))
    ]
    return f" (available locally: {', '.join(have)})." if have else "."


# ----------------------------------------------------------------------------------------------- tokenization


def _safe_chunks(text: str, target_size: int = 1 << 16) -> list[str]:
    """Cut text into pieces whose separate encodings concatenate to the encoding of the whole.

    GPT-2's pre-tokenizer never joins across a newline that is followed by a space and then a non-space
    character, so cutting right after such a newline changes no token; that is where we cut.
    """
    chunks, start = [], 0
    while start < len(text):
        cut = start + target_size
        while cut < len(text) - 1 and not (
            text[cut - 1] == "\n" and text[cut] == " " and not text[cut + 1].isspace()
        ):
            cut += 1
        if cut >= len(text) - 1:  # no safe place before the end: the rest is one chunk
            cut = len(text)
        chunks.append(text[start:cut])
        start = cut
    return chunks


def tokenize(text: str, tokenizer, show_progress: bool = True) -> np.ndarray:
    """Encode a whole stream of text into ``uint16`` ids, in parallel batches of safe chunks."""
    if len(tokenizer) > np.iinfo(np.uint16).max + 1:
        raise DataError(f"tokenizer has {len(tokenizer)} tokens; the uint16 token cache holds at most 65536")
    chunks = _safe_chunks(text)
    batch = 64
    parts: list[np.ndarray] = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task("tokenizing", total=len(chunks))
        for i in range(0, len(chunks), batch):
            # verbose=False: the warning about sequences longer than the model's context is meant for model
            # inputs, not for a corpus that is cut into blocks later.
            encoded = tokenizer(chunks[i : i + batch], add_special_tokens=False, verbose=False)["input_ids"]
            parts.extend(np.asarray(ids, dtype=np.uint16) for ids in encoded)
            progress.advance(task, len(encoded))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


@dataclass
class TokenSplit:
    """One split as token ids (a read-only memory map) and the UTF-8 size of its text, for bits per byte."""

    tokens: np.ndarray
    num_bytes: int
    source: str

    def __len__(self) -> int:
        return len(self.tokens)


def load_split(config: DataConfig, split: str, tokenizer, show_progress: bool = True) -> TokenSplit:
    """Token ids of one split, from the cache when it is there, else tokenized now and cached."""
    source = resolve_source(config, split)
    fingerprint = tokenizer_fingerprint(tokenizer)
    directory = cache_root(config) / source.key
    stem = f"{split}.{fingerprint}"
    bin_path, meta_path = directory / f"{stem}.bin", directory / f"{stem}.json"
    if meta_path.is_file() and bin_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("tokenizer") != fingerprint:
            raise DataError(
                f"token cache {bin_path} was made with another tokenizer ({meta.get('tokenizer')}, now "
                f"{fingerprint}); delete {directory} to rebuild it"
            )
        if meta.get("source") == source.fingerprint():
            if bin_path.stat().st_size != 2 * meta["num_tokens"]:
                raise DataError(f"token cache {bin_path} is truncated; delete it to rebuild")
            tokens = (
                np.memmap(bin_path, dtype=np.uint16, mode="r")
                if meta["num_tokens"]
                else np.zeros(0, np.uint16)
            )
            return _scorable(TokenSplit(tokens, meta["num_bytes"], source.key), split)
    text = source.read()
    if not text.strip():
        raise DataError(f"the {split} split of {source.key} is empty ({source.path or source.hub_name})")
    tokens = tokenize(text, tokenizer, show_progress)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(bin_path, tokens.tobytes())
    meta = {
        "tokenizer": fingerprint,
        "source": source.fingerprint(),
        "num_tokens": int(len(tokens)),
        "num_bytes": len(text.encode("utf-8")),
    }
    atomic_write_json(meta_path, meta)
    return _scorable(
        TokenSplit(np.memmap(bin_path, dtype=np.uint16, mode="r"), meta["num_bytes"], source.key), split
    )


def _scorable(tokens: TokenSplit, split: str) -> TokenSplit:
    """A split with fewer than two tokens has nothing to predict; say so now, not after training."""
    if len(tokens) < 2:
        raise DataError(
            f"the {split} split of {tokens.source} is {len(tokens)} token long; scoring it needs at least 2 "
            "(and training one block of block_size + 1): use more text"
        )
    return tokens


# ----------------------------------------------------------------------------------------------- batches


class BlockSampler:
    """Training windows of ``block_size + 1`` tokens in a seeded order that is a function of a counter.

    Each epoch cuts the stream into non-overlapping windows at a random offset and visits them in a random
    permutation; sample ``i`` of the whole run is window ``i mod n`` of epoch ``i // n``. Because nothing
    but the counter changes, resuming needs only the step number, and processes can take disjoint slices.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int) -> None:
        if len(tokens) < block_size + 1:
            raise DataError(
                f"the training split has {len(tokens)} tokens, fewer than one block of block_size + 1 = "
                f"{block_size + 1}; use more text or a smaller --block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.seed = seed
        self._epoch: int | None = None
        self._starts: np.ndarray | None = None

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            span = self.block_size + 1
            spare = len(self.tokens) - span * (len(self.tokens) // span)
            offset = int(torch.randint(0, spare + 1, (1,), generator=generator))
            count = (len(self.tokens) - offset) // span
            order = torch.randperm(count, generator=generator).numpy()
            self._epoch, self._starts = epoch, offset + order * span
        return self._starts

    @property
    def samples_per_epoch(self) -> int:
        return len(self._epoch_starts(0))

    def batch(self, first_sample: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(batch_size, block_size)`` for samples ``first_sample ...``."""
        n = self.samples_per_epoch
        rows = []
        for sample in range(first_sample, first_sample + batch_size):
            start = int(self._epoch_starts(sample // n)[sample % n])
            rows.append(self.tokens[start : start + self.block_size + 1])
        block = torch.from_numpy(np.stack(rows).astype(np.int64))
        return block[:, :-1], block[:, 1:]


def eval_windows(
    tokens: np.ndarray, block_size: int, stride: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every token of a split scored once: ``(inputs, targets)`` windows of at most ``block_size``.

    Without a stride the windows are non-overlapping. With a stride, each window starts ``stride`` tokens
    after the previous one and only the tokens not scored before are targets (the rest are -100), so every
    prediction but the first window's sees at least ``block_size - stride`` tokens of context.
    """
    stride = stride or block_size
    if not 0 < stride <= block_size:
        raise ValueError(f"eval stride must be in [1, block_size={block_size}], got {stride}")
    n = len(tokens)
    scored_up_to = 1  # the first token has no context and is never a target
    begin = 0
    while scored_up_to < n:
        end = min(begin + block_size, n - 1)
        window = torch.from_numpy(np.asarray(tokens[begin : end + 1], dtype=np.int64))
        inputs, targets = window[:-1], window[1:].clone()
        already = scored_up_to - (begin + 1)  # targets before this index were scored by an earlier window
        targets[:already] = -100
        yield inputs, targets
        scored_up_to = end + 1
        begin += stride
