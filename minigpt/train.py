"""The training loop, written out: AdamW, warmup + cosine, accumulation, clipping, mixed precision,
periodic evaluation, atomic checkpoints and exact resume.

``run(config)`` is the whole job, in four steps: settle the config (and the checkpoint or base weights it
starts from), load the data and build the model, train, and evaluate. The loop reports to a
``tracking.Logger`` and knows nothing of where the numbers end up.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from minigpt import (
    checkpoint,
    data,
    diagnostics,
    distributed,
    export,
    lora,
    perf,
    provenance,
    storage,
    tracking,
)
from minigpt.config import (
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    resumable_keys,
)
from minigpt.errors import first_line
from minigpt.evaluate import EvalResult, evaluate
from minigpt.model import GPT, GPTConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


class RunInterrupted(RuntimeError):
    """The user stopped the run (Ctrl-C); the message says where it was saved and how to continue."""


# Keys that may differ between a checkpoint's config and the config a run is resumed with: they change how the
# run is carried out, scored or recorded, or how long it trains, not what it computes (the config's roles).
RESUMABLE_CHANGES = resumable_keys()


# ----------------------------------------------------------------------------------------------- set-up


def lr_at(step: int, config: ExperimentConfig, time_spent: float = 0.0) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``.

    Under a time budget (``train.max_minutes``), ``time_spent`` is the fraction of it used so far, and the
    decay follows whichever of steps and time is further along, so that the schedule ends when the run does.
    """
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    min_lr = t.lr * t.min_lr_ratio
    progress = max((step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps), time_spent)
    return min_lr + 0.5 * (t.lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def accumulation_steps(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per process per optimizer step: the global batch split over processes and passes."""
    per_pass = train.micro_batch_size * world_size
    if train.batch_size % per_pass:
        raise ConfigError(
            f"train.batch_size={train.batch_size} (the global batch) is not a multiple of "
            f"train.micro_batch_size={train.micro_batch_size} times the {world_size} processes = {per_pass}; "
            "choose a --micro_batch_size that makes it one"
        )
    return train.batch_size // per_pass


def build_optimizer(model: GPT, config: ExperimentConfig, device: torch.device) -> torch.optim.AdamW:
    t = config.train
    groups = model.optimizer_param_groups(t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=device.type == "cuda")


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume when the config changed in a way that changes what the run computes."""
    a, b = flatten(saved), flatten(current)
    differing = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]
    if differing:
        details = "; ".join(f"{k} is {a.get(k)!r} in the checkpoint but {b.get(k)!r} now" for k in differing)
        raise ConfigError(f"cannot resume with an incompatible config: {details}")


# Model fields that a run starting from trained weights takes from its own config: they change how the model
# runs, not which function its weights compute. Every other field comes from the base.
RUNTIME_MODEL_FIELDS = ("dropout", "attention")


def adopt_base_architecture(config: ExperimentConfig, base: GPTConfig) -> ExperimentConfig:
    """``config`` with the base model's architecture, keeping only its ``RUNTIME_MODEL_FIELDS``.

    A fine-tuning experiment need not restate the shape of its base (and cannot change it: the weights fix
    it), so the base's values replace the experiment's, and each replaced value is printed.
    """
    ours = config.model
    model = GPTConfig(
        **{
            f.name: getattr(ours if f.name in RUNTIME_MODEL_FIELDS else base, f.name)
            for f in dataclasses.fields(GPTConfig)
        }
    )
    replaced = [
        f"{f.name}={getattr(ours, f.name)!r} by {getattr(model, f.name)!r}"
        for f in dataclasses.fields(GPTConfig)
        if getattr(ours, f.name) != getattr(model, f.name)
    ]
    if replaced and distributed.is_main():
        keys = ", model.".join(replaced)
        tracking.say(f"init_from: the architecture comes from the base; replaced model.{keys}")
    return dataclasses.replace(config, model=model)


def load_base(
    init_from: str, wandb_option: str = "auto", download_dir: Path = Path("runs/artifacts")
) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The architecture and weights ``init_from`` names: a MiniGPT checkpoint file or run directory, a W&B
    artifact holding one or an export (downloaded into ``download_dir``), else a Hugging Face GPT-2
    directory or Hub name."""
    path = Path(init_from).expanduser()
    if tracking.is_artifact_reference(init_from):
        path = tracking.fetch_artifact(init_from, wandb_option, download_dir)
    if path.is_file() or checkpoint.list_checkpoints(path):
        state = checkpoint.load_checkpoint(path)
        if any(key.endswith(".lora_A") for key in state["model"]):
            raise ConfigError(
                f"init_from={init_from!r} is a LoRA fine-tune (its adapters are in its adapter/ directory); "
                "init_from needs the full model it was trained from"
            )
        return GPTConfig(**state["model_config"]), state["model"]
    from minigpt.hf import from_hf

    try:
        base = from_hf(init_from)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"init_from={init_from!r} is neither a MiniGPT checkpoint or run directory nor a loadable "
            f"Hugging Face GPT-2: {first_line(e)}"
        ) from None
    return base.config, base.state_dict()


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class Splits:
    train: data.TokenSplit
    val: data.TokenSplit
    test: data.TokenSplit | None
    tokenizer: Any = None
    """The tokenizer that made the splits: it turns periodic samples back into text."""


def load_splits(config: ExperimentConfig, tokenizer) -> Splits:
    load = lambda split: data.load_split(config.data, split, tokenizer)  # noqa: E731
    train, val = load("train"), load("val")  # train first: a missing dataset is reported by its train split
    if config.data.train_tokens:
        train = data.first_tokens(train, config.data.train_tokens, "data.train_tokens")
    test = load("test") if data.has_split(config.data, "test") else None
    return Splits(train=train, val=val, test=test, tokenizer=tokenizer)


def run(
    config: ExperimentConfig,
    resume: str | Path | dict[str, Any] | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and record one experiment; return its summary.

    ``resume`` continues a run: its directory, a checkpoint file, or a checkpoint already loaded with
    ``checkpoint.load_checkpoint``. Under torchrun every process calls this, and together they train one
    model data-parallel; only rank 0 records the run. The process group lives exactly as long as this call,
    also when it fails.
    """
    if config.train.keep_freed_memory:
        perf.keep_freed_memory()
    device = distributed.setup(perf.pick_device(config.train.device))
    try:
        return train_in_group(config, resume, command, device)
    except BaseException as error:
        if distributed.world_size() > 1:
            # The traceback keeps the trainer and its DDP model, which must be gone before the group goes (see
            # distributed.teardown). A post-mortem debugger then finds the failed frames' variables cleared.
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        distributed.teardown()


def train_in_group(
    config: ExperimentConfig,
    resume: str | Path | dict[str, Any] | None,
    command: list[str] | None,
    device: torch.device,
) -> dict[str, Any]:
    """``run`` inside the process group. The trainer lives in this frame only, so it is gone when this returns
    and ``run`` leaves the group."""
    saved = checkpoint.load_checkpoint(resume) if isinstance(resume, (str, Path)) else resume
    config, base_weights = settle_config(config, saved, device)
    trainer = prepare(config, device, saved, base_weights, command)
    return train_and_evaluate(trainer)


def settle_config(
    config: ExperimentConfig, saved: dict[str, Any] | None, device: torch.device
) -> tuple[ExperimentConfig, dict[str, torch.Tensor] | None]:
    """The config the run will use, checked against everything known before any data loads, and the base
    weights a fresh ``init_from`` run starts from."""
    config.check_runnable()
    base_weights = None
    if saved is not None:
        if config.init_from:
            config = adopt_base_architecture(config, GPTConfig(**saved["model_config"]))
        # Read through the config class, so fields added since the checkpoint count as their defaults.
        check_resume_compatible(ExperimentConfig.from_dict(saved["config"]).to_dict(), config.to_dict())
    else:
        check_can_create(Path(config.log.out_dir))  # a fresh run, also a fine-tune: before any weights load
    if saved is None and config.init_from:
        downloads = data.cache_root(config.data) / "artifacts"
        base_config, base_weights = load_base(config.init_from, config.log.wandb, downloads)
        config = adopt_base_architecture(config, base_config)
    perf.check_fits_in_memory(config.model, config.train.micro_batch_size, device)
    return config, base_weights


def check_can_create(out_dir: Path) -> None:
    """Refuse an output folder that cannot be made or written, before minutes go into loading data."""
    problem = storage.why_unwritable(out_dir)
    if problem:
        raise ConfigError(f"log.out_dir={out_dir}: {problem}; choose another --out_dir")


def prepare(
    config: ExperimentConfig,
    device: torch.device,
    saved: dict[str, Any] | None,
    base_weights: dict[str, torch.Tensor] | None,
    command: list[str] | None,
) -> Trainer:
    """Load the data, build the model, open the run directory and its loggers: a trainer ready to go.

    The run directory is made only once the data has loaded, so a run that cannot start leaves nothing."""
    t = config.train
    accum_steps = accumulation_steps(t, distributed.world_size())  # a batch that does not split fails here
    if t.threads:
        torch.set_num_threads(t.threads)
    precision = perf.pick_precision(t.precision, device)
    splits = load_data(config)
    config = fit_vocabulary(config, len(splits.tokenizer), keep=saved is not None or bool(config.init_from))
    model = build_model(config, device, base_weights)

    run_dir = Path(saved["path"]).parent if saved else open_run_dir(config)
    if distributed.is_main():
        # Rows logged after the checkpoint are dropped (they will be logged again), except an early-stopped
        # run's: it was rewound to its best step, and the steps after it were trained and stay in the record.
        logged_until = (saved.get("stopped_at_step") or saved["step"]) if saved else 0
        resume_id = saved["wandb_run_id"] if saved else None
        logger = tracking.build_logger(config, run_dir, resume_id, logged_until)
    else:
        logger = tracking.Logger()
    peak_flops = job_peak_flops(device, precision)
    trainer = Trainer(config, model, splits, device, precision, accum_steps, logger, run_dir, peak_flops)
    if saved is not None:
        trainer.restore(saved)
    source = provenance.source_state()
    logger.start(
        run_metadata(trainer, source, command, saved),
        total_steps=t.max_steps,
        first_step=trainer.state.steps_trained,
    )
    if distributed.is_main():
        provenance.record_diff(run_dir, source)
    return trainer


def fit_vocabulary(config: ExperimentConfig, n_tokens: int, keep: bool) -> ExperimentConfig:
    """The model's vocabulary is the tokenizer's: a new run takes its size (which the model pads to
    ``model.vocab_multiple``). A resumed run or a fine-tune (``keep``) has its architecture already, and
    it must hold every token."""
    vocab = config.model.vocab_size
    if keep and n_tokens > vocab:
        raise ConfigError(f"model.vocab_size={vocab} is smaller than the tokenizer's {n_tokens} tokens")
    if keep or n_tokens == vocab:
        return config
    return apply_overrides(config, {"model.vocab_size": n_tokens})


def load_data(config: ExperimentConfig) -> Splits:
    tokenizer = data.load_tokenizer(config.data)
    with distributed.local_main_first():  # one process per machine builds the token caches; the rest read
        return load_splits(config, tokenizer)


def build_model(
    config: ExperimentConfig, device: torch.device, base_weights: dict[str, torch.Tensor] | None
) -> GPT:
    torch.manual_seed(config.train.seed)
    model = GPT(config.model).to(device)
    if base_weights is not None:
        model.load_state_dict(base_weights)
    if config.lora.rank:
        lora.apply_lora(model, config.lora)  # freezes the base
    if config.init_from and distributed.is_main():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = model.num_params()
        tracking.say(
            f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%), "
            f"starting from {config.init_from}"
        )
    if distributed.rank() > 0:
        torch.manual_seed(config.train.seed + distributed.rank())  # each process draws its own dropout masks
    return model


