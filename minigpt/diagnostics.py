"""What the network does inside, for explaining why a variant trains or stalls (pre-LN versus post-LN).

Per block ``i``, from the last forward pass of a logged training step:

- ``diag/ln_input_rms/layer_<i>``: RMS of the first LayerNorm's input (the residual stream for pre-LN, the
  sum ``x + attn(x)`` for post-LN). LayerNorm's gradient scales with its inverse: a large input shrinks the
  gradient that flows through it.
- ``diag/attn_ratio/layer_<i>``, ``diag/mlp_ratio/layer_<i>``: RMS of the branch's output over the RMS of the
  block's input, i.e. how much each branch changes the residual stream it is added to.

Hooks read the activations (a few reductions per block and forward pass, read only on logged steps); the
model's code is not touched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt()  # a 0-d tensor: no device sync until it is read


class BlockDiagnostics:
    """Forward hooks on every block of a ``GPT`` that keep the last forward pass's figures; calling it (as
    the trainer does on a logged step, after the step's forward and backward) returns them as floats."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self._values: dict[str, torch.Tensor] = {}
        self._block_input: dict[int, torch.Tensor] = {}
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._on_block_input(i))
            block.ln_1.register_forward_pre_hook(self._on_ln_input(i))
            block.attn.register_forward_hook(self._on_branch("attn", i))
            block.mlp.register_forward_hook(self._on_branch("mlp", i))

    def __call__(self, _model: nn.Module) -> dict[str, float]:
        return {key: value.item() for key, value in self._values.items()}

    def _on_block_input(self, i: int):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self._block_input[i] = _rms(args[0])

        return hook

    def _on_ln_input(self, i: int):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self._values[f"diag/ln_input_rms/layer_{i}"] = _rms(args[0])

        return hook

    def _on_branch(self, name: str, i: int):
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> None:
            self._values[f"diag/{name}_ratio/layer_{i}"] = _rms(output) / self._block_input[i].clamp(
                min=1e-12
            )

        return hook
