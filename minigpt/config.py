"""Experiment configuration: typed dataclasses, experiment files, and ``--key=value`` overrides.

An experiment is a Python file that defines ``config = ExperimentConfig(...)``. The command line then
overrides any field with ``--section.field=value`` or, when the field name is unique, ``--field=value``
(the form ``wandb agent`` passes). Every value is converted to the field's declared type and validated
before any data is loaded, so a typo costs a second, not a run.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import inspect
import io
import runpy
import textwrap
import tokenize
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minigpt.errors import ConfigError, check, check_choice
from minigpt.lora import LoRAConfig
from minigpt.model import GPTConfig

WIKITEXT_DATASETS = ("wikitext-2-raw-v1", "wikitext-2-v1", "wikitext-103-raw-v1", "wikitext-103-v1")

# What each key is for. Every field says it in its metadata (a field without one is part of the
# experiment: the safe reading), and the rest of the code asks these roles instead of keeping lists of its
# own: a resume may change what does not define the experiment (``resumable_keys``); runs that differ only
# in keys that define no variant are seeds of one variant, in W&B's groups and in the analysis
# (``non_variant_keys``).
EXPERIMENT = "experiment"
"""What is trained and on what: another value is another experiment."""
REPLICATE = "replicate"
"""Which repetition of the experiment: the seed, over which the statistics of a variant are taken."""
MEASUREMENT = "measurement"
"""How the result is scored: a run may change it on resume, but scores compare only when it is the same."""
EXECUTION = "execution"
"""How the run is carried out (device, threads, precision, micro-batches): not what it computes."""
RECORD = "record"
"""Where and how often the run is recorded: names, folders, checkpoints, logging."""
ROLES = (EXPERIMENT, REPLICATE, MEASUREMENT, EXECUTION, RECORD)


def role(kind: str, default: Any, *, extendable: bool = False) -> Any:
    """A dataclass field with ``default`` and its role; ``extendable`` marks an experiment key that a resume
    may raise to train on (``train.max_steps``, ``train.max_minutes``)."""
    assert kind in ROLES, kind
    return field(default=default, metadata={"role": kind, "extendable": extendable})


@dataclass
class DataConfig:
    """Where the text and the tokenizer come from."""

    dataset: str = "wikitext-2-raw-v1"
    """A WikiText config name (``wikitext-2-raw-v1``, ``wikitext-2-v1``, ``wikitext-103-raw-v1``,
    ``wikitext-103-v1``); ``text``, ``jsonl`` or ``parquet`` for the split files named below; or
    ``hf:NAME_OR_PATH[:CONFIG]`` for a Hugging Face data set on the Hub or a ``save_to_disk`` folder. The
    sources are registered in ``minigpt/data/__init__.py``."""
    data_dir: str = role(EXECUTION, "")
    """Local asset root holding ``<dataset>/`` and ``gpt2-tokenizer/``; empty means ``$MINIGPT_DATA_DIR``,
    and without either the Hugging Face Hub is used."""
    train_file: str = ""
    """With ``dataset="text"``: the training text file (the split files below likewise)."""
    val_file: str = ""
    """With ``dataset="text"``: the validation text file."""
    test_file: str = ""
    """With ``dataset="text"``: the test text file (optional; without it there is no test evaluation)."""
    text_field: str = "text"
    """With ``jsonl``, ``parquet`` and ``hf:`` data: the column that holds each document's text."""
    train_tokens: int = 0
    """Train on only the first this-many tokens of the training split (0: all of it), e.g. to reach the
    data-limited regime, where a model sees its text many times and can overfit, in a short run. Validation
    and test stay whole."""
    val_fraction: float = 0.005
    """With ``hf:`` data that has no validation split: the fraction of train rows held out for it."""
    split_seed: int = 0
    """Seeds which train rows are held out as validation (fixed, so every run holds out the same rows)."""
    shard_tokens: int = role(EXECUTION, 100_000_000)
    """Token ids per cache file for ``jsonl``, ``parquet`` and ``hf:`` data, which are cached in shards so
    no corpus has to fit in memory or in one file (a shard of ``uint16`` ids is twice this in bytes)."""
    tokenizer: str = "gpt2"
    """A tokenizer directory or a Hub name; ``gpt2`` is found as ``<data_dir>/gpt2-tokenizer`` if present."""
    cache_dir: str = role(EXECUTION, "")
    """Where token caches live; empty means ``$MINIGPT_CACHE_DIR``, else ``~/.cache/minigpt``."""

    def __post_init__(self) -> None:
        from minigpt.data import check_data_config  # each source checks its own settings, where it lives

        check(self.train_tokens >= 0, "data.train_tokens", f"must be >= 0, got {self.train_tokens}")

        check_data_config(self)