def trainable_params(model: GPT) -> int:
    """Parameters the optimizer updates: all of ``num_params`` (no vocabulary padding rows, which hold
    nothing) when every tensor trains, else the trainable tensors' own size (LoRA's adapters)."""
    if all(p.requires_grad for p in model.parameters()):
        return model.num_params()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_metadata(
    trainer: Trainer, source: provenance.SourceState, command: list[str] | None, saved: dict[str, Any] | None
) -> dict[str, Any]:
    """The resolved config plus how, where and from what code the run was made (``_run``)."""
    config, model = trainer.config, trainer.model
    return {
        **config.to_dict(),
        "_run": {
            "git_commit": source.commit,
            "git_dirty": source.dirty,
            "git_untracked": source.untracked[:20],  # the first few: a stray venv can hold thousands
            "git_untracked_count": len(source.untracked),
            "command": command or sys.argv,
            "device": str(trainer.device),
            "world_size": trainer.world_size,
            "threads": torch.get_num_threads(),
            "precision": trainer.precision,
            "params": model.num_params(),
            "params_non_embedding": model.num_params(non_embedding=True),
            "params_trainable": trainable_params(model),
            "tokens_planned": config.train.max_steps * trainer.tokens_per_step,
            "max_minutes": config.train.max_minutes,
            "run_dir": str(trainer.run_dir),
            "torch": torch.__version__,
            "hardware": perf.describe_hardware(trainer.device),
            "resumed_from": saved["path"] if saved else None,
        },
    }


