"""Precision: what ``auto`` resolves to on each kind of hardware, what is refused, and a bf16 run that trains
finite and resumes exactly."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import interrupted_copy, tiny_config

from minigpt import checkpoint, perf, train
from minigpt.config import ConfigError
from minigpt.tracking import read_metrics

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_a_cpu_is_bf16_only_with_hardware_bf16(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert perf.pick_precision("auto", CPU) == expected


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cuda_follows_the_gpu_bf16_support(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: not bf16_supported)  # must not be consulted
    assert perf.pick_precision("auto", CUDA) == expected


def test_auto_precision_elsewhere_is_fp32(monkeypatch):
    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: True)
    assert perf.pick_precision("auto", MPS) == "fp32"


@pytest.mark.parametrize("device", [CPU, MPS])
def test_fp16_without_cuda_is_refused_naming_the_key_and_the_alternatives(device):
    with pytest.raises(ConfigError, match=rf"train\.precision: fp16 needs CUDA \(device is {device.type}\)"):
        perf.pick_precision("fp16", device)


@pytest.mark.parametrize(("name", "device"), [("fp32", CPU), ("bf16", CPU), ("fp16", CUDA), ("bf16", CUDA)])
def test_an_explicit_precision_is_kept(monkeypatch, name, device):
    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: name != "bf16")
    assert perf.pick_precision(name, device) == name


def train_losses(run_dir: Path) -> dict[int, float]:
    return {
        row["step"]: row["train/loss"]
        for row in read_metrics(run_dir / "metrics.jsonl")
        if "train/loss" in row
    }


@pytest.mark.slow
def test_a_bf16_run_trains_finite_and_resumes_exactly(tiny_corpus, tmp_path):
    """Two bf16 steps (emulated, so slow, on a CPU without hardware bf16), then the second step again from
    the first step's checkpoint: the same loss and the same weights, bit for bit."""
    overrides = {"precision": "bf16", "max_steps": 2, "ckpt_interval": 1, "dropout": 0.1}
    summary = train.run(tiny_config(tiny_corpus, tmp_path / "bf16", overrides))
    run_dir = tmp_path / "bf16" / "run"
    assert json.loads((run_dir / "config.json").read_text())["_run"]["precision"] == "bf16"
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2] and all(math.isfinite(loss) for loss in losses.values())
    assert math.isfinite(summary["final_val/loss"]) and math.isfinite(summary["final_test/loss"])
    fp32 = train.run(
        tiny_config(tiny_corpus, tmp_path / "fp32", {**overrides, "precision": "fp32", "max_steps": 1})
    )
    assert train_losses(tmp_path / "fp32" / "run")[1] != losses[1], (
        "bf16 trained exactly as fp32: no autocast"
    )
    assert fp32["step"] == 1

    resumed = interrupted_copy(run_dir, 1, tmp_path / "resumed")
    train.run(tiny_config(tiny_corpus, tmp_path / "bf16", overrides), resume=str(resumed))
    assert train_losses(resumed) == losses
    final, reference = checkpoint.load_checkpoint(resumed), checkpoint.load_checkpoint(run_dir)
    assert final["step"] == reference["step"] == 2
    for key, tensor in reference["model"].items():
        assert torch.equal(final["model"][key], tensor), key
    assert json.loads((resumed / "summary.json").read_text())["final_val/loss"] == summary["final_val/loss"]


def test_auto_precision_in_the_test_suite_is_fp32_whatever_the_cpu():
    """conftest pins it, also on a CPU with hardware bf16 (as this project's machine has), so that no
    other test's result depends on the machine."""
    assert not perf.cpu_has_fast_bf16()
    assert perf.pick_precision("auto", CPU) == "fp32"