@dataclass
class TrainConfig:
    """Optimisation, schedule, evaluation and checkpointing."""

    seed: int = role(REPLICATE, 1337)
    """Seeds initialisation, data order and dropout; runs that differ only in it are one variant."""
    device: str = role(EXECUTION, "auto")
    """``auto`` (cuda, then mps, then cpu), or a torch device string."""
    precision: str = role(EXECUTION, "auto")
    """``auto`` (bf16 autocast where the hardware runs it fast, else fp32), ``fp32``, ``bf16`` or ``fp16``
    (CUDA only, with a gradient scaler)."""
    compile: bool = role(EXECUTION, False)
    """Wrap the model in ``torch.compile``."""
    threads: int = role(EXECUTION, 0)
    """CPU threads for torch; 0 keeps torch's default."""
    keep_freed_memory: bool = role(EXECUTION, True)
    """Have glibc's malloc keep freed memory, blocks of every size, for the next step instead of returning it
    to the kernel, which otherwise hands it back as fresh zeroed pages every step (a fifth of a CPU run's
    time). Linux/glibc only; elsewhere it does nothing."""
    batch_size: int = 32
    """Sequences per optimizer step, over all processes and accumulation steps."""
    micro_batch_size: int = role(EXECUTION, 8)
    """Sequences per forward pass on one process; ``batch_size`` must be a multiple of it times the
    number of processes, and the quotient is the gradient-accumulation count."""
    max_steps: int = role(EXPERIMENT, 5000, extendable=True)
    """Optimizer steps to train for; the learning-rate schedule spans them."""
    max_minutes: float = role(EXPERIMENT, 0, extendable=True)
    """Stop training after this many minutes of training time (evaluation excluded), or at ``max_steps``,
    whichever comes first; 0 means no time limit. The schedule's decay follows whichever of steps and time is
    further along, so it ends when the run does."""
    lr: float = 3e-4
    """Peak AdamW learning rate, reached after warmup."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at ``lr * min_lr_ratio``."""
    warmup_steps: int = 200
    """Steps of linear learning-rate warmup from lr / warmup_steps to lr."""
    weight_decay: float = 0.1
    """Applied to weight matrices and embeddings only, never to biases or LayerNorm parameters."""
    beta1: float = 0.9
    """AdamW's decay rate for the gradient mean."""
    beta2: float = 0.95
    """AdamW's decay rate for the squared-gradient mean."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is logged either way)."""
    eval_interval: int = role(MEASUREMENT, 500)
    """Steps between validation passes (0: only at the end)."""
    eval_batches: int = role(MEASUREMENT, 20)
    """Evaluation batches per periodic validation estimate (0: the whole split): the first ones of the
    split, the same tokens every time, so the curve's points compare with each other but not with the final
    evaluation, which covers whole splits unless ``eval_max_tokens`` is set."""
    eval_stride: int = role(MEASUREMENT, 0)
    """If > 0, the final evaluation also reports sliding-window perplexity with this stride."""
    eval_max_tokens: int = role(MEASUREMENT, 0)
    """If > 0, the final evaluation scores only the first this-many tokens of each split (a cheaper estimate
    for short runs; the scored token count is recorded with the result). 0: whole splits."""
    early_stop_patience: int = role(EXPERIMENT, 0)
    """Early stopping: once this many periodic validation estimates in a row have not beaten the best one,
    stop training and end the run at the best estimate's step, whose weights are then scored, kept as the
    last checkpoint and exported; the same rewind happens when training reaches its end past its best. 0:
    train to the end and keep the last weights. Needs ``eval_interval``, whose estimates then also decide
    how long the run trains."""
    ckpt_interval: int = role(RECORD, 500)
    """Steps between checkpoints (0: only at the end)."""
    keep_last: int = role(RECORD, 2)
    """Checkpoints kept besides the best one."""
    skip_nonfinite: bool = role(EXECUTION, False)
    """On a non-finite loss or gradient, skip the step instead of stopping the run."""
    log_interval: int = role(RECORD, 10)
    """Steps between metric rows (train/loss is the mean over these steps)."""
    log_layer_grad_norms: bool = role(RECORD, False)
    """Also log each block's gradient norm and activation diagnostics (``minigpt.diagnostics``: LayerNorm
    input RMS, branch-to-residual ratios), for pre-LN versus post-LN comparisons."""
    dense_log_steps: int = role(RECORD, 0)
    """Log every step (and, with an evaluation interval, estimate validation loss at step 0) until this
    step, then every ``log_interval``: the first steps, where a run collapses or takes off, at full
    resolution."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "micro_batch_size", "max_steps", "log_interval"):
            check(getattr(self, name) > 0, f"train.{name}", f"must be positive, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "dense_log_steps",
            "eval_interval",
            "eval_batches",
            "eval_stride",
            "eval_max_tokens",
            "ckpt_interval",
            "keep_last",
            "threads",
            "weight_decay",
            "grad_clip",
            "max_minutes",
            "early_stop_patience",
        ):
            check(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        check(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        check(
            0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        )
        for name in ("beta1", "beta2"):
            check(
                0 <= getattr(self, name) < 1, f"train.{name}", f"must be in [0, 1), got {getattr(self, name)}"
            )
        check_choice(self.precision, "train.precision", ("auto", "fp32", "bf16", "fp16"))
        check(
            not self.early_stop_patience or self.eval_interval > 0,
            "train.early_stop_patience",
            "stops on the periodic validation estimates: set train.eval_interval > 0 too",
        )


@dataclass
class LogConfig:
    """Where a run is recorded: always a local run directory, and W&B unless disabled."""

    project: str = role(RECORD, "minigpt")
    """The W&B project."""
    run_name: str = role(RECORD, "")
    """The run directory's name, used as is (a resume or a sweep relies on it); empty means
    ``<experiment name>-<timestamp>-<W&B run id or random suffix>``, never an existing directory."""
    out_dir: str = role(RECORD, "runs")
    """Run directories are created under this folder."""
    wandb: str = role(RECORD, "auto")
    """``auto`` (``$WANDB_MODE`` if set; else online under ``wandb agent`` or with W&B credentials, offline
    without), ``offline``, ``online`` or ``disabled``."""
    group: str = role(RECORD, "")
    """The W&B group. Empty means the variant: ``run.py`` names it by what the command line changes in the
    experiment file (``cpu-study: norm_position=post, lr=0.004``; seeds and run-specific keys left out), so
    the seeds of one variant are averaged together in W&B; a config built in code gets its name and a hash."""
    tags: str = role(RECORD, "")
    """Comma-separated W&B tags (the sweep's name is added as one)."""
    notes: str = role(RECORD, "")
    """The W&B run's notes: a sentence on why the run was made, shown on its page and in the runs table."""
    sweep: str = role(RECORD, "")
    """The name of the sweep this run belongs to (the local sweep runner sets it): a W&B tag and config
    entry, not a W&B sweep id, so the run stays syncable to its project."""
    export_hf: bool = role(RECORD, False)
    """At the end of training, also write a Hugging Face model directory to ``<run_dir>/hf``."""
    log_model: str = role(RECORD, "off")
    """Log the model's weights (the safetensors export, no optimizer state) as a W&B artifact, as the HF
    Trainer's ``WANDB_LOG_MODEL`` does: ``off``; ``end`` (the final model); ``checkpoint`` (at every
    checkpoint). Versions carry the aliases ``latest``, ``step-N`` and ``best``, and the summary as
    metadata."""
    sample_tokens: int = role(RECORD, 32)
    """At each periodic validation estimate, continue ``sample_prompt`` by this many tokens and record the
    text (``samples.jsonl`` in the run directory, and a W&B table of step, tokens seen, prompt and text).
    Temperature 0.8, top-k 50 and the same random draws every time, so the samples of different steps
    differ only by the weights. 0: no samples."""
    sample_prompt: str = role(RECORD, "The history of")
    """The prompt the periodic samples continue."""
    wandb_rewind: bool = role(RECORD, False)
    """On ``--resume``, rewind the W&B run to the checkpoint's step (W&B's ``resume_from``, a preview feature
    that fails while the interrupted run is not yet marked finished on the server) so the steps logged again
    replace the old ones; off, the resumed part continues the same run id (``resume="allow"``)."""

    def __post_init__(self) -> None:
        check_choice(self.wandb, "log.wandb", ("auto", "offline", "online", "disabled"))
        check_choice(self.log_model, "log.log_model", ("off", "end", "checkpoint"))
        check(
            self.sample_tokens >= 0,
            "log.sample_tokens",
            f"must be 0 (no samples) or more, got {self.sample_tokens}",
        )


@dataclass
class ExperimentConfig:
    """One experiment: what to train, on what, how, and where to record it."""

    name: str = role(RECORD, "experiment")
    """The experiment's name: the start of its run directories' names."""
    init_from: str = ""
    """Start from trained weights: a MiniGPT checkpoint or run directory, or a Hugging Face GPT-2 directory
    or Hub name. The base then fixes the architecture: only ``model.dropout`` and ``model.attention`` are
    taken from this config (see ``minigpt.train.adopt_base_architecture``). Empty: train from scratch."""
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        check(
            self.train.eval_stride <= self.model.block_size,
            "train.eval_stride",
            f"{self.train.eval_stride} is longer than the context model.block_size={self.model.block_size}: "
            "a sliding window moves by at most one context",
        )

    def check_runnable(self) -> None:
        """Rules between fields that hold only once every override is applied (an experiment file may leave
        one of the two to the command line), checked before a run loads anything."""
        if self.lora.rank and not self.init_from:
            raise ConfigError(
                "lora.rank > 0 adapts trained weights: name them with --init_from=RUN_DIR|CKPT|HF"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        try:
            return cls(
                name=values.get("name", "experiment"),
                init_from=values.get("init_from", ""),
                **{s.name: s.type_cls(**values.get(s.name, {})) for s in _sections()},
            )
        except TypeError as e:  # a key this version does not know, e.g. from another version's checkpoint
            raise ConfigError(f"saved config does not fit this version of MiniGPT: {e}") from None


@dataclass(frozen=True)
class _Section:
    name: str
    type_cls: type


def _sections() -> list[_Section]:
    hints = typing.get_type_hints(ExperimentConfig)
    return [
        _Section(f.name, hints[f.name])
        for f in dataclasses.fields(ExperimentConfig)
        if dataclasses.is_dataclass(hints[f.name])
    ]


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys() -> dict[str, type]:
    """Every overridable key, dotted (``train.lr``), mapped to its type."""
    keys: dict[str, type] = {"name": str, "init_from": str}
    for section in _sections():
        for name, tp in _field_types(section.type_cls).items():
            keys[f"{section.name}.{name}"] = tp
    return keys


def key_roles() -> dict[str, str]:
    """Every key, dotted, mapped to its role (``EXPERIMENT`` where its field declares none)."""
    return {key: meta.get("role", EXPERIMENT) for key, meta in _key_metadata().items()}


def resumable_keys() -> frozenset[str]:
    """Keys a resumed run may change: all but those that define the experiment, and of those the ones that
    only say how long to train."""
    return frozenset(
        key
        for key, meta in _key_metadata().items()
        if meta.get("role", EXPERIMENT) not in (EXPERIMENT, REPLICATE) or meta.get("extendable")
    )


def non_variant_keys() -> frozenset[str]:
    """Keys whose values may differ between the runs of one variant: the seed, and how a run is carried out
    and recorded. Every other key (what is trained, how it is scored) defines the variant."""
    return frozenset(key for key, kind in key_roles().items() if kind in (REPLICATE, EXECUTION, RECORD))


MAX_GROUP_CHARS = 128
"""W&B refuses longer group names."""


def variant_label(base: ExperimentConfig, config: ExperimentConfig) -> str:
    """A readable name for the variant ``config`` is of ``base`` (the experiment file it came from): the
    experiment's name and each key that defines the variant and differs from the file, e.g.
    ``cpu-study: norm_position=post, lr=0.004``. Seeds and how a run is carried out or recorded are left
    out, so every seed of one variant gets the same label; W&B's group defaults to it."""
    flat_base, flat, skip = flatten(base.to_dict()), flatten(config.to_dict()), non_variant_keys()
    changed = sorted(k for k in flat if k in all_keys() and k not in skip and flat[k] != flat_base.get(k))
    changes = [f"{short_key(key)}={flat[key]}" for key in changed]
    label = f"{config.name}: {', '.join(changes)}" if changes else config.name
    if len(label) <= MAX_GROUP_CHARS:
        return label
    digest = hashlib.sha1(label.encode()).hexdigest()[:8]
    return f"{label[: MAX_GROUP_CHARS - 10]}… {digest}"


def short_key(dotted: str) -> str:
    """The bare field name where no other section has it (``lr``), else the dotted key (``model.dropout``)."""
    bare = dotted.rsplit(".", 1)[-1]
    return bare if sum(k.rsplit(".", 1)[-1] == bare for k in all_keys()) == 1 else dotted


def _key_metadata() -> dict[str, types.MappingProxyType]:
    top = {f.name: f.metadata for f in dataclasses.fields(ExperimentConfig)}
    metadata = {"name": top["name"], "init_from": top["init_from"]}
    for section in _sections():
        for f in dataclasses.fields(section.type_cls):
            metadata[f"{section.name}.{f.name}"] = f.metadata
    return metadata


def resolve_key(key: str) -> str:
    """Map a dotted or unique bare key to its dotted form; unknown or ambiguous keys raise ``ConfigError``."""
    keys = all_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"--{key} is ambiguous: say which one of {', '.join('--' + m for m in matches)}")
    candidates = list(keys) + sorted({k.rsplit(".", 1)[-1] for k in keys})
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
    raise ConfigError(f"unknown config key --{key}{hint} (see `python run.py --help` for every key)")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_ACCEPTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}


