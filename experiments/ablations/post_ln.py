"""Post-LN (the original Transformer"s norm placement), with the baseline"s warmup.
Otherwise the CPU ablation baseline (cpu_base.py).
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "ablation-cpu-post-ln",
        "norm_position": "post",
    },
)
