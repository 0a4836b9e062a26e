"""LoRA: fine-tune a frozen GPT through low-rank updates of chosen linear layers (Hu et al., 2021).

A frozen weight W (out, in) is adapted as W + (alpha / r) * B @ A, where A is (r, in), B is (out, r) and the
rank r is much smaller than either side. Only A and B train, so a fine-tune stores a few percent of the
model. A starts like ``nn.Linear``'s default (Kaiming-uniform) and B at zero, so the product is zero and the
adapted model starts as exactly the base model; dropout, if any, applies to the adapter's input only.

The order of the pieces:

1. ``LoRAConfig``: rank, alpha, dropout and which layers, validated up front.
2. ``LoRALinear``: an ``nn.Linear`` that keeps its frozen weight and adds the low-rank branch; it can merge
   the update into the weight (no extra cost at inference) and take it out again.
3. ``apply_lora`` / ``merge_lora`` / ``unmerge_lora``: the whole model at once.
4. Adapter files: only A and B, with the identity of the base they were trained on, checked on attach.

Targets name a block's linear layers by the end of their path: ``attn.c_attn`` (queries, keys and values),
``attn.c_proj`` (attention output), ``mlp.c_fc`` (MLP in) and ``mlp.c_proj`` (MLP out). A target matches
every layer whose path ends with it at a dot, so ``c_attn`` and ``c_fc`` are unambiguous while ``c_proj``
means both output projections and ``attn.c_proj`` or ``mlp.c_proj`` picks one. The head and the embeddings
are never adapted: the head shares its matrix with the token embedding and feeds the fused loss directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.model import GPT
from minigpt.storage import atomic_write

# ---------------------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------------------

# The linear layers of a block that LoRA can adapt, as paths relative to the block.
ADAPTABLE = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _matches(path: str, target: str) -> bool:
    """Whether a module path ends with ``target`` at a dot boundary (``mlp.c_proj`` ends with ``c_proj``)."""
    return path == target or path.endswith("." + target)


@dataclass
class LoRAConfig:
    """Low-rank adapters. ``rank=0`` disables LoRA (the run trains every parameter)."""

    rank: int = 0
    """r, the inner dimension of each update B @ A; 0 means no LoRA."""
    alpha: float = 16.0
    """The update is scaled by alpha / rank, so changing the rank needs no new learning rate."""
    adapter_dropout: float = 0.0
    """Dropout on the adapter's input (the frozen path sees the input undropped)."""
    targets: str = "c_attn,c_proj,c_fc"
    """Comma-separated layer names matched at the end of their path (module docstring): ``c_attn``,
    ``c_proj`` (both projections), ``attn.c_proj``, ``c_fc``, ``mlp.c_fc``, ``mlp.c_proj``."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0 disables LoRA), got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"lora.adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        if not self.target_list:
            raise ValueError("lora.targets must name at least one layer, e.g. 'c_attn,c_proj,c_fc'")
        for target in self.target_list:
            if not any(_matches(path, target) for path in ADAPTABLE):
                raise ValueError(
                    f"lora.targets: {target!r} matches no adaptable layer; the layers are "
                    f"{', '.join(ADAPTABLE)} (a name matches at the end of the path, so 'c_proj' means both)"
                )

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


# ---------------------------------------------------------------------------------------------------------
# 2. The adapted layer
# ---------------------------------------------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """``y = x W^T + b + (alpha / r) * dropout(x) A^T B^T`` with W and b frozen.

    It *is* an ``nn.Linear`` holding the base layer's own weight and bias tensors, so the base keys of the
    state dict (``...c_attn.weight``) are unchanged and the adapter adds ``...c_attn.lora_A`` / ``lora_B``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        # Built on the meta device, then given the base's tensors: no throw-away weight is allocated.
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scaling = alpha / rank
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))  # (out, r)
        # As nn.Linear initialises its weight, and as the LoRA reference code initialises A.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the weight: (alpha / r) * B @ A, shape (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # Two thin matmuls, (.., in) -> (.., r) -> (.., out): never the full (out, in) update.
        return y + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight, so inference costs what the base costs."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the weight (exact up to float rounding)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


