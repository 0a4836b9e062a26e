"""The core model: configuration checks, forward pass, attention paths, init, parameter counts, training."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.model import GPT, CausalSelfAttention, GPTConfig, KVCache


def tiny(**overrides) -> GPTConfig:
    fields = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16)
    fields.update(overrides)
    return GPTConfig(**fields)


def test_defaults_are_gpt2_small():
    cfg = GPTConfig()
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) == (50257, 1024, 12, 12, 768)
    assert (cfg.dropout, cfg.bias, cfg.norm_position, cfg.tie_embeddings, cfg.attention) == (
        0.0,
        True,
        "pre",
        True,
        "sdpa",
    )
    assert cfg.layer_norm_epsilon == 1e-5


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("block_size", -1),
        ("n_layer", 0),
        ("n_head", 0),
        ("n_embd", 0),
        ("n_embd", 17),  # not divisible by n_head=2
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("norm_position", "middle"),
        ("attention", "flash"),
        ("layer_norm_epsilon", 0.0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_config_is_a_plain_dataclass():
    cfg = tiny()
    assert dataclasses.replace(cfg, n_layer=3).n_layer == 3
    assert GPTConfig(**dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="n_head"):
        dataclasses.replace(cfg, n_head=3)


def test_forward_shapes_and_loss():
    model = GPT(tiny())
    idx = torch.randint(0, 97, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 97) and loss is None
    targets = torch.randint(0, 97, (3, 10))
    logits, loss = model(idx, targets)
    assert logits is None and loss.dtype == torch.float32
    full, plain_loss = model(idx, targets, textbook_loss=True)
    assert torch.equal(full, model(idx)[0])
    assert torch.allclose(plain_loss, F.cross_entropy(full.flatten(0, 1), targets.flatten()))
    assert torch.allclose(loss, plain_loss, atol=1e-6)
    # Random init predicts roughly uniformly.
    assert abs(loss.item() - math.log(97)) < 0.2


def test_loss_ignores_minus_100():
    model = GPT(tiny())
    idx = torch.randint(0, 97, (2, 8))
    targets = torch.randint(0, 97, (2, 8))
    masked = targets.clone()
    masked[:, 4:] = -100
    logits = model(idx)[0]
    expected = F.cross_entropy(logits[:, :4].flatten(0, 1), targets[:, :4].flatten())
    assert torch.allclose(model(idx, masked)[1], expected, atol=1e-6)


def test_forward_rejects_sequences_longer_than_block_size():
    model = GPT(tiny(block_size=8))
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"T=9.*block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("norm_position", ["pre", "post"])
@pytest.mark.parametrize("n_head", [1, 3])
def test_manual_and_sdpa_attention_agree(norm_position, n_head):
    cfg = tiny(n_head=n_head, n_embd=36, norm_position=norm_position)
    manual = GPT(dataclasses.replace(cfg, attention="manual")).eval()
    sdpa = GPT(dataclasses.replace(cfg, attention="sdpa")).eval()
    sdpa.load_state_dict(manual.state_dict())
    idx = torch.randint(0, 97, (2, 16))
    assert torch.allclose(manual(idx)[0], sdpa(idx)[0], atol=1e-5, rtol=0)


def test_fused_attention_refuses_several_queries_after_a_cache():
    """Generation feeds a whole window or one token at a time; the SDPA path's mask covers only those."""
    cfg = tiny()
    attention = CausalSelfAttention(cfg)
    cache = KVCache(1, cfg, torch.device("cpu"), torch.float32)
    attention(torch.randn(1, 4, 16), cache)
    attention(torch.randn(1, 1, 16), cache)
    with pytest.raises(ValueError, match="T=2, S=7"):
        attention(torch.randn(1, 2, 16), cache)


def test_causality():
    """Changing a later token must not change earlier logits."""
    for attention in ("manual", "sdpa"):
        model = GPT(tiny(attention=attention)).eval()
        idx = torch.randint(0, 97, (1, 12))
        changed = idx.clone()
        changed[0, 7] = (idx[0, 7] + 1) % 97
        a, b = model(idx)[0], model(changed)[0]
        assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
        assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_tied_and_untied_heads():
    tied = GPT(tiny())
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == 97 * 16
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)