def convert(key: str, raw: str, tp: type) -> Any:
    """Convert a command-line string to the field's type, or raise ``ConfigError`` naming the field."""
    origin_args = typing.get_args(tp) if isinstance(tp, types.UnionType) else ()
    if origin_args:  # ``X | None``: "none" gives None, anything else converts as X
        if raw.lower() in ("none", "null"):
            return None
        tp = next(a for a in origin_args if a is not type(None))
    try:
        if tp is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        if tp is int:
            try:
                return int(raw)
            except ValueError:  # "1e3" is an integer too; a float only stands in when it is exact
                value = float(raw)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            return float(raw)
        if tp is str:
            return raw
    except ValueError:
        raise ConfigError(f"--{key}={raw}: expected {_ACCEPTED[tp]}") from None
    raise ConfigError(f"--{key}: fields of type {tp} cannot be set from the command line")


def check_type(key: str, value: Any, tp: type) -> Any:
    """A Python value (from ``derive`` or a sweep) must already have the field's type; an int may stand
    in for a float (``dropout=0``), but a bool is not an int."""
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, option) and not (option is int and isinstance(value, bool)):
            return value
    accepted = " or ".join(_ACCEPTED.get(o, getattr(o, "__name__", str(o))) for o in options)
    raise ConfigError(f"{key}={value!r}: expected {accepted}, got a {type(value).__name__}")


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Parse ``--key=value`` (also ``--key value``, and a bare ``--flag`` for true) into a dict of strings."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = body, args[i + 1]
            i += 1
        else:
            key, value = body, "true"
        overrides[key] = value
        i += 1
    return overrides