def open_run_dir(config: ExperimentConfig) -> Path:
    """A new run directory: ``log.run_name`` if set, else a unique name that rank 0 creates; every process
    gets the same path."""
    if not config.log.run_name:
        made = tracking.new_run_dir(Path(config.log.out_dir), config.name) if distributed.is_main() else None
        return distributed.broadcast_object(made)
    run_dir = Path(config.log.out_dir) / config.log.run_name
    if checkpoint.list_checkpoints(run_dir):
        raise ConfigError(
            f"run directory {run_dir} already has checkpoints: continue it with "
            f"--resume={run_dir}, or choose another --run_name"
        )
    return run_dir


def train_and_evaluate(trainer: Trainer) -> dict[str, Any]:
    """Train, then score the final model; the run's record says whether it finished, failed or was stopped."""
    status = "failed"
    try:
        if trainer.config.init_from and trainer.state.step == 0:
            score_starting_weights(trainer)
        elif (
            trainer.state.step == 0
            and trainer.config.train.dense_log_steps
            and trainer.config.train.eval_interval
        ):
            improved = trainer.estimate_val_loss()  # the curve's first point: the untrained model
            # Under early stopping it can stay the best estimate (a rate too high to learn anything), so its
            # weights are kept for a rewind like any other best.
            if improved and trainer.config.train.early_stop_patience:
                trainer.save()
        try:
            trainer.train()
        except KeyboardInterrupt:
            status = "interrupted"
            raise trainer.save_on_interrupt() from None
        except NonFiniteLossError:
            status = "diverged"
            raise
        summary = final_evaluation(trainer)
        if distributed.is_main():
            publish(trainer)
        status = "finished"
    finally:
        trainer.logger.finish(status)
    return summary


