"""LoRA fine-tuning: adapt a trained model to new text with rank-8 adapters on every block projection.

    python run.py experiments/finetune_lora.py --init_from=runs/tiny-<stamp>
    python run.py experiments/finetune_lora.py --init_from=path/to/gpt2 --train_file=a.txt --val_file=b.txt

``init_from`` names the base: a MiniGPT run directory or checkpoint, or a Hugging Face GPT-2 directory or
Hub name. The base fixes the architecture; this file sets only the dropout. The base stays frozen and only
the adapters (under 1% of the parameters) train.

The new text is any set of plain text files (``--train_file``, ``--val_file``, optionally ``--test_file``).
By default it is raw WikiText-2 from ``$MINIGPT_DATA_DIR``, valid split to train on and test split to
validate on: articles a WikiText-trained base never saw, without the ``<unk>`` markers of the tokenized
variant that ``experiments/tiny.py`` trains on.

The run prints trainable and total parameters and the validation perplexity before the first step; the
summary holds ``val_before/ppl`` and ``final_val/ppl`` side by side, and ``<run dir>/adapter/`` holds the
adapters alone, in peft's format (``adapter_config.json``, ``adapter_model.safetensors``).
``python -m minigpt.sample --checkpoint BASE --adapter <run dir>/adapter --prompt ...`` generates with them
(``--merge-adapter`` folds them into the weights first); ``python -m minigpt.export BASE --out DIR`` exports
the base, on which ``peft.PeftModel.from_pretrained(model, "<run dir>/adapter")`` loads them.
"""

import os
from pathlib import Path

from minigpt.config import derive

raw_wikitext = Path(os.environ.get("MINIGPT_DATA_DIR", ".")) / "wikitext-2-raw-v1"

config = derive(
    Path(__file__).parent / "baseline.py",
    {
        "name": "finetune_lora",
        "model.dropout": 0.0,
        "data.dataset": "text",
        "data.train_file": str(raw_wikitext / "wiki.valid.raw.xz"),
        "data.val_file": str(raw_wikitext / "wiki.test.raw.xz"),
        "lora.rank": 8,
        "lora.alpha": 16.0,
        "lora.adapter_dropout": 0.05,
        "lora.targets": "c_attn,c_proj,c_fc",
        "train.batch_size": 16,
        "train.micro_batch_size": 16,
        "train.max_steps": 300,
        "train.lr": 2e-3,
        "train.warmup_steps": 20,
        "train.weight_decay": 0.0,
        "train.eval_interval": 50,
        "train.eval_batches": 10,
        "train.eval_stride": 0,
        "train.ckpt_interval": 100,
        "train.log_interval": 10,
    },
)
