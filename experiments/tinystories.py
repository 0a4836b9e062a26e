"""An 8-layer, 512-wide model on TinyStories from the Hugging Face Hub, for one GPU (not run in CI).

    python -m minigpt.data experiments/tinystories.py    # tokenize once: train and validation, in shards
    python run.py experiments/tinystories.py

TinyStories (``roneneldan/TinyStories``) has train and validation splits of short stories in a ``text``
column; each story is one document, ended by GPT-2's ``<|endoftext|>``. The prepare step downloads the
data set into the Hugging Face cache and writes ``uint16`` token shards of 100M ids (200 MB each) under
``$MINIGPT_CACHE_DIR``; see the README's data section for the disk it needs. Stories are short and simple,
so a 256-token context covers most of one, and no dropout is needed on a corpus this large.
"""

from minigpt.config import DataConfig, ExperimentConfig, LogConfig, TrainConfig
from minigpt.model import GPTConfig

config = ExperimentConfig(
    name="tinystories",
    model=GPTConfig(
        block_size=256,
        n_layer=8,
        n_head=8,
        n_embd=512,
        dropout=0.0,
        tie_embeddings=True,
        attention="sdpa",
    ),
    data=DataConfig(dataset="hf:roneneldan/TinyStories", text_field="text"),
    train=TrainConfig(
        precision="bf16",
        compile=True,
        batch_size=256,
        micro_batch_size=64,
        max_steps=10_000,
        lr=1e-3,
        min_lr_ratio=0.1,
        warmup_steps=300,
        weight_decay=0.1,
        beta2=0.95,
        grad_clip=1.0,
        eval_interval=500,
        eval_batches=50,
        ckpt_interval=1000,
    ),
    log=LogConfig(project="minigpt", tags="tinystories"),
)
