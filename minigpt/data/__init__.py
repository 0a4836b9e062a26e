"""Text in, token ids out: tokenizer and corpus loading, a token cache, and training/evaluation batches.

Every data source is registered in the "sources" section below. A split is either one continuous stream of
text (WikiText, plain files) or a table of documents (JSONL, Parquet, Hugging Face data sets), tokenized
once and cached as memory-mapped ``uint16`` ids (``uint32`` for vocabularies beyond 65,536), keyed by the
source, the split and the tokenizer; documents go to shard files listed by an index written last. Training
draws windows of ``block_size + 1`` tokens in an order that is a pure function of the seed and a sample
counter, so it resumes exactly and splits across processes without coordination.

Assets are looked for in a fixed order (``tokenizer_candidates``, ``wikitext_candidates``): the local asset
root, then the token cache, then the Hugging Face Hub. The Hub is skipped when an offline variable is set
and probed once per process otherwise, so a missing asset fails in seconds with a list of every place
looked, instead of after the Hub clients' retries.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import lzma
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minigpt.config import WIKITEXT_DATASETS, DataConfig
from minigpt.errors import ConfigError, check, check_choice, first_line
from minigpt.storage import atomic_write_bytes, atomic_write_json, why_unwritable

SPLITS = ("train", "val", "test")
_WIKITEXT_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
_SALESFORCE_SPLIT_NAMES = {"train": "train", "val": "valid", "test": "test"}

HUB_PROBE_TIMEOUT_S = 3.0
DATASETS_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TOKENIZER_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


class DataError(RuntimeError):
    """A missing or unusable dataset, split, tokenizer or cache; the message says where it looked."""


# ----------------------------------------------------------------------------------------------- places


def data_root(config: DataConfig) -> Path | None:
    """The local asset root: ``config.data_dir``, else ``$MINIGPT_DATA_DIR``, else none."""
    origin = "data.data_dir" if config.data_dir else "MINIGPT_DATA_DIR"
    root = config.data_dir or os.environ.get("MINIGPT_DATA_DIR", "")
    if not root:
        return None
    path = Path(root).expanduser()
    if not path.is_dir():
        problem = "is a file" if path.exists() else "does not exist"
        raise DataError(
            f"the asset root {path} (from {origin}) {problem}: point {origin} at the folder that holds "
            "gpt2-tokenizer/ and the WikiText folders, or unset it to use the Hugging Face Hub"
        )
    return path


def cache_root(config: DataConfig) -> Path:
    root = config.cache_dir or os.environ.get("MINIGPT_CACHE_DIR", "") or "~/.cache/minigpt"
    return Path(root).expanduser()


def hub_unavailable(offline_variables: Sequence[str]) -> str | None:
    """Why the Hugging Face Hub cannot be used now, or None when it can.

    An offline variable set to a true value means: do not try. Otherwise the endpoint (``HF_ENDPOINT``) is
    probed once per process with a short timeout, because the Hub clients retry an unreachable host for
    tens of seconds before they give up.
    """
    for variable in offline_variables:
        if os.environ.get(variable, "").strip().upper() in _TRUE_VALUES:
            return f"offline ({variable}={os.environ[variable]})"
    from huggingface_hub import constants

    return _probe_hub(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


@functools.cache
def _probe_hub(endpoint: str) -> str | None:
    try:
        urllib.request.urlopen(
            urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S
        ).close()
    except urllib.error.HTTPError as e:  # an answer, if only an error status: the Hub is there
        e.close()
    except (OSError, ValueError) as e:
        return f"unreachable at {endpoint} ({getattr(e, 'reason', e)})"
    return None


def _wikitext_filename(dataset: str, split: str) -> str:
    extension = "raw" if "-raw-" in dataset else "tokens"
    return f"wiki.{_SALESFORCE_SPLIT_NAMES[split]}.{extension}"


def wikitext_candidates(config: DataConfig, split: str) -> list[Path]:
    """The files a WikiText split is looked for in, in order (Salesforce layout, optionally ``.xz``)."""
    root = data_root(config)
    if root is None:
        return []
    filename = _wikitext_filename(config.dataset, split)
    return [root / config.dataset / filename, root / config.dataset / f"{filename}.xz"]


def tokenizer_candidates(config: DataConfig) -> list[Path]:
    """The folders a tokenizer named like ``gpt2`` is looked for in before the Hub."""
    root = data_root(config)
    return [root / f"{config.tokenizer}-tokenizer", root / config.tokenizer] if root is not None else []


_NO_ASSET_ROOT = "no asset root is set (data.data_dir or MINIGPT_DATA_DIR)"


def _places(looked: Sequence[Path | str]) -> str:
    return "".join(f"\n  - {place}" for place in looked)


# ----------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(config: DataConfig):  # -> transformers.PreTrainedTokenizerFast
    """The tokenizer named by ``config.tokenizer``: a directory, the asset root's copy, or the Hub's."""
    name = config.tokenizer
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or name.startswith((".", "~")):  # a path, never a Hub name
        return _tokenizer_from_dir(path)
    candidates = tokenizer_candidates(config)
    for candidate in candidates:
        if candidate.is_dir():
            return _tokenizer_from_dir(candidate)
    return _tokenizer_from_hub(name, candidates)


_TOKENIZER_FILES = "tokenizer.json, or vocab.json and merges.txt"


def _tokenizer_from_dir(path: Path):
    if not path.exists():
        raise DataError(
            f"tokenizer directory {path} does not exist: point --tokenizer at a folder holding "
            f"{_TOKENIZER_FILES} (such as <asset root>/gpt2-tokenizer)"
        )
    if not path.is_dir():
        raise DataError(f"--tokenizer={path} is a file; name the folder that holds {_TOKENIZER_FILES}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a broken tokenizer file fails with whatever its parser raises
        raise DataError(
            f"tokenizer directory {path} holds no loadable tokenizer ({type(e).__name__}: "
            f"{first_line(e)}); it needs {_TOKENIZER_FILES}"
        ) from None


def _tokenizer_from_hub(name: str, looked: list[Path]):
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    unavailable = hub_unavailable(TOKENIZER_OFFLINE_VARIABLES)
    try:  # without the Hub, the Hugging Face cache may still hold it
        return AutoTokenizer.from_pretrained(name, local_files_only=unavailable is not None)
    except (OSError, ValueError) as e:
        hub = f"the Hugging Face Hub: {unavailable or first_line(e)}"
        places = [*(looked or [_NO_ASSET_ROOT]), f"the Hugging Face cache {constants.HF_HUB_CACHE}", hub]
        raise DataError(
            f"tokenizer {name!r} not found. Looked in:{_places(places)}\n"
            f"Point --tokenizer at a tokenizer directory, or set MINIGPT_DATA_DIR to an asset root holding "
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

    def __str__(self) -> str:
        return (
            str(self.path) if self.path is not None else f"wikitext/{self.hub_name} on the Hugging Face Hub"
        )

    def read(self) -> str:
        return self._read_file() if self.path is not None else self._read_hub()

    def _read_file(self) -> str:
        compressed = self.path.suffix == ".xz"
        try:
            with (lzma.open if compressed else open)(self.path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise DataError(f"cannot read the {self.split} text file {self.path} ({e.strerror})") from None
        except (lzma.LZMAError, EOFError) as e:
            raise DataError(f"{self.path} is not a complete .xz file ({first_line(e)})") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            within = " of the decompressed text" if compressed else ""
            raise DataError(
                f"{self.path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start:,}"
                f"{within} (line {line}) cannot be decoded ({e.reason}). Convert the file to UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8) or choose a text file"
            ) from None

    def _read_hub(self) -> str:
        from datasets import load_dataset

        try:
            rows = load_dataset("wikitext", self.hub_name, split=_WIKITEXT_SPLIT_NAMES[self.split])["text"]
        except OSError as e:  # connection lost, or no such dataset
            raise DataError(f"could not load the {self.split} split of {self}: {first_line(e)}") from None
        # The Hub stores a blank line as "" but the released files have " \n"; restore the file exactly.
        return "".join(row if row else " \n" for row in rows)

    def fingerprint(self) -> str:
        if self.path is None:
            return f"hub:wikitext/{self.hub_name}/{self.split}"
        stat = self.path.stat()
        return f"file:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class DocumentSource:
    """A split that is a table of documents, one per row in ``text_field``, loaded through ``datasets``.

    The documents are tokenized one by one and separated by the tokenizer's end-of-text token, so no
    document's last token predicts the next one's first.
    """

    key: str
    split: str
    description: str
    """Says what it is in messages, e.g. ``train.jsonl`` or ``roneneldan/TinyStories on the Hub``."""
    identity: str
    """Everything that decides the rows (path and modification time, or Hub name, config and split)."""
    load: Callable[[], object] = field(compare=False, repr=False)
    """Returns the split's ``datasets.Dataset``."""
    text_field: str = "text"

    def __str__(self) -> str:
        return self.description

    def fingerprint(self) -> str:
        return f"{self.identity}:field={self.text_field}"

    def documents(self) -> Sequence[str]:
        """The split's texts; a missing column is named together with the columns there are."""
        table = self.load()
        if self.text_field not in table.column_names:
            raise DataError(
                f"the {self.split} split of {self} has no field {self.text_field!r}; its fields are "
                f"{', '.join(repr(c) for c in table.column_names)}: choose one with --text_field=FIELD"
            )
        if len(table) == 0:
            raise DataError(f"the {self.split} split of {self} is empty (no rows)")
        return table[self.text_field]


