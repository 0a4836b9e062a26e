"""Asking for a device this machine does not have is a usage error naming the devices it has."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt.config import ConfigError
from minigpt.perf import available_devices, pick_device

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_auto_picks_the_first_available_device():
    assert pick_device("auto") == torch.device(available_devices()[0])
    assert available_devices()[-1] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name, message", [("cuda", "not available here"), ("gpu", "not a device name")])
def test_a_missing_device_names_the_devices_that_exist(name, message):
    with pytest.raises(ConfigError, match=f"train.device: '{name}' is {message}.*this machine has cpu"):
        pick_device(name)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_run_with_a_missing_device_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "experiments/tiny.py", "--device=cuda", f"--out_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: train.device: 'cuda' is not available here (this machine has cpu); "
        "use --device=auto or one of those"
    ]
    assert not any(tmp_path.iterdir())
