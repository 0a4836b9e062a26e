"""Perplexity over whole splits, non-overlapping or sliding-window, and bits per byte.

Perplexity is ``exp(mean next-token NLL)`` with every token of the split but the first scored exactly once.
Non-overlapping windows give early tokens of each window little context; a sliding window with stride ``s``
gives every scored token at least ``block_size - s`` tokens of context (the usual Hugging Face recipe), so
its perplexity is lower and closer to what the model can do. Always report the context and the stride.

Scoring a finished run's final checkpoint on a whole split, with a bootstrap interval over blocks of the
split (the uncertainty of one run's score from the finite split, not from the seed):

    python -m minigpt.evaluate RUN_DIR [--split test] [--bootstrap 2000] [--into-summary]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minigpt import distributed
from minigpt.data import eval_windows


@dataclass
class EvalResult:
    loss: float
    """Mean NLL per token, in nats."""
    tokens: int
    """Tokens scored."""
    num_bytes: int | None
    context: int
    stride: int
    block_nll: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    """Summed NLL of each evaluation batch this process scored (contiguous blocks of the split), in order."""
    block_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    """Tokens scored in each of those batches."""

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float | None:
        if not self.num_bytes:
            return None
        return self.loss * self.tokens / math.log(2) / self.num_bytes

    def as_metrics(self, prefix: str) -> dict[str, float]:
        metrics = {
            f"{prefix}/loss": self.loss,
            f"{prefix}/ppl": self.ppl,
            f"{prefix}/tokens": self.tokens,
            f"{prefix}/context": self.context,
            f"{prefix}/stride": self.stride,
        }
        if self.bits_per_byte is not None:
            metrics[f"{prefix}/bpb"] = self.bits_per_byte
        return metrics

    def describe(self) -> str:
        bpb = f", {self.bits_per_byte:.4f} bits/byte" if self.bits_per_byte is not None else ""
        return (
            f"ppl {self.ppl:.2f} (loss {self.loss:.4f}, {self.tokens:,} tokens, context {self.context}, "
            f"stride {self.stride}{bpb})"
        )


def _batches(windows: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int):
    """Stack windows of equal length into batches; the last, shorter window goes alone."""
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for inputs, targets in windows:
        if pending and (len(inputs) != len(pending[0][0]) or len(pending) == batch_size):
            yield torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])
            pending = []
        pending.append((inputs, targets))
    if pending:
        yield torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    stride: int | None = None,
    num_bytes: int | None = None,
    max_batches: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Score ``tokens`` with ``model``, whose ``forward(idx, targets)`` returns the mean loss over targets
    that are not -100. ``max_batches`` > 0 stops early (a cheap estimate for periodic evaluation).

    With ``world_size`` > 1 every process of the group must call this: process ``rank`` scores every
    ``world_size``-th batch, and the sums are added over processes, so each returns the whole result."""
    was_training = model.training
    model.eval()
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    block_nll: list[float] = []
    block_tokens: list[int] = []
    for i, (inputs, targets) in enumerate(_batches(eval_windows(tokens, block_size, stride), batch_size)):
        if max_batches and i >= max_batches:
            break
        if i % world_size != rank:
            continue
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast():
            _, loss = model(inputs, targets)
        count = int((targets != -100).sum())
        nll = loss.detach().double().cpu() * count
        total_nll += nll
        total_tokens += count
        block_nll.append(float(nll))
        block_tokens.append(count)
    model.train(was_training)
    if world_size > 1:
        totals = torch.stack([total_nll, torch.tensor(float(total_tokens), dtype=torch.float64)])
        totals = distributed.all_reduce_sum(totals.to(device)).cpu()
        total_nll, total_tokens = totals[0], int(totals[1])
    if total_tokens == 0:
        raise ValueError("nothing to evaluate: the split has fewer than two tokens")
    return EvalResult(
        loss=float(total_nll / total_tokens),
        tokens=total_tokens,
        num_bytes=num_bytes if not max_batches else None,
        context=block_size,
        stride=stride or block_size,
        block_nll=np.asarray(block_nll),
        block_tokens=np.asarray(block_tokens, dtype=np.int64),
    )


def bootstrap_interval(
    result: EvalResult, samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean loss from resampling the scored blocks with replacement.

    Blocks are whole evaluation batches (thousands of contiguous tokens), long enough that the losses of
    neighbouring blocks are nearly independent. The interval says how much the score would move on another
    split of the same size from the same distribution; it says nothing about the seed, which varies more."""
    n = len(result.block_nll)
    if n < 2:
        raise ValueError("a bootstrap needs at least two scored blocks; score more of the split")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(samples, n))
    losses = result.block_nll[picks].sum(axis=1) / result.block_tokens[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(losses, [tail, 100 - tail])
    return float(low), float(high)


def score_run(
    run_dir: str | Path, split: str = "test", samples: int = 2000, batch_size: int = 32
) -> dict[str, float]:
    """Score a run's last checkpoint on the whole ``split`` at its context, with a bootstrap interval; the
    figures are keyed ``whole_<split>/...``."""
    from minigpt import data
    from minigpt.checkpoint import build_model, data_config, list_checkpoints, load_checkpoint

    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (ckpt-NNNNNNN.pt) to score")
    state = load_checkpoint(found[-1][1])
    model, config = build_model(state), data_config(state)
    tokens = data.load_split(config, split, data.load_tokenizer(config), show_progress=False)
    result = evaluate(model, tokens.tokens, model.config.block_size, batch_size, num_bytes=tokens.num_bytes)
    low, high = bootstrap_interval(result, samples)
    prefix = f"whole_{split}"
    return {
        **result.as_metrics(prefix),
        f"{prefix}/loss_low": low,
        f"{prefix}/loss_high": high,
        f"{prefix}/blocks": len(result.block_nll),
        f"{prefix}/step": found[-1][0],
    }


def main(argv: list[str] | None = None) -> int:
    from minigpt.checkpoint import CheckpointError
    from minigpt.data import DataError
    from minigpt.storage import atomic_write_json

    parser = argparse.ArgumentParser(prog="python -m minigpt.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run directory with at least one checkpoint")
    parser.add_argument("--split", default="test", help="the split to score whole (default: test)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the blocks")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per evaluation batch (a block)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--into-summary", action="store_true", help="add the figures to the run's summary.json as well"
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        parser.error(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from minigpt import perf

    perf.keep_freed_memory()  # as training does: without it a third of the time goes to page faults
    try:
        figures = score_run(args.run_dir, args.split, args.bootstrap, args.batch_size)
    except (FileNotFoundError, ValueError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prefix = f"whole_{args.split}"
    print(
        f"{args.run_dir}: {args.split} loss {figures[prefix + '/loss']:.4f} "
        f"[{figures[prefix + '/loss_low']:.4f}, {figures[prefix + '/loss_high']:.4f}] (95% bootstrap over "
        f"{figures[prefix + '/blocks']} blocks), ppl {figures[prefix + '/ppl']:.2f}, "
        f"{figures[prefix + '/tokens']:,} tokens"
    )
    if args.into_summary:
        summary_path = Path(args.run_dir) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        atomic_write_json(summary_path, {**summary, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
