"""Perplexity over whole splits, non-overlapping or sliding-window, and bits per byte.

Perplexity is ``exp(mean next-token NLL)`` with every token of the split but the first scored exactly once.
Non-overlapping windows give early tokens of each window little context; a sliding window with stride ``s``
gives every scored token at least ``block_size - s`` tokens of context (the usual Hugging Face recipe), so
its perplexity is lower and closer to what the model can do. Always report the context and the stride.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    for i, (inputs, targets) in enumerate(_batches(eval_windows(tokens, block_size, stride), batch_size)):
        if max_batches and i >= max_batches:
            break
        if i % world_size != rank:
            continue
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast():
            _, loss = model(inputs, targets)
        count = int((targets != -100).sum())
        total_nll += loss.detach().double().cpu() * count
        total_tokens += count
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
    )