def apply_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Return a new config with ``overrides`` (dotted or bare keys; string or typed values) applied.

    Every section is rebuilt through its constructor, so each section's validation runs on the result.
    """
    keys = all_keys()
    per_section: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = resolve_key(key)
        if isinstance(value, str):
            value = convert(dotted, value, keys[dotted])
        else:
            value = check_type(dotted, value, keys[dotted])
        if "." in dotted:
            section, name = dotted.split(".", 1)
            per_section.setdefault(section, {})[name] = value
        else:
            top[dotted] = value
    changed = {
        name: dataclasses.replace(getattr(config, name), **values) for name, values in per_section.items()
    }
    return dataclasses.replace(config, **top, **changed)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Execute an experiment file and return the ``ExperimentConfig`` it defines as ``config``.

    Experiment files are Python and are run as such: only run files you trust.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.py"))
        listing = f": {', '.join(found)}" if found else " (it holds no .py files)"
        raise ConfigError(f"{path} is a folder; name one experiment file in it{listing}")
    if not path.is_file():
        nearby = sorted(p.name for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, nearby, n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else (f"; experiments there: {', '.join(nearby)}" if nearby else "")
        )
        raise ConfigError(f"experiment file {path} does not exist{hint}")
    try:
        namespace = runpy.run_path(str(path), run_name="__experiment__")
    except SyntaxError as e:
        raise ConfigError(f"experiment file {path} has a syntax error at line {e.lineno}: {e.msg}") from None
    except ConfigError as e:  # a config's own validation rejected a value set in the file
        raise ConfigError(f"in experiment file {path}: {e}") from None
    except Exception as e:  # any other mistake in the file: say where, without a traceback into runpy
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == path]
        where = f" at line {frames[-1].lineno}" if frames else ""
        raise ConfigError(f"experiment file {path} failed{where}: {type(e).__name__}: {e}") from None
    config = namespace.get("config")
    if not isinstance(config, ExperimentConfig):
        found = "nothing" if config is None else f"a {type(config).__name__}"
        raise ConfigError(
            f"experiment file {path} defines no experiment: expected `config = ExperimentConfig(...)`, found "
            f"{found} named `config`"
        )
    return config


def derive(base: ExperimentConfig | str | Path, overrides: dict[str, Any]) -> ExperimentConfig:
    """An experiment that differs from ``base`` (a config or an experiment file) only in ``overrides``.

    Ablation files use this so that they state their difference from the baseline and nothing else.
    """
    if not isinstance(base, ExperimentConfig):
        base = load_experiment(base)
    return apply_overrides(base, overrides)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description, from the class source: the docstring under the field, else the comment at
    the end of its line (``GPTConfig`` uses those), joined into one paragraph."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {
        tok.start[0]: tok.string.lstrip("# ").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
        elif node.lineno in comments:
            docs[node.target.id] = comments[node.lineno]
    return docs


def describe_keys(config: ExperimentConfig | None = None) -> str:
    """Every key with its type, its value in ``config`` (the defaults when None) and its description."""
    config = config or ExperimentConfig()
    docs = {f"{key}": doc for key, doc in field_docs(ExperimentConfig).items()}
    for section in _sections():
        docs.update({f"{section.name}.{k}": doc for k, doc in field_docs(section.type_cls).items()})
    lines = []
    for key, tp in all_keys().items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        type_name = getattr(tp, "__name__", str(tp))
        lines.append(f"  --{key}=<{type_name}>  (default: {value!r})")
        if docs.get(key):
            lines.append(
                textwrap.fill(docs[key], width=106, initial_indent=" " * 6, subsequent_indent=" " * 6)
            )
    return "\n".join(lines)
