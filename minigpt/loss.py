"""The language-model head and its cross-entropy, fused and chunked so the full logits never exist.

With GPT-2's 50,257-token vocabulary the logits of a batch, ``(B*T, V)`` in float32, dwarf every other
activation: 400 MB for 2,048 tokens, then as much again for their softmax and their gradient. Here the
rows are processed a chunk at a time, and because the loss is a scalar, each chunk's gradient
``softmax - onehot`` is known at once: it is turned into the gradients of the features and of the head
weight right away and the chunk's logits are dropped. Backward only scales the stored gradients.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# Bytes of float32 logits per chunk. Bigger chunks make the three head matmuls more efficient; smaller
# ones use less memory. 64 MB (about 330 rows at V = 50,257) measured best at the seed config on CPU
# (benchmarks/README.md, performance log).
CHUNK_BYTES = 64 * 2**20
# Evaluation has no matmuls to amortise, only the exponentials over each chunk: chunks small enough to stay
# in cache scored a whole split 1.5x faster than 64 MB ones (benchmarks/chunk_size.log), where training
# steps lost speed with them.
EVAL_CHUNK_BYTES = 16 * 2**20


def _chunk_rows(vocab_size: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk of float32 logits fits in ``budget_bytes``."""
    return max(16, budget_bytes // (4 * vocab_size))


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """Softmax, loss and weight gradient run in float32, or in float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def _nll_in_place(
    logits: torch.Tensor, targets: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row negative log-likelihood of ``logits`` (n, V) at ``targets`` (n,), ignored rows 0, over the
    first ``n_classes`` columns (the rest are padding: probability 0, so they get no gradient either).

    To spare a vocabulary-wide tensor and a second exponential, ``logits`` is overwritten with
    ``exp(logits - row max)``, which is returned with its row sums for the gradient.
    """
    logits[:, n_classes:] = float("-inf")
    valid = targets != IGNORE_INDEX
    safe_targets = targets.clamp(min=0)
    row_max = logits.amax(dim=1, keepdim=True)
    target_logit = logits.gather(1, safe_targets[:, None])
    exp_logits = logits.sub_(row_max).exp_()
    row_sum = exp_logits.sum(dim=1, keepdim=True)
    nll = (row_max + row_sum.log() - target_logit).squeeze(1) * valid
    return nll, exp_logits, row_sum


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        n_classes: int,
    ) -> torch.Tensor:
        # x (N, C), weight (V, C), bias (V,) or None, targets (N,). Under autocast matmuls run in its dtype.
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        acc_dtype = _accumulation_dtype(x)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device)
        loss_sum = torch.zeros((), dtype=acc_dtype, device=x.device)
        rows = _chunk_rows(weight.size(0))
        for start in range(0, x.size(0), rows):
            xc, tc = x[start : start + rows], targets[start : start + rows]
            raw = xc @ weight.t()  # (n, V): the only vocabulary-wide tensor, one chunk at a time
            logits = raw.to(acc_dtype) if bias is None else raw.to(acc_dtype).add_(bias)
            nll, exp_logits, row_sum = _nll_in_place(logits, tc, n_classes)
            loss_sum += nll.sum()
            # d(sum of losses)/d(logits) = softmax - onehot on the rows that count; built in place.
            valid = (tc != IGNORE_INDEX).to(exp_logits.dtype)
            grad_logits = exp_logits.mul_(valid[:, None] / row_sum)
            grad_logits[torch.arange(len(tc), device=tc.device), tc.clamp(min=0)] -= valid
            if grad_b is not None:
                grad_b += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(raw.dtype)  # the matmuls below run at the forward's precision
            grad_x[start : start + rows] = grad_logits @ weight
            if grad_logits.dtype == grad_w.dtype:
                grad_w.addmm_(grad_logits.t(), xc)  # accumulates without a (V, C) temporary
            else:
                grad_w += grad_logits.t() @ xc
        ctx.save_for_backward(grad_x, grad_w, grad_b, n_valid)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_x, grad_w, grad_b, n_valid = ctx.saved_tensors
        scale = grad_output / n_valid
        grad_x = grad_x * scale.to(grad_x.dtype)
        grad_w = (grad_w * scale).to(ctx.weight_dtype)
        grad_b = None if grad_b is None else (grad_b * scale).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    n_classes: int | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``targets`` (``-100`` ignored), in float32
    (float64 for float64 inputs), over the first ``n_classes`` rows of ``weight`` (default: all of them; the
    rest are padding, never predicted).

    ``x`` is ``(..., C)``, ``weight`` ``(V, C)``, ``bias`` ``(V,)`` or None, ``targets`` ``(...)``. Equal to
    ``F.cross_entropy(F.linear(x, weight, bias).float().flatten(0, -2), targets.flatten())`` in value and
    gradient (up to summation order), with peak memory of one chunk of logits instead of all of them.
    """
    x2, t1 = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    n_classes = weight.size(0) if n_classes is None else n_classes
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        return _LinearCrossEntropy.apply(x2, weight, bias, t1, n_classes)
    # Evaluation: the same chunked loop without gradients.
    n_valid = (t1 != IGNORE_INDEX).sum().clamp(min=1)
    total = torch.zeros((), dtype=_accumulation_dtype(x), device=x.device)
    rows = _chunk_rows(weight.size(0), EVAL_CHUNK_BYTES)
    for start in range(0, x2.size(0), rows):
        logits = (x2[start : start + rows] @ weight.t()).to(total.dtype)
        if bias is not None:
            logits += bias
        total += _nll_in_place(logits, t1[start : start + rows], n_classes)[0].sum()
    return total / n_valid
