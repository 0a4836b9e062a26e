"""Our GPT against Hugging Face's GPT2LMHeadModel: conversion both ways, logits, loss, generation."""

import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, pipeline

from minigpt.hf import from_hf, to_hf
from minigpt.lora import LoRAConfig, apply_lora, lora_layers, merge_lora
from minigpt.model import GPT, GPTConfig

HF_CONFIGS = {
    "one-head": dict(n_layer=1, n_head=1, n_embd=16),
    "odd-sizes": dict(n_layer=2, n_head=3, n_embd=36),
    "untied": dict(n_layer=3, n_head=2, n_embd=24, tie_word_embeddings=False),
    "eps": dict(n_layer=2, n_head=4, n_embd=32, layer_norm_epsilon=1e-3),
}


def random_hf(name: str, attn_implementation: str = "eager", n_positions: int = 24) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=101, n_positions=n_positions, bos_token_id=0, eos_token_id=0, **HF_CONFIGS[name]
    )
    config._attn_implementation = attn_implementation
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises biases and LayerNorms to constants: randomise them too
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("name", HF_CONFIGS)
@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_from_hf_logits_and_loss_match(name, attention):
    hf = random_hf(name)
    ours = from_hf(hf, attention=attention).eval()
    assert ours.config.tie_embeddings == hf.config.tie_word_embeddings
    idx = torch.randint(0, 101, (3, 24))
    with torch.no_grad():
        hf_out = hf(idx, labels=idx)
        logits, _ = ours(idx)
        # HF shifts labels inside; we take targets already shifted, with -100 where there is no next token.
        targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)
        _, loss = ours(idx, targets)
    assert torch.allclose(logits, hf_out.logits, atol=1e-5, rtol=0)
    assert torch.allclose(loss, hf_out.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", HF_CONFIGS)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_to_hf_logits_match_and_round_trip(name, attn_implementation):
    hf = random_hf(name)
    ours = from_hf(hf).eval()
    back = to_hf(ours, attn_implementation=attn_implementation).eval()
    assert back.config._attn_implementation == attn_implementation
    idx = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        assert torch.allclose(back(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)
    hf_sd, back_sd = hf.state_dict(), back.state_dict()
    assert hf_sd.keys() == back_sd.keys()
    assert all(torch.equal(hf_sd[k], back_sd[k]) for k in hf_sd)
    again = from_hf(back)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())


def test_to_hf_of_a_native_model_matches():
    ours = GPT(GPTConfig(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        assert torch.allclose(to_hf(ours).eval()(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)


def test_bias_free_model_converts_with_zero_biases():
    ours = GPT(GPTConfig(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)).eval()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if name.endswith("ln_1.weight"):
                param.mul_(1.5)
    hf = to_hf(ours).eval()
    assert all(torch.all(p == 0) for n, p in hf.named_parameters() if n.endswith(".bias"))
    idx = torch.randint(0, 101, (1, 16))
    with torch.no_grad():
        assert torch.allclose(hf(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)
    assert from_hf(hf).config.bias


def test_post_ln_has_no_hf_equivalent():
    ours = GPT(GPTConfig(vocab_size=101, block_size=16, n_layer=1, n_head=2, n_embd=16, norm_position="post"))
    with pytest.raises(ValueError, match="norm_position='post'.*pre-LN.*--checkpoint.*norm_position=pre"):
        to_hf(ours)


@pytest.mark.parametrize(
    ("field", "message"), [("embedding_norm", "embedding_norm.*LayerNorm"), ("head_bias", "head_bias.*bias")]
)
def test_layers_gpt2_lacks_are_refused_naming_them(field, message):
    ours = GPT(GPTConfig(vocab_size=101, block_size=16, n_layer=1, n_head=2, n_embd=16, **{field: True}))
    with pytest.raises(ValueError, match=f"{message}.*--checkpoint"):
        to_hf(ours)


def test_unmerged_lora_adapters_are_refused_naming_merge_adapter():
    ours = GPT(GPTConfig(vocab_size=101, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    apply_lora(ours, LoRAConfig(rank=2))
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.lora_B.normal_()
    with pytest.raises(ValueError, match="not merged.*--merge-adapter"):
        to_hf(ours)
    merge_lora(ours)
    idx = torch.randint(0, 101, (1, 16))
    with torch.no_grad():
        assert torch.allclose(to_hf(ours).eval()(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)


def test_unsupported_hf_variants_are_rejected():
    hf = random_hf("one-head")
    hf.config.activation_function = "relu"
    with pytest.raises(ValueError, match="activation_function"):
        from_hf(hf)


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_greedy_generation_matches_hf(name):
    hf = random_hf(name, attn_implementation="sdpa", n_positions=64)
    ours = from_hf(hf).eval()
    prompt = torch.randint(0, 101, (3, 6), generator=torch.Generator().manual_seed(0))
    theirs = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=55,  # within n_positions = 64: HF cannot go further
        min_new_tokens=55,
        pad_token_id=0,
    )
    mine = ours.generate(prompt, 55, do_sample=False)
    assert torch.equal(mine, theirs)
    assert len(set(mine[:, 6:].flatten().tolist())) > 3  # not a trivially constant continuation


@pytest.mark.slow
def test_saved_model_loads_in_a_pipeline_and_from_pretrained(tmp_path, tokenizer_dir):
    ours = GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    to_hf(ours).save_pretrained(tmp_path)
    GPT2TokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), device="cpu")
    out = generator("Hello", max_new_tokens=5, do_sample=False)
    tokenizer = GPT2TokenizerFast.from_pretrained(tmp_path)
    prompt = torch.tensor([tokenizer.encode("Hello")])
    greedy = ours.generate(prompt, 5, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert out[0]["generated_text"] == tokenizer.decode(greedy[0])  # the same greedy tokens, as text

    loaded = GPT.from_pretrained(str(tmp_path), attention="manual")
    assert loaded.config == dataclasses.replace(ours.config, attention="manual")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ours.state_dict().items())