def score_starting_weights(trainer: Trainer) -> None:
    """Score an ``init_from`` run's starting weights on the validation tokens the final evaluation scores, to
    compare with it; the figures go into the ``TrainingState``, so a resume still reports them."""
    result = trainer.score(trainer.splits.val, max_tokens=trainer.config.train.eval_max_tokens)
    trainer.state.val_before = {**result.as_metrics("val_before"), "val_before/describe": result.describe()}
    trainer.logger.log({**result.as_metrics("val_before"), "train/tokens": 0}, step=trainer.state.step)
    if distributed.is_main():
        tracking.say(f"before training: val {result.describe()}")


def final_evaluation(trainer: Trainer) -> dict[str, Any]:
    """Save the final model, score it on the validation and test splits (whole, unless
    ``train.eval_max_tokens``; sliding-window too with ``train.eval_stride``), and record the summary."""
    t, splits = trainer.config.train, trainer.splits
    trainer.save()
    scored = {"val": splits.val, "test": splits.test}
    summary: dict[str, Any] = {}
    logged: dict[str, Any] = {}
    for name, split in scored.items():
        if split is None:
            continue
        result = trainer.score(split, max_tokens=t.eval_max_tokens)
        logged.update(result.as_metrics(f"final_{name}"))
        summary.update({**result.as_metrics(f"final_{name}"), f"final_{name}/describe": result.describe()})
    if t.eval_stride:
        for name, split in scored.items():
            if split is not None:
                sliding = trainer.score(split, stride=t.eval_stride, max_tokens=t.eval_max_tokens)
                summary.update(sliding.as_metrics(f"final_{name}_sliding"))
    # After a rewind the step logged last is past the final weights' step; W&B takes only later steps.
    trainer.logger.log({**logged, "train/tokens": trainer.tokens_seen}, step=trainer.state.steps_trained)
    summary.update(trainer.state.summary(trainer.tokens_per_step))
    summary["run_dir"] = str(trainer.run_dir)
    if trainer.config.lora.rank:
        summary["adapter_bytes"] = lora.adapter_size(trainer.adapter_path)
    trainer.logger.summary(summary)
    return summary


