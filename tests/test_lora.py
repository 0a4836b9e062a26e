"""LoRA: starts as the base, equals peft's LoRA, merges exactly, trains only adapters, checks its base."""

import copy
import dataclasses
import json
import lzma
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from minigpt import checkpoint, lora
from minigpt.config import ConfigError, ExperimentConfig, apply_overrides
from minigpt.hf import to_hf
from minigpt.lora import AdapterError, LoRAConfig
from minigpt.model import GPT, GPTConfig
from minigpt.sample import load_model_for_sampling
from minigpt.train import load_base, run

TINY = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny_base(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():  # biases and LayerNorms start as constants: randomise them too
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        for rows in (model.transformer.wte.weight, model.lm_head.weight):
            rows[config.vocab_size :] = 0  # the vocabulary's padding is zero in any model, trained or not
    return model


def randomise_adapters(model: GPT) -> None:
    """B starts at zero, which would hide every mistake in the adapter path; give A and B random values."""
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_A.normal_(0, 0.3)
            layer.lora_B.normal_(0, 0.3)


def logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


IDX = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))


def test_lora_model_starts_with_the_base_models_logits():
    base = tiny_base()
    adapted = copy.deepcopy(base)
    names = lora.apply_lora(adapted, LoRAConfig(rank=4, alpha=8))
    assert len(names) == 2 * 4  # four projections in each of two blocks
    assert torch.equal(logits(adapted, IDX), logits(base, IDX))
    assert all(layer.lora_A.abs().sum() > 0 for layer in lora.lora_layers(adapted).values())


@pytest.mark.parametrize(
    "targets",
    ["c_attn,c_proj,c_fc", "attn.c_proj", "c_attn,mlp.c_proj"],
    ids=["all", "attn-out", "qkv+mlp-out"],
)
def test_outputs_equal_peft_lora_with_the_same_weights(targets):
    base = tiny_base()
    config = LoRAConfig(rank=3, alpha=5.0, targets=targets)
    ours = copy.deepcopy(base)
    names = lora.apply_lora(ours, config)
    randomise_adapters(ours)

    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=config.target_list,
        lora_dropout=0.0,
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights as (in, out)
    )
    theirs = get_peft_model(to_hf(base), peft_config).eval()
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in theirs.named_modules()
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    }
    assert sorted(peft_layers) == sorted(names)
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours).items():
            # peft keeps A as Linear(in, r) and B as Linear(r, out): weights (r, in) and (out, r), as ours.
            peft_layers[name].lora_A["default"].weight.copy_(layer.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(layer.lora_B)
        expected = theirs(IDX).logits
    assert not torch.allclose(expected, logits(base, IDX), atol=1e-3)  # the adapters do change the output
    assert torch.allclose(logits(ours, IDX), expected, atol=1e-5, rtol=0)


def test_merged_equals_unmerged_and_unmerge_restores_the_base():
    base = tiny_base()
    adapted = copy.deepcopy(base)
    lora.apply_lora(adapted, LoRAConfig(rank=4, alpha=8))
    randomise_adapters(adapted)
    unmerged = logits(adapted, IDX)
    lora.merge_lora(adapted)
    assert torch.allclose(logits(adapted, IDX), unmerged, atol=1e-5, rtol=0)
    lora.unmerge_lora(adapted)
    for key, value in base.state_dict().items():
        assert torch.allclose(adapted.state_dict()[key], value, atol=1e-6, rtol=0), key


def test_only_adapter_parameters_get_gradients_and_change():
    model = tiny_base()
    lora.apply_lora(model, LoRAConfig(rank=2, alpha=4, adapter_dropout=0.1))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.optimizer_param_groups(weight_decay=0.0), lr=1e-2)
    optimised = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in model.parameters() if p.requires_grad}
    layers = lora.lora_layers(model).values()
    for step in range(2):
        optimizer.zero_grad()
        _, loss = model(IDX, IDX)
        loss.backward()
        for name, param in model.named_parameters():
            is_adapter = name.endswith((".lora_A", ".lora_B"))
            assert param.requires_grad == is_adapter, name
            assert (param.grad is not None) == is_adapter, name
        # B starts at zero, so the first step moves only B (A's gradient is B^T times something); once B is
        # non-zero, the gradient reaches A through it. Weight decay is 0, so only a gradient can move A.
        assert all((layer.lora_A.grad.abs().max() > 0) == (step > 0) for layer in layers)
        assert all(layer.lora_B.grad.abs().max() > 0 for layer in layers)
        optimizer.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) != key.endswith((".lora_A", ".lora_B")), key