# ----------------------------------------------------------------------------------------------- sources
# Every data source is registered here, by the name ``--dataset`` gives (before any ``:``). A source checks
# its config (at config time) and resolves a split to something with ``key``, ``fingerprint()`` and either
# ``read()`` (one stream of text) or ``documents()`` (texts separated by the end-of-text token).


@dataclass(frozen=True)
class SourceKind:
    resolve: Callable[[DataConfig, str], TextSource | DocumentSource]
    """The source of one split; raises DataError when the split cannot exist."""
    check: Callable[[DataConfig], None]
    """Config errors, raised as ConfigError when the config is made."""
    has_split: Callable[[DataConfig, str], bool]
    """Whether a split exists (the test split is optional)."""


SOURCES: dict[str, SourceKind] = {}


def register_source(
    name: str,
    check: Callable[[DataConfig], None] = lambda config: None,
    has_split: Callable[[DataConfig, str], bool] = lambda config, split: True,
) -> Callable:
    """Register ``resolve(config, split)`` as the source ``--dataset=name`` (or ``name:ARGUMENT``)."""

    def register(resolve: Callable[[DataConfig, str], TextSource | DocumentSource]) -> Callable:
        SOURCES[name] = SourceKind(resolve, check, has_split)
        return resolve

    return register


def source_kind(dataset: str) -> SourceKind:
    return SOURCES[dataset.split(":", 1)[0]]


