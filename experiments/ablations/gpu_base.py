"""The GPU profile of the ablation suite: the reference setup at full size (6 layers, 512 wide, 8 heads,
512-token context, 5000 steps of 32 sequences), with per-layer gradient norms logged. Its variants are the
sweeps ``sweeps/gpu-ablations-*.yaml``. This profile has not been run yet: the committed report is the CPU
profile's."""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent.parent / "baseline.py",
    {
        "name": "ablation-gpu",
        "train.log_layer_grad_norms": True,
        "log.project": "minigpt-ablations",
    },
)
