"""The reference setup: a 6-layer, 512-wide GPT-2-style model on WikiText-2 raw.

On machines without the Hugging Face Hub, raw WikiText-2 train may be unavailable locally; run the same
setup on the tokenized variant with ``--dataset=wikitext-2-v1`` (its perplexities are not comparable).
"""

from minigpt.config import DataConfig, ExperimentConfig, LogConfig, TrainConfig
from minigpt.model import GPTConfig

config = ExperimentConfig(
    name="baseline",
    model=GPTConfig(
        block_size=512,
        n_layer=6,
        n_head=8,
        n_embd=512,
        dropout=0.1,
        norm_position="pre",
        tie_embeddings=True,
        attention="sdpa",
    ),
    data=DataConfig(dataset="wikitext-2-raw-v1"),
    train=TrainConfig(
        batch_size=32,
        micro_batch_size=8,
        max_steps=5000,
        lr=3e-4,
        min_lr_ratio=0.1,
        warmup_steps=200,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_batches=20,
        eval_stride=256,
        ckpt_interval=500,
    ),
    log=LogConfig(project="minigpt"),
)
