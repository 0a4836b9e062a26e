"""Separate input embedding and output projection (Press & Wolf 2017 tie them).
Otherwise the CPU ablation baseline (cpu_base.py).
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "ablation-cpu-untied",
        "tie_embeddings": False,
    },
)
