"""What the network does inside, for explaining why a variant trains or stalls (pre-LN versus post-LN).

Per block ``i``, measured on a forward pass of a training step:

- ``diag/ln_input_rms/layer_<i>``: RMS of the first LayerNorm's input (the residual stream for pre-LN, the
  sum ``x + attn(x)`` for post-LN). LayerNorm's gradient scales with its inverse: a large input shrinks the
  gradient that flows through it.
- ``diag/attn_ratio/layer_<i>``, ``diag/mlp_ratio/layer_<i>``: RMS of the branch's output over the RMS of the
  block's input, i.e. how much each branch changes the residual stream it is added to.

Hooks read the activations; the model's code is not touched, and nothing is measured unless asked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _rms(x: torch.Tensor) -> float:
    return x.detach().float().pow(2).mean().sqrt().item()


class BlockDiagnostics:
    """Forward hooks on every block of a ``GPT``; ``measure()`` arms them for the next forward pass."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.armed = False
        self.values: dict[str, float] = {}
        self._block_input: dict[int, float] = {}
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._on_block_input(i))
            block.ln_1.register_forward_pre_hook(self._on_ln_input(i))
            block.attn.register_forward_hook(self._on_branch("attn", i))
            block.mlp.register_forward_hook(self._on_branch("mlp", i))

    def measure(self) -> None:
        """Record forward passes until ``take()``: a later pass overwrites an earlier one."""
        self.armed, self.values = True, {}

    def take(self) -> dict[str, float]:
        """The recorded values (empty if nothing was measured); disarms."""
        values, self.armed, self.values = self.values, False, {}
        return values

    def _on_block_input(self, i: int):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.armed:
                self._block_input[i] = _rms(args[0])

        return hook

    def _on_ln_input(self, i: int):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.armed:
                self.values[f"diag/ln_input_rms/layer_{i}"] = _rms(args[0])

        return hook

    def _on_branch(self, name: str, i: int):
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> None:
            if self.armed:
                self.values[f"diag/{name}_ratio/layer_{i}"] = _rms(output) / max(self._block_input[i], 1e-12)

        return hook