def test_adapter_directory_is_small_round_trips_and_is_in_peft_format(tmp_path):
    base = tiny_base()
    adapted = copy.deepcopy(base)
    config = LoRAConfig(rank=2, alpha=4, targets="c_attn")
    lora.apply_lora(adapted, config)
    randomise_adapters(adapted)
    directory = lora.save_adapter(tmp_path / "adapter", adapted, config, "runs/base", step=5)
    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_config = json.loads((directory / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["fan_in_fan_out"] is True
    assert (peft_config["r"], peft_config["lora_alpha"], peft_config["target_modules"]) == (2, 4, ["c_attn"])
    saved = load_file(directory / "adapter_model.safetensors")
    prefix = "base_model.model.transformer.h"
    assert set(saved) == {f"{prefix}.{i}.attn.c_attn.lora_{p}.weight" for i in (0, 1) for p in "AB"}
    # Two blocks of A (2, 16) and B (48, 2): 256 floats, against the base's 6,000-odd.
    assert sum(t.numel() for t in saved.values()) == 2 * (2 * 16 + 48 * 2)
    assert lora.adapter_size(directory) < 0.25 * sum(t.numel() * 4 for t in base.state_dict().values())

    restored = copy.deepcopy(base)
    adapter = lora.load_adapter(directory)
    assert (adapter.step, adapter.base_source, adapter.config) == (5, "runs/base", config)
    lora.attach_adapter(restored, adapter)
    assert torch.equal(logits(restored, IDX), logits(adapted, IDX))


@pytest.fixture
def saved_adapter(tmp_path):
    model = tiny_base()
    config = LoRAConfig(rank=2, alpha=4)
    lora.apply_lora(model, config)
    return lora.save_adapter(tmp_path / "adapter", model, config, "runs/base")


def rewrite_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "adapter_config.json").unlink(), "has no adapter_config.json"),
        (
            lambda d: (d / "adapter_model.safetensors").write_bytes(
                (d / "adapter_model.safetensors").read_bytes()[:200]
            ),
            "not a loadable safetensors file",
        ),
        (lambda d: (d / "adapter_config.json").write_text("{not json"), "not a readable adapter config"),
        (lambda d: rewrite_config(d, peft_type="IA3"), "not a LoRA adapter config.*'IA3'"),
        (lambda d: rewrite_config(d, use_dora=True), "use_dora=True"),
        (lambda d: rewrite_config(d, target_modules=".*c_attn"), "regular expression"),
        (lambda d: rewrite_config(d, target_modules=["c_attn"]), "does not fit this model"),
        (
            lambda d: save_file(
                {"transformer.wte.weight": torch.zeros(2, 2)}, d / "adapter_model.safetensors"
            ),
            "'transformer.wte.weight', which is not a LoRA factor",
        ),
    ],
    ids=[
        "missing",
        "no-config",
        "truncated",
        "bad-json",
        "other-peft-type",
        "dora",
        "regex",
        "targets",
        "foreign-weights",
    ],
)
def test_damaged_or_foreign_adapters_are_refused_with_a_clear_error(saved_adapter, damage, message):
    damage(saved_adapter)
    with pytest.raises(AdapterError, match=message):
        lora.attach_adapter(tiny_base(), lora.load_adapter(saved_adapter))


def test_a_file_in_place_of_an_adapter_directory_is_refused(tmp_path):
    old_format = tmp_path / "adapter.pt"
    torch.save({"format": "minigpt-lora-adapter", "adapters": {}}, old_format)
    with pytest.raises(AdapterError, match="is a file, but an adapter is a directory"):
        lora.load_adapter(old_format)


def test_attaching_an_adapter_to_another_base_is_refused(tmp_path):
    adapted = tiny_base(seed=0)
    config = LoRAConfig(rank=2, alpha=4)
    lora.apply_lora(adapted, config)
    path = lora.save_adapter(tmp_path / "adapter.pt", adapted, config, "runs/base-a")
    other = tiny_base(seed=1)
    with pytest.raises(AdapterError, match="trained on another base model.*runs/base-a"):
        lora.attach_adapter(other, lora.load_adapter(path))
    assert not lora.lora_layers(other)


def test_baseline_adapter_size_at_rank_8():
    """The figure quoted for the 6-layer, 512-wide baseline: 393,216 adapter parameters, 1.5 MiB in fp32."""
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=512, n_layer=6, n_head=8, n_embd=512))
        lora.apply_lora(model, LoRAConfig(rank=8, alpha=16))
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Per block, r * (in + out): c_attn 8 * (512 + 1536), attn.c_proj 8 * (512 + 512), c_fc and mlp.c_proj
    # 8 * (512 + 2048) each. Against 44.9M base parameters: 0.88%.
    assert adapter == 6 * 8 * (2048 + 1024 + 2560 + 2560) == 393_216
    assert model.num_params() - adapter == 44_909_056


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"lora.rank": -1}, "lora.rank"),
        ({"lora.alpha": 0}, "lora.alpha"),
        ({"lora.adapter_dropout": 1.0}, "lora.adapter_dropout"),
        ({"lora.targets": "c_attn,q_proj"}, "lora.targets.*'q_proj'"),
        ({"lora.targets": ""}, "lora.targets"),
    ],
)
def test_bad_lora_settings_are_rejected_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        apply_overrides(ExperimentConfig(), override)


# ----------------------------------------------------------------------------------------------- end to end


