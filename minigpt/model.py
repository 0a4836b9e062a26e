"""A GPT-2-style decoder-only transformer, written to be read top to bottom.

The chapter runs in the order the pieces are needed:

1. ``GPTConfig``: every architectural choice, validated up front.
2. ``CausalSelfAttention``: tokens look back at earlier ones (a textbook path and a fused one).
3. ``MLP``: a per-token two-layer network.
4. ``Block``: attention and MLP wrapped in residual connections and LayerNorms (pre- or post-LN).
5. ``GPT``: embeddings, a stack of blocks, and the language-model head with its loss.
6. Generation: token filtering (top-k, top-p), a key/value cache, and the sampling loop.

Module names follow OpenAI's GPT-2 (``transformer.h[i].attn.c_attn`` and so on), so converting the
official weights (see ``minigpt.hf``) is a key-by-key copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.errors import check, check_choice
from minigpt.loss import IGNORE_INDEX, linear_cross_entropy

# ---------------------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The architecture. The defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257  # number of token ids; GPT-2's BPE has 50,257 (a run sets it from its tokenizer)
    vocab_multiple: int = 64  # embedding and head rows are rounded up to a multiple of this (faster matmuls)
    block_size: int = 1024  # longest sequence the model sees; also the number of learned positions
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block; each head has n_embd // n_head dimensions
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # drop probability for embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2 has them)
    norm_position: str = "pre"  # "pre": LayerNorm inside each residual branch (GPT-2); "post": after the sum
    tie_embeddings: bool = True  # the output head reuses the token-embedding matrix (GPT-2 does)
    attention: str = "sdpa"  # "manual": explicit softmax(QK^T/sqrt(d))V; "sdpa": PyTorch's fused kernel
    layer_norm_epsilon: float = 1e-5  # added to the variance inside LayerNorm, for numerical safety
    # Initialisation controls for ablations (GPT-2 is: False, True, "random").
    embedding_norm: bool = False  # a LayerNorm on token + position embeddings, before the first block
    scale_residual_init: bool = True  # branch output projections start at std 0.02 / sqrt(2 * n_layer)
    head_init: str = "random"  # an untied head starts "random" (std 0.02) or as a copy of the "embedding"
    head_bias: bool = False  # a learned bias per output token, so a tied head need not encode token frequency

    def __post_init__(self) -> None:
        for name in ("vocab_size", "vocab_multiple", "block_size", "n_layer", "n_head", "n_embd"):
            check(getattr(self, name) > 0, f"model.{name}", f"must be positive, got {getattr(self, name)}")
        check(
            self.n_embd % self.n_head == 0,
            "model.n_embd",
            f"{self.n_embd} must be divisible by model.n_head={self.n_head} (each head gets n_embd / n_head)",
        )
        check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.layer_norm_epsilon > 0, "model.layer_norm_epsilon", "must be positive")
        check_choice(self.norm_position, "model.norm_position", ("pre", "post"))
        check_choice(self.attention, "model.attention", ("manual", "sdpa"))
        check_choice(self.head_init, "model.head_init", ("random", "embedding"))
        check(
            self.head_init == "random" or not self.tie_embeddings,
            "model.head_init",
            '"embedding" copies the embedding into an untied head; it needs model.tie_embeddings=false',
        )

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the head: ``vocab_size`` rounded up to ``vocab_multiple``. The rows past
        ``vocab_size`` start at zero, are never looked up, and their logits are masked, so they are never
        predicted and get no gradient."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


# ---------------------------------------------------------------------------------------------------------
# 2. Attention
# ---------------------------------------------------------------------------------------------------------


class KVCache:
    """One layer's keys and values from earlier positions, so a new token need not recompute them.

    The buffers are allocated once at full context length and written in place: generation then
    allocates nothing per step but the new token's activations.
    """

    def __init__(self, batch_size: int, config: GPTConfig, device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values; return views of everything cached so far."""
        start, end = self.length, self.length + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position attends only to itself and earlier positions."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # One matmul produces queries, keys and values for all heads at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.attention = config.attention

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # Heads become a batch dimension so that all heads attend in one batched matmul.
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs), S = cached + new positions
        S = k.size(2)

        if self.attention == "manual":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            # The T queries are the last T of the S positions, so query i may see keys up to S - T + i.
            allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            att = att.masked_fill(~allowed, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, hs)
        else:
            # Generation feeds either a whole window (T == S) or one new token after the cache (T == 1): the
            # first needs the plain causal mask, the second may see every cached key, so needs none.
            if T != S and T != 1:
                raise ValueError(f"the fused attention path takes T == S or T == 1 queries, got T={T}, S={S}")
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------------------------------------------------
# 3. MLP
# ---------------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, GELU, project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU; the exact erf form would shift its outputs.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) inside, (B, T, C) out


