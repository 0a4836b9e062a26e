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
4. Adapter files, in peft's format: a directory holding ``adapter_config.json`` and
   ``adapter_model.safetensors``, loadable by ``peft.PeftModel.from_pretrained`` on the exported base
   (``minigpt.export``), with the identity of the base they were trained on, checked on attach.

Targets name a block's linear layers by the end of their path: ``attn.c_attn`` (queries, keys and values),
``attn.c_proj`` (attention output), ``mlp.c_fc`` (MLP in) and ``mlp.c_proj`` (MLP out). A target matches
every layer whose path ends with it at a dot, so ``c_attn`` and ``c_fc`` are unambiguous while ``c_proj``
means both output projections and ``attn.c_proj`` or ``mlp.c_proj`` picks one. The head and the embeddings
are never adapted: the head shares its matrix with the token embedding and feeds the fused loss directly.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.errors import check
from minigpt.model import GPT
from minigpt.storage import atomic_write_bytes, atomic_write_json

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
        check(self.rank >= 0, "lora.rank", f"must be >= 0 (0 disables LoRA), got {self.rank}")
        check(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        check(
            0.0 <= self.adapter_dropout < 1.0,
            "lora.adapter_dropout",
            f"must be in [0, 1), got {self.adapter_dropout}",
        )
        check(
            bool(self.target_list), "lora.targets", "must name at least one layer, e.g. 'c_attn,c_proj,c_fc'"
        )
        for target in self.target_list:
            check(
                any(_matches(path, target) for path in ADAPTABLE),
                "lora.targets",
                f"{target!r} matches no adaptable layer; the layers are {', '.join(ADAPTABLE)} (a name "
                "matches at the end of the path, so 'c_proj' means both)",
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
# 4. Adapter files (peft's format)
# ---------------------------------------------------------------------------------------------------------

# peft names an adapted layer's factors ``base_model.model.<layer path>.lora_A.weight``; we name them
# ``<layer path>.lora_A``. The shapes agree: peft keeps A and B as ``nn.Linear(in, r)`` and
# ``nn.Linear(r, out)`` even on GPT-2's transposed Conv1D layers (``fan_in_fan_out=True``), and scale the
# update by alpha / r as we do.
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# Extra facts about the adapter, kept in the safetensors header, which peft ignores.
_META_FINGERPRINT = "minigpt.base_fingerprint"
_META_SOURCE = "minigpt.base_source"
_META_STEP = "minigpt.step"
# peft options whose non-default values change what an adapter computes in ways our LoRALinear does not.
_UNSUPPORTED_PEFT_OPTIONS = {
    "use_rslora": False,
    "use_dora": False,
    "bias": "none",
    "modules_to_save": None,
    "layers_to_transform": None,
    "rank_pattern": {},
    "alpha_pattern": {},
}


class AdapterError(RuntimeError):
    """An adapter that is missing, foreign, corrupt, or made for another base model."""


@dataclass
class Adapter:
    """A loaded adapter: its settings, its factors under our parameter names, and where it came from."""

    config: LoRAConfig
    tensors: dict[str, torch.Tensor]
    path: Path
    base_fingerprint: str | None  # None for an adapter trained elsewhere (e.g. with peft on HF GPT-2)
    base_source: str | None
    step: int | None


def _peft_key(name: str) -> str:
    """``transformer.h.0.mlp.c_fc.lora_A`` -> ``base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight``."""
    return f"{_PEFT_PREFIX}{name}.weight"


def save_adapter(
    directory: str | Path, model: GPT, config: LoRAConfig, base_source: str, step: int | None = None
) -> Path:
    """Write the adapters of ``model`` alone into ``directory`` in peft's format, each file atomically.

    ``base_source`` is where the base came from (a checkpoint path or a Hugging Face name), for people and
    for peft's ``base_model_name_or_path``; the base's fingerprint is what ``attach_adapter`` checks.
    """
    from safetensors.torch import save

    if not lora_layers(model):
        raise ValueError("the model has no LoRA adapters to save")
    directory = Path(directory)
    metadata = {_META_FINGERPRINT: base_fingerprint(model), _META_SOURCE: base_source}
    if step is not None:
        metadata[_META_STEP] = str(step)
    tensors = {_peft_key(name): t.contiguous() for name, t in adapter_state_dict(model).items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata=metadata))
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_source,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.adapter_dropout,
        "target_modules": config.target_list,
        "fan_in_fan_out": True,  # the exported GPT-2 stores these layers as Conv1D, (in, out)
        "bias": "none",
        "inference_mode": True,
        **{k: v for k, v in _UNSUPPORTED_PEFT_OPTIONS.items() if k != "bias"},
    }
    atomic_write_json(directory / CONFIG_NAME, peft_config)
    return directory


def adapter_size(directory: str | Path) -> int:
    """Bytes on disk of an adapter directory's two files."""
    return sum((Path(directory) / name).stat().st_size for name in (CONFIG_NAME, WEIGHTS_NAME))


