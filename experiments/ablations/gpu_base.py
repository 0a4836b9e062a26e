"""The GPU profile of the ablation suite: the reference setup at full size (6 layers, 512 wide, 8 heads,
512-token context, 5000 steps), with per-layer gradient norms logged. Vary it with the sweeps in
``sweeps/gpu-ablations-*.yaml`` (or ``--key=value`` on the command line)."""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent.parent / "baseline.py",
    {"name": "ablation-gpu", "log_layer_grad_norms": True, "project": "minigpt-ablations"},
)
