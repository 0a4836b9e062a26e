"""The CPU-budget profile of the ablation suite, and its baseline variant (pre-LN, tied embeddings, 4 heads).

A 4-layer, 128-wide model with a 128-token context on WikiText-2 (tokenized v1), sized so that the whole suite
(8 variants x 3 seeds, two 1-thread runs at a time) trains on a shared 2-core CPU in under an hour. Every run
sees the same 48 x 4 x 128 = 24,576 training tokens (the 50257-token output layer dominates the cost: about
140 tokens/s per run when the machine is shared), so variants are compared at equal tokens seen; warmup is
10 steps. There is no periodic evaluation, and the final one scores only the first ``eval_max_tokens``
tokens of validation and test. With less than one epoch, the training loss on each fresh batch is itself
an unbiased estimate of held-out loss, which is what the loss curves show.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent.parent / "baseline.py",
    {
        "name": "ablation-cpu",
        "block_size": 128,
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "dropout": 0.0,
        "dataset": "wikitext-2-v1",
        "threads": 1,
        "batch_size": 4,
        "micro_batch_size": 4,
        "max_steps": 48,
        "lr": 2e-3,
        "warmup_steps": 10,
        "eval_interval": 0,
        "eval_batches": 1,
        "eval_stride": 0,
        "eval_max_tokens": 8192,
        "ckpt_interval": 0,
        "keep_last": 0,
        "log_interval": 4,
        "log_layer_grad_norms": True,
        "wandb": "offline",
        "project": "minigpt-ablations",
    },
)