def check_data_config(config: DataConfig) -> None:
    """The ConfigError a dataset name or its settings deserve; called when a DataConfig is made."""
    check(config.shard_tokens > 0, "data.shard_tokens", f"must be positive, got {config.shard_tokens}")
    name = config.dataset.split(":", 1)[0]
    check_choice(name, "data.dataset", tuple(SOURCES))
    SOURCES[name].check(config)


def resolve_source(config: DataConfig, split: str) -> TextSource | DocumentSource:
    """Where a split's text comes from, as the registered source of ``config.dataset`` says."""
    return source_kind(config.dataset).resolve(config, split)


def has_split(config: DataConfig, split: str) -> bool:
    """Whether the data set has this split at all; only the test split may be missing."""
    return source_kind(config.dataset).has_split(config, split)


def _resolve_wikitext(config: DataConfig, split: str) -> TextSource:
    """A WikiText file under the asset root, else the Hub's copy."""
    for candidate in wikitext_candidates(config, split):
        if candidate.is_file():
            return TextSource(key=config.dataset, split=split, path=candidate)
    return TextSource(key=config.dataset, split=split, hub_name=config.dataset)


for _name in WIKITEXT_DATASETS:
    register_source(_name)(_resolve_wikitext)


def _check_split_files(config: DataConfig) -> None:
    check(bool(config.train_file), "data.train_file", f'is required with data.dataset="{config.dataset}"')


def _has_split_file(config: DataConfig, split: str) -> bool:
    return split != "test" or bool(config.test_file)


