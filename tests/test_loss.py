"""The fused, chunked head + cross-entropy equals the plain path: full logits, then F.cross_entropy."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minigpt import loss as loss_module
from minigpt.loss import IGNORE_INDEX, linear_cross_entropy
from minigpt.model import GPT, GPTConfig


@pytest.fixture
def small_chunks(monkeypatch):
    """Five rows per chunk, so that a test crosses chunk boundaries and ends on a partial chunk."""
    monkeypatch.setattr(loss_module, "_chunk_rows", lambda vocab_size, budget_bytes=0: 5)


def plain_loss(x, weight, targets):
    logits = (x @ weight.t()).to(torch.promote_types(x.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def inputs(dtype, n=23, c=8, v=37, ignore_every=0):
    x = torch.randn(n, c, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, c, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    if ignore_every:
        targets[::ignore_every] = IGNORE_INDEX
    return x, weight, targets


def loss_and_grads(fn, x, weight, targets):
    value = fn(x, weight, targets)
    grad_x, grad_w = torch.autograd.grad(value * 1.7, (x, weight))  # a non-unit upstream gradient
    return value, grad_x, grad_w


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_value_and_gradients_equal_plain_path(dtype, tol, ignore_every):
    x, weight, targets = inputs(dtype, ignore_every=ignore_every)
    fused = loss_and_grads(linear_cross_entropy, x, weight, targets)
    plain = loss_and_grads(plain_loss, x, weight, targets)
    for ours, reference in zip(fused, plain, strict=True):
        assert ours.dtype == reference.dtype
        torch.testing.assert_close(ours, reference, rtol=tol, atol=tol)


@pytest.mark.usefixtures("small_chunks")
def test_batched_inputs_and_no_grad_path_match():
    x, weight, targets = inputs(torch.float64, n=24)
    x3, t2 = x.detach().view(4, 6, -1), targets.view(4, 6)
    with torch.no_grad():
        evaluated = linear_cross_entropy(x3, weight, t2)
    torch.testing.assert_close(evaluated, plain_loss(x3, weight.detach(), t2))


@pytest.mark.usefixtures("small_chunks")
def test_all_targets_ignored_gives_zero_loss_and_gradients():
    x, weight, targets = inputs(torch.float32)
    targets[:] = IGNORE_INDEX
    value, grad_x, grad_w = loss_and_grads(linear_cross_entropy, x, weight, targets)
    assert value.item() == 0.0
    assert not grad_x.any() and not grad_w.any()


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_the_model_fused_loss_equals_its_textbook_loss_in_value_and_every_gradient(tie_embeddings):
    """``GPT.forward`` with ``textbook_loss=True`` takes the plain path (full logits, F.cross_entropy);
    without it, the fused path. A tied head's shared matrix gets the sum of both uses' gradients."""
    config = GPTConfig(
        vocab_size=41, block_size=12, n_layer=1, n_head=2, n_embd=8, tie_embeddings=tie_embeddings
    )
    model = GPT(config).double()
    idx, targets = torch.randint(0, 41, (3, 12)), torch.randint(0, 41, (3, 12))
    targets[0, :4] = IGNORE_INDEX
    no_logits, fused = model(idx, targets)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    logits, plain = model(idx, targets, textbook_loss=True)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    assert no_logits is None and logits.shape == (3, 12, 41)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for ours, reference in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


class WidestLogits(TorchDispatchMode):
    """Records the most rows of any tensor that every operation outputs with the vocabulary as its last
    dimension: what is allocated, not only what autograd keeps."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size, self.rows = vocab_size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2 and tensor.shape[-1] == self.vocab_size:
                self.rows = max(self.rows, math.prod(tensor.shape[:-1]))
        return out


GPT2_VOCAB = 50_257
GPT2_ROWS = 50_304  # the head's rows: the vocabulary padded to a multiple of 64


def gpt2_vocab_model(tie_embeddings: bool) -> GPT:
    config = GPTConfig(
        vocab_size=GPT2_VOCAB, block_size=256, n_layer=1, n_head=2, n_embd=8, tie_embeddings=tie_embeddings
    )
    return GPT(config)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_a_training_step_never_allocates_more_than_one_chunk_of_logits(tie_embeddings):
    """The README's memory claim, on the real chunking rule at GPT-2's vocabulary: no operation of forward
    or backward outputs vocabulary-wide rows beyond one chunk; the textbook path, for contrast, makes all
    B*T rows at once."""
    model = gpt2_vocab_model(tie_embeddings)
    rows_per_chunk = loss_module._chunk_rows(GPT2_ROWS)
    idx, targets = torch.randint(0, GPT2_VOCAB, (3, 256)), torch.randint(0, GPT2_VOCAB, (3, 256))
    with WidestLogits(GPT2_ROWS) as fused:
        _, loss = model(idx, targets)
        loss.backward()
    assert 0 < fused.rows < idx.numel(), f"the full {idx.numel()} rows of logits were made at once"
    assert fused.rows <= rows_per_chunk, f"{fused.rows} rows of logits, the chunk is {rows_per_chunk}"
    with WidestLogits(GPT2_ROWS) as plain:
        model(idx, targets, textbook_loss=True)
    assert plain.rows == idx.numel()


def test_evaluation_never_allocates_more_than_one_chunk_of_logits():
    model = gpt2_vocab_model(tie_embeddings=True)
    rows_per_chunk = loss_module._chunk_rows(GPT2_ROWS, loss_module.EVAL_CHUNK_BYTES)
    idx, targets = torch.randint(0, GPT2_VOCAB, (3, 256)), torch.randint(0, GPT2_VOCAB, (3, 256))
    with torch.no_grad(), WidestLogits(GPT2_ROWS) as evaluation:
        model(idx, targets)
    assert 0 < evaluation.rows < idx.numel(), f"the full {idx.numel()} rows of logits were made at once"
    assert evaluation.rows <= rows_per_chunk, f"{evaluation.rows} rows, the chunk is {rows_per_chunk}"


@pytest.mark.usefixtures("small_chunks")
def test_bf16_autocast_matches_plain_path_within_bf16_tolerance():
    x, weight, targets = inputs(torch.float32, n=16, c=16, v=32, ignore_every=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, x, weight, targets)
        plain = loss_and_grads(plain_loss, x, weight, targets)
    assert fused[0].dtype == torch.float32
    assert fused[1].dtype == x.dtype and fused[2].dtype == weight.dtype
    for ours, reference in zip(fused, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-2)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_a_head_bias_enters_the_fused_loss_in_value_and_gradient(ignore_every):
    x, weight, targets = inputs(torch.float64, ignore_every=ignore_every)
    bias = torch.randn(weight.size(0), dtype=torch.float64, requires_grad=True)

    def plain(x, weight, bias):
        return F.cross_entropy(F.linear(x, weight, bias), targets)

    def fused(x, weight, bias):
        return linear_cross_entropy(x, weight, targets, bias=bias)

    expected = plain(x, weight, bias)
    got = fused(x, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(got * 1.7, (x, weight, bias)),
        torch.autograd.grad(expected * 1.7, (x, weight, bias)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, weight, bias), expected, rtol=1e-12, atol=1e-12)
    # The bias is not a no-op: the loss without it differs.
    assert not torch.allclose(linear_cross_entropy(x, weight, targets), expected)
