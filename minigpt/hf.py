"""Conversion between ``minigpt.model.GPT`` and Hugging Face's ``GPT2LMHeadModel``.

The two share parameter names, so conversion is a key-by-key copy with one twist: GPT-2's original
code stores its projections as "Conv1D" weights of shape (in, out), the transpose of ``nn.Linear``'s
(out, in). Only the four projection matrices in each block need transposing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minigpt.lora import lora_layers
from minigpt.model import GPT, VOCAB_ROWS, GPTConfig

# Weights stored as (in_features, out_features) on the Hugging Face side.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Old transformers versions kept the causal mask as persistent buffers under these names.
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


def _is_conv1d(key: str) -> bool:
    return key.endswith(_CONV1D_SUFFIXES)


def from_hf(model_or_path, attention: str = "sdpa", dropout: float | None = None) -> GPT:
    """A ``GPT`` with the weights of a ``transformers.GPT2LMHeadModel``.

    ``model_or_path`` is a loaded model, a local directory, or a Hub name such as ``"gpt2"``.
    ``attention`` picks our attention path; ``dropout`` defaults to the HF model's ``resid_pdrop``
    (GPT-2 uses one value for all its dropouts). The result always has ``bias=True``, since GPT-2 does.
    """
    from transformers import GPT2LMHeadModel

    if isinstance(model_or_path, (str, Path)):
        hf_model = GPT2LMHeadModel.from_pretrained(str(model_or_path))
    else:
        hf_model = model_or_path
    hf_cfg = hf_model.config
    if hf_cfg.activation_function not in _GELU_TANH:
        raise ValueError(f"activation_function={hf_cfg.activation_function!r} is unsupported: need gelu_new")
    if not hf_cfg.scale_attn_weights or hf_cfg.scale_attn_by_inverse_layer_idx:
        raise ValueError("only scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False is supported")
    if hf_cfg.n_inner not in (None, 4 * hf_cfg.n_embd):
        raise ValueError(f"n_inner={hf_cfg.n_inner} is unsupported: the MLP is 4 * n_embd wide")

    config = GPTConfig(
        vocab_size=hf_cfg.vocab_size,
        block_size=hf_cfg.n_positions,
        n_layer=hf_cfg.n_layer,
        n_head=hf_cfg.n_head,
        n_embd=hf_cfg.n_embd,
        dropout=hf_cfg.resid_pdrop if dropout is None else dropout,
        bias=True,
        norm_position="pre",
        tie_embeddings=hf_cfg.tie_word_embeddings,
        attention=attention,
        layer_norm_epsilon=hf_cfg.layer_norm_epsilon,
    )
    model = GPT(config)
    hf_sd = hf_model.state_dict()
    ours = model.state_dict()
    unexpected = set(hf_sd) - set(ours)
    unexpected = {k for k in unexpected if not k.endswith(_HF_BUFFER_SUFFIXES)}
    if unexpected:
        raise ValueError(f"Hugging Face weights with no counterpart here: {sorted(unexpected)}")
    missing = [key for key in ours if key not in hf_sd]
    if missing:
        raise ValueError(f"Hugging Face model has no weight {missing[0]!r}")
    # load_state_dict pads the vocabulary rows (GPT-2 has 50,257; ours are rounded up to vocab_multiple).
    model.load_state_dict({key: hf_sd[key].t() if _is_conv1d(key) else hf_sd[key] for key in ours})
    return model


def to_hf(model: GPT, attn_implementation: str = "sdpa"):
    """A ``transformers.GPT2LMHeadModel`` computing the same function as ``model``.

    GPT-2 always has biases: a ``bias=False`` model converts with zero biases, which is exactly
    equivalent. Post-LN, an embedding LayerNorm and a head bias have no GPT-2 counterpart and raise
    ``ValueError``, as do LoRA adapters that are not merged into the weights (GPT-2 has no place for them;
    peft carries them separately).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    if cfg.norm_position != "pre":
        raise ValueError(
            f"norm_position={cfg.norm_position!r} has no Hugging Face GPT-2 equivalent: GPT-2 normalises "
            "inside each residual branch (pre-LN) and no GPT-2 config can place the LayerNorm after the sum. "
            "Share the MiniGPT checkpoint instead (python -m minigpt.sample --checkpoint loads it), or train "
            "with model.norm_position=pre to get a model that exports"
        )
    if cfg.embedding_norm:
        raise ValueError(
            "model.embedding_norm adds a LayerNorm on the embeddings, which GPT-2 does not have: share the "
            "MiniGPT checkpoint instead (python -m minigpt.sample --checkpoint loads it)"
        )
    if cfg.head_bias:
        raise ValueError(
            "model.head_bias adds a bias to the output logits, which GPT-2's head does not have: share the "
            "MiniGPT checkpoint instead (python -m minigpt.sample --checkpoint loads it)"
        )
    unmerged = [name for name, layer in lora_layers(model).items() if not layer.merged]
    if unmerged:
        raise ValueError(
            f"the model has {len(unmerged)} LoRA adapters not merged into its weights (e.g. {unmerged[0]}), "
            "which GPT2LMHeadModel cannot hold: merge them first (--merge-adapter on the command line, "
            "minigpt.lora.merge_lora in Python), or export the base and share the adapter directory for peft"
        )
    # GPT-2's <|endoftext|> is id 50256; a smaller vocabulary has no such token.
    eos = 50256 if cfg.vocab_size > 50256 else None
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos,
        eos_token_id=eos,
        attn_implementation=attn_implementation,
    )
    hf_model = GPT2LMHeadModel(hf_cfg)
    ours = model.state_dict()
    with torch.no_grad():
        for key, param in hf_model.state_dict().items():
            if key.endswith(_HF_BUFFER_SUFFIXES) and key not in ours:
                continue
            if key not in ours:
                if not key.endswith(".bias"):
                    raise ValueError(f"no weight for Hugging Face key {key!r}")
                param.zero_()  # bias=False here: a zero bias is the same function
                continue
            src = ours[key].t() if _is_conv1d(key) else ours[key]
            param.copy_(src[: cfg.vocab_size] if key in VOCAB_ROWS else src)  # without the padding rows
    return hf_model.to(model.transformer.wte.weight.device).train(model.training)
