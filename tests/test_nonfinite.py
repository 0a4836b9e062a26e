"""A gradient that goes NaN or infinite while the loss stays finite stops the run, or with
``train.skip_nonfinite`` skips the step without touching the weights or the optimizer, and counts it."""

import math
import re

import pytest
import torch
from helpers import tiny_config

from minigpt import checkpoint, train
from minigpt.model import GPT
from minigpt.tracking import read_metrics

ACCUM_STEPS = 2  # tiny_config: a batch of 4 in micro-batches of 2


def gradient_poisoned_in_step(bad_step: int, value: float) -> type[GPT]:
    """A GPT whose position-embedding gradient gets ``value`` in one entry during the (1-based) optimizer step
    ``bad_step``, on its last micro-batch; its loss is untouched."""

    class PoisonedGradient(GPT):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.backwards = 0
            self.transformer.wpe.weight.register_hook(self.poison)

        def poison(self, grad: torch.Tensor) -> torch.Tensor:
            self.backwards += 1
            if self.backwards == bad_step * ACCUM_STEPS:
                grad = grad.clone()
                grad[0, 0] = value
            return grad

    return PoisonedGradient


@pytest.mark.slow
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_a_nonfinite_gradient_with_a_finite_loss_stops_the_run(tiny_corpus, tmp_path, monkeypatch, value):
    monkeypatch.setattr(train, "GPT", gradient_poisoned_in_step(3, value))
    config = tiny_config(tiny_corpus, tmp_path, {"ckpt_interval": 2, "eval_interval": 0})
    with pytest.raises(train.NonFiniteLossError, match="non-finite gradient norm at step 3") as stopped:
        train.run(config)
    message = str(stopped.value)
    assert math.isfinite(float(re.search(r"\(loss (\S+), grad norm", message).group(1)))
    assert f"Last good checkpoint: {tmp_path / 'run' / 'ckpt-0000002.pt'}" in message
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [2]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert max(row["step"] for row in rows if "train/loss" in row) == 2


@pytest.mark.slow
def test_skip_nonfinite_skips_a_step_with_a_nonfinite_gradient_leaving_the_state_unchanged(
    tiny_corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(train, "GPT", gradient_poisoned_in_step(3, math.inf))
    overrides = {"skip_nonfinite": True, "ckpt_interval": 1, "keep_last": 10, "eval_interval": 0}
    summary = train.run(tiny_config(tiny_corpus, tmp_path, overrides))
    assert summary["skipped_steps"] == 1 and summary["step"] == 6 and math.isfinite(summary["final_val/loss"])
    rows = {
        row["step"]: row for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in row
    }
    assert math.isfinite(rows[3]["train/loss"]) and not math.isfinite(float(rows[3]["train/grad_norm"]))
    assert all(math.isfinite(rows[step]["train/grad_norm"]) for step in (1, 2, 4, 5, 6))

    saved = dict(checkpoint.list_checkpoints(tmp_path / "run"))
    before, skipped, after = (checkpoint.load_checkpoint(saved[step]) for step in (2, 3, 4))
    for key, tensor in before["model"].items():
        assert torch.equal(skipped["model"][key], tensor), f"{key} changed in the skipped step"
        assert torch.isfinite(after["model"][key]).all()
    assert not all(torch.equal(after["model"][key], tensor) for key, tensor in before["model"].items())
    for param, state in before["optimizer"]["state"].items():  # AdamW's step count and moments
        for name, value in state.items():
            assert torch.equal(skipped["optimizer"]["state"][param][name], value), f"optimizer {name} changed"
    assert skipped["skipped_steps"] == 1