# ---------------------------------------------------------------------------------------------------------
# 3. The whole model
# ---------------------------------------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every adapted layer of ``model`` by its module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: GPT, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of ``model`` and give the targeted layers trainable adapters, in place.

    Returns the paths of the adapted layers. Seed torch first for reproducible adapter initialisation.
    """
    if config.rank <= 0:
        raise ValueError(f"lora.rank must be positive to apply LoRA, got {config.rank}")
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters")
    model.requires_grad_(False)
    adapted = []
    for block_index, block in enumerate(model.transformer.h):
        for path in ADAPTABLE:
            if not any(_matches(path, target) for target in config.target_list):
                continue
            parent_name, child_name = path.split(".")
            parent = getattr(block, parent_name)
            layer = LoRALinear(getattr(parent, child_name), config.rank, config.alpha, config.adapter_dropout)
            setattr(parent, child_name, layer)
            adapted.append(f"transformer.h.{block_index}.{path}")
    return adapted


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (``<layer path>.lora_A`` / ``.lora_B``), detached, on the CPU."""
    return {
        f"{name}.{part}": getattr(layer, part).detach().cpu().clone()
        for name, layer in lora_layers(model).items()
        for part in ("lora_A", "lora_B")
    }


def base_fingerprint(model: nn.Module) -> str:
    """A SHA-256 over the base weights: every state-dict entry that is not an adapter, with its name,
    dtype and shape. Adapters never change the base, so a model gives its base's fingerprint at any time,
    provided no adapter is merged into it."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("cannot fingerprint the base while adapters are merged into it: unmerge first")
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.endswith((".lora_A", ".lora_B")):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# 4. Adapter files
# ---------------------------------------------------------------------------------------------------------

FORMAT = "minigpt-lora-adapter"
VERSION = 1


class AdapterError(RuntimeError):
    """An adapter file that is missing, foreign, corrupt, or made for another base model."""


def save_adapter(
    path: str | Path, model: GPT, config: LoRAConfig, base_source: str, step: int | None = None
) -> Path:
    """Write the adapters of ``model`` alone, atomically, with the identity of the base they adapt.

    ``base_source`` is where the base came from (a checkpoint path or a Hugging Face name), for people;
    the fingerprint is what ``attach_adapter`` checks.
    """
    if not lora_layers(model):
        raise ValueError("the model has no LoRA adapters to save")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "lora_config": dataclasses.asdict(config),
        "base": {
            "source": base_source,
            "fingerprint": base_fingerprint(model),
            "model_config": dataclasses.asdict(model.config),
        },
        "step": step,
        "adapters": adapter_state_dict(model),
    }
    path = Path(path)
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def load_adapter(path: str | Path) -> dict[str, Any]:
    """Read an adapter file with ``weights_only=True`` (plain tensors and data, never pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist")
    try:
        adapter = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, objects weights_only refuses
        raise AdapterError(f"{path} is not a loadable adapter file: {type(e).__name__}: {e}") from None
    if not isinstance(adapter, dict) or adapter.get("format") != FORMAT:
        raise AdapterError(f"{path} is not a MiniGPT LoRA adapter (no '{FORMAT}' marker)")
    if adapter.get("version", 0) > VERSION:
        raise AdapterError(f"{path} was written by a newer MiniGPT (adapter format {adapter['version']})")
    adapter["path"] = str(path)
    return adapter


def attach_adapter(model: GPT, adapter: dict[str, Any]) -> None:
    """Give ``model`` (the plain base) the adapters of a loaded adapter file, in place.

    Refuses a model whose weights are not the base the adapter was trained on: an adapter is a correction to
    one particular set of weights and means nothing on any other.
    """
    where = adapter.get("path", "the adapter")
    base = adapter["base"]
    fingerprint = base_fingerprint(model)
    if fingerprint != base["fingerprint"]:
        raise AdapterError(
            f"{where} was trained on another base model: it expects the weights of {base['source']!r} "
            f"(fingerprint {base['fingerprint'][:16]}), but this model's weights have fingerprint "
            f"{fingerprint[:16]}; load the base it was trained on"
        )
    apply_lora(model, LoRAConfig(**adapter["lora_config"]))
    expected = {f"{name}.{part}" for name in lora_layers(model) for part in ("lora_A", "lora_B")}
    if set(adapter["adapters"]) != expected:
        raise AdapterError(f"{where} holds adapters for other layers than its lora_config targets")
    model.load_state_dict(adapter["adapters"], strict=False)
