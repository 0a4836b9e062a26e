"""Perplexity: the evaluator against a direct computation, sliding windows on real text, bits per byte."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import wiki_valid_text

from minigpt.config import DataConfig
from minigpt.data import BlockSampler, load_tokenizer
from minigpt.evaluate import EvalResult, bootstrap_interval, evaluate
from minigpt.model import GPT, GPTConfig


def tiny_model(**overrides) -> GPT:
    fields = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**fields, **overrides}))


def random_tokens(n: int, vocab_size: int = 61) -> np.ndarray:
    return (
        torch.randint(0, vocab_size, (n,), generator=torch.Generator().manual_seed(n))
        .numpy()
        .astype(np.uint16)
    )


@torch.no_grad()
def direct_nll_sum(model: GPT, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Summed NLL of ``targets`` from one full forward pass over ``inputs`` (no -100, no chunked loss)."""
    logits, _ = model(torch.from_numpy(inputs.astype(np.int64))[None])
    return F.cross_entropy(logits[0], torch.from_numpy(targets.astype(np.int64)), reduction="sum").item()


@pytest.mark.parametrize("n", [100, 161])  # a ragged last window, and windows that fill exactly
def test_perplexity_equals_a_direct_computation(n):
    model = tiny_model(dropout=0.5).train()  # evaluation must switch dropout off, and back on after
    tokens = random_tokens(n)
    result = evaluate(model, tokens, block_size=16, batch_size=3)
    assert model.training
    model.eval()
    total = sum(
        direct_nll_sum(model, tokens[start : min(start + 16, n - 1)], tokens[start + 1 : min(start + 17, n)])
        for start in range(0, n - 1, 16)
    )
    assert result.tokens == n - 1
    assert result.loss == pytest.approx(total / (n - 1), rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(total / (n - 1)), rel=1e-6)
    assert (result.context, result.stride) == (16, 16)


def test_stride_one_gives_every_token_a_full_context():
    model = tiny_model().eval()
    tokens, block = random_tokens(40), 8
    result = evaluate(model, tokens, block_size=block, batch_size=4, stride=1)
    # Token t is predicted from the (up to) block_size tokens before it, each with its own forward pass.
    total = 0.0
    for t in range(1, len(tokens)):
        context = torch.from_numpy(tokens[max(0, t - block) : t].astype(np.int64))
        with torch.no_grad():
            logits, _ = model(context[None])
        total -= F.log_softmax(logits[0, -1], dim=-1)[int(tokens[t])].item()
    assert result.tokens == len(tokens) - 1
    assert result.loss == pytest.approx(total / (len(tokens) - 1), rel=1e-5)
    assert (result.context, result.stride) == (8, 1)


def test_max_batches_scores_only_that_many_batches():
    tokens = random_tokens(500)
    result = evaluate(tiny_model(), tokens, block_size=16, batch_size=4, max_batches=2, num_bytes=999)
    assert result.tokens == 2 * 4 * 16
    assert result.bits_per_byte is None  # a partial pass says nothing about the split's bytes


def test_bits_per_byte_is_total_bits_over_utf8_bytes():
    one_bit_per_token = EvalResult(loss=math.log(2), tokens=100, num_bytes=100, context=16, stride=16)
    assert one_bit_per_token.bits_per_byte == pytest.approx(1.0)
    result = EvalResult(loss=2.0, tokens=300, num_bytes=1200, context=64, stride=32)
    assert result.bits_per_byte == pytest.approx(2.0 * 300 / math.log(2) / 1200)
    metrics = result.as_metrics("val")
    assert metrics["val/bpb"] == result.bits_per_byte and metrics["val/ppl"] == pytest.approx(math.exp(2.0))
    assert "context 64, stride 32" in result.describe()
    model = tiny_model()
    tokens = random_tokens(90)
    evaluated = evaluate(model, tokens, block_size=16, batch_size=8, num_bytes=250)
    assert evaluated.bits_per_byte == pytest.approx(evaluated.loss * 89 / math.log(2) / 250)


