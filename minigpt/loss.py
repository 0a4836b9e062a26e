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


def _chunk_rows(vocab_size: int, budget_bytes: int = 32 * 2**20) -> int:
    """Rows per chunk so that one chunk of float32 logits fits in ``budget_bytes``."""
    return max(16, budget_bytes // (4 * vocab_size))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # x (N, C), weight (V, C), targets (N,). Under autocast the matmuls run in its dtype.
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        rows = _chunk_rows(weight.size(0))
        for start in range(0, x.size(0), rows):
            xc, tc = x[start : start + rows], targets[start : start + rows]
            valid = tc != IGNORE_INDEX
            safe_targets = tc.clamp(min=0)
            raw = xc @ weight.t()  # (n, V): the only vocabulary-wide tensor, one chunk at a time
            logits = raw.float()
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, safe_targets[:, None]).squeeze(1)
            loss_sum += ((lse - target_logit) * valid).sum()
            # d(sum of losses)/d(logits) = softmax - onehot, for the rows that count; computed in place.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(tc), device=tc.device), safe_targets] -= 1
            grad_logits *= valid[:, None]
            grad_logits = grad_logits.to(raw.dtype)  # the matmuls below run at the forward's precision
            grad_x[start : start + rows] = grad_logits @ weight
            grad_w += grad_logits.t() @ xc
        ctx.save_for_backward(grad_x, grad_w, n_valid)
        ctx.weight_dtype = weight.dtype
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_x, grad_w, n_valid = ctx.saved_tensors
        scale = grad_output / n_valid
        return grad_x * scale.to(grad_x.dtype), (grad_w * scale).to(ctx.weight_dtype), None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (``-100`` ignored), in float32.

    ``x`` is ``(..., C)``, ``weight`` ``(V, C)``, ``targets`` ``(...)``. Equal to
    ``F.cross_entropy((x @ weight.T).float().flatten(0, -2), targets.flatten())`` in value and gradient,
    with peak memory of one chunk of logits instead of all of them.
    """
    x2, t1 = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x2, weight, t1)
    # Evaluation: the same chunked loop without gradients.
    n_valid = (t1 != IGNORE_INDEX).sum().clamp(min=1)
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    rows = _chunk_rows(weight.size(0))
    for start in range(0, x2.size(0), rows):
        xc, tc = x2[start : start + rows], t1[start : start + rows]
        logits = (xc @ weight.t()).float()
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, tc.clamp(min=0)[:, None]).squeeze(1)
        total += (nll * (tc != IGNORE_INDEX)).sum()
    return total / n_valid
