"""The fused, chunked head + cross-entropy equals the plain path: full logits, then F.cross_entropy."""

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


def test_tied_embeddings_get_both_gradients():
    """With the head tied to the token embedding, the shared matrix's gradient is the sum of both uses."""
    config = GPTConfig(vocab_size=41, block_size=12, n_layer=1, n_head=2, n_embd=8, tie_embeddings=True)
    model = GPT(config).double()
    idx, targets = torch.randint(0, 41, (3, 12)), torch.randint(0, 41, (3, 12))
    targets[0, :4] = IGNORE_INDEX
    _, fused = model(idx, targets)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    logits, _ = model(idx)
    plain = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for ours, reference in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_bf16_autocast_matches_plain_path_within_bf16_tolerance():
    x, weight, targets = inputs(torch.float32, n=16, c=16, v=32, ignore_every=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, x, weight, targets)
        plain = loss_and_grads(plain_loss, x, weight, targets)
    assert fused[0].dtype == torch.float32
    assert fused[1].dtype == x.dtype and fused[2].dtype == weight.dtype
    for ours, reference in zip(fused, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-2)
