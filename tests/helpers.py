"""Tiny experiments for tests that train, resume or break things: real text, a model of a few thousand
parameters besides its embeddings, a handful of steps."""

from __future__ import annotations

import functools
import json
import lzma
import shutil
import socket
from pathlib import Path
from typing import Any

from minigpt import checkpoint
from minigpt.config import DataConfig, ExperimentConfig, LogConfig, TrainConfig, apply_overrides
from minigpt.model import GPTConfig
from minigpt.tracking import read_metrics

WIKI_VALID_RAW = Path("wikitext-2-raw-v1") / "wiki.valid.raw.xz"


def free_port() -> int:
    """A loopback port free now, for processes a test spawns (torchrun --standalone finds its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def wiki_valid_text(data_root: Path) -> str:
    """WikiText-2's raw validation split, exactly as released."""
    with lzma.open(data_root / WIKI_VALID_RAW, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def write_corpus(directory: Path, data_root: Path) -> dict[str, str]:
    """Train/val/test text files cut from WikiText-2 valid, with a token cache beside them, as ``data.*``
    config values."""
    text = wiki_valid_text(data_root)
    # Evaluation scores every token against all 50,257 GPT-2 ids, so short val/test texts keep runs quick.
    pieces = {"train_file": text[:20_000], "val_file": text[20_000:21_500], "test_file": text[21_500:23_000]}
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, piece in pieces.items():
        path = directory / f"{key.removesuffix('_file')}.txt"
        path.write_text(piece, encoding="utf-8")
        files[key] = str(path)
    tokenizer = str(data_root / "gpt2-tokenizer")
    return {"dataset": "text", "tokenizer": tokenizer, "cache_dir": str(directory / "cache"), **files}


def tiny_config(
    corpus: dict[str, str], out_dir: Path, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """A one-layer, 16-wide model with a 16-token context on ``corpus``, recorded under ``out_dir/run``."""
    config = ExperimentConfig(
        name="tiny-test",
        model=GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0),
        data=DataConfig(**corpus),
        train=TrainConfig(
            device="cpu",
            precision="fp32",  # "auto" picks bf16 on CPUs that have it: results would vary by machine
            threads=1,
            batch_size=4,
            micro_batch_size=2,
            max_steps=6,
            lr=3e-3,
            warmup_steps=2,
            eval_interval=3,
            eval_batches=2,
            ckpt_interval=3,
            log_interval=1,
        ),
        log=LogConfig(out_dir=str(out_dir), run_name="run", wandb="disabled"),
    )
    return apply_overrides(config, overrides or {})


def write_experiment(path: Path, config: ExperimentConfig) -> Path:
    """An experiment file that defines ``config``."""
    path.write_text(
        "from minigpt.config import ExperimentConfig\n\n"
        f"config = ExperimentConfig.from_dict({config.to_dict()!r})\n",
        encoding="utf-8",
    )
    return path


def interrupted_copy(run_dir: Path, step: int, destination: Path) -> Path:
    """A copy of ``run_dir`` as a crash right after the checkpoint of ``step`` would leave it, without the
    later checkpoints, metrics rows and summary: whatever a resume of the copy records, it computed."""
    shutil.copytree(run_dir, destination)
    for later, path in checkpoint.list_checkpoints(destination):
        if later > step:
            path.unlink()
    metrics = destination / "metrics.jsonl"
    kept = [row for row in read_metrics(metrics) if row["step"] <= step]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    (destination / "summary.json").unlink()
    return destination


def execute_notebook(notebook_path: Path, workdir: Path, tmp_path: Path, monkeypatch) -> list[dict]:
    """Run a notebook in this interpreter (through a kernelspec named python3 found first on JUPYTER_PATH,
    whatever other python3 kernels the machine has), from ``workdir``; return its code cells' outputs."""
    import sys

    import nbclient
    import nbformat

    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebook = nbformat.read(notebook_path, as_version=4)
    resources = {"metadata": {"path": str(workdir)}}
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=120, resources=resources).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
