"""8 attention heads at the baseline's width (head size 16).
Otherwise the CPU ablation baseline (cpu_base.py).
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "ablation-cpu-heads-8",
        "n_head": 8,
    },
)