@register_source("text", check=_check_split_files, has_split=_has_split_file)
def _resolve_text(config: DataConfig, split: str) -> TextSource:
    """One plain UTF-8 file per split."""
    path = _text_file(config, split)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return TextSource(key=f"text-{path.stem}-{digest}", split=split, path=path)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars from ``datasets`` while it reads a local file in seconds: they would precede, on the
    same stream, an error meant to be one line."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _file_source(builder: str) -> Callable[[DataConfig, str], DocumentSource]:
    """A source of one local ``builder`` file (``json`` lines or ``parquet``) per split."""

    def resolve(config: DataConfig, split: str) -> DocumentSource:
        path = _text_file(config, split)
        stat = path.stat()
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]

        def load():
            from datasets import load_dataset

            if _has_no_rows(builder, path):  # datasets' own error for an empty file names no file
                raise DataError(f"the {split} split of {path} is empty (no rows)")
            try:
                with _quiet_datasets():
                    return load_dataset(builder, data_files=str(path), split="train")
            except Exception as e:  # a malformed file fails with whatever its parser raises
                raise DataError(f"{path} is not a readable {config.dataset} file ({first_line(e)})") from None

        return DocumentSource(
            key=f"{config.dataset}-{path.stem}-{digest}",
            split=split,
            description=str(path),
            identity=f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}",
            load=load,
            text_field=config.text_field,
        )

    return resolve


def _has_no_rows(builder: str, path: Path) -> bool:
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except Exception:  # not Parquet at all: datasets says what is wrong with it
            return False
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return len(head) < 1 << 20 and not head.strip()


register_source("jsonl", check=_check_split_files, has_split=_has_split_file)(_file_source("json"))
register_source("parquet", check=_check_split_files, has_split=_has_split_file)(_file_source("parquet"))


# A data set's names for our splits, in the order they are tried.
_HF_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}


def _hf_name_and_config(dataset: str) -> tuple[str, str | None]:
    """``hf:NAME_OR_PATH[:CONFIG]`` split into its name or path and its config (None when absent)."""
    name, _, config_name = dataset.removeprefix("hf:").partition(":")
    return name, config_name or None


def _check_hf(config: DataConfig) -> None:
    name, _ = _hf_name_and_config(config.dataset)
    check(bool(name), "data.dataset", "hf: needs a data set: --dataset=hf:NAME_OR_PATH[:CONFIG]")
    check(0 < config.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {config.val_fraction}")


def _is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


@functools.cache
def _hf_splits(name: str, config_name: str | None) -> tuple[str, ...]:
    """The split names a Hub data set or a ``save_to_disk`` folder has."""
    if _is_local(name):
        return tuple(_hf_local(name, config_name).keys())
    unavailable = hub_unavailable(DATASETS_OFFLINE_VARIABLES)
    if unavailable:
        raise DataError(
            f"data set {name!r} is no local folder and the Hugging Face Hub cannot be used: {unavailable}. "
            "Point --dataset=hf:PATH at a folder written by save_to_disk, or go online"
        )
    from datasets import get_dataset_split_names

    try:
        return tuple(get_dataset_split_names(name, config_name))
    except Exception as e:  # unknown names and configs fail with a variety of datasets' own errors
        raise DataError(
            f"data set {name!r} (config {config_name!r}) cannot be loaded: {first_line(e)}"
        ) from None


def _hf_local(name: str, config_name: str | None):  # -> datasets.DatasetDict
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(name).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data set folder {path} does not exist; --dataset=hf:PATH names a save_to_disk folder"
        )
    if config_name is not None:
        raise DataError(f"{path} is a save_to_disk folder, which has no configs; drop ':{config_name}'")
    try:
        with _quiet_datasets():
            loaded = load_from_disk(str(path))
    except Exception as e:  # not a save_to_disk folder, or a damaged one
        raise DataError(
            f"{path} is not a folder written by datasets' save_to_disk ({first_line(e)})"
        ) from None
    return DatasetDict({"train": loaded}) if isinstance(loaded, Dataset) else loaded