def finetune_config(tmp_path, data_root, init_from: str, **train) -> ExperimentConfig:
    with lzma.open(
        data_root / "wikitext-2-raw-v1" / "wiki.valid.raw.xz", "rt", encoding="utf-8", newline=""
    ) as f:
        corpus = f.read(40_000)
    (tmp_path / "train.txt").write_text(corpus[:30_000])
    (tmp_path / "val.txt").write_text(corpus[30_000:])
    return apply_overrides(
        ExperimentConfig(name="lora-test"),
        {
            "init_from": init_from,
            "lora.rank": 4,
            "lora.alpha": 8,
            "data.dataset": "text",
            "data.train_file": str(tmp_path / "train.txt"),
            "data.val_file": str(tmp_path / "val.txt"),
            "data.data_dir": str(data_root),
            "data.cache_dir": str(tmp_path / "cache"),
            "train.device": "cpu",
            "train.batch_size": 4,
            "train.micro_batch_size": 4,
            "train.max_steps": 4,
            "train.warmup_steps": 0,
            "train.lr": 1e-2,
            "train.eval_interval": 0,
            "train.ckpt_interval": 2,
            "log.out_dir": str(tmp_path / "runs"),
            "log.run_name": "finetune",
            "log.wandb": "disabled",
            **train,
        },
    )


@pytest.fixture
def base_run(tmp_path):
    """A saved MiniGPT checkpoint with the GPT-2 vocabulary, as a trained base would be."""
    config = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)
    model = tiny_base(config=config)
    run_dir = tmp_path / "base"
    checkpoint.save_checkpoint(
        run_dir, {"step": 0, "model": model.state_dict(), "model_config": dataclasses.asdict(config)}
    )
    return run_dir, model


@pytest.mark.slow
def test_run_fine_tunes_from_a_checkpoint_writes_the_adapter_and_resumes(tmp_path, data_root, base_run):
    base_dir, base = base_run
    # The experiment's own architecture (GPT-2 small by default) gives way to the base's; dropout does not.
    config = finetune_config(tmp_path, data_root, str(base_dir), **{"model.dropout": 0.1})
    summary = run(config)
    run_dir = tmp_path / "runs" / "finetune"
    saved_config = json.loads((run_dir / "config.json").read_text())
    assert saved_config["model"]["n_embd"] == 16 and saved_config["model"]["dropout"] == 0.1
    assert saved_config["_run"]["params_trainable"] == 1 * 4 * (16 + 48 + 16 + 16 + 16 + 64 + 64 + 16)
    assert summary["val_before/ppl"] > 0 and summary["final_val/ppl"] < summary["val_before/ppl"]
    assert summary["adapter_bytes"] == lora.adapter_size(run_dir / "adapter") < 20_000

    adapter = lora.load_adapter(run_dir / "adapter")
    assert adapter.step == 4 and adapter.base_fingerprint == lora.base_fingerprint(base)
    # The adapter on its base, merged or not, and the run's own checkpoint all generate the same tokens.
    prompt = torch.tensor([[464, 3290, 318]])
    outputs = [
        load_model_for_sampling(checkpoint=base_dir, adapter=run_dir / "adapter").generate(
            prompt, 8, do_sample=False
        ),
        load_model_for_sampling(
            checkpoint=base_dir, adapter=run_dir / "adapter", merge_adapter=True
        ).generate(prompt, 8, do_sample=False),
        load_model_for_sampling(checkpoint=run_dir).generate(prompt, 8, do_sample=False),
    ]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])

    # Resume from the step-4 checkpoint for two more steps: the base stays frozen, the adapters move on.
    resumed = run(apply_overrides(config, {"train.max_steps": 6}), resume=str(run_dir))
    after = lora.load_adapter(run_dir / "adapter")
    assert after.step == 6 and after.base_fingerprint == adapter.base_fingerprint
    key = "transformer.h.0.mlp.c_fc.lora_B"
    assert not torch.equal(after.tensors[key], adapter.tensors[key])
    assert resumed["val_before/ppl"] == summary["val_before/ppl"]


def test_init_from_reads_a_hugging_face_directory_and_refuses_a_lora_run(tmp_path, base_run):
    base = tiny_base()
    to_hf(base).save_pretrained(tmp_path / "hf")
    config, weights = load_base(str(tmp_path / "hf"))
    assert config == TINY
    assert all(torch.equal(weights[key], value) for key, value in base.state_dict().items())

    base_dir, model = base_run
    lora.apply_lora(model, LoRAConfig(rank=2))
    checkpoint.save_checkpoint(
        tmp_path / "lora-run", {"step": 1, "model": model.state_dict(), "model_config": {}}
    )
    with pytest.raises(ConfigError, match="is a LoRA fine-tune"):
        load_base(str(tmp_path / "lora-run"))
    with pytest.raises(ConfigError, match="neither a MiniGPT checkpoint"):
        load_base(str(tmp_path / "nothing-here"))


def test_lora_without_a_base_is_refused(tmp_path, data_root):
    config = finetune_config(tmp_path, data_root, "")
    with pytest.raises(ConfigError, match="init_from"):
        run(config)