def publish(trainer: Trainer) -> None:
    """Hand the final model on: a Hugging Face export when asked for (``log.export_hf``), and W&B artifacts of
    the model (with ``log.log_model=end``) and of a LoRA adapter."""
    run_dir, config = trainer.run_dir, trainer.config
    if config.log.export_hf:
        try:
            model_path = export.export_run(run_dir, run_dir / "hf", merge_adapter=bool(config.lora.rank))
            tracking.say(f"exported a Hugging Face model directory to {model_path}")
        except export.ExportError as e:
            tracking.say(f"note: no Hugging Face export: {e}")
    if config.log.log_model == "end":
        # Without periodic estimates the final model is the only one scored, so it is the best known.
        best = trainer.state.best_step in (None, trainer.state.step)
        export.log_model(trainer.logger, run_dir, trainer.state.step, best, bool(config.lora.rank))
    if config.lora.rank:
        trainer.logger.artifact(trainer.adapter_path, f"{run_dir.name}-adapter", "lora-adapter")


def job_peak_flops(device: torch.device, precision: str) -> float:
    """The matmul ceiling of the whole job (every process, as tokens per second count them all), measured
    once before training, against which ``perf/mfu`` is reported; NaN where it is not measured (MPS)."""
    if device.type == "mps":
        return math.nan
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return distributed.world_size() * perf.measure_matmul_flops(device, dtype)


def block_grad_norms(model: GPT) -> dict[str, float]:
    """Each transformer block's gradient norm before clipping, logged as ``grad_norm/layer_<i>``."""
    return {
        f"grad_norm/layer_{i}": torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in block.parameters() if p.grad is not None])
        ).item()
        for i, block in enumerate(model.transformer.h)
    }


Diagnostic = Callable[[GPT], dict[str, float]]
"""A per-step measurement of the model after backward and before clipping and the update (gradients in
place), run on logged steps; its figures join the step's metric row."""


def diagnostics_for(config: ExperimentConfig, model: GPT) -> list[Diagnostic]:
    """The diagnostics the config asks for, in the order their figures are logged."""
    if not config.train.log_layer_grad_norms:
        return []
    return [block_grad_norms, diagnostics.BlockDiagnostics(model.transformer.h)]


@dataclass
class TrainingState:
    """Everything a resume restores besides the weights, the optimizer and the config: saved and loaded whole,
    as the top-level fields of a checkpoint."""

    step: int = 0
    best_val_loss: float = math.inf
    """The lowest periodic validation estimate (``val/loss``): comparable with the other estimates only,
    not with the final whole-split score."""
    best_step: int | None = None
    """The step of that estimate (its checkpoint is kept); None before the first periodic evaluation."""
    evals_since_best: int = 0
    """Periodic estimates since the best one, which early stopping counts."""
    stopped_at_step: int | None = None
    """Under early stopping, the step training stopped at when the run was then rewound to ``best_step``."""
    skipped_steps: int = 0
    train_seconds: float = 0.0
    val_before: dict[str, Any] = field(default_factory=dict)
    """The starting weights' validation figures in an ``init_from`` run, for the final summary."""
    wandb_run_id: str | None = None
    rng_by_rank: list[dict[str, torch.Tensor]] = field(default_factory=list)
    """Each process's random state (dropout masks); the data order needs none: it follows from the step."""

    def note_val_estimate(self, loss: float) -> bool:
        """Record a periodic estimate; True when it is the best so far."""
        if loss < self.best_val_loss:
            self.best_val_loss, self.best_step, self.evals_since_best = loss, self.step, 0
            return True
        self.evals_since_best += 1
        return False

    @property
    def steps_trained(self) -> int:
        """Steps actually taken, including those a rewind to the best step discarded."""
        return self.stopped_at_step if self.stopped_at_step is not None else self.step

    def summary(self, tokens_per_step: int) -> dict[str, Any]:
        """The state as a run's summary reports it, each figure named for what it is: ``step`` and ``tokens``
        are those of the final weights, the speed is that of every step taken."""
        figures: dict[str, Any] = {
            **self.val_before,
            "step": self.step,
            "tokens": self.step * tokens_per_step,
            "train_seconds": self.train_seconds,
            "tokens_per_sec": self.steps_trained * tokens_per_step / max(self.train_seconds, 1e-9),
            "skipped_steps": self.skipped_steps,
        }
        if self.best_step is not None:
            figures.update({"val/best_loss": self.best_val_loss, "val/best_step": self.best_step})
        if self.stopped_at_step is not None:
            figures.update(
                {
                    "early_stop/stopped_at_step": self.stopped_at_step,
                    "early_stop/tokens_trained": self.stopped_at_step * tokens_per_step,
                }
            )
        return figures