def test_context_longer_than_the_model_positions_is_refused():
    with pytest.raises(ValueError, match="exceeds block_size=16: there are only 16 learned positions"):
        evaluate(tiny_model(), random_tokens(100), block_size=32, batch_size=2)


def compact_vocabulary(ids: np.ndarray, size: int) -> np.ndarray:
    """Real GPT-2 ids renumbered by frequency (the ``size - 1`` most frequent, the rest sharing one id):
    the statistics of real text with a vocabulary small enough to train on in seconds."""
    frequent = [token for token, _ in Counter(ids.tolist()).most_common(size - 1)]
    table = np.full(int(ids.max()) + 1, size - 1, dtype=np.uint16)
    table[frequent] = np.arange(len(frequent), dtype=np.uint16)
    return table[ids]


@pytest.mark.slow
def test_sliding_window_perplexity_is_lower_on_real_text(data_root, tokenizer_dir):
    # A model trained for seconds predicts held-out text from the last token or two and barely uses more
    # context; on text it has learned, context decides, which is what sliding windows supply.
    tokenizer = load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))
    text = compact_vocabulary(np.asarray(tokenizer(wiki_valid_text(data_root)[:8000])["input_ids"]), 1024)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, block_size=16, n_layer=1, n_head=2, n_embd=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sampler = BlockSampler(text, block_size=16, seed=0)
    for step in range(150):
        x, y = sampler.batch(step * 32, 32)
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    blocks = evaluate(model, text, block_size=16, batch_size=256)
    sliding = evaluate(model, text, block_size=16, batch_size=256, stride=4)
    assert blocks.tokens == sliding.tokens == len(text) - 1
    assert sliding.ppl < 0.97 * blocks.ppl


def test_blocks_are_the_batches_and_add_up_to_the_whole_score():
    model = tiny_model().eval()
    tokens = random_tokens(161)  # 10 windows of 16: batches of 3, 3, 3 and 1
    result = evaluate(model, tokens, block_size=16, batch_size=3)
    assert result.block_tokens.tolist() == [48, 48, 48, 16]
    assert result.block_nll.sum() / result.block_tokens.sum() == pytest.approx(result.loss, rel=1e-12)
    # each block's sum is that batch's windows scored on their own
    first = evaluate(model, tokens[:49], block_size=16, batch_size=3)
    assert result.block_nll[0] == pytest.approx(first.loss * first.tokens, rel=1e-6)


def test_bootstrap_interval_brackets_the_score_and_narrows_with_more_blocks():
    rng = np.random.default_rng(0)

    def result_of(n_blocks: int) -> EvalResult:
        tokens = np.full(n_blocks, 100)
        nll = rng.normal(5.0, 0.3, n_blocks) * tokens
        return EvalResult(
            float(nll.sum() / tokens.sum()),
            int(tokens.sum()),
            None,
            16,
            16,
            block_nll=nll,
            block_tokens=tokens,
        )

    few, many = result_of(20), result_of(2000)
    low, high = bootstrap_interval(few, samples=4000)
    assert low < few.loss < high
    # the interval of a mean of n blocks is about 2 x 1.96 x 0.3 / sqrt(n) wide
    assert high - low == pytest.approx(2 * 1.96 * 0.3 / math.sqrt(20), rel=0.25)
    low_many, high_many = bootstrap_interval(many, samples=4000)
    assert high_many - low_many == pytest.approx(2 * 1.96 * 0.3 / math.sqrt(2000), rel=0.25)
    assert bootstrap_interval(few, seed=1) != bootstrap_interval(few, seed=2)
    with pytest.raises(ValueError, match="at least two scored blocks"):
        bootstrap_interval(result_of(1))


def test_scoring_a_folder_without_a_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    from minigpt.evaluate import main

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "summary.json").exists()
