"""python -m minigpt.sample finds the tokenizer the model was trained with and the best device, and reports
a wrong checkpoint or adapter path as a usage error."""

import dataclasses
import shutil

import pytest
import torch
from test_lora import tiny_base

from minigpt import checkpoint, lora, sample
from minigpt.export import export_run
from minigpt.lora import LoRAConfig
from minigpt.model import GPTConfig
from minigpt.perf import pick_device

GPT2_TINY = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def run_dir(tmp_path, tokenizer_dir):
    """A run whose config names its tokenizer by a path found nowhere else."""
    own_tokenizer = shutil.copytree(tokenizer_dir, tmp_path / "the-runs-tokenizer")
    model = tiny_base(config=GPT2_TINY)
    state = {
        "step": 1,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(GPT2_TINY),
        "config": {"data": {"tokenizer": str(own_tokenizer)}},
    }
    checkpoint.save_checkpoint(tmp_path / "run", state)
    return tmp_path / "run"


@pytest.fixture
def no_default_tokenizer(tmp_path, monkeypatch):
    """Without an asset root, the default tokenizer (``gpt2``) could only come from the Hub, which is
    offline: a command that works has found the model's own tokenizer."""
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "no-assets"))


GREEDY = ["--prompt", "Hello world", "--max-new-tokens", "4", "--greedy"]


def test_checkpoint_samples_with_the_runs_tokenizer(run_dir, no_default_tokenizer):
    texts = sample.main(["--checkpoint", str(run_dir), *GREEDY])
    assert texts[0].startswith("Hello world") and len(texts[0]) > len("Hello world")


def test_hf_directory_samples_with_its_own_tokenizer(run_dir, tmp_path, no_default_tokenizer):
    exported = export_run(run_dir, tmp_path / "export")
    texts = sample.main(["--hf", str(exported), *GREEDY])
    assert texts == sample.main(["--checkpoint", str(run_dir), *GREEDY])


def test_hf_directory_without_a_tokenizer_asks_for_one(run_dir, tmp_path, tokenizer_dir, capsys):
    exported = export_run(run_dir, tmp_path / "export")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (exported / name).unlink()
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--hf", str(exported), *GREEDY])
    assert exit_info.value.code == 2 and "--tokenizer" in capsys.readouterr().err
    assert sample.main(["--hf", str(exported), "--tokenizer", str(tokenizer_dir), *GREEDY])


def test_device_defaults_to_the_best_available(run_dir, monkeypatch):
    asked = []
    monkeypatch.setattr(
        sample, "pick_device", lambda name, key="--device": asked.append(name) or pick_device(name, key)
    )
    sample.main(["--checkpoint", str(run_dir), *GREEDY])
    assert asked == ["auto"]
    model, _ = sample.load_for_sampling(checkpoint=run_dir, device="auto")
    assert model.transformer.wte.weight.device.type == pick_device("auto").type


def test_adapter_directory_samples_like_the_lora_model(run_dir, tmp_path):
    adapted = checkpoint.build_model(checkpoint.load_checkpoint(run_dir))
    config = LoRAConfig(rank=2, alpha=4)
    lora.apply_lora(adapted, config)
    with torch.no_grad():
        for layer in lora.lora_layers(adapted).values():
            layer.lora_B.normal_(0, 0.5)
    lora.save_adapter(tmp_path / "adapter", adapted, config, str(run_dir))
    model, _ = sample.load_for_sampling(checkpoint=run_dir, adapter=tmp_path / "adapter")
    idx = torch.randint(0, 50257, (1, 8))
    assert torch.equal(model.generate(idx, 6, do_sample=False), adapted.generate(idx, 6, do_sample=False))


@pytest.mark.parametrize(
    ("option", "make_path", "message"),
    [
        ("--checkpoint", lambda d: d / "missing", "does not exist"),
        ("--checkpoint", lambda d: d, "no checkpoint"),
        ("--checkpoint", lambda d: (d / "a.txt").write_text("hi") and d / "a.txt", "not a loadable MiniGPT"),
        (
            "--checkpoint",
            lambda d: torch.save({"w": torch.zeros(1)}, d / "x.pt") or d / "x.pt",
            "no 'minigpt",
        ),
        ("--adapter", lambda d: d / "missing", "does not exist"),
        ("--adapter", lambda d: d, "has no adapter_config.json"),
        ("--adapter", lambda d: (d / "a.txt").write_text("hi") and d / "a.txt", "is a file"),
        ("--hf", lambda d: d, "not a loadable Hugging Face GPT-2"),
    ],
)
def test_wrong_paths_are_usage_errors(run_dir, tmp_path, capsys, option, make_path, message):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = str(make_path(elsewhere))
    argv = ["--checkpoint", str(run_dir), "--adapter", path] if option == "--adapter" else [option, path]
    with pytest.raises(SystemExit) as exit_info:
        sample.main([*argv, *GREEDY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error:" in err and message in err and "Traceback" not in err


def test_truncated_checkpoint_is_a_usage_error(run_dir, capsys):
    ckpt = checkpoint.list_checkpoints(run_dir)[-1][1]
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--checkpoint", str(ckpt), *GREEDY])
    assert exit_info.value.code == 2 and "truncated" in capsys.readouterr().err