class Trainer:
    """Trains one run: steps the model with its optimizer on the sampler's batches, estimates validation
    loss every ``eval_interval`` steps and saves every ``ckpt_interval``, keeping the ``TrainingState``."""

    def __init__(
        self,
        config: ExperimentConfig,
        model: GPT,
        splits: Splits,
        device: torch.device,
        precision: str,
        accum_steps: int,
        logger: tracking.Logger,
        run_dir: Path,
        peak_flops: float = math.nan,
    ) -> None:
        t = config.train
        self.config, self.model, self.splits, self.device = config, model, splits, device
        self.logger, self.run_dir = logger, run_dir
        self.precision = precision
        self.autocast = perf.autocast_for(precision, device)
        self.block_size = config.model.block_size
        self.sampler = data.BlockSampler(splits.train.tokens, self.block_size, t.seed)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.accum_steps = accum_steps
        # Evaluation keeps no activations for backward, so it can take bigger batches (and bigger matmuls).
        self.eval_batch_size = max(t.micro_batch_size, 8192 // self.block_size)
        self.optimizer = build_optimizer(model, config, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        # Forward passes go through the wrappers: DDP inside torch.compile (not the reverse) lets the
        # compiler overlap the all-reduce with backward. Checkpoints save ``model``: no wrapper prefixes.
        self.data_parallel = distributed.wrap(model, device)
        self.wrapped_model = torch.compile(self.data_parallel) if t.compile else self.data_parallel
        self.state = TrainingState()
        self.tokens_per_step = t.batch_size * self.block_size
        self.flops_per_token = model.flops_per_token(self.block_size)
        self.peak_flops = peak_flops
        self.diagnostics = diagnostics_for(config, model)

    @property
    def tokens_seen(self) -> int:
        return self.state.step * self.tokens_per_step

    # -- checkpoints ---------------------------------------------------------------------------------------

    def gather_checkpoint(self) -> dict[str, Any]:
        """This step's checkpoint: ``TrainingState``'s fields, the weights, the optimizer and the config.
        Every process must call it: it gathers their random states into the state."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self.state.rng_by_rank = distributed.gather_objects(rng)
        self.state.wandb_run_id = self.logger.run_id
        return {
            **dataclasses.asdict(self.state),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.config.to_dict(),
            "model_config": dataclasses.asdict(self.config.model),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scaler.load_state_dict(saved["scaler"])
            # Fields a checkpoint predates keep their defaults.
            fields = [f.name for f in dataclasses.fields(TrainingState) if f.name in saved]
            self.state = TrainingState(**{name: saved[name] for name in fields})
        except (KeyError, RuntimeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{saved['path']} does not fit this model: {e}") from None
        # A process the checkpoint did not have (a larger world) keeps the dropout stream it was seeded with.
        if self.rank < len(self.state.rng_by_rank):
            rng = self.state.rng_by_rank[self.rank]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)

    def save(self) -> Path:
        state = self.gather_checkpoint()
        path = checkpoint.checkpoint_path(self.run_dir, self.state.step)
        if distributed.is_main():
            checkpoint.save_checkpoint(self.run_dir, state, self.config.train.keep_last, self.state.best_step)
            if self.config.lora.rank:
                # The adapters alone, small enough to share; the checkpoint above holds everything for resume.
                config = self.config
                lora.save_adapter(
                    self.adapter_path, self.model, config.lora, config.init_from, self.state.step
                )
            if self.config.log.log_model == "checkpoint":
                best, merge = self.state.best_step == self.state.step, bool(self.config.lora.rank)
                export.log_model(self.logger, self.run_dir, self.state.step, best, merge)
        distributed.barrier()  # on return the files are in place, for every process
        return path

    @property
    def adapter_path(self) -> Path:
        return self.run_dir / "adapter"

    def last_good_checkpoint(self) -> str:
        found = checkpoint.list_checkpoints(self.run_dir)
        return str(found[-1][1]) if found else "none (no checkpoint was written yet)"

    def save_on_interrupt(self) -> RunInterrupted:
        """Save where a Ctrl-C stopped the run (a single process: a group cannot agree on it) and say how to
        continue."""
        if self.world_size > 1:
            return RunInterrupted(
                f"interrupted at step {self.state.step}; continue from the last checkpoint with "
                f"--resume={self.run_dir} (last: {self.last_good_checkpoint()})"
            )
        self.model.train()  # a Ctrl-C during an evaluation leaves the model in eval mode
        path = self.save()
        return RunInterrupted(
            f"interrupted at step {self.state.step} of {self.config.train.max_steps}; saved {path}. "
            f"Continue with: python run.py --resume={self.run_dir}"
        )

    # -- one optimizer step --------------------------------------------------------------------------------

    def train_step(self, lr: float, diagnose: bool = False) -> tuple[float, float, dict[str, float]]:
        """Accumulate gradients over the micro-batches of one step, clip, and update at learning rate ``lr``;
        return the mean loss, the gradient norm before clipping, and (if ``diagnose``) the figures of the
        trainer's diagnostics, taken before clipping."""
        t = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        first_sample = self.state.step * t.batch_size
        for micro in range(self.accum_steps):
            # Each micro-step takes the next micro_batch_size * world_size samples, a slice per process, so
            # the step's samples do not depend on how many processes share them.
            offset = (micro * self.world_size + self.rank) * t.micro_batch_size
            x, y = self.sampler.batch(first_sample + offset, t.micro_batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with distributed.gradient_sync(self.data_parallel, enabled=micro == self.accum_steps - 1):
                with self.autocast():
                    _, loss = self.wrapped_model(x, y)
                self.scaler.scale(loss / self.accum_steps).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        figures = {k: v for d in self.diagnostics for k, v in d(self.model).items()} if diagnose else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf).item()
        # The mean over every process: the same number everywhere, so all processes stop or skip together.
        loss = (distributed.all_reduce_sum(loss_sum) / (self.accum_steps * self.world_size)).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            if not t.skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
                    f"{self.state.step + 1} (loss {loss}, grad norm {grad_norm}); stopped without saving. "
                    f"Last good checkpoint: {self.last_good_checkpoint()}. Lower --lr, raise --warmup_steps, "
                    "or pass --skip_nonfinite=true to skip such steps"
                )
            self.state.skipped_steps += 1
            self.scaler.update()
            return loss, grad_norm, figures
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, figures

    def time_spent(self) -> float:
        """The fraction of the time budget (``train.max_minutes``) used; 0 without a budget."""
        budget = 60 * self.config.train.max_minutes
        return self.state.train_seconds / budget if budget else 0.0

    # -- the loop ------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Step until ``max_steps``, or until the time budget is spent (every process stops at the same step:
        rank 0's clock decides)."""
        t = self.config.train
        window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
        while self.state.step < t.max_steps and not self.out_of_time() and self.state.stopped_at_step is None:
            step_start = time.perf_counter()
            will_log = (
                (self.state.step + 1) % t.log_interval == 0
                or self.state.step + 1 == t.max_steps
                or self.state.step < t.dense_log_steps
            )
            lr = lr_at(self.state.step, self.config, self.time_spent())
            loss, grad_norm, figures = self.train_step(lr, diagnose=will_log)
            self.state.step += 1
            window_steps += 1
            window_loss += loss
            self.state.train_seconds += time.perf_counter() - step_start
            if will_log:
                elapsed = time.perf_counter() - window_start
                tokens_per_sec = window_steps * self.tokens_per_step / elapsed
                self.logger.log(
                    {
                        "train/loss": window_loss / window_steps,  # one step's loss alone is noisy
                        "train/lr": lr,
                        "train/grad_norm": grad_norm,
                        "train/tokens": self.tokens_seen,
                        "train/seconds": self.state.train_seconds,
                        "perf/tokens_per_sec": tokens_per_sec,
                        "perf/step_ms": 1000 * elapsed / window_steps,
                        "perf/mfu": tokens_per_sec * self.flops_per_token / self.peak_flops,
                        "perf/peak_mem_mb": perf.peak_memory_mb(self.device),
                        **figures,
                    },
                    step=self.state.step,
                )
                window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
            saved = False
            if self.state.step < t.max_steps and t.eval_interval and self.state.step % t.eval_interval == 0:
                improved = self.estimate_val_loss()
                if t.early_stop_patience and improved:
                    self.save()  # the weights a rewind may return to
                    saved = True
                elif t.early_stop_patience and self.state.evals_since_best >= t.early_stop_patience:
                    tracking.say(
                        f"early stop at step {self.state.step}: {self.state.evals_since_best} validation "
                        f"estimates without beating step {self.state.best_step}'s"
                    )
                    self.rewind_to_best()
                    return
                window_start = time.perf_counter()
            if (
                not saved
                and self.state.step < t.max_steps
                and t.ckpt_interval
                and self.state.step % t.ckpt_interval == 0
            ):
                self.save()
                window_start = time.perf_counter()
        if t.early_stop_patience and self.state.stopped_at_step is None:
            self.keep_the_best()

    def keep_the_best(self) -> None:
        """At the end of training under early stopping: the last weights are kept only if their estimate beats
        the best one; otherwise the run rewinds to it."""
        state = self.state
        if state.step == 0 or state.best_step == state.step or self.estimate_val_loss():
            return
        tracking.say(f"the last weights do not beat step {state.best_step}'s estimate: the run ends there")
        self.rewind_to_best()

    def rewind_to_best(self) -> None:
        """End the run at its best periodic estimate: reload that step's checkpoint (weights, optimizer and
        state) and delete the later ones, so that every tool reading the run directory finds the best weights.
        The time spent and the step reached are kept for the summary."""
        stopped_at, seconds, skipped = self.state.step, self.state.train_seconds, self.state.skipped_steps
        best = checkpoint.checkpoint_path(self.run_dir, self.state.best_step)
        self.restore(checkpoint.load_checkpoint(best, map_location=self.device))
        self.state.stopped_at_step, self.state.train_seconds = stopped_at, seconds
        self.state.skipped_steps = skipped
        if distributed.is_main():
            for step, path in checkpoint.list_checkpoints(self.run_dir):
                if step > self.state.step:
                    path.unlink()
        distributed.barrier()

    def out_of_time(self) -> bool:
        if not self.config.train.max_minutes:
            return False
        return bool(distributed.broadcast_object(self.time_spent() >= 1.0))

    def score(
        self, split: data.TokenSplit, max_batches: int = 0, stride: int | None = None, max_tokens: int = 0
    ) -> EvalResult:
        """Score the model on ``split`` (its first ``max_tokens``, or its first ``max_batches`` evaluation
        batches), with every process taking a share."""
        tokens = split.tokens[:max_tokens] if max_tokens else split.tokens
        return evaluate(
            self.wrapped_model,
            tokens,
            self.block_size,
            self.eval_batch_size,
            self.device,
            stride=stride,
            num_bytes=split.num_bytes if len(tokens) == len(split.tokens) else None,
            max_batches=max_batches,
            autocast=self.autocast,
            rank=self.rank,
            world_size=self.world_size,
        )

    def estimate_val_loss(self) -> bool:
        """The curve's point: the first ``eval_batches`` evaluation batches of the validation split (the same
        tokens every time, so the points compare with each other), not the final whole-split score. True when
        it is the best estimate so far."""
        result = self.score(self.splits.val, max_batches=self.config.train.eval_batches)
        improved = self.state.note_val_estimate(result.loss)
        self.logger.log({**result.as_metrics("val"), "train/tokens": self.tokens_seen}, step=self.state.step)
        if self.config.log.sample_tokens and self.splits.tokenizer is not None and distributed.is_main():
            self.logger.sample(
                self.config.log.sample_prompt, self.sample_text(), self.tokens_seen, self.state.step
            )
        return improved

    def sample_text(self) -> str:
        """The model's continuation of ``log.sample_prompt``: temperature 0.8, top-k 50, a generator seeded
        the same way every time, so that samples from different steps differ only by the weights."""
        log, tokenizer = self.config.log, self.splits.tokenizer
        prompt = tokenizer.encode(log.sample_prompt)[-self.block_size :] or [tokenizer.eos_token_id or 0]
        idx = torch.tensor([prompt], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(0)
        top_k = min(50, self.model.config.vocab_size)
        self.model.eval()
        out = self.model.generate(idx, log.sample_tokens, temperature=0.8, top_k=top_k, generator=generator)
        self.model.train()
        return tokenizer.decode(out[0, len(prompt) :].tolist())