def test_num_params_by_hand():
    L, C, V, T = 2, 16, 97, 16
    block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    non_embedding = L * block + 2 * C  # + ln_f
    model = GPT(tiny())
    assert model.num_params(non_embedding=True) == non_embedding
    assert model.num_params() == non_embedding + V * C + T * C
    assert model.flops_per_token() == 6 * (non_embedding + V * C) + 12 * L * C * T
    assert model.flops_per_token(seq_len=4) == 6 * (non_embedding + V * C) + 12 * L * C * 4


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_vocabulary_rows_are_padded_to_a_multiple_of_64_and_the_padding_is_never_predicted(tie_embeddings):
    """97 tokens get 128 rows. However large the padding rows' weights, the logits, the fused and textbook
    losses and sampling only know the 97 tokens, and training gives the padding no gradient."""
    torch.manual_seed(0)
    model = GPT(tiny(tie_embeddings=tie_embeddings))
    assert model.config.padded_vocab_size == 128
    assert model.transformer.wte.weight.shape == model.lm_head.weight.shape == (128, 16)
    assert torch.all(model.lm_head.weight[97:] == 0) and torch.all(model.transformer.wte.weight[97:] == 0)
    with torch.no_grad():
        model.lm_head.weight[97:] = 10.0  # would win every softmax if it took part
    idx, targets = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))
    logits, _ = model(idx)
    assert logits.shape == (2, 9, 97)
    _, fused = model(idx, targets)
    _, textbook = model(idx, targets, textbook_loss=True)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert fused.item() == pytest.approx(expected.item(), rel=1e-5) and textbook.item() == expected.item()
    fused.backward()
    assert torch.all(model.lm_head.weight.grad[97:] == 0)
    sampled = model.generate(
        idx[:, :3], max_new_tokens=20, temperature=2.0, generator=torch.Generator().manual_seed(0)
    )
    assert sampled.max().item() < 97


def test_weights_with_one_row_per_token_load_with_zero_padding_rows():
    """A state dict without padding (a checkpoint from before it, or Hugging Face's) loads: the token rows
    are its rows and the padding rows are zero."""
    unpadded = GPT(tiny(vocab_multiple=1))
    assert unpadded.transformer.wte.weight.shape == (97, 16)
    padded = GPT(tiny())
    padded.load_state_dict(unpadded.state_dict())
    for name, param in unpadded.state_dict().items():
        assert torch.equal(padded.state_dict()[name][: param.size(0)], param), name
    assert torch.all(padded.transformer.wte.weight[97:] == 0)


def test_post_ln_has_no_final_layernorm_and_no_bias_variant():
    assert "ln_f" not in GPT(tiny(norm_position="post")).transformer
    model = GPT(tiny(bias=False))
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    logits, _ = model(torch.randint(0, 97, (1, 5)))
    assert logits.shape == (1, 5, 97)


def test_init_statistics():
    cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=256)
    model = GPT(cfg)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert param.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert param.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
        elif "ln" in name:
            assert torch.all(param == 1), name
    assert abs(model.transformer.wte.weight.mean().item()) < 1e-3


