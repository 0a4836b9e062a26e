"""Sampling: filters on hand-made distributions, the KV cache against plain recomputation, EOS, the CLI."""

import dataclasses
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2TokenizerFast

from minigpt import sample
from minigpt.checkpoint import save_checkpoint
from minigpt.model import GPT, GPTConfig, top_k_filter, top_p_filter

REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_model(**overrides) -> GPT:
    fields = dict(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=16)
    fields.update(overrides)
    return GPT(GPTConfig(**fields)).eval()


def greedy_without_cache(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The reference: at every step run the whole model on the last block_size tokens."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def log_probs(*probs: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs])


def survivors(filtered: torch.Tensor) -> list[int]:
    return torch.isfinite(filtered).nonzero().flatten().tolist()


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0])
    assert survivors(top_k_filter(logits, 1)) == [1]
    assert survivors(top_k_filter(logits, 3)) == [1, 3, 4]
    assert survivors(top_k_filter(logits, 10)) == [0, 1, 2, 3, 4]
    kept = top_k_filter(logits, 2)
    assert kept[1] == 3.0 and kept[3] == 2.0  # survivors are unchanged
    batch = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.isfinite(top_k_filter(batch, 2)).tolist() == [[False, True, True], [True, True, False]]


def test_top_p_keeps_the_smallest_sufficient_set():
    logits = log_probs(0.1, 0.5, 0.05, 0.3, 0.05)
    assert survivors(top_p_filter(logits, 0.4)) == [1]  # 0.5 alone reaches 0.4
    assert survivors(top_p_filter(logits, 0.5)) == [1]  # exactly reached counts
    assert survivors(top_p_filter(logits, 0.6)) == [1, 3]  # 0.5 < 0.6 <= 0.8
    assert survivors(top_p_filter(logits, 0.85)) == [0, 1, 3]  # 0.8 < 0.85 <= 0.9
    assert survivors(top_p_filter(logits, 1.0)) == [0, 1, 2, 3, 4]
    assert survivors(top_p_filter(logits, 1e-6)) == [1]  # never empty
    batch = torch.stack([log_probs(0.7, 0.2, 0.1), log_probs(0.25, 0.15, 0.6)])
    assert torch.isfinite(top_p_filter(batch, 0.75)).tolist() == [[True, True, False], [True, False, True]]


def test_greedy_with_cache_equals_recomputation_past_block_size():
    model = tiny_model()
    prompt = torch.randint(0, 61, (2, 8))
    cached = model.generate(prompt, 60, do_sample=False)
    assert cached.shape == (2, 68)
    assert torch.equal(cached, greedy_without_cache(model, prompt, 60))


def test_greedy_with_cache_manual_attention_and_full_prompt():
    model = tiny_model(attention="manual", n_head=1, norm_position="post")
    prompt = torch.randint(0, 61, (1, 40))  # longer than block_size: the model crops
    assert torch.equal(model.generate(prompt, 20, do_sample=False), greedy_without_cache(model, prompt, 20))


def test_cache_makes_each_new_token_one_position():
    model = tiny_model()  # block_size 32
    lengths = []
    model.transformer.wte.register_forward_hook(lambda module, args, out: lengths.append(args[0].size(1)))
    model.generate(torch.randint(0, 61, (1, 8)), 30, do_sample=False)
    # Prefill 8, then one position per token until the window is full (at 32), then whole windows.
    assert lengths == [8] + [1] * 24 + [32] * 5


def test_stream_yields_the_generated_tokens():
    model = tiny_model()
    prompt = torch.randint(0, 61, (3, 4))
    steps = list(model.generate_stream(prompt, 10, do_sample=False))
    assert len(steps) == 10 and all(s.shape == (3,) for s in steps)
    assert torch.equal(torch.stack(steps, 1), model.generate(prompt, 10, do_sample=False)[:, 4:])


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    prompt = torch.randint(0, 61, (2, 3))

    def draw(seed: int, **kwargs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 30, generator=generator, **kwargs)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert torch.equal(
        draw(3, top_k=5, top_p=0.9, temperature=0.7), draw(3, top_k=5, top_p=0.9, temperature=0.7)
    )


def test_low_temperature_and_top_k_1_are_greedy():
    model = tiny_model()
    prompt = torch.randint(0, 61, (2, 3))
    greedy = model.generate(prompt, 20, do_sample=False)
    assert torch.equal(model.generate(prompt, 20, temperature=0.0), greedy)
    assert torch.equal(model.generate(prompt, 20, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, 20, temperature=1e-4), greedy)


