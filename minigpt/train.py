"""The training loop, written out: AdamW, warmup + cosine, accumulation, clipping, mixed precision,
periodic evaluation, atomic checkpoints and exact resume.

``run(config)`` is the whole job: data, model, loop, final evaluation. The loop reports to a
``tracking.Logger`` and knows nothing of where the numbers end up.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from minigpt import checkpoint, data, distributed, lora, perf, tracking
from minigpt.config import ConfigError, ExperimentConfig, TrainConfig, flatten
from minigpt.evaluate import EvalResult, evaluate
from minigpt.model import GPT, GPTConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


# Keys that may differ between a checkpoint's config and the config a run is resumed with: they change how
# the run is carried out or recorded, not what it computes.
RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.eval_interval",
    "train.eval_batches",
    "train.eval_stride",
    "train.eval_max_tokens",
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


def lr_at(step: int, config: ExperimentConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    min_lr = t.lr * t.min_lr_ratio
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
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
    a, b = flatten(saved), flatten(current)
    differing = [
        k
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("log.")
    ]
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
    if replaced:
        print(f"init_from: the architecture comes from the base; replaced model.{', model.'.join(replaced)}")
    return dataclasses.replace(config, model=model)


def load_base(init_from: str) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The architecture and weights to start from: a MiniGPT checkpoint file or run directory, else a Hugging
    Face GPT-2 directory or Hub name."""
    path = Path(init_from).expanduser()
    if path.is_file() or checkpoint.list_checkpoints(path):
        state = checkpoint.load_checkpoint(path)
        if any(key.endswith(".lora_A") for key in state["model"]):
            raise ConfigError(
                f"init_from={init_from!r} is a LoRA fine-tune (its adapters are in its adapter.pt); "
                "init_from needs the full model it was trained from"
            )
        return GPTConfig(**state["model_config"]), state["model"]
    from minigpt.hf import from_hf

    try:
        base = from_hf(init_from)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"init_from={init_from!r} is neither a MiniGPT checkpoint or run directory nor a loadable "
            f"Hugging Face GPT-2: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return base.config, base.state_dict()


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class Splits:
    train: data.TokenSplit
    val: data.TokenSplit
    test: data.TokenSplit | None


