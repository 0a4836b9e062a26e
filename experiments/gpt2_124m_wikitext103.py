"""GPT-2 small (124M) on WikiText-103 raw, set up for one node of 8 GPUs with torchrun.

    torchrun --standalone --nproc_per_node=8 run.py experiments/gpt2_124m_wikitext103.py

The global batch is 512 sequences of 1024 tokens (about 0.5M tokens, GPT-2/GPT-3's batch for this size):
micro-batches of 16 per GPU, so 8 GPUs accumulate 4 of them per step, 4 GPUs 8, and one GPU 32, all
computing the same step. WikiText-103 is about 120M GPT-2 tokens, so 1,200 steps are about five epochs
(630M tokens); dropout 0.1 because the text repeats. The first run tokenizes the corpus once (it comes from
the Hugging Face Hub unless ``MINIGPT_DATA_DIR`` holds ``wikitext-103-raw-v1/``) and caches it.
"""

from minigpt.config import DataConfig, ExperimentConfig, LogConfig, TrainConfig
from minigpt.model import GPTConfig

config = ExperimentConfig(
    name="gpt2-124m-wt103",
    model=GPTConfig(
        block_size=1024,
        n_layer=12,
        n_head=12,
        n_embd=768,
        dropout=0.1,
        tie_embeddings=True,
        attention="sdpa",
    ),
    data=DataConfig(dataset="wikitext-103-raw-v1"),
    train=TrainConfig(
        precision="bf16",
        compile=True,
        batch_size=512,
        micro_batch_size=16,
        max_steps=1200,
        lr=6e-4,
        min_lr_ratio=0.1,
        warmup_steps=100,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
        eval_interval=100,
        eval_batches=0,
        eval_stride=512,
        ckpt_interval=200,
    ),
    log=LogConfig(project="minigpt", tags="gpt2-124m,wikitext-103,ddp"),
)
