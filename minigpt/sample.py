"""Generate text from a trained checkpoint or a Hugging Face GPT-2, streaming it as it is produced.

python -m minigpt.sample --checkpoint runs/x --prompt "Once upon a time" --max-new-tokens 100
python -m minigpt.sample --hf path/to/gpt2 --prompt "Hello" --greedy
python -m minigpt.sample --checkpoint runs/base --adapter runs/finetune/adapter.pt --prompt "Hello"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from minigpt.checkpoint import CheckpointError, load_checkpoint
from minigpt.lora import AdapterError, LoRAConfig, apply_lora, attach_adapter, load_adapter, merge_lora
from minigpt.model import GPT, GPTConfig


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
    checkpoint loads with its adapters. ``adapter`` attaches a LoRA adapter file to the model, which must be
    the base it was trained on; ``merge_adapter`` folds the adapters into the weights, so that generating
    costs what the base costs.
    """
    if (checkpoint is None) == (hf is None):
        raise ValueError("give exactly one of checkpoint and hf")
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=device)
        model = GPT(GPTConfig(**state["model_config"]))
        lora_config = LoRAConfig(**state.get("config", {}).get("lora", {}))
        if lora_config.rank:
            apply_lora(model, lora_config)
        model.load_state_dict(state["model"])
    else:
        from minigpt.hf import from_hf

        model = from_hf(hf)
    if adapter is not None:
        attach_adapter(model, load_adapter(adapter))
    if merge_adapter:
        merge_lora(model)
    return model.to(device).eval()


def default_tokenizer() -> str:
    """The local GPT-2 tokenizer under ``MINIGPT_DATA_DIR`` if set, else the Hub's ``gpt2``."""
    data_dir = os.environ.get("MINIGPT_DATA_DIR")
    return str(Path(data_dir) / "gpt2-tokenizer") if data_dir else "gpt2"


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
    parser.add_argument("--adapter", help="a LoRA adapter file (adapter.pt) trained on that base, to attach")
    parser.add_argument("--merge-adapter", action="store_true", help="fold the adapters into the weights")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--tokenizer", default=default_tokenizer(), help="tokenizer directory or Hub name")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(args.tokenizer)
    try:
        model = load_model_for_sampling(
            args.checkpoint, args.hf, args.device, adapter=args.adapter, merge_adapter=args.merge_adapter
        )
    except (AdapterError, CheckpointError) as err:
        parser.error(str(err))
    prompt_ids = tokenizer.encode(args.prompt)
    block_size = model.config.block_size
    if not prompt_ids:
        parser.error("the prompt is empty: give at least one token of text")
    if len(prompt_ids) > block_size:
        parser.error(f"the prompt is {len(prompt_ids)} tokens, longer than the context of {block_size}")

    generator = torch.Generator(device=args.device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=args.device)
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