def _has_hf_split(config: DataConfig, split: str) -> bool:
    if split in ("train", "val"):
        return True
    name, config_name = _hf_name_and_config(config.dataset)
    if not _is_local(name) and hub_unavailable(DATASETS_OFFLINE_VARIABLES):
        # A Hub data set tokenized before stays usable offline: its token cache says which splits it had.
        return any((cache_root(config) / _hf_source_key(config)).glob(f"{split}.*.json"))
    return any(n in _hf_splits(name, config_name) for n in _HF_SPLIT_NAMES[split])


def _hf_identity(config: DataConfig) -> str:
    """What decides a ``hf:`` data set's rows: a folder's files as they are now, or a Hub name and config."""
    name, config_name = _hf_name_and_config(config.dataset)
    if not _is_local(name):
        return f"hub:{name}:{config_name}"
    files = sorted(p for p in Path(name).expanduser().rglob("*") if p.is_file())
    version = hashlib.sha256(
        "".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files).encode()
    ).hexdigest()[:16]
    return f"disk:{Path(name).expanduser().resolve()}:{version}"


def _hf_source_key(config: DataConfig) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in config.dataset.removeprefix("hf:"))
    return f"hf-{slug.strip('-')[-60:]}-{hashlib.sha256(_hf_identity(config).encode()).hexdigest()[:12]}"


def _hf_split_plan(name: str, config_name: str | None, split: str) -> tuple[str, bool]:
    """Which of the data set's splits holds ours, and whether ours is carved out of it (val) or is what
    remains after carving (train)."""
    available = _hf_splits(name, config_name)
    if "train" not in available:
        raise DataError(f"data set {name!r} has no train split; its splits are {', '.join(available)}")
    own = next((n for n in _HF_SPLIT_NAMES[split] if n in available), None)
    if own is None and split == "test":
        raise DataError(f"data set {name!r} has no test split; its splits are {', '.join(available)}")
    has_val = any(n in available for n in _HF_SPLIT_NAMES["val"])
    return own or "train", own is None or (split == "train" and not has_val)


@register_source("hf", check=_check_hf, has_split=_has_hf_split)
def _resolve_hf(config: DataConfig, split: str) -> DocumentSource:
    """A split of a Hub data set or ``save_to_disk`` folder; without a validation split, ``val_fraction`` of
    train (drawn with ``split_seed``) is the validation split and the rest is train.

    The Hub is asked for the split names only when the rows are needed, so a split tokenized before is read
    from the token cache offline. Its cache is therefore keyed by the carving settings even where nothing is
    carved."""
    name, config_name = _hf_name_and_config(config.dataset)
    local = _is_local(name)
    carving = f"{config.val_fraction}@{config.split_seed}"
    if local:  # a folder answers at once, so its cache is keyed by exactly the rows it holds
        own, carve = _hf_split_plan(name, config_name, split)
        part = f"{own}" + (f"[carved {carving}]" if carve else "")
    else:
        part = f"{split}[carved {carving} if no validation split]"
    where = ("folder" if local else "Hugging Face Hub") + (f", config {config_name}" if config_name else "")

    def load():
        own, carve = _hf_split_plan(name, config_name, split)
        if local:
            table = _hf_local(name, config_name)[own]
        else:
            from datasets import load_dataset

            try:
                table = load_dataset(name, config_name, split=own)
            except Exception as e:  # connection lost, or a data set that fails to build
                raise DataError(f"could not load the {own} split of {name!r}: {first_line(e)}") from None
        if not carve:
            return table
        if len(table) < 2:
            raise DataError(
                f"the train split of {name!r} has {len(table)} row(s), too few to carve a validation split"
            )
        halves = table.train_test_split(test_size=config.val_fraction, seed=config.split_seed, shuffle=True)
        return halves["test" if split == "val" else "train"]

    return DocumentSource(
        key=_hf_source_key(config),
        split=split,
        description=f"{name} ({where})",
        identity=f"{_hf_identity(config)}:{part}",
        load=load,
        text_field=config.text_field,
    )


def _text_file(config: DataConfig, split: str) -> Path:
    name = {"train": config.train_file, "val": config.val_file, "test": config.test_file}[split]
    if not name:
        raise DataError(f"no {split} file: set --data.{split}_file=PATH (dataset {config.dataset!r})")
    path = Path(name).expanduser()
    kind = "text" if config.dataset == "text" else config.dataset
    if not path.exists():
        raise DataError(f"{split} {kind} file {path} does not exist (data.{split}_file)")
    if not path.is_file():
        raise DataError(f"{split} {kind} file {path} is a directory; data.{split}_file names a {kind} file")
    return path