class FixedLogits:
    """Makes ``model`` predict ``logits`` (V,) at every step, whatever the tokens: its head becomes the
    identity on the first V features, and the features it feeds the head become ``logits``. Assigning
    ``.logits`` changes the prediction from the next step on; ``calls`` counts the model's steps."""

    def __init__(self, model: GPT, logits: torch.Tensor) -> None:
        vocab_size, n_embd = model.config.vocab_size, model.config.n_embd
        assert not model.config.tie_embeddings and n_embd >= vocab_size
        with torch.no_grad():
            model.lm_head.weight.copy_(torch.eye(model.config.padded_vocab_size, n_embd))
        model._hidden_states = self.hidden_states
        self.model, self.logits, self.calls = model, logits, 0

    def hidden_states(self, idx: torch.Tensor, caches=None, start_pos: int = 0) -> torch.Tensor:
        self.calls += 1
        features = torch.zeros(*idx.shape, self.model.config.n_embd)
        features[..., : len(self.logits)] = self.logits
        return features


def fixed_logits_model(logits: torch.Tensor) -> tuple[GPT, FixedLogits]:
    model = tiny_model(vocab_size=len(logits), n_embd=2 * len(logits), tie_embeddings=False)
    return model, FixedLogits(model, logits)


def draws(logits: torch.Tensor, samples: int = 4000, **sampling) -> torch.Tensor:
    """``samples`` tokens drawn through ``GPT.generate`` (a batch of prompts, 10 steps each) from a model
    that always predicts ``logits``."""
    model, _ = fixed_logits_model(logits)
    prompt = torch.zeros(samples // 10, 1, dtype=torch.long)
    return model.generate(prompt, 10, generator=torch.Generator().manual_seed(0), **sampling)[:, 1:].flatten()


def frequencies(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab_size).double() / len(tokens)


PROBS = (0.05, 0.4, 0.02, 0.25, 0.13, 0.1, 0.05)  # token 1 likeliest, then 3, 4, 5; 0 and 6, 2 least


@pytest.mark.parametrize(
    ("sampling", "allowed"),
    [
        (dict(top_k=3), {1, 3, 4}),
        (dict(top_p=0.6), {1, 3}),  # 0.4 < 0.6 <= 0.65
        (dict(top_p=0.7), {1, 3, 4}),  # 0.65 < 0.7 <= 0.78
        (dict(top_k=3, top_p=0.6), {1, 3}),
        (dict(top_k=2, top_p=0.6), {1}),  # top-k first, then the nucleus of what is left (1 has 0.4 / 0.65)
        (dict(top_p=0.6, temperature=3.0), {1, 3, 4, 5}),  # the nucleus of the flattened distribution
    ],
)
def test_sampled_tokens_stay_inside_the_filtered_set_and_cover_it(sampling, allowed):
    tokens = draws(log_probs(*PROBS), **sampling)
    assert set(tokens.tolist()) == allowed


def test_sampling_frequencies_follow_the_tempered_distribution():
    """At temperature t the draws follow softmax(logits / t): t < 1 sharpens the distribution, t > 1
    flattens it. 4,000 draws put each frequency within 0.04 of its probability at over 4 standard errors."""
    logits = log_probs(*PROBS)
    entropies = []
    for temperature in (0.5, 1.0, 2.0):
        observed = frequencies(draws(logits, temperature=temperature), len(PROBS))
        expected = torch.softmax(logits.double() / temperature, dim=0)
        torch.testing.assert_close(observed, expected, rtol=0, atol=0.04)
        entropies.append(-(observed * observed.clamp(min=1e-12).log()).sum().item())
    assert entropies[0] < entropies[1] - 0.2 and entropies[1] < entropies[2] - 0.1


def test_top_k_and_top_p_renormalise_over_what_they_keep():
    observed = frequencies(draws(log_probs(*PROBS), top_p=0.7), len(PROBS))
    expected = torch.tensor([0.0, 0.4, 0.0, 0.25, 0.13, 0.0, 0.0], dtype=torch.double) / 0.78
    torch.testing.assert_close(observed, expected, rtol=0, atol=0.04)


def test_the_stream_yields_each_token_before_computing_the_next():
    """The stream is lazy: one model step per token taken, and a change of the model between two tokens
    shows in the very next one."""
    model, fixed = fixed_logits_model(torch.tensor([0.0, 0.0, 50.0, 0.0, 0.0]))
    stream = model.generate_stream(torch.zeros(2, 3, dtype=torch.long), 4)
    assert fixed.calls == 0
    assert next(stream).tolist() == [2, 2] and fixed.calls == 1
    fixed.logits = torch.tensor([0.0, 0.0, 0.0, 0.0, 50.0])
    assert next(stream).tolist() == [4, 4] and fixed.calls == 2
    assert [t.tolist() for t in stream] == [[4, 4], [4, 4]] and fixed.calls == 4


def test_eos_stops_finished_sequences():
    model = tiny_model()
    prompt = torch.randint(0, 61, (3, 4))
    free = model.generate(prompt, 12, do_sample=False)[:, 4:]
    eos = int(free[0, 2])
    # Where each sequence first produces EOS when unconstrained (12 = never).
    first = [int((row == eos).nonzero()[0]) if (row == eos).any() else 12 for row in free]
    out = model.generate(prompt, 12, do_sample=False, eos_token_id=eos)[:, 4:]
    assert out.size(1) == min(12, max(first) + 1)  # stops once all have finished
    for b, at in enumerate(first):
        assert torch.equal(out[b, : at + 1], free[b, : at + 1])
        assert torch.all(out[b, at:] == eos)  # a finished sequence keeps emitting EOS
    single = model.generate(prompt[:1], 12, do_sample=False, eos_token_id=eos)
    assert single.size(1) == 4 + first[0] + 1 and int(single[0, -1]) == eos


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_invalid_sampling_arguments_raise_at_the_call(kwargs, field):
    model = tiny_model()
    args = dict(max_new_tokens=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        model.generate_stream(torch.zeros(1, 2, dtype=torch.long), **args)  # no iteration needed


def test_empty_prompt_and_zero_tokens():
    model = tiny_model()
    with pytest.raises(ValueError, match="prompt"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 5)
    prompt = torch.randint(0, 61, (1, 3))
    assert torch.equal(model.generate(prompt, 0), prompt)


def write_checkpoint(run_dir, model: GPT):
    """A checkpoint in the project's own format, as a training run writes it."""
    state = {"model": model.state_dict(), "model_config": dataclasses.asdict(model.config), "step": 7}
    return save_checkpoint(run_dir, state)


def test_load_model_for_sampling_from_checkpoint(tmp_path):
    model = tiny_model(tie_embeddings=False)
    path = write_checkpoint(tmp_path, model)
    for source in (path, tmp_path):  # the file itself, or the run directory (its newest checkpoint)
        loaded = sample.load_model_for_sampling(checkpoint=source)
        assert loaded.config == model.config and not loaded.training
        idx = torch.randint(0, 61, (1, 6))
        assert torch.equal(loaded(idx)[0], model(idx)[0])
    with pytest.raises(ValueError):
        sample.load_model_for_sampling()


@pytest.mark.slow
def test_sample_cli_streams_text(tmp_path, tokenizer_dir, monkeypatch):
    """The command prints the prompt, then each new token's text before the next token is computed, and the
    text it prints is the greedy continuation, token for token; as a process it exits 0."""
    model = GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=8)).eval()
    path = write_checkpoint(tmp_path, model)
    base = ["--checkpoint", str(path), "--tokenizer", str(tokenizer_dir)]
    tokenizer = GPT2TokenizerFast.from_pretrained(tokenizer_dir)
    prompt = tokenizer.encode("Hello world")
    expected = tokenizer.decode(model.generate(torch.tensor([prompt]), 5, do_sample=False)[0])

    events: list[str] = []
    real_stream = GPT.generate_stream

    def logged_stream(self, *args, **kwargs):
        for token in real_stream(self, *args, **kwargs):
            events.append("token")
            yield token

    monkeypatch.setattr(GPT, "generate_stream", logged_stream)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    real_write = sys.stdout.write
    monkeypatch.setattr(sys.stdout, "write", lambda text: events.append("text") or real_write(text))
    texts = sample.main([*base, "--prompt", "Hello world", "--max-new-tokens", "5", "--greedy"])
    assert texts == [expected] and sys.stdout.getvalue() == expected + "\n"
    assert events[0] == "text"  # the prompt, before any token
    assert events.count("token") == 5
    for i, event in enumerate(events[:-1]):
        if event == "token" and events[i + 1 :].count("token"):  # printed before the next token is drawn
            assert events[i + 1] == "text", events
    monkeypatch.undo()

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minigpt.sample",
            *base,
            "--prompt",
            "Hello world",
            "--max-new-tokens",
            "5",
            "--greedy",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected + "\n"


@pytest.mark.slow
def test_sample_cli_refuses_bad_prompts_and_options_as_usage_errors(tmp_path, tokenizer_dir, capsys):
    model = GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=8))
    base = ["--checkpoint", str(write_checkpoint(tmp_path, model)), "--tokenizer", str(tokenizer_dir)]
    texts = sample.main(
        [*base, "--prompt", "Hi", "--max-new-tokens", "3", "--num-samples", "2", "--seed", "1"]
    )
    assert len(texts) == 2 and all(text.startswith("Hi") for text in texts)
    for argv in (
        [*base, "--prompt", ""],
        [*base, "--prompt", "word " * 20],
        [*base, "--prompt", "Hi", "--top-p", "2"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            sample.main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "prompt" in err and "Traceback" not in err
