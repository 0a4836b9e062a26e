"""The training loop, written out: AdamW, warmup + cosine, accumulation, clipping, mixed precision,
periodic evaluation, atomic checkpoints and exact resume.

``run(config)`` is the whole job: data, model, loop, final evaluation. The loop reports to a
``tracking.Logger`` and knows nothing of where the numbers end up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from minigpt import checkpoint, data, perf, tracking
from minigpt.config import ConfigError, ExperimentConfig
from minigpt.evaluate import EvalResult, evaluate
from minigpt.model import GPT


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


# Keys that may differ between a checkpoint's config and the config a run is resumed with: they change how
# the run is carried out or recorded, not what it computes.
RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.eval_interval",
    "train.eval_batches",
    "train.eval_stride",
    "train.ckpt_interval",
    "train.keep_last",
    "train.log_interval",
    "train.device",
    "train.threads",
    "train.compile",
    "train.skip_nonfinite",
    "train.micro_batch_size",
    "train.precision",
    "data.data_dir",
    "data.cache_dir",
)


# ----------------------------------------------------------------------------------------------- set-up


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve ``auto``: bf16 where the hardware runs it natively (measured faster), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and perf.cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs CUDA (device is {device.type}); use bf16 or fp32")
    return name


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def lr_at(step: int, config: ExperimentConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    min_lr = t.lr * t.min_lr_ratio
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return min_lr + 0.5 * (t.lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: GPT, config: ExperimentConfig, device: torch.device) -> torch.optim.AdamW:
    t = config.train
    groups = model.optimizer_param_groups(t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=device.type == "cuda")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume when the config changed in a way that changes what the run computes."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(current)
    differing = [
        k
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("log.")
    ]
    if differing:
        details = "; ".join(f"{k} is {a.get(k)!r} in the checkpoint but {b.get(k)!r} now" for k in differing)
        raise ConfigError(f"cannot resume with an incompatible config: {details}")


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class Splits:
    train: data.TokenSplit
    val: data.TokenSplit
    test: data.TokenSplit | None


def load_splits(config: ExperimentConfig, tokenizer) -> Splits:
    load = lambda split: data.load_split(config.data, split, tokenizer)  # noqa: E731
    test = load("test") if config.data.dataset != "text" or config.data.test_file else None
    return Splits(train=load("train"), val=load("val"), test=test)


def resolve_run_dir(config: ExperimentConfig) -> Path:
    name = config.log.run_name or f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(config.log.out_dir) / name


def make_logger(config: ExperimentConfig, run_dir: Path, resume_id: str | None) -> tracking.Logger:
    loggers: list[tracking.Logger] = [tracking.RunDirLogger(run_dir), tracking.ConsoleLogger()]
    mode = tracking.wandb_mode(config.log.wandb)
    if mode != "disabled":
        tags = tuple(t for t in config.log.tags.split(",") if t)
        loggers.append(
            tracking.WandbLogger(
                mode, config.log.project, run_dir, run_dir.name, config.log.group, tags, resume_id
            )
        )
    return tracking.MultiLogger(loggers)


def run(
    config: ExperimentConfig, resume: str | None = None, command: list[str] | None = None
) -> dict[str, Any]:
    """Train, evaluate and record one experiment; return its summary. ``resume`` is a run directory or a
    checkpoint file to continue from."""
    state = None
    if resume is not None:
        state = checkpoint.load_checkpoint(resume)
        check_resume_compatible(state["config"], config.to_dict())
        run_dir = Path(state["path"]).parent
    else:
        run_dir = resolve_run_dir(config)
        if checkpoint.list_checkpoints(run_dir):
            raise ConfigError(
                f"run directory {run_dir} already has checkpoints: continue it with "
                f"--resume={run_dir}, or choose another --run_name"
            )

    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    precision = pick_precision(t.precision, device)

    tokenizer = data.load_tokenizer(config.data)
    if len(tokenizer) > config.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    splits = load_splits(config, tokenizer)

    torch.manual_seed(t.seed)
    model = GPT(config.model).to(device)
    logger = make_logger(config, run_dir, state.get("wandb_run_id") if state else None)
    metadata = {
        **config.to_dict(),
        "_run": {
            "git_commit": git_commit(),
            "command": command or sys.argv,
            "device": str(device),
            "precision": precision,
            "params": model.num_params(),
            "params_non_embedding": model.num_params(non_embedding=True),
            "run_dir": str(run_dir),
            "torch": torch.__version__,
            "resumed_from": state["path"] if state else None,
        },
    }
    trainer = Trainer(config, model, splits, device, precision, logger, run_dir)
    if state is not None:
        trainer.restore(state)
    logger.start(metadata, total_steps=t.max_steps, first_step=trainer.step)
    failed = True
    try:
        trainer.train()
        summary = trainer.final_evaluation()
        failed = False
    finally:
        logger.finish(failed=failed)
    return summary


class Trainer:
    """Holds the state of one training run and steps it."""

    def __init__(
        self,
        config: ExperimentConfig,
        model: GPT,
        splits: Splits,
        device: torch.device,
        precision: str,
        logger: tracking.Logger,
        run_dir: Path,
    ) -> None:
        t = config.train
        self.config, self.model, self.splits, self.device = config, model, splits, device
        self.logger, self.run_dir = logger, run_dir
        self.precision = precision
        self.autocast = autocast_for(precision, device)
        self.block_size = config.model.block_size
        self.sampler = data.BlockSampler(splits.train.tokens, self.block_size, t.seed)
        self.accum_steps = t.batch_size // t.micro_batch_size
        # Evaluation keeps no activations for backward, so it can take bigger batches (and bigger matmuls).
        self.eval_batch_size = max(t.micro_batch_size, 8192 // self.block_size)
        self.optimizer = build_optimizer(model, config, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.compiled = torch.compile(model) if t.compile else model
        self.step = 0
        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self.skipped_steps = 0
        self.tokens_per_step = t.batch_size * self.block_size
        self.flops_per_token = model.flops_per_token(self.block_size)
        self.peak_flops = (
            perf.measure_matmul_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
            if device.type != "mps"
            else math.nan
        )
        self.train_seconds = 0.0

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "samples_seen": self.step * self.config.train.batch_size,
            "config": self.config.to_dict(),
            "model_config": dataclasses.asdict(self.config.model),
            "wandb_run_id": self.logger.run_id,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{state['path']} does not fit this model: {e}") from None
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = state["step"]
        self.best_val_loss, self.best_step = state["best_val_loss"], state["best_step"]
        self.skipped_steps = state["skipped_steps"]
        self.train_seconds = state["train_seconds"]

    def save(self) -> Path:
        return checkpoint.save_checkpoint(
            self.run_dir, self.state_dict(), self.config.train.keep_last, self.best_step
        )

    def last_good_checkpoint(self) -> str:
        found = checkpoint.list_checkpoints(self.run_dir)
        return str(found[-1][1]) if found else "none (no checkpoint was written yet)"

    # -- one optimizer step --------------------------------------------------------------------------------

    def train_step(self, want_layer_norms: bool = False) -> tuple[float, float, dict[str, float]]:
        """Accumulate gradients over the micro-batches of one step, clip, and update; return the mean loss,
        the gradient norm before clipping, and (if asked) each block's gradient norm before clipping."""
        t = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.config)
        loss_sum = torch.zeros((), device=self.device)
        first_sample = self.step * t.batch_size
        for micro in range(self.accum_steps):
            x, y = self.sampler.batch(first_sample + micro * t.micro_batch_size, t.micro_batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast():
                _, loss = self.compiled(x, y)
            self.scaler.scale(loss / self.accum_steps).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        layer_norms = self.layer_grad_norms() if want_layer_norms else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf)
        loss = (loss_sum / self.accum_steps).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm.item())):
            self.optimizer.zero_grad(set_to_none=True)
            if not t.skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
                    f"{self.step + 1} (loss {loss}, grad norm {grad_norm.item()}); stopped without saving. "
                    f"Last good checkpoint: {self.last_good_checkpoint()}. Lower --lr, raise --warmup_steps, "
                    "or pass --skip_nonfinite=true to skip such steps"
                )
            self.skipped_steps += 1
            self.scaler.update()
            return loss, grad_norm.item(), layer_norms
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm.item(), layer_norms

    def layer_grad_norms(self) -> dict[str, float]:
        return {
            f"grad_norm/layer_{i}": torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in block.parameters() if p.grad is not None])
            ).item()
            for i, block in enumerate(self.model.transformer.h)
        }

    # -- the loop ------------------------------------------------------------------------------------------

    def train(self) -> None:
        t = self.config.train
        window_start, window_steps = time.perf_counter(), 0
        while self.step < t.max_steps:
            step_start = time.perf_counter()
            will_log = (self.step + 1) % t.log_interval == 0 or self.step + 1 == t.max_steps
            loss, grad_norm, layer_norms = self.train_step(
                want_layer_norms=t.log_layer_grad_norms and will_log
            )
            self.step += 1
            window_steps += 1
            self.train_seconds += time.perf_counter() - step_start
            if will_log:
                elapsed = time.perf_counter() - window_start
                tokens_per_sec = window_steps * self.tokens_per_step / elapsed
                self.logger.log(
                    {
                        "train/loss": loss,
                        "train/lr": lr_at(self.step - 1, self.config),
                        "train/grad_norm": grad_norm,
                        "train/tokens": self.step * self.tokens_per_step,
                        "perf/tokens_per_sec": tokens_per_sec,
                        "perf/step_ms": 1000 * elapsed / window_steps,
                        "perf/mfu": tokens_per_sec * self.flops_per_token / self.peak_flops,
                        "perf/peak_mem_mb": perf.peak_memory_mb(self.device),
                        **layer_norms,
                    },
                    step=self.step,
                )
                window_start, window_steps = time.perf_counter(), 0
            if t.eval_interval and self.step % t.eval_interval == 0 and self.step < t.max_steps:
                self._periodic_eval()
                window_start = time.perf_counter()
            if t.ckpt_interval and self.step % t.ckpt_interval == 0 and self.step < t.max_steps:
                self.save()
                window_start = time.perf_counter()

    def _evaluate(
        self, split: data.TokenSplit, max_batches: int = 0, stride: int | None = None
    ) -> EvalResult:
        return evaluate(
            self.compiled,
            split.tokens,
            self.block_size,
            self.eval_batch_size,
            self.device,
            stride=stride,
            num_bytes=split.num_bytes,
            max_batches=max_batches,
            autocast=self.autocast,
        )

    def _periodic_eval(self) -> None:
        result = self._evaluate(self.splits.val, max_batches=self.config.train.eval_batches)
        if result.loss < self.best_val_loss:
            self.best_val_loss, self.best_step = result.loss, self.step
        self.logger.log(result.as_metrics("val"), step=self.step)

    def final_evaluation(self) -> dict[str, Any]:
        t = self.config.train
        val = self._evaluate(self.splits.val)
        if val.loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val.loss, self.step
        self.save()
        metrics = val.as_metrics("val")
        summary: dict[str, Any] = {**metrics, "val/describe": val.describe()}
        if self.splits.test is not None:
            test = self._evaluate(self.splits.test)
            summary.update(test.as_metrics("test"))
            summary["test/describe"] = test.describe()
        if t.eval_stride:
            for name, split in (("val", self.splits.val), ("test", self.splits.test)):
                if split is not None:
                    sliding = self._evaluate(split, stride=t.eval_stride)
                    summary.update(sliding.as_metrics(f"{name}_sliding"))
        self.logger.log(metrics, step=self.step)
        summary.update(
            {
                "step": self.step,
                "tokens": self.step * self.tokens_per_step,
                "train_seconds": self.train_seconds,
                "tokens_per_sec": self.step * self.tokens_per_step / max(self.train_seconds, 1e-9),
                "best_val_loss_periodic": self.best_val_loss,
                "best_step": self.best_step,
                "skipped_steps": self.skipped_steps,
                "run_dir": str(self.run_dir),
            }
        )
        self.logger.summary(summary)
        return summary