def _split_not_found(config: DataConfig, split: str, hub: str, cache_file: Path) -> DataError:
    """Which split of which data set, every place looked, and the ways forward."""
    root = data_root(config)
    filename = _wikitext_filename(config.dataset, split)
    looked = [
        *(wikitext_candidates(config, split) or [_NO_ASSET_ROOT]),
        f"the token cache {cache_file}",
        f"the Hugging Face Hub: {hub}",
    ]
    folder = root / config.dataset if root is not None else f"<asset root>/{config.dataset}"
    ways = [f"put {filename} (or {filename}.xz) in {folder}/"]
    if root is None:
        ways[0] += " and set MINIGPT_DATA_DIR=<asset root> (or --data_dir)"
    ways += [
        f"--dataset={name} (its {split} split is in the asset root)"
        for name in WIKITEXT_DATASETS
        if name != config.dataset
        and root is not None
        and any(
            (root / name / f"{_wikitext_filename(name, split)}{suffix}").is_file() for suffix in ("", ".xz")
        )
    ]
    ways.append("--dataset=text --train_file=PATH --val_file=PATH (any UTF-8 text)")
    return DataError(
        f"the {split} split of {config.dataset} was not found. Looked in:{_places(looked)}\n"
        f"Ways forward:{_places(ways)}"
    )


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


def token_dtype(tokenizer) -> np.dtype:
    """``uint16`` when every id fits in it (half the disk and memory), else ``uint32``."""
    return np.dtype(np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32)


def _progress(show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, transient=True, disable=not show)


CHUNKS_PER_BATCH = 64
"""Safe chunks handed to the tokenizer in one call: enough for its threads, few for the progress bar."""


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of each text, without special tokens, as the tokenizer's own call gives them.

    A fast tokenizer's Rust backend encodes a batch on all cores; its ``encode_batch_fast`` skips the
    character offsets that the usual call computes and then drops, which takes about a third less CPU time on
    WikiText. A backend set to truncate or pad would change the ids, so such a tokenizer (or a slow one) goes
    through the ordinary call instead.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    # verbose=False: the warning about sequences longer than the model's context is meant for model inputs,
    # not for a corpus that is cut into blocks later.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def tokenize(text: str, tokenizer, show_progress: bool = True) -> np.ndarray:
    """Encode a whole stream of text into ids, in parallel batches of safe chunks."""
    dtype = token_dtype(tokenizer)
    chunks = _safe_chunks(text)
    batch = CHUNKS_PER_BATCH
    parts: list[np.ndarray] = []
    with _progress(show_progress) as progress:
        task = progress.add_task("tokenizing", total=len(chunks))
        for i in range(0, len(chunks), batch):
            encoded = encode_batch(tokenizer, chunks[i : i + batch])
            parts.extend(np.asarray(ids, dtype=dtype) for ids in encoded)
            progress.advance(task, len(encoded))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def end_of_text_id(tokenizer) -> int:
    """The id that separates documents; a tokenizer without one cannot keep documents apart."""
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no end-of-text token (eos_token), which separates documents: choose a "
            "tokenizer that has one, or set its eos_token in tokenizer_config.json"
        )
    return int(tokenizer.eos_token_id)


def tokenize_documents(
    documents: Sequence[str], tokenizer, show_progress: bool = True, batch: int = 1024
) -> Iterator[tuple[np.ndarray, int]]:
    """Batches of documents encoded by the fast tokenizer in one call each (it spreads a batch over the
    cores), each document followed by the end-of-text id; with the batch's UTF-8 size in bytes."""
    eos = end_of_text_id(tokenizer)
    dtype = token_dtype(tokenizer)
    with _progress(show_progress) as progress:
        task = progress.add_task("tokenizing documents", total=len(documents))
        for i in range(0, len(documents), batch):
            texts = list(documents[i : i + batch])
            encoded = encode_batch(tokenizer, texts)
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum()))
            ids = np.insert(flat, np.cumsum(lengths), eos)  # the end-of-text id after each document
            yield ids, sum(len(text.encode("utf-8")) for text in texts)
            progress.advance(task, len(texts))


