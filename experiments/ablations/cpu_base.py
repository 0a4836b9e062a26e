"""The CPU profile of the ablation suite and its baseline variant: 4 layers, pre-LN, tied embeddings, 4 heads.

A 4-layer, 128-wide model with a 128-token context on WikiText-2 (tokenized v1). Every run trains 300 steps of
16 x 128 tokens, the same 614,400 tokens (about a quarter of an epoch), so variants compare at equal tokens
seen. At about 2,400 tokens/s per run (two 1-thread runs at a time on a quiet machine) a run takes about four
minutes and the 24-run suite about an hour. Validation is estimated every 50 steps on 4 batches (the curves);
the final evaluation scores the first 65,536 tokens of validation and of test. Checkpoints are kept to the
one the final evaluation writes. The variants are the sweeps ``sweeps/ablations-*.yaml``, which override
this file's values and nothing else.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent.parent / "baseline.py",
    {
        "name": "ablation-cpu",
        "model.block_size": 128,
        "model.n_layer": 4,
        "model.n_head": 4,
        "model.n_embd": 128,
        "model.dropout": 0.0,
        "model.norm_position": "pre",
        "model.tie_embeddings": True,
        "data.dataset": "wikitext-2-v1",
        "train.threads": 1,
        "train.batch_size": 16,
        "train.micro_batch_size": 16,
        "train.max_steps": 300,
        "train.lr": 2e-3,
        "train.warmup_steps": 30,
        "train.min_lr_ratio": 0.1,
        "train.eval_interval": 50,
        "train.eval_batches": 4,
        "train.eval_stride": 0,
        "train.eval_max_tokens": 65536,
        "train.ckpt_interval": 0,
        "train.keep_last": 0,
        "train.log_interval": 10,
        "train.log_layer_grad_norms": True,
        "log.project": "minigpt-ablations",
    },
)
