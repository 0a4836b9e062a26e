"""16 attention heads at the baseline's width (head size 8).
Otherwise the CPU ablation baseline (cpu_base.py).
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "ablation-cpu-heads-16",
        "n_head": 16,
    },
)