def write_shards(
    batches: Iterator[tuple[np.ndarray, int]], directory: Path, stem: str, shard_tokens: int
) -> tuple[list[dict[str, int | str]], int]:
    """Token batches written as files of ``shard_tokens`` ids (the last one shorter), each complete or absent;
    the shards' names and sizes, and the bytes of text they came from. Memory holds about one shard."""
    shards: list[dict[str, int | str]] = []
    pending: list[np.ndarray] = []
    num_pending = num_bytes = 0

    def write(ids: np.ndarray) -> None:
        name = f"{stem}.{len(shards):05d}.bin"
        atomic_write_bytes(directory / name, ids.tobytes())
        shards.append({"file": name, "num_tokens": int(len(ids))})

    for ids, size in batches:
        pending.append(ids)
        num_pending += len(ids)
        num_bytes += size
        if num_pending >= shard_tokens:
            joined = np.concatenate(pending)
            full = len(joined) // shard_tokens * shard_tokens
            for start in range(0, full, shard_tokens):
                write(joined[start : start + shard_tokens])
            pending, num_pending = [joined[full:]], len(joined) - full
    if num_pending:
        write(np.concatenate(pending))
    return shards, num_bytes


class ShardedTokens:
    """Token ids kept in several memory-mapped shard files, sliced as if they were one array."""

    def __init__(self, paths: Sequence[Path], dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.shards = [np.memmap(path, dtype=self.dtype, mode="r") for path in paths]
        self.ends = np.cumsum([len(shard) for shard in self.shards], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def __iter__(self) -> Iterator[int]:
        for shard in self.shards:
            yield from shard.tolist()

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("sharded tokens are read in contiguous slices")
        parts = []
        shard = int(np.searchsorted(self.ends, start, side="right"))
        while start < stop:
            begin = int(self.ends[shard - 1]) if shard else 0
            end = min(stop, int(self.ends[shard]))
            parts.append(self.shards[shard][start - begin : end - begin])
            start, shard = end, shard + 1
        if not parts:
            return np.zeros(0, self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class TokenSplit:
    """One split as token ids (a read-only memory map) and the UTF-8 size of its text, for bits per byte."""

    tokens: np.ndarray | ShardedTokens
    num_bytes: int
    source: str

    def __len__(self) -> int:
        return len(self.tokens)


def first_tokens(split: TokenSplit, n: int, key: str) -> TokenSplit:
    """The first ``n`` tokens of ``split`` (``key`` is the setting that asked, named if ``n`` is too many).
    Its byte count is prorated: only scored splits use theirs (for bits per byte), and this one trains."""
    if n > len(split):
        raise ConfigError(
            f"{key}={n:,} is more than the {len(split):,} tokens of the training split ({split.source})"
        )
    return TokenSplit(np.asarray(split.tokens[:n]), round(split.num_bytes * n / len(split)), split.source)


def load_split(config: DataConfig, split: str, tokenizer, show_progress: bool = True) -> TokenSplit:
    """Token ids of one split, from the cache when it is there, else tokenized now and cached."""
    source = resolve_source(config, split)
    fingerprint = tokenizer_fingerprint(tokenizer)
    directory = cache_root(config) / source.key
    stem = f"{split}.{fingerprint}"
    bin_path, meta_path = directory / f"{stem}.bin", directory / f"{stem}.json"
    if meta_path.is_file() and (bin_path.is_file() or isinstance(source, DocumentSource)):
        cached = _cached_split(bin_path, meta_path, fingerprint, source)
        if cached is not None:
            return _scorable(cached, split)
    if getattr(source, "hub_name", None) is not None:
        unavailable = hub_unavailable(DATASETS_OFFLINE_VARIABLES)
        if unavailable:
            raise _split_not_found(config, split, unavailable, bin_path)
    unwritable = why_unwritable(directory)  # before reading and tokenizing, which can take minutes
    if unwritable:
        raise DataError(
            f"token cache: {unwritable}; set --cache_dir or MINIGPT_CACHE_DIR to a writable folder"
        )
    try:
        if isinstance(source, DocumentSource):
            return _scorable(_tokenize_to_shards(config, source, tokenizer, meta_path, show_progress), split)
        text = source.read()
        if not text.strip():
            raise DataError(f"the {split} split ({source}) is empty or only whitespace")
        tokens = tokenize(text, tokenizer, show_progress)
        meta = {
            "tokenizer": fingerprint,
            "source": source.fingerprint(),
            "num_tokens": int(len(tokens)),
            "num_bytes": len(text.encode("utf-8")),
            "dtype": tokens.dtype.name,
        }
        atomic_write_bytes(bin_path, tokens.tobytes())
        atomic_write_json(meta_path, meta)
    except OSError as e:
        raise DataError(
            f"cannot write the token cache in {directory} ({e.strerror}); free some space or set --cache_dir "
            "or MINIGPT_CACHE_DIR to another folder"
        ) from None
    return _scorable(
        TokenSplit(np.memmap(bin_path, dtype=tokens.dtype, mode="r"), meta["num_bytes"], source.key), split
    )


def _tokenize_to_shards(
    config: DataConfig, source: DocumentSource, tokenizer, index_path: Path, show_progress: bool
) -> TokenSplit:
    """A document source tokenized into shard files, then the index that lists them: the index is written
    last, so an interrupted run leaves no cache that looks complete and the next run starts over."""
    end_of_text_id(tokenizer)  # before loading documents it could not separate
    index_path.unlink(missing_ok=True)  # an index of an older version must never list the new shards
    documents = source.documents()
    stem = index_path.name.removesuffix(".json")
    batches = tokenize_documents(documents, tokenizer, show_progress)
    shards, num_bytes = write_shards(batches, index_path.parent, stem, config.shard_tokens)
    if num_bytes == 0:
        raise DataError(f"the {source.split} split ({source}) has only empty documents")
    dtype = token_dtype(tokenizer)
    index = {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "source": source.fingerprint(),
        "num_tokens": sum(int(shard["num_tokens"]) for shard in shards),
        "num_bytes": num_bytes,
        "dtype": dtype.name,
        "shards": shards,
    }
    atomic_write_json(index_path, index)
    return TokenSplit(
        ShardedTokens([index_path.parent / s["file"] for s in shards], dtype), num_bytes, source.key
    )


def _cached_split(
    bin_path: Path, meta_path: Path, fingerprint: str, source: TextSource | DocumentSource
) -> TokenSplit | None:
    """The cached tokens of ``source``, or None when the cache holds an older version of its text."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"token cache {meta_path} is unreadable ({first_line(e)}); delete it to rebuild"
        ) from None
    if meta.get("tokenizer") != fingerprint:
        raise DataError(
            f"token cache {bin_path} was made with another tokenizer ({meta.get('tokenizer')}, now "
            f"{fingerprint}); delete {bin_path.parent} to rebuild it"
        )
    if meta.get("source") != source.fingerprint():
        return None
    dtype = np.dtype(meta.get("dtype", "uint16"))  # caches written before uint32 existed say nothing
    if "shards" in meta:
        paths = [meta_path.parent / shard["file"] for shard in meta["shards"]]
        for path, shard in zip(paths, meta["shards"], strict=True):
            if not path.is_file() or path.stat().st_size != dtype.itemsize * shard["num_tokens"]:
                raise DataError(f"token shard {path} is missing or truncated; delete {meta_path} to rebuild")
        return TokenSplit(ShardedTokens(paths, dtype), meta["num_bytes"], source.key)
    if bin_path.stat().st_size != dtype.itemsize * meta["num_tokens"]:
        raise DataError(f"token cache {bin_path} is truncated; delete it to rebuild")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if meta["num_tokens"] else np.zeros(0, dtype)
    return TokenSplit(tokens, meta["num_bytes"], source.key)


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

    def __init__(self, tokens: np.ndarray | ShardedTokens, block_size: int, seed: int) -> None:
        if len(tokens) < block_size + 1:
            raise DataError(
                f"the train split has {len(tokens):,} tokens, fewer than one training window of the context "
                f"(model.block_size={block_size}) + 1 = {block_size + 1}: use more train text or "
                f"--block_size={max(len(tokens) - 1, 1)} or less"
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
    tokens: np.ndarray | ShardedTokens, block_size: int, stride: int | None = None
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
