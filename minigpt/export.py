"""Export a trained MiniGPT as a Hugging Face model directory that ``transformers`` loads as it is.

python -m minigpt.export runs/tiny-<stamp> --out exports/tiny
python -m minigpt.export runs/base --adapter runs/finetune/adapter --merge-adapter --out exports/finetune

The directory holds ``config.json`` and ``model.safetensors`` (a ``GPT2LMHeadModel``),
``generation_config.json``, the run's tokenizer files and a ``README.md`` model card, so that
``AutoModelForCausalLM.from_pretrained(DIR)``, ``AutoTokenizer.from_pretrained(DIR)`` and
``pipeline("text-generation", model=DIR)`` work with no network. A LoRA run's adapter directory is already
in peft's format and loads on top of the exported base with ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from minigpt import checkpoint, data
from minigpt.checkpoint import CheckpointError
from minigpt.data import DataError
from minigpt.errors import first_line
from minigpt.hf import to_hf
from minigpt.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterError,
    attach_adapter,
    load_adapter,
    lora_layers,
    merge_lora,
)
from minigpt.model import GPT
from minigpt.sample import TEMPERATURE
from minigpt.tracking import Logger, can_connect

# The files a finished export always has; an existing --out directory without them is not ours to replace.
_EXPORT_MARKERS = ("config.json", "model.safetensors", "README.md")
# The final evaluations a run records (minigpt.train), in the order the model card lists them.
_EVALUATIONS = {
    "final_val": "validation",
    "final_test": "test",
    "final_val_sliding": "validation, sliding window",
    "final_test_sliding": "test, sliding window",
}


class ExportError(RuntimeError):
    """A model that Hugging Face GPT-2 cannot express, or an output directory that cannot be written."""


def export_run(
    source: str | Path, out_dir: str | Path, adapter: str | Path | None = None, merge_adapter: bool = False
) -> Path:
    """Write the model of ``source`` (a run directory, its newest checkpoint, or a ``ckpt-*.pt`` file) to
    ``out_dir`` as a Hugging Face model directory, and return ``out_dir``.

    ``adapter`` attaches a LoRA adapter directory first; adapters (attached, or a LoRA run's own) must be
    folded into the weights with ``merge_adapter``. The directory appears complete or not at all: it is
    written beside ``out_dir`` and renamed into place, replacing an earlier export.

    Raises ``ExportError`` for a model GPT-2 cannot express (post-LN, unmerged adapters) or an ``out_dir``
    that is something other than an export, ``CheckpointError`` / ``AdapterError`` for an unusable source
    or adapter, ``DataError`` for a tokenizer that cannot be found.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    state = checkpoint.load_checkpoint(source)
    model = checkpoint.build_model(state)
    adapter_info = None
    if adapter is not None:
        adapter_info = load_adapter(adapter)
        attach_adapter(model, adapter_info)
    if merge_adapter:
        if not lora_layers(model):
            raise ExportError(f"--merge-adapter: {state['path']} has no LoRA adapters and none was attached")
        merge_lora(model)
    try:
        hf_model = to_hf(model.cpu())
    except ValueError as e:
        raise ExportError(f"cannot export {state['path']} to Hugging Face GPT-2: {e}") from None
    tokenizer = data.load_tokenizer(checkpoint.data_config(state))
    if len(tokenizer) > model.config.vocab_size:
        raise ExportError(
            f"the run's tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}"
        )
    fit_to_tokenizer(hf_model, tokenizer)
    weights_record = _run_record(adapter_info.path.parent if adapter_info else Path(state["path"]).parent)
    card = model_card(model, state, weights_record, adapter_info)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        hf_model.eval().save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def log_model(logger: Logger, run_dir: Path, step: int, best: bool, merge_adapter: bool = False) -> Path:
    """Log the weights of the checkpoint of ``step`` as a version of the run's W&B model artifact
    (``<run>-model``), aliased ``latest``, ``step-N`` and, when ``best``, ``best``, with the run's summary so
    far as metadata; return what was logged.

    The weights go as the Hugging Face export (``model.safetensors``, config, tokenizer, card), staged in
    ``<run_dir>/wandb/model`` (beside W&B's own files, where analysis does not look for runs); a model GPT-2
    cannot express (post-LN) goes as its checkpoint file instead."""
    run_dir = Path(run_dir)
    source = checkpoint.checkpoint_path(run_dir, step)
    try:
        path = export_run(source, run_dir / "wandb" / "model", merge_adapter=merge_adapter)
    except ExportError as e:
        print(f"note: the W&B model artifact is the checkpoint, with optimizer state: {e}", file=sys.stderr)
        path = source
    aliases = ("latest", f"step-{step}", *(("best",) if best else ()))
    metadata = {**_run_record(run_dir)["summary"], "step": step}
    logger.artifact(path, f"{run_dir.name}-model", "model", aliases, metadata)
    return path


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` (an export or a shared adapter) to the Hub repository ``repo_id``, creating it if
    needed, and return its URL. Raises ``ExportError`` when the Hub does not answer or refuses."""
    from huggingface_hub import HfApi, constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if not can_connect(endpoint):
        raise ExportError(
            f"--push-to-hub: the Hub at {endpoint} is not reachable from here; the export is in {folder}, "
            f"upload it later with: hf upload {repo_id} {folder}"
        )
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload from MiniGPT")
    except Exception as e:  # noqa: BLE001 - every Hub failure (login, rights, network) ends the same way
        raise ExportError(f"--push-to-hub {repo_id}: the Hub refused the upload: {first_line(e)}") from None
    return f"{endpoint}/{repo_id}"


def share_adapter(source: str | Path, adapter: str | Path, base_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the LoRA ``adapter`` trained on the model of ``source`` to ``out_dir`` for peft users: its
    ``base_model_name_or_path`` becomes ``base_dir`` (the export of ``source``, absolute, or a Hub id naming
    where that export was uploaded), so ``AutoPeftModelForCausalLM.from_pretrained(out_dir)`` finds the base,
    and the folder gets a card of its own. Raises ``AdapterError`` for an adapter made for another base."""
    info = load_adapter(adapter)
    attach_adapter(checkpoint.build_model(checkpoint.load_checkpoint(source)), info)  # checks the base
    local = Path(base_dir)
    base = str(local.resolve()) if local.is_dir() else str(base_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(info.path / WEIGHTS_NAME, out_dir / WEIGHTS_NAME)
    peft_config = json.loads((info.path / CONFIG_NAME).read_text(encoding="utf-8"))
    peft_config["base_model_name_or_path"] = base
    (out_dir / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2), encoding="utf-8")
    c = info.config
    card = f"""---
base_model: {base}
library_name: peft
tags:
- minigpt
- lora
---

# LoRA adapter for {Path(base).name}

Rank {c.rank}, alpha {c.alpha:g}, on {", ".join(c.target_list)}; trained with MiniGPT
(step {info.step if info.step is not None else "unknown"}).

```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("{out_dir.name}")
```
"""
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    return out_dir


def fit_to_tokenizer(hf_model: Any, tokenizer: Any) -> None:
    """Make the export's tokenizer and generation config agree with the model: the tokenizer's length limit
    is the context; BOS and EOS are the tokenizer's own (when the vocabulary holds them); generation samples
    as ``minigpt.sample`` does by default and stops at the context, which the position embeddings cannot go
    past (GPT-2 has no sliding window)."""
    from transformers import GenerationConfig

    context, vocab = hf_model.config.n_positions, hf_model.config.vocab_size
    tokenizer.model_max_length = context

    def in_vocab(token_id: int | None) -> int | None:
        return token_id if token_id is not None and token_id < vocab else None

    bos, eos = in_vocab(tokenizer.bos_token_id), in_vocab(tokenizer.eos_token_id)
    hf_model.config.bos_token_id, hf_model.config.eos_token_id = bos, eos
    hf_model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=TEMPERATURE,
        top_k=0,  # transformers' own default would cut at 50; minigpt.sample does not cut
        max_length=context,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,  # GPT-2 has no padding token; EOS is the usual stand-in
    )


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; name a directory")
    holds_files = out_dir.is_dir() and any(out_dir.iterdir())
    if holds_files and not all((out_dir / name).is_file() for name in _EXPORT_MARKERS):
        raise ExportError(
            f"--out {out_dir} exists and is not an earlier export (it lacks one of "
            f"{', '.join(_EXPORT_MARKERS)}); name a new or empty directory"
        )


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an earlier export there is set aside first and removed only afterwards."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        target.rename(old / target.name)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- model card


def _run_record(run_dir: Path) -> dict[str, Any]:
    """``config.json`` and ``summary.json`` of a run directory, as far as they exist."""
    record = {}
    for name in ("config", "summary"):
        path = run_dir / f"{name}.json"
        try:
            record[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record[name] = {}
    return record


def _architecture(model: GPT) -> str:
    c = model.config
    return (
        f"GPT-2-style decoder-only transformer (MiniGPT): {c.n_layer} layers, width {c.n_embd}, {c.n_head} "
        f"heads, context {c.block_size} tokens, vocabulary {c.vocab_size}, pre-LN, "
        f"{'tied' if c.tie_embeddings else 'untied'} input and output embeddings, "
        f"{model.num_params():,} parameters. Stored as `GPT2LMHeadModel`"
        f"{'' if c.tie_embeddings else ' with `tie_word_embeddings=false`'}."
    )


def _dataset(config: dict[str, Any]) -> str:
    d = config.get("data", {})
    if not d:
        return "not recorded"
    if d.get("dataset") == "text":
        files = ", ".join(
            f"{k.removesuffix('_file')} `{d[k]}`" for k in ("train_file", "val_file", "test_file") if d.get(k)
        )
        source = f"plain text files ({files})"
    else:
        source = f"WikiText (`{d.get('dataset')}`)"
    return f"{source}, tokenizer `{d.get('tokenizer')}`"


def _evaluations(summary: dict[str, Any], step: int | None) -> list[str]:
    if not summary:
        return ["- not recorded (the run directory has no summary.json)"]
    if summary.get("step") != step:
        return [
            f"- not measured for these weights: the run's summary is for step {summary.get('step')}, "
            f"the exported weights are from step {step}"
        ]
    lines = []
    for prefix, name in _EVALUATIONS.items():
        if f"{prefix}/ppl" in summary:
            lines.append(
                f"- {name}: perplexity {summary[f'{prefix}/ppl']:.2f} over {summary[f'{prefix}/tokens']:,} "
                f"tokens, context {summary[f'{prefix}/context']}, stride {summary[f'{prefix}/stride']}"
            )
    return lines or ["- no final evaluation recorded"]


REPO_ROOT = Path(__file__).resolve().parent.parent
# The Hub's copy of the WikiText data sets, which the Hub links a model's evaluation results to.
WIKITEXT_HUB_ID = "Salesforce/wikitext"


def _shown_path(text: str) -> str:
    """``text`` with this repository's and the home folder's absolute paths made relative (``~`` for home),
    so a card shows no machine's layout."""
    return text.replace(f"{REPO_ROOT}/", "").replace(str(REPO_ROOT), ".").replace(str(Path.home()), "~")


def _shown_command(command: list[str]) -> str:
    """The recorded command as a person would type it: ``python`` for the interpreter, relative paths."""
    words = ["python" if i == 0 and Path(w).name.startswith("python") else w for i, w in enumerate(command)]
    return _shown_path(" ".join(words))


def _card_data(config: dict[str, Any], summary: dict[str, Any], step: int | None) -> Any:
    """The card's metadata, which the Hub reads: library, language, license, data set, base model of a
    fine-tune (when it is a Hub id) and, as ``model-index``, the perplexities measured on these weights."""
    from huggingface_hub import EvalResult, ModelCardData

    data_config = config.get("data", {})
    wikitext = data_config.get("dataset", "text") != "text"
    results = []
    if summary and summary.get("step") == step:
        for prefix, name in _EVALUATIONS.items():
            if f"{prefix}/ppl" in summary:
                results.append(
                    EvalResult(
                        task_type="text-generation",
                        dataset_type=WIKITEXT_HUB_ID if wikitext else "text",
                        dataset_name="WikiText" if wikitext else "plain text files",
                        dataset_config=data_config.get("dataset") if wikitext else None,
                        dataset_split="test" if prefix.startswith("final_test") else "validation",
                        metric_type="perplexity",
                        metric_name=f"perplexity ({name})",
                        metric_value=round(float(summary[f"{prefix}/ppl"]), 4),
                    )
                )
    init_from = config.get("init_from", "")
    hub_base = bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", init_from)) and not Path(init_from).exists()
    return ModelCardData(
        language="en",
        license="mit",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt2", "minigpt"],
        datasets=[WIKITEXT_HUB_ID] if wikitext else None,
        base_model=init_from if hub_base else None,
        model_name=config.get("name", "MiniGPT model"),
        eval_results=results or None,
    )


def model_card(model: GPT, state: dict[str, Any], record: dict[str, Any], adapter: Any | None = None) -> str:
    """The ``README.md`` of an export: what the model is, what it was trained on, how well it does, how it
    was made, and what it is for. ``record`` is the run record of the run that produced the weights (the
    adapter's run when an adapter is merged)."""
    config = record["config"] or state.get("config", {})
    run = config.get("_run", {})
    step = adapter.step if adapter is not None else state.get("step")
    batch_size = state.get("config", {}).get("train", {}).get("batch_size")
    steps = f"{state.get('step')} optimizer steps"
    trained = (
        f"{state.get('step', 0) * batch_size * model.config.block_size:,} tokens ({steps})"
        if batch_size
        else steps
    )
    if adapter is not None:
        shown = _shown_path(str(adapter.path))
        trained += f" for the base; then the LoRA adapter `{shown}` (step {adapter.step}), merged"
    elif lora_layers(model):
        trained += " of LoRA fine-tuning, adapters merged into the base weights"
    command = _shown_command(run["command"]) if run.get("command") else "not recorded"
    lines = [
        "---",
        _card_data(config, record["summary"], step).to_yaml(),
        "---",
        "",
        f"# {config.get('name', 'MiniGPT model')}",
        "",
        "A small GPT-2-style language model trained with MiniGPT, exported by `python -m minigpt.export`.",
        "",
        *(
            [f"- **Initialised from**: `{_shown_path(config['init_from'])}`"]
            if config.get("init_from")
            else []
        ),
        f"- **Architecture**: {_architecture(model)}",
        f"- **Data set**: {_shown_path(_dataset(config))}",
        f"- **Tokens trained**: {trained}",
        f"- **Exported from**: `{_shown_path(str(state['path']))}`",
        f"- **Commit**: `{run.get('git_commit') or 'not recorded'}`",
        f"- **Command**: `{command}`",
        "",
        "## Evaluation",
        "",
        "Perplexity is exp(mean next-token loss) over the tokens stated: the whole split, unless the run "
        "capped evaluation with `train.eval_max_tokens`. Windows of `context` tokens advance by `stride`; "
        "with a stride below the context, every scored token after the first window sees at least "
        "`context - stride` earlier tokens.",
        "",
        *_evaluations(record["summary"], step),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'generate = pipeline("text-generation", model="path/to/this/directory")',
        'print(generate("The history of", max_new_tokens=40)[0]["generated_text"])',
        "```",
        "",
        "## Intended use and limits",
        "",
        "A research and teaching artefact: for studying training dynamics, ablations and tooling on small "
        "models. It is small and trained on little data, so its text is often ungrammatical or false; it "
        "has no instruction tuning or safety training and reproduces the biases of its training text. Do "
        "not use it to produce facts, advice or text shown to people as authoritative.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="a run directory (its newest checkpoint) or a ckpt-*.pt file")
    parser.add_argument("--out", required=True, help="the Hugging Face model directory to write")
    parser.add_argument("--adapter", help="a LoRA adapter directory (<run dir>/adapter) to attach first")
    parser.add_argument("--merge-adapter", action="store_true", help="fold the adapters into the weights")
    parser.add_argument(
        "--adapter-out",
        help="export the base to --out and copy --adapter here for peft, naming --out as its base",
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="then upload the export (or --adapter-out) here"
    )
    args = parser.parse_args(argv)
    if args.adapter_out and (not args.adapter or args.merge_adapter):
        parser.error("--adapter-out shares an unmerged adapter: give --adapter and not --merge-adapter")
    try:
        if args.adapter_out:
            out = export_run(args.source, args.out)
            shared = share_adapter(args.source, args.adapter, out, args.adapter_out)
            print(f"adapter for peft in {shared}, its base in {out}")
        else:
            out = export_run(args.source, args.out, adapter=args.adapter, merge_adapter=args.merge_adapter)
        print(f"exported to {out}")
        if args.push_to_hub:
            print(f"uploaded to {push_to_hub(Path(args.adapter_out or out), args.push_to_hub)}")
    except (ExportError, CheckpointError, AdapterError, DataError) as err:
        parser.error(str(err))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
