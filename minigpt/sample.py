"""Generate text from a trained checkpoint or a Hugging Face GPT-2, streaming it as it is produced.

python -m minigpt.sample --checkpoint runs/x --prompt "Once upon a time" --max-new-tokens 100
python -m minigpt.sample --hf path/to/gpt2 --prompt "Hello" --greedy
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from minigpt.checkpoint import load_checkpoint
from minigpt.model import GPT, GPTConfig


def load_model_for_sampling(
    checkpoint: str | Path | None = None, hf: str | Path | None = None, device: str = "cpu"
) -> GPT:
    """An eval-mode GPT from exactly one source: a project checkpoint or a Hugging Face GPT-2.

    A checkpoint is a ``ckpt-*.pt`` file of a run, or a run directory (its newest checkpoint), read by
    ``minigpt.checkpoint.load_checkpoint`` (plain tensors and data only, never pickled code).
    """
    if (checkpoint is None) == (hf is None):
        raise ValueError("give exactly one of checkpoint and hf")
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=device)
        model = GPT(GPTConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    else:
        from minigpt.hf import from_hf

        model = from_hf(hf)
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
    model = load_model_for_sampling(args.checkpoint, args.hf, args.device)
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
