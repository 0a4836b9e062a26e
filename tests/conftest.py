"""Shared set-up: W&B and the Hugging Face Hub stay offline and quiet; tests find the local assets."""

import os
from pathlib import Path

import pytest
import torch

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tiny models gain nothing from intra-op threads, and on a shared CPU their spin-waiting turns
# milliseconds into seconds. Subprocesses started by tests inherit the same setting.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_wandb_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))


@pytest.fixture(scope="session")
def token_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the session: each text is tokenized once, and ``~/.cache`` is never touched."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(autouse=True)
def _isolated_token_cache(token_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(token_cache_dir))


@pytest.fixture(autouse=True)
def _no_fast_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """``precision="auto"`` resolves to fp32 on every CPU, so a test means the same with or without AVX-512
    BF16; a test about bf16 asks for it explicitly (or patches ``cpu_has_fast_bf16`` itself)."""
    from minigpt import perf

    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: False)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The local asset root (``MINIGPT_DATA_DIR``, else ``../shared/data`` beside the repository)."""
    root = Path(os.environ.get("MINIGPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (root / "gpt2-tokenizer").is_dir():
        pytest.fail(f"local asset root {root} has no gpt2-tokenizer/: set MINIGPT_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(data_root: Path) -> Path:
    return data_root / "gpt2-tokenizer"


@pytest.fixture(scope="session")
def tiny_corpus(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small train/val/test files of real WikiText, as ``data.*`` config values (see tests/helpers.py)."""
    from helpers import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"), data_root)
