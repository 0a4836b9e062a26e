"""Generate text from a trained checkpoint or a Hugging Face GPT-2, streaming it as it is produced.

python -m minigpt.sample --checkpoint runs/x --prompt "Once upon a time" --max-new-tokens 100
python -m minigpt.sample --hf path/to/gpt2 --prompt "Hello" --greedy
python -m minigpt.sample --checkpoint runs/base --adapter runs/finetune/adapter --prompt "Hello"

The tokenizer is the one the model was trained with: a checkpoint's run names it in its config
(``data.tokenizer``), a Hugging Face directory holds its own; ``--tokenizer`` overrides either.
The device defaults to the best available one (CUDA, then Apple's MPS, then the CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from minigpt import checkpoint as checkpoints
from minigpt import data
from minigpt.checkpoint import CheckpointError
from minigpt.config import ConfigError, DataConfig
from minigpt.data import DataError
from minigpt.errors import first_line
from minigpt.lora import AdapterError, attach_adapter, load_adapter, merge_lora
from minigpt.model import GPT
from minigpt.perf import pick_device

# Sampling defaults (no top-k or top-p cut-off), which an export's generation config carries too.
TEMPERATURE = 1.0
MAX_NEW_TOKENS = 100


def load_model_for_sampling(
    checkpoint: str | Path | None = None,
    hf: str | Path | None = None,
    device: str = "cpu",
    adapter: str | Path | None = None,
    merge_adapter: bool = False,
) -> GPT:
    """An eval-mode GPT from exactly one source: a project checkpoint or a Hugging Face GPT-2.

    A checkpoint is a ``ckpt-*.pt`` file of a run, or a run directory (its newest checkpoint), read by
    ``minigpt.checkpoint.load_checkpoint`` (plain tensors and data only, never pickled code); a LoRA run's
    checkpoint loads with its adapters. ``adapter`` attaches a LoRA adapter directory to the model, which
    must be the base it was trained on; ``merge_adapter`` folds the adapters into the weights, so that
    generating costs what the base costs. ``device="auto"`` picks CUDA, then MPS, then the CPU.
    """
    return _load(checkpoint, hf, device, adapter, merge_adapter, need_tokenizer=False)[0]


def load_for_sampling(
    checkpoint: str | Path | None = None,
    hf: str | Path | None = None,
    device: str = "cpu",
    adapter: str | Path | None = None,
    merge_adapter: bool = False,
    tokenizer: str | None = None,
) -> tuple[GPT, Any]:
    """``load_model_for_sampling``'s model and the tokenizer it was trained with: a checkpoint's is its
    run's ``data.tokenizer``, a Hugging Face directory holds its own; ``tokenizer`` (a directory or name)
    overrides both."""
    model, data_config = _load(
        checkpoint, hf, device, adapter, merge_adapter, need_tokenizer=tokenizer is None
    )
    if tokenizer is not None:
        data_config = DataConfig(tokenizer=tokenizer)
    return model, data.load_tokenizer(data_config)


def _load(
    checkpoint: str | Path | None,
    hf: str | Path | None,
    device: str,
    adapter: str | Path | None,
    merge_adapter: bool,
    need_tokenizer: bool,
) -> tuple[GPT, DataConfig]:
    if (checkpoint is None) == (hf is None):
        raise ValueError("give exactly one of checkpoint and hf")
    if checkpoint is not None:
        state = checkpoints.load_checkpoint(checkpoint)
        model = checkpoints.build_model(state)
        data_config = checkpoints.data_config(state)
    else:
        model, data_config = _load_hf(hf, need_tokenizer)
    if adapter is not None:
        attach_adapter(model, load_adapter(adapter))
    if merge_adapter:
        merge_lora(model)
    return model.to(pick_device(device, key="--device")).eval(), data_config


def _load_hf(hf: str | Path, need_tokenizer: bool) -> tuple[GPT, DataConfig]:
    from minigpt.hf import from_hf

    try:
        model = from_hf(hf)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{hf} is not a loadable Hugging Face GPT-2 (a directory with config.json and model weights, "
            f"or a Hub name): {first_line(e)}"
        ) from None
    if (
        need_tokenizer
        and Path(hf).is_dir()
        and not any((Path(hf) / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    ):
        raise DataError(f"{hf} holds no tokenizer (tokenizer.json or vocab.json): name one with --tokenizer")
    return model, DataConfig(tokenizer=str(hf))


def stream_text(tokenizer, prompt_ids: list[int], new_ids) -> str:
    """Print the continuation of prompt_ids as token ids arrive from new_ids; return the full text.

    Decoding token by token would split multi-byte characters that BPE spreads over several tokens,
    so the text is re-decoded as a whole and only the settled new part printed; a trailing U+FFFD
    (an incomplete character) waits for the next token.
    """
    ids = list(prompt_ids)
    printed = tokenizer.decode(ids)
    print(printed, end="", flush=True)
    for token in new_ids:
        ids.append(int(token))
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):
            print(text[len(printed) :], end="", flush=True)
            printed = text
    text = tokenizer.decode(ids)
    print(text[len(printed) :], flush=True)
    return text


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a run directory (its newest checkpoint) or a ckpt-*.pt file")
    source.add_argument("--hf", help="a Hugging Face GPT-2 directory or Hub name")
    parser.add_argument("--adapter", help="a LoRA adapter directory (<run dir>/adapter) trained on that base")
    parser.add_argument("--merge-adapter", action="store_true", help="fold the adapters into the weights")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--tokenizer", help="tokenizer directory or name (default: the one the model was trained with)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps, ... (default: the best available)")
    args = parser.parse_args(argv)

    try:
        model, tokenizer = load_for_sampling(
            args.checkpoint,
            args.hf,
            args.device,
            adapter=args.adapter,
            merge_adapter=args.merge_adapter,
            tokenizer=args.tokenizer,
        )
    except (AdapterError, CheckpointError, ConfigError, DataError) as err:
        parser.error(str(err))
    device = model.transformer.wte.weight.device
    prompt_ids = tokenizer.encode(args.prompt)
    block_size = model.config.block_size
    if not prompt_ids:
        parser.error("the prompt is empty: give at least one token of text")
    if len(prompt_ids) > block_size:
        parser.error(f"the prompt is {len(prompt_ids)} tokens, longer than the context of {block_size}")

    generator = torch.Generator(device=device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    texts = []
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}/{args.num_samples} ---", flush=True)
        try:
            steps = model.generate_stream(
                idx,
                args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                do_sample=not args.greedy,
                eos_token_id=tokenizer.eos_token_id,
                generator=generator,
            )
        except ValueError as err:  # a bad sampling option: report it as a usage error
            parser.error(str(err))
        texts.append(stream_text(tokenizer, prompt_ids, (token[0] for token in steps)))
    return texts


if __name__ == "__main__":
    main(sys.argv[1:])
