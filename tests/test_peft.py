"""peft interop both ways: a MiniGPT adapter loads in peft on the exported base, a peft adapter trained on
Hugging Face GPT-2 attaches to the converted model, and LoRA's backward pass equals peft's."""

import copy
import dataclasses
import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from test_lora import randomise_adapters, tiny_base
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from minigpt import checkpoint, lora
from minigpt.export import main, share_adapter
from minigpt.hf import from_hf, to_hf
from minigpt.lora import LoRAConfig
from minigpt.model import GPTConfig

GPT2_VOCAB = GPTConfig(vocab_size=50257, block_size=16, n_layer=2, n_head=2, n_embd=16)


def peft_factors(peft_model) -> dict[str, torch.nn.Module]:
    """peft's adapted layers by our layer path."""
    return {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if "default" in getattr(module, "lora_A", {})
    }


def test_peft_adapter_trained_on_hf_gpt2_attaches_to_the_converted_model(tmp_path):
    hf_config = GPT2Config(vocab_size=101, n_positions=24, n_layer=2, n_head=2, n_embd=24, bos_token_id=0)
    hf = GPT2LMHeadModel(hf_config).eval()
    ours = from_hf(hf).eval()
    peft_config = LoraConfig(
        r=4, lora_alpha=6, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.1, fan_in_fan_out=True
    )
    theirs = get_peft_model(hf, peft_config)
    with torch.no_grad():  # peft starts B at zero: give it values so the adapter matters
        for layer in peft_factors(theirs).values():
            layer.lora_B["default"].weight.normal_(0, 0.3)
    theirs.save_pretrained(tmp_path / "peft-adapter")

    adapter = lora.load_adapter(tmp_path / "peft-adapter")
    assert adapter.base_fingerprint is None and adapter.config.adapter_dropout == 0.1
    lora.attach_adapter(ours, adapter)
    assert len(lora.lora_layers(ours)) == 2 * 4
    idx = torch.randint(0, 101, (3, 24))
    with torch.no_grad():
        expected = theirs.eval()(idx).logits
        assert torch.allclose(ours.eval()(idx)[0], expected, atol=1e-5, rtol=0)


def lora_gradients(model, idx, seed: int, hf: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Gradients of every layer's A and B after one forward and backward pass in training mode."""
    model.train().zero_grad()
    torch.manual_seed(seed)
    if hf:
        model(idx, labels=idx).loss.backward()
        layers = peft_factors(model)
        return {
            n: (m.lora_A["default"].weight.grad, m.lora_B["default"].weight.grad) for n, m in layers.items()
        }
    targets = torch.cat([idx[:, 1:], torch.full((idx.size(0), 1), -100)], dim=1)  # HF shifts its labels
    model(idx, targets)[1].backward()
    return {n: (m.lora_A.grad, m.lora_B.grad) for n, m in lora.lora_layers(model).items()}


def test_backward_pass_equals_peft_with_adapter_dropout():
    """The only randomness is the adapter dropout (the base's dropout is 0), and both models draw its masks
    in the same order with the same shapes, so one seed gives both the same masks."""
    base = tiny_base()
    config = LoRAConfig(rank=3, alpha=5.0, adapter_dropout=0.3)
    ours = copy.deepcopy(base)
    lora.apply_lora(ours, config)
    randomise_adapters(ours)  # B non-zero, so A's gradient is non-zero
    peft_config = LoraConfig(
        r=3, lora_alpha=5.0, target_modules=config.target_list, lora_dropout=0.3, fan_in_fan_out=True
    )
    theirs = get_peft_model(to_hf(base), peft_config)
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours).items():
            peft_factors(theirs)[name].lora_A["default"].weight.copy_(layer.lora_A)
            peft_factors(theirs)[name].lora_B["default"].weight.copy_(layer.lora_B)
    idx = torch.randint(0, 97, (2, 16))

    mine = lora_gradients(ours, idx, seed=3, hf=False)
    expected = lora_gradients(theirs, idx, seed=3, hf=True)
    assert sorted(mine) == sorted(expected)
    for name, (grad_a, grad_b) in mine.items():
        assert grad_a.abs().max() > 1e-4 and grad_b.abs().max() > 1e-4, name
        assert torch.allclose(grad_a, expected[name][0], atol=1e-5, rtol=1e-4), name
        assert torch.allclose(grad_b, expected[name][1], atol=1e-5, rtol=1e-4), name
    # The dropout masks matter: another seed gives other gradients, so the equality above is not vacuous.
    other = lora_gradients(ours, idx, seed=4, hf=False)
    assert not torch.allclose(other["transformer.h.0.attn.c_attn"][0], mine["transformer.h.0.attn.c_attn"][0])


def test_a_minigpt_adapter_loads_in_peft_on_the_exported_base_and_autopeft_finds_that_base(
    tmp_path, tokenizer_dir
):
    base = tiny_base(config=GPT2_VOCAB)
    state = {
        "step": 0,
        "model": base.state_dict(),
        "model_config": dataclasses.asdict(GPT2_VOCAB),
        "config": {"data": {"tokenizer": str(tokenizer_dir)}},
    }
    checkpoint.save_checkpoint(tmp_path / "base", state)
    ours = copy.deepcopy(base)
    config = LoRAConfig(rank=2, alpha=4.0, targets="c_attn")
    lora.apply_lora(ours, config)
    randomise_adapters(ours)
    lora.save_adapter(tmp_path / "adapter", ours, config, str(tmp_path / "base"), step=3)
    args = [str(tmp_path / "base"), "--out", str(tmp_path / "hf"), "--adapter", str(tmp_path / "adapter")]
    main([*args, "--adapter-out", str(tmp_path / "shared")])

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    loaded = PeftModel.from_pretrained(exported, tmp_path / "adapter")
    assert sorted(peft_factors(loaded)) == sorted(lora.lora_layers(ours))
    theirs = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "shared")
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        expected = theirs.eval()(idx).logits
        assert not torch.allclose(expected, base(idx)[0], atol=1e-3)  # the adapter does change the output
        assert torch.allclose(ours(idx)[0], expected, atol=1e-5, rtol=0)
        assert torch.allclose(loaded.eval()(idx).logits, expected, atol=1e-6, rtol=0)
    card = (tmp_path / "shared" / "README.md").read_text()
    assert f"base_model: {(tmp_path / 'hf').resolve()}" in card and "library_name: peft" in card
    # Once the base is on the Hub, its id goes in instead of the local folder.
    share_adapter(tmp_path / "base", tmp_path / "adapter", "me/tiny-base", tmp_path / "hub")
    assert json.loads((tmp_path / "hub" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "me/tiny-base"
    )


def test_adapter_out_without_an_adapter_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["runs/x", "--out", str(tmp_path / "hf"), "--adapter-out", str(tmp_path / "a")])
    assert stopped.value.code == 2 and "--adapter-out shares an unmerged adapter" in capsys.readouterr().err
