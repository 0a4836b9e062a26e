"""The fused, chunked head + cross-entropy equals the plain path: full logits, then F.cross_entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt import loss as loss_module
from minigpt.loss import IGNORE_INDEX, linear_cross_entropy
from minigpt.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Five rows per chunk, so that every test crosses chunk boundaries and ends on a partial chunk."""
    monkeypatch.setattr(loss_module, "_chunk_rows", lambda vocab_size: 5)


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


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_value_and_gradients_equal_plain_path(dtype, tol, ignore_every):
    x, weight, targets = inputs(dtype, ignore_every=ignore_every)
    fused = loss_and_grads(linear_cross_entropy, x, weight, targets)
    plain = loss_and_grads(plain_loss, x, weight, targets)
    for ours, reference in zip(fused, plain, strict=True):
        assert ours.dtype == reference.dtype
        torch.testing.assert_close(ours, reference, rtol=tol, atol=tol)


def test_batched_inputs_and_no_grad_path_match():
    x, weight, targets = inputs(torch.float64, n=24)
    x3, t2 = x.detach().view(4, 6, -1), targets.view(4, 6)
    with torch.no_grad():
        evaluated = linear_cross_entropy(x3, weight, t2)
    torch.testing.assert_close(evaluated, plain_loss(x3, weight.detach(), t2))


def test_all_targets_ignored_gives_zero_loss_and_gradients():
    x, weight, targets = inputs(torch.float32)
    targets[:] = IGNORE_INDEX
    value, grad_x, grad_w = loss_and_grads(linear_cross_entropy, x, weight, targets)
    assert value.item() == 0.0
    assert not grad_x.any() and not grad_w.any()


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_the_model_fused_loss_equals_its_textbook_loss_in_value_and_every_gradient(tie_embeddings):
    """``GPT.forward`` with ``return_logits=True`` takes the plain path (full logits, F.cross_entropy);
    without it, the fused path. A tied head's shared matrix gets the sum of both uses' gradients."""
    config = GPTConfig(
        vocab_size=41, block_size=12, n_layer=1, n_head=2, n_embd=8, tie_embeddings=tie_embeddings
    )
    model = GPT(config).double()
    idx, targets = torch.randint(0, 41, (3, 12)), torch.randint(0, 41, (3, 12))
    targets[0, :4] = IGNORE_INDEX
    no_logits, fused = model(idx, targets)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    logits, plain = model(idx, targets, return_logits=True)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    assert no_logits is None and logits.shape == (3, 12, 41)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for ours, reference in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def vocabulary_wide_saved_tensors(model: GPT, idx: torch.Tensor, targets: torch.Tensor, **kwargs) -> list:
    """Shapes of the tensors that one training step's autograd graph saves for backward and that span the
    vocabulary in some dimension."""
    vocab_size, shapes = model.config.vocab_size, []

    def record(tensor: torch.Tensor) -> torch.Tensor:
        if vocab_size in tensor.shape:
            shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        _, loss = model(idx, targets, **kwargs)
    loss.backward()
    return shapes


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_a_training_step_never_saves_more_than_one_chunk_of_logits(tie_embeddings):
    """The README's memory claim: the graph saves nothing vocabulary-wide beyond one chunk of rows, or the
    head weight's own (V, C) shape (its gradient); the textbook path, for contrast, saves all B*T rows."""
    vocab_size, n_embd = 257, 24  # odd sizes, so that no other dimension equals V by chance
    rows_per_chunk = loss_module._chunk_rows(vocab_size)
    config = GPTConfig(
        vocab_size=vocab_size,
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=n_embd,
        tie_embeddings=tie_embeddings,
    )
    model = GPT(config)
    idx, targets = torch.randint(0, vocab_size, (4, 16)), torch.randint(0, vocab_size, (4, 16))

    fused = vocabulary_wide_saved_tensors(model, idx, targets)
    too_big = [s for s in fused if s != (vocab_size, n_embd) and math.prod(s) > rows_per_chunk * vocab_size]
    assert not too_big, f"saved for backward: {too_big}, more than {rows_per_chunk} rows of logits"
    plain = vocabulary_wide_saved_tensors(model, idx, targets, return_logits=True)
    assert (4 * 16, vocab_size) in plain or (4, 16, vocab_size) in plain


def test_bf16_autocast_matches_plain_path_within_bf16_tolerance():
    x, weight, targets = inputs(torch.float32, n=16, c=16, v=32, ignore_every=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, x, weight, targets)
        plain = loss_and_grads(plain_loss, x, weight, targets)
    assert fused[0].dtype == torch.float32
    assert fused[1].dtype == x.dtype and fused[2].dtype == weight.dtype
    for ours, reference in zip(fused, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-2)
