"""Post-LN without learning-rate warmup: Xiong et al. (2020) predict this trains badly or diverges.
Otherwise the CPU ablation baseline (cpu_base.py).
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "ablation-cpu-post-ln-no-warmup",
        "norm_position": "post",
        "warmup_steps": 0,
    },
)
