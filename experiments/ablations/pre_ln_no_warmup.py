"""Pre-LN without learning-rate warmup: Xiong et al. (2020) predict this still trains.
Otherwise the CPU ablation baseline (cpu_base.py).
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "ablation-cpu-pre-ln-no-warmup",
        "warmup_steps": 0,
    },
)