def test_optimizer_param_groups():
    model = GPT(tiny(tie_embeddings=False))
    decay, no_decay = model.optimizer_param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    padding = 2 * (128 - 97) * 16  # the vocabulary's padding rows, in the embedding and the untied head
    assert (
        sum(p.numel() for group in (decay, no_decay) for p in group["params"]) == model.num_params() + padding
    )
    by_id = {id(p) for p in decay["params"]}
    assert id(model.lm_head.weight) in by_id and id(model.transformer.wpe.weight) in by_id
    torch.optim.AdamW(model.optimizer_param_groups(0.1), lr=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(norm_position="post"),
        dict(tie_embeddings=False),
        dict(norm_position="post", tie_embeddings=False, bias=False, attention="manual", dropout=0.1),
    ],
)
def test_variants_train(overrides):
    model = GPT(tiny(**overrides))
    optimizer = torch.optim.AdamW(model.optimizer_param_groups(0.01), lr=3e-3)
    data = torch.randint(0, 97, (4, 17))
    idx, targets = data[:, :-1], data[:, 1:]
    losses = []
    for _ in range(15):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_dropout_is_active_only_in_training():
    model = GPT(tiny(dropout=0.5))
    idx = torch.randint(0, 97, (1, 8))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_embedding_norm_puts_the_first_block_input_at_unit_scale():
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, norm_position="post")
    seen = {}
    for embedding_norm in (False, True):
        model = GPT(dataclasses.replace(cfg, embedding_norm=embedding_norm))
        hook = model.transformer.h[0].register_forward_pre_hook(
            lambda _m, args, key=embedding_norm: seen.__setitem__(key, args[0].std().item())
        )
        model(torch.randint(0, 97, (4, 16)))
        hook.remove()
    assert seen[False] < 0.1  # two std-0.02 embeddings summed
    assert seen[True] == pytest.approx(1.0, rel=0.05)


def test_scale_residual_init_off_leaves_branch_projections_at_the_base_std():
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=8, n_head=2, n_embd=256)
    for scale, expected in ((True, 0.02 / math.sqrt(16)), (False, 0.02)):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(cfg, scale_residual_init=scale))
        std = model.transformer.h[3].mlp.c_proj.weight.std().item()
        assert std == pytest.approx(expected, rel=0.05)


def test_head_init_embedding_starts_an_untied_head_as_a_copy_that_trains_apart():
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=32, tie_embeddings=False)
    model = GPT(dataclasses.replace(cfg, head_init="embedding"))
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert not torch.equal(GPT(cfg).lm_head.weight, GPT(cfg).transformer.wte.weight)


def test_head_init_embedding_needs_an_untied_head():
    with pytest.raises(ValueError, match="model.head_init.*tie_embeddings=false"):
        GPTConfig(head_init="embedding")


def test_a_head_bias_is_learned_per_token_beside_a_tied_head_and_its_padding_stays_unpredicted():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=32, head_bias=True)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.bias.shape == (cfg.padded_vocab_size,)
    assert model.num_params() == GPT(dataclasses.replace(cfg, head_bias=False)).num_params() + 97
    with torch.no_grad():
        model.lm_head.bias[:97] = torch.linspace(-3, 3, 97)
        model.lm_head.bias[97:] = 100.0  # padding: even a huge bias must never be predicted
    idx = torch.randint(0, 97, (2, 8))
    logits, _ = model(idx)
    assert logits.shape == (2, 8, 97)
    _, textbook = model(idx, idx, textbook_loss=True)
    _, fused = model(idx, idx)
    torch.testing.assert_close(fused, textbook, rtol=1e-5, atol=1e-5)
    fused.backward()
    assert model.lm_head.bias.grad[:97].abs().sum() > 0
    assert model.lm_head.bias.grad[97:].abs().sum() == 0
    sampled = model.generate(idx[:, :2], max_new_tokens=6, temperature=1.0)
    assert int(sampled.max()) < 97
    # Generation uses the bias: a bias that dominates every logit makes greedy decoding pick its token.
    with torch.no_grad():
        model.lm_head.bias[:97] = 0.0
        model.lm_head.bias[42] = 1e4
    greedy = model.generate(idx[:, :2], max_new_tokens=3, temperature=0.0)
    assert torch.all(greedy[:, 2:] == 42)


def test_weights_without_padding_load_into_a_model_with_a_head_bias():
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=32, head_bias=True)
    source = GPT(cfg)
    state = {
        k: (v[:97] if k in ("transformer.wte.weight", "lm_head.weight", "lm_head.bias") else v)
        for k, v in source.state_dict().items()
    }
    target = GPT(cfg)
    target.load_state_dict(state)
    torch.testing.assert_close(target.lm_head.bias, source.lm_head.bias)