# ---------------------------------------------------------------------------------------------------------
# 4. Transformer block
# ---------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Attention then MLP, each added to the residual stream, with LayerNorm placed per ``norm_position``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)
        self.pre_norm = config.norm_position == "pre"

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if self.pre_norm:
            # The residual stream itself is never normalised, so gradients reach early layers unimpeded.
            x = x + self.attn(self.ln_1(x), cache)
            x = x + self.mlp(self.ln_2(x))
        else:
            # The original Transformer: normalise after each sum. Harder to train deep without warm-up.
            x = self.ln_1(x + self.attn(x, cache))
            x = self.ln_2(x + self.mlp(x))
        return x


# ---------------------------------------------------------------------------------------------------------
# 5. The model
# ---------------------------------------------------------------------------------------------------------


# The weights with a row (or, for the bias, an entry) per token id; their padding rows are zeros.
VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight", "lm_head.bias")


def _pad_vocab_rows(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A load_state_dict hook: weights with a row per token and no padding (Hugging Face's, or checkpoints
    made before padding) get zero rows up to ``padded_vocab_size``."""
    padded = module.config.padded_vocab_size
    for key in (prefix + name for name in VOCAB_ROWS):
        rows = state_dict.get(key)
        if rows is not None and rows.size(0) == module.config.vocab_size < padded:
            state_dict[key] = torch.cat([rows, rows.new_zeros(padded - rows.size(0), *rows.shape[1:])])


class GPT(nn.Module):
    """GPT-2: token and position embeddings, ``n_layer`` blocks, a final LayerNorm and a linear head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            )
        )
        if config.embedding_norm:
            # Embeddings start at std 0.02 while every post-LN block outputs unit-variance features: a
            # LayerNorm here puts the first residual sum on the scale the rest of the network works at.
            self.transformer.ln_e = nn.LayerNorm(
                config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias
            )
        if config.norm_position == "pre":
            # Pre-LN leaves the residual stream unnormalised, so it needs one LayerNorm before the head;
            # post-LN blocks already end in one.
            self.transformer.ln_f = nn.LayerNorm(
                config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias
            )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.head_bias)
        if config.tie_embeddings:
            # Reading a token in and predicting it out use one matrix: fewer parameters, and each
            # token's row gets gradient both from being seen and from being predicted.
            self.lm_head.weight = self.transformer.wte.weight

        self.apply(self._init_weights)
        # Each block adds two branches to the residual stream; shrinking their output projections keeps
        # the stream's variance from growing with depth (GPT-2 paper, section 2.3).
        if config.scale_residual_init:
            residual_std = 0.02 / math.sqrt(2 * config.n_layer)
            for name, param in self.named_parameters():
                if name.endswith("attn.c_proj.weight") or name.endswith("mlp.c_proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=residual_std)
        if config.head_init == "embedding":
            # Untied, but starting where tying would: what remains is the freedom to drift apart.
            with torch.no_grad():
                self.lm_head.weight.copy_(self.transformer.wte.weight)
        self.register_load_state_dict_pre_hook(_pad_vocab_rows)

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.transformer.wte or module is self.lm_head:
            # Padding rows start at zero and stay there: no token reads them and no logit of theirs counts.
            nn.init.normal_(module.weight[: self.config.vocab_size], mean=0.0, std=0.02)
            nn.init.zeros_(module.weight[self.config.vocab_size :])
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, each shared tensor counted once, without the vocabulary's padding rows
        (they hold nothing), so the count is GPT-2's for GPT-2's shape.

        ``non_embedding=True`` leaves out the lookup tables (``wte``, ``wpe``), the head's bias and, when
        the head is untied, ``lm_head`` too: what remains is the per-layer compute that scaling laws count.
        """
        cfg = self.config
        padding = cfg.padded_vocab_size - cfg.vocab_size
        padding_rows = padding * (1 if cfg.tie_embeddings else 2)
        total = sum(p.numel() for p in self.parameters()) - padding_rows * cfg.n_embd
        total -= padding if cfg.head_bias else 0
        if non_embedding:
            total -= (cfg.vocab_size + cfg.block_size) * cfg.n_embd
            if not cfg.tie_embeddings:
                total -= cfg.vocab_size * cfg.n_embd
            total -= cfg.vocab_size if cfg.head_bias else 0
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Approximate training FLOPs per token (forward + backward), for model FLOPs utilisation.

        Every weight in a matmul costs 2 FLOPs per token forward and 4 backward, hence 6N, where N is
        the non-embedding parameters plus the head's ``vocab_size * n_embd`` (the head is a matmul even
        when tied; embedding lookups are not). Attention's QK^T and AV add 2 * 2 * T * n_embd per layer
        forward, i.e. 12 * n_layer * n_embd * T in total. ``seq_len`` T defaults to ``block_size``.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        n_matmul = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_embd * T

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """Parameter groups for ``torch.optim.AdamW``: decay matrices (Linear weights, embeddings) only.

        Biases and LayerNorm gains are 1-D; pulling them towards zero would only fight the
        normalisation, so they get ``weight_decay=0``.
        """
        # Tied tensors appear once; frozen ones (a LoRA base) are left to no optimizer.
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def _hidden_states(
        self, idx: torch.Tensor, caches: list[KVCache] | None = None, start_pos: int = 0
    ) -> torch.Tensor:
        """Run embeddings and blocks: token ids (B, T) at positions start_pos.. -> features (B, T, C)."""
        T = idx.size(1)
        if start_pos + T > self.config.block_size:
            raise ValueError(
                f"sequence length T={start_pos + T} exceeds block_size={self.config.block_size}: "
                f"there are only {self.config.block_size} learned positions"
            )
        tok = self.transformer.wte(idx)  # (B, T, C)
        pos = self.transformer.wpe.weight[start_pos : start_pos + T]  # (T, C), broadcast over the batch
        x = tok + pos
        if "ln_e" in self.transformer:
            x = self.transformer.ln_e(x)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if caches is None else caches[i])
        if "ln_f" in self.transformer:
            x = self.transformer.ln_f(x)
        return x

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, textbook_loss: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Token ids (B, T) -> ``(logits, loss)``.

        Without targets: logits (B, T, vocab_size) and loss None. With targets (B, T), already shifted
        by the caller so that ``targets[b, t]`` is the token after ``idx[b, t]`` (``-100`` = ignore): the
        mean cross-entropy, in float32, and no logits: the head is fused into a chunked loss. With
        ``textbook_loss`` the same loss is computed the plain way, from the full logits, which it returns.
        """
        x = self._hidden_states(idx)
        vocab = self.config.vocab_size
        if targets is None:
            return self.lm_head(x)[..., :vocab], None  # the padding rows are never predicted
        if textbook_loss:
            # The textbook loss: all (B, T, vocab_size) logits, then cross-entropy over them (autocast runs
            # it in float32).
            logits = self.lm_head(x)[..., :vocab]
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
            return logits, loss
        # The same loss with the head fused into it, computed a chunk of rows at a time (``minigpt.loss``):
        # the full logits, by far the largest activation, never exist. Training and evaluation take this
        # path; tests/test_loss.py checks that it equals the one above.
        return None, linear_cross_entropy(
            x, self.lm_head.weight, targets, n_classes=vocab, bias=self.lm_head.bias
        )

    @classmethod
    def from_pretrained(cls, model_type: str = "gpt2", attention: str = "sdpa") -> GPT:
        """OpenAI's GPT-2 weights (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, or a local
        Hugging Face directory), loaded through ``transformers`` and converted by ``minigpt.hf.from_hf``."""
        from minigpt.hf import from_hf

        return from_hf(model_type, attention=attention)

    # -----------------------------------------------------------------------------------------------------
    # 6. Generation
    # -----------------------------------------------------------------------------------------------------

    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool = True,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Continue the prompts idx (B, T), yielding each step's new tokens, shape (B,), as they come.

        Sampling: greedy if ``do_sample=False`` or ``temperature == 0``; otherwise logits are divided
        by ``temperature``, optionally cut to the ``top_k`` most likely tokens and/or the nucleus of
        probability ``top_p``, then sampled (with ``generator``, if given, for reproducibility).

        With ``eos_token_id``, a sequence that has produced it keeps emitting it (it is finished; the
        EOS doubles as padding) and the stream ends once every sequence has finished.

        A key/value cache makes each new token cost one position while the sequence fits in
        ``block_size``. Beyond it, the context is the last ``block_size`` tokens; since positions are
        learned and absolute, sliding the window by one token changes the position of every token in
        it, so no cached key remains valid: each further step re-runs the whole window. The result is
        exactly what running the model on the last ``block_size`` tokens at every step would give.
        """
        _check_sampling_args(idx, max_new_tokens, temperature, top_k, top_p)
        # The checks above run at the call; the generator's body would only run at the first next().
        return self._stream(
            idx, max_new_tokens, temperature, top_k, top_p, do_sample, eos_token_id, generator
        )

    @torch.inference_mode()
    def _stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        do_sample: bool,
        eos_token_id: int | None,
        generator: torch.Generator | None,
    ) -> Iterator[torch.Tensor]:
        B, T = idx.shape
        block_size = self.config.block_size
        tokens = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
        tokens[:, :T] = idx
        dtype = self.transformer.wte.weight.dtype
        caches = [KVCache(B, self.config, idx.device, dtype) for _ in range(self.config.n_layer)]
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        # At small batch the head dominates each step: the whole (V, C) matrix is read for a few rows of
        # logits. CPU BLAS streams a row-major (C, V) matrix about twice as fast for such products, so
        # generation keeps a transposed copy for its duration.
        head = self.lm_head.weight[: self.config.vocab_size].t().contiguous()  # (C, V), without the padding
        head_bias = None if self.lm_head.bias is None else self.lm_head.bias[: self.config.vocab_size]

        def next_logits(n: int) -> torch.Tensor:
            """Logits (B, V) for the token after the first n tokens, reusing the cache when possible."""
            if 0 < caches[0].length == n - 1 < block_size:
                x = self._hidden_states(tokens[:, n - 1 : n], caches, start_pos=n - 1)
            else:
                for cache in caches:
                    cache.length = 0  # overwrite from the start
                x = self._hidden_states(tokens[:, max(0, n - block_size) : n], caches)
            logits = x[:, -1] @ head  # (B, V): only the last position's logits are needed
            return logits if head_bias is None else logits + head_bias

        for n in range(T, T + max_new_tokens):
            logits = next_logits(n)
            if not do_sample or temperature == 0:
                next_token = logits.argmax(dim=-1)
            else:
                logits = logits.float() / temperature
                if top_k is not None:
                    logits = top_k_filter(logits, top_k)
                if top_p is not None:
                    logits = top_p_filter(logits, top_p)
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            if eos_token_id is not None:
                next_token = next_token.masked_fill(finished, eos_token_id)
                finished |= next_token == eos_token_id
            tokens[:, n] = next_token
            yield next_token
            if eos_token_id is not None and bool(finished.all()):
                return

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool = True,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt idx (B, T) followed by the generated tokens: (B, T + new), where new <= max_new_tokens
        (fewer only when every sequence has produced ``eos_token_id``). See ``generate_stream``."""
        steps = self.generate_stream(
            idx, max_new_tokens, temperature, top_k, top_p, do_sample, eos_token_id, generator
        )
        new = [token[:, None] for token in steps]
        return torch.cat([idx, *new], dim=1)


def _check_sampling_args(
    idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a non-empty (B, T) prompt, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits in the last dimension, setting the rest to -inf.

    Tokens tied with the k-th largest logit are all kept.
    """
    kth_largest = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose total probability is >= p.

    The most likely token always survives, so the result is never empty.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    # A token is needed only if the more likely tokens before it have not yet reached p.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))
