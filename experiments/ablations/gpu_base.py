"""The GPU profile of the ablation suite: the reference setup at full size (6 layers, 512 wide, 8 heads,
512-token context, 5000 steps of 32 sequences), with per-layer gradient norms logged. Its variants are the
sweeps ``sweeps/gpu-ablations-*.yaml`` and the study ``sweeps/studies/gpu.yaml``. Its ablations have not
been run: one 100-step run on an H200 (about 380,000 tokens/s in bf16, benchmarks/gpu-check-h200.md) is all
so far."""

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