def _read_config(directory: Path) -> LoRAConfig:
    config_path = directory / CONFIG_NAME
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(
            f"{config_path} is not a readable adapter config: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        found = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise AdapterError(
            f"{config_path} is not a LoRA adapter config (peft_type is {found!r}, need 'LORA')"
        )
    for option, default in _UNSUPPORTED_PEFT_OPTIONS.items():
        if raw.get(option) not in (None, {}, [], default):
            raise AdapterError(
                f"{config_path} sets {option}={raw[option]!r}, which MiniGPT's LoRA does not implement; "
                f"train the adapter with {option}={default!r}"
            )
    targets = raw.get("target_modules")
    if isinstance(targets, str):
        raise AdapterError(
            f"{config_path}: target_modules is a regular expression ({targets!r}); need a list"
        )
    try:
        return LoRAConfig(
            rank=int(raw["r"]),
            alpha=float(raw["lora_alpha"]),
            adapter_dropout=float(raw.get("lora_dropout", 0.0)),
            targets=",".join(targets or []),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{config_path} does not describe an adapter MiniGPT can attach: {e}") from None


def load_adapter(path: str | Path) -> Adapter:
    """Read an adapter directory (or either of its two files) written by ``save_adapter`` or by peft.

    Safetensors holds only tensors and a text header, so loading cannot run code.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    directory = path.parent if path.name in (CONFIG_NAME, WEIGHTS_NAME) else path
    if not path.exists():
        raise AdapterError(f"adapter {path} does not exist")
    if not directory.is_dir():
        raise AdapterError(
            f"{path} is a file, but an adapter is a directory holding {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(a LoRA run writes <run dir>/adapter/)"
        )
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / name).is_file()]
    if missing:
        raise AdapterError(
            f"{directory} is not an adapter directory: it has no {' and no '.join(missing)} "
            "(a LoRA run writes <run dir>/adapter/; a peft adapter is saved with save_pretrained)"
        )
    config = _read_config(directory)
    weights = directory / WEIGHTS_NAME
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            stored = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(
            f"{weights} is not a loadable safetensors file (truncated or corrupt): {e}"
        ) from None
    tensors = {}
    for key, tensor in stored.items():
        name = key.removeprefix(_PEFT_PREFIX).removesuffix(".weight")
        if not (key.startswith(_PEFT_PREFIX) and name.endswith((".lora_A", ".lora_B"))):
            raise AdapterError(f"{weights} holds {key!r}, which is not a LoRA factor of a GPT-2 layer")
        tensors[name] = tensor
    step = metadata.get(_META_STEP)
    return Adapter(
        config=config,
        tensors=tensors,
        path=directory,
        base_fingerprint=metadata.get(_META_FINGERPRINT),
        base_source=metadata.get(_META_SOURCE),
        step=int(step) if step is not None else None,
    )


def attach_adapter(model: GPT, adapter: Adapter) -> None:
    """Give ``model`` (the plain base) the adapters of a loaded adapter, in place.

    Refuses a model whose weights are not the base a MiniGPT adapter was trained on: an adapter is a
    correction to one particular set of weights and means nothing on any other. An adapter from elsewhere
    carries no fingerprint, so only its layers and shapes are checked.
    """
    if adapter.base_fingerprint is not None:
        fingerprint = base_fingerprint(model)
        if fingerprint != adapter.base_fingerprint:
            raise AdapterError(
                f"{adapter.path} was trained on another base model: it expects the weights of "
                f"{adapter.base_source!r} (fingerprint {adapter.base_fingerprint[:16]}), but this model's "
                f"weights have fingerprint {fingerprint[:16]}; load the base it was trained on"
            )
    modules = dict(model.named_modules())
    expected = {
        f"transformer.h.{i}.{path}.{part}"
        for i in range(len(model.transformer.h))
        for path in ADAPTABLE
        if any(_matches(path, target) for target in adapter.config.target_list)
        for part in ("lora_A", "lora_B")
    }
    if set(adapter.tensors) != expected:
        unknown = sorted(set(adapter.tensors) - expected)[:3]
        absent = sorted(expected - set(adapter.tensors))[:3]
        raise AdapterError(
            f"{adapter.path} does not fit this model: its factors and its target_modules "
            f"{adapter.config.target_list} disagree on this {len(model.transformer.h)}-layer model "
            f"(unexpected {unknown}, missing {absent})"
        )
    for name, tensor in adapter.tensors.items():
        layer_path, part = name.rsplit(".", 1)
        base = modules[layer_path]
        want = (
            (adapter.config.rank, base.in_features)
            if part == "lora_A"
            else (base.out_features, adapter.config.rank)
        )
        if tuple(tensor.shape) != want:
            raise AdapterError(
                f"{adapter.path}: {name} has shape {tuple(tensor.shape)}, but this model needs {want}"
            )
    apply_lora(model, adapter.config)
    device = model.transformer.wte.weight.device
    model.load_state_dict({k: v.to(device) for k, v in adapter.tensors.items()}, strict=False)