def load_splits(config: ExperimentConfig, tokenizer) -> Splits:
    load = lambda split: data.load_split(config.data, split, tokenizer)  # noqa: E731
    train, val = load("train"), load("val")  # train first: a missing dataset is reported by its train split
    test = load("test") if config.data.dataset != "text" or config.data.test_file else None
    return Splits(train=train, val=val, test=test)


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
    checkpoint file to continue from.

    Under torchrun every process calls this, and together they train one model data-parallel; only rank 0
    records the run. The process group lives exactly as long as this call, also when it fails.
    """
    device = distributed.setup(perf.pick_device(config.train.device))
    try:
        return _run(config, device, resume, command)
    finally:
        distributed.teardown()


def _run(
    config: ExperimentConfig, device: torch.device, resume: str | None, command: list[str] | None
) -> dict[str, Any]:
    if config.lora.rank and not config.init_from:
        raise ConfigError("lora.rank > 0 adapts trained weights: name them with --init_from=RUN_DIR|CKPT|HF")
    state = None
    if resume is not None:
        state = checkpoint.load_checkpoint(resume)
        if config.init_from:
            config = adopt_base_architecture(config, GPTConfig(**state["model_config"]))
        check_resume_compatible(state["config"], config.to_dict())
        run_dir = Path(state["path"]).parent
    else:
        run_dir = distributed.broadcast_object(resolve_run_dir(config))  # rank 0's timestamp names it
        if checkpoint.list_checkpoints(run_dir):
            raise ConfigError(
                f"run directory {run_dir} already has checkpoints: continue it with "
                f"--resume={run_dir}, or choose another --run_name"
            )

    base_weights = None
    if config.init_from and state is None:
        base_config, base_weights = load_base(config.init_from)
        config = adopt_base_architecture(config, base_config)

    t = config.train
    accumulation_steps(t, distributed.world_size())  # a batch that does not split fails before any data loads
    if t.threads:
        torch.set_num_threads(t.threads)
    precision = perf.pick_precision(t.precision, device)

    tokenizer = data.load_tokenizer(config.data)
    if len(tokenizer) > config.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    with distributed.local_main_first():  # one process per machine builds the token caches; the rest read
        splits = load_splits(config, tokenizer)

    torch.manual_seed(t.seed)
    model = GPT(config.model).to(device)
    if base_weights is not None:
        model.load_state_dict(base_weights)
    if config.lora.rank:
        lora.apply_lora(model, config.lora)  # freezes the base
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.init_from:
        print(
            f"parameters: {trainable:,} trainable of {model.num_params():,} "
            f"({100 * trainable / model.num_params():.2f}%), starting from {config.init_from}"
        )
    if distributed.rank() > 0:
        torch.manual_seed(t.seed + distributed.rank())  # each process draws its own dropout masks
    if distributed.is_main():
        logger = make_logger(config, run_dir, state.get("wandb_run_id") if state else None)
    else:
        logger = tracking.Logger()
    metadata = {
        **config.to_dict(),
        "_run": {
            "git_commit": git_commit(),
            "command": command or sys.argv,
            "device": str(device),
            "world_size": distributed.world_size(),
            "precision": precision,
            "params": model.num_params(),
            "params_non_embedding": model.num_params(non_embedding=True),
            "params_trainable": trainable,
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
        if config.init_from and state is None:
            trainer.evaluate_before_training()
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
        self.autocast = perf.autocast_for(precision, device)
        self.block_size = config.model.block_size
        self.sampler = data.BlockSampler(splits.train.tokens, self.block_size, t.seed)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.accum_steps = accumulation_steps(t, self.world_size)
        # Evaluation keeps no activations for backward, so it can take bigger batches (and bigger matmuls).
        self.eval_batch_size = max(t.micro_batch_size, 8192 // self.block_size)
        self.optimizer = build_optimizer(model, config, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        # DDP inside torch.compile (not the reverse) lets the compiler overlap the all-reduce with backward.
        self.data_parallel = distributed.wrap(model, device)
        self.compiled = torch.compile(self.data_parallel) if t.compile else self.data_parallel
        self.step = 0
        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self.skipped_steps = 0
        self.tokens_per_step = t.batch_size * self.block_size
        self.flops_per_token = model.flops_per_token(self.block_size)
        self.peak_flops = self.world_size * (  # of the whole job, as tokens per second count every process
            perf.measure_matmul_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
            if device.type != "mps"
            else math.nan
        )
        self.train_seconds = 0.0
        self.val_before: dict[str, Any] = {}

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rng_by_rank = distributed.gather_objects(rng)
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_by_rank[0],
            "rng_by_rank": rng_by_rank,
            "samples_seen": self.step * self.config.train.batch_size,
            "config": self.config.to_dict(),
            "model_config": dataclasses.asdict(self.config.model),
            "wandb_run_id": self.logger.run_id,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "val_before": self.val_before,
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{state['path']} does not fit this model: {e}") from None
        self.scaler.load_state_dict(state["scaler"])
        # A process the checkpoint did not have (a larger world) keeps the dropout stream it was seeded with.
        rng_by_rank = state.get("rng_by_rank", [state["rng"]])
        if self.rank < len(rng_by_rank):
            rng = rng_by_rank[self.rank]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = state["step"]
        self.best_val_loss, self.best_step = state["best_val_loss"], state["best_step"]
        self.skipped_steps = state["skipped_steps"]
        self.train_seconds = state["train_seconds"]
        self.val_before = state.get("val_before", {})

    def save(self) -> Path:
        state = self.state_dict()  # every process takes part: it gathers their random states
        path = checkpoint.checkpoint_path(self.run_dir, self.step)
        if distributed.is_main():
            checkpoint.save_checkpoint(self.run_dir, state, self.config.train.keep_last, self.best_step)
            if self.config.lora.rank:
                # The adapters alone, small enough to share; the checkpoint above holds everything for resume.
                config = self.config
                lora.save_adapter(self.adapter_path, self.model, config.lora, config.init_from, self.step)
        distributed.barrier()  # on return the files are in place, for every process
        return path

    @property
    def adapter_path(self) -> Path:
        return self.run_dir / "adapter.pt"

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
            # Each micro-step takes the next micro_batch_size * world_size samples, a slice per process, so
            # the step's samples do not depend on how many processes share them.
            offset = (micro * self.world_size + self.rank) * t.micro_batch_size
            x, y = self.sampler.batch(first_sample + offset, t.micro_batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with distributed.gradient_sync(self.data_parallel, enabled=micro == self.accum_steps - 1):
                with self.autocast():
                    _, loss = self.compiled(x, y)
                self.scaler.scale(loss / self.accum_steps).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        layer_norms = self.layer_grad_norms() if want_layer_norms else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf).item()
        # The mean over every process: the same number everywhere, so all processes stop or skip together.
        loss = (distributed.all_reduce_sum(loss_sum) / (self.accum_steps * self.world_size)).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            if not t.skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
                    f"{self.step + 1} (loss {loss}, grad norm {grad_norm}); stopped without saving. "
                    f"Last good checkpoint: {self.last_good_checkpoint()}. Lower --lr, raise --warmup_steps, "
                    "or pass --skip_nonfinite=true to skip such steps"
                )
            self.skipped_steps += 1
            self.scaler.update()
            return loss, grad_norm, layer_norms
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, layer_norms

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
        window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
        while self.step < t.max_steps:
            step_start = time.perf_counter()
            will_log = (self.step + 1) % t.log_interval == 0 or self.step + 1 == t.max_steps
            loss, grad_norm, layer_norms = self.train_step(
                want_layer_norms=t.log_layer_grad_norms and will_log
            )
            self.step += 1
            window_steps += 1
            window_loss += loss
            self.train_seconds += time.perf_counter() - step_start
            if will_log:
                elapsed = time.perf_counter() - window_start
                tokens_per_sec = window_steps * self.tokens_per_step / elapsed
                self.logger.log(
                    {
                        "train/loss": window_loss / window_steps,  # one step's loss alone is noisy
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
                window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
            if t.eval_interval and self.step % t.eval_interval == 0 and self.step < t.max_steps:
                self._periodic_eval()
                window_start = time.perf_counter()
            if t.ckpt_interval and self.step % t.ckpt_interval == 0 and self.step < t.max_steps:
                self.save()
                window_start = time.perf_counter()

    def _evaluate(
        self, split: data.TokenSplit, max_batches: int = 0, stride: int | None = None, max_tokens: int = 0
    ) -> EvalResult:
        tokens = split.tokens[:max_tokens] if max_tokens else split.tokens
        return evaluate(
            self.compiled,
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

    def evaluate_before_training(self) -> None:
        """Score the starting weights on the validation tokens the final evaluation scores, to compare."""
        result = self._evaluate(self.splits.val, max_tokens=self.config.train.eval_max_tokens)
        self.val_before = {**result.as_metrics("val_before"), "val_before/describe": result.describe()}
        self.logger.log({**result.as_metrics("val_before"), "train/tokens": 0}, step=self.step)
        print(f"before training: val {result.describe()}")

    def _periodic_eval(self) -> None:
        result = self._evaluate(self.splits.val, max_batches=self.config.train.eval_batches)
        if result.loss < self.best_val_loss:
            self.best_val_loss, self.best_step = result.loss, self.step
        self.logger.log(
            {**result.as_metrics("val"), "train/tokens": self.step * self.tokens_per_step}, step=self.step
        )

    def final_evaluation(self) -> dict[str, Any]:
        t = self.config.train
        val = self._evaluate(self.splits.val, max_tokens=t.eval_max_tokens)
        if val.loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val.loss, self.step
        self.save()
        metrics = val.as_metrics("final_val")
        summary: dict[str, Any] = {**metrics, "final_val/describe": val.describe(), **self.val_before}
        if self.config.lora.rank:
            summary["adapter_bytes"] = self.adapter_path.stat().st_size
        if self.splits.test is not None:
            test = self._evaluate(self.splits.test, max_tokens=t.eval_max_tokens)
            summary.update(test.as_metrics("final_test"))
            summary["final_test/describe"] = test.describe()
        if t.eval_stride:
            for name, split in (("val", self.splits.val), ("test", self.splits.test)):
                if split is not None:
                    sliding = self._evaluate(split, stride=t.eval_stride, max_tokens=t.eval_max_tokens)
                    summary.update(sliding.as_metrics(f"final_{name}_sliding"))
        self.logger.log({**metrics, "train/tokens": self.step * self.tokens_per_step}, step=self.step)
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
