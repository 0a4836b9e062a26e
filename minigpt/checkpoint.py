"""Checkpoints: written atomically, rotated without a window where none is valid, loaded without pickle code.

A run directory holds ``ckpt-<step>.pt`` files. Each is complete or absent (temporary file, fsync, rename);
the newest ``keep_last`` and the best by validation loss are kept. Loading uses
``torch.load(weights_only=True)``, so a malicious file cannot run code; ``build_model`` turns a loaded
checkpoint back into its model, adapters included.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from minigpt.config import DataConfig
from minigpt.lora import LoRAConfig, apply_lora
from minigpt.model import GPT, GPTConfig
from minigpt.storage import atomic_write, remove_interrupted_writes

FORMAT = "minigpt-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, foreign, or does not fit the run."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:07d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in a run directory as ``(step, path)``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(
    run_dir: str | Path, state: dict[str, Any], keep_last: int = 2, best_step: int | None = None
) -> Path:
    """Write ``state`` as the checkpoint of ``state['step']``, then delete checkpoints no longer kept.

    The new file is in place before anything is deleted, so there is always a complete checkpoint.
    """
    step = int(state["step"])
    path = checkpoint_path(run_dir, step)
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f))
    keep = {s for s, _ in list_checkpoints(run_dir)[-max(keep_last, 1) :]} | {step}
    if best_step is not None:
        keep.add(best_step)
    for old_step, old_path in list_checkpoints(run_dir):
        if old_step not in keep:
            old_path.unlink(missing_ok=True)
    remove_interrupted_writes(run_dir, "ckpt-*.pt")  # never listed as checkpoints, but they hold disk
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or the newest one in a run directory, refusing anything but plain data."""
    path = Path(path)
    earlier = ""
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {path}")
        path = found[-1][1]
        if len(found) > 1:
            earlier = f"; to continue from the one before it, pass {found[-2][1]}"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a text file or a cut-off one is not
        raise CheckpointError(
            f"{path} is not a loadable MiniGPT checkpoint: not a complete PyTorch archive (a text file, or a "
            f"file truncated while being written){earlier}"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt members, or objects weights_only refuses (a foreign pickle)
        # torch's own message suggests weights_only=False, which would run the file's code: not passed on.
        reason = (
            "holds objects other than tensors and plain data" if "Weights only" in str(e) else "is corrupt"
        )
        raise CheckpointError(
            f"{path} is not a loadable MiniGPT checkpoint: it {reason} ({type(e).__name__}), so it was not "
            f"loaded{earlier}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a MiniGPT checkpoint (no '{FORMAT}' marker); for a Hugging Face GPT-2 directory "
            "use the --hf option of minigpt.sample, or init_from for training"
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer MiniGPT (format version {state['version']})")
    state["path"] = str(path)
    return state


def build_model(state: dict[str, Any]) -> GPT:
    """The model a loaded checkpoint holds, in eval mode; a LoRA run's model comes with its adapters."""
    model = GPT(GPTConfig(**state["model_config"]))
    lora_config = LoRAConfig(**state.get("config", {}).get("lora", {}))
    if lora_config.rank:
        apply_lora(model, lora_config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{state['path']} holds weights that do not fit its own model_config: {e}"
        ) from None
    return model.eval()


def data_config(state: dict[str, Any]) -> DataConfig:
    """The data settings of the run that wrote a checkpoint (its tokenizer above all); the defaults for a
    checkpoint saved without its run's config."""
    return DataConfig(**state.get("config", {}).get("data", {}))
