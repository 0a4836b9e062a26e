"""Early stopping: a run stops when its validation estimates stop improving and ends at its best weights."""

import copy
import dataclasses
import json

import pytest
import torch
from helpers import tiny_config, write_experiment

import run as run_script
from minigpt import checkpoint, data, train
from minigpt.config import ConfigError, TrainConfig
from minigpt.evaluate import evaluate
from minigpt.tracking import read_metrics


def script_estimates(monkeypatch, losses: dict[int, float]) -> dict[int, dict]:
    """Make the periodic estimate at step s report ``losses[s]`` (the final scores stay real), and return the
    weights each scripted estimate saw, by step."""
    seen: dict[int, dict] = {}
    real_score = train.Trainer.score

    def scripted(self, split, max_batches=0, stride=None, max_tokens=0):
        result = real_score(self, split, max_batches, stride, max_tokens)
        if not max_batches:
            return result
        seen[self.state.step] = copy.deepcopy(self.model.state_dict())
        return dataclasses.replace(result, loss=losses[self.state.step])

    monkeypatch.setattr(train.Trainer, "score", scripted)
    return seen


def trained_steps(run_dir) -> list[int]:
    return [row["step"] for row in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in row]


def early_stopping_config(tiny_corpus, tmp_path, **overrides):
    settings = {"max_steps": 12, "eval_interval": 2, "ckpt_interval": 100, "keep_last": 1}
    return tiny_config(tiny_corpus, tmp_path, {**settings, "early_stop_patience": 2, **overrides})


def test_a_run_stops_after_patience_estimates_without_improvement_and_ends_at_its_best_weights(
    tiny_corpus, tmp_path, monkeypatch
):
    seen = script_estimates(monkeypatch, {2: 5.0, 4: 4.0, 6: 4.5, 8: 4.6})
    config = early_stopping_config(tiny_corpus, tmp_path)
    summary = train.run(config)
    run_dir = tmp_path / "run"

    assert trained_steps(run_dir) == list(range(1, 9))  # stopped after the second estimate without a gain
    assert summary["step"] == 4 and summary["early_stop/stopped_at_step"] == 8
    assert summary["tokens"] == 4 * 4 * 16 and summary["early_stop/tokens_trained"] == 8 * 4 * 16
    assert summary["val/best_step"] == 4 and summary["val/best_loss"] == 4.0
    # Only the best checkpoint is left, holding the weights step 4's estimate saw: what the tools read.
    assert [step for step, _ in checkpoint.list_checkpoints(run_dir)] == [4]
    kept = checkpoint.load_checkpoint(run_dir)["model"]
    for key, value in seen[4].items():
        assert torch.equal(kept[key], value), key
    assert not torch.equal(seen[8]["lm_head.weight"], seen[4]["lm_head.weight"])
    # The final scores are those of the best weights (scored again here, outside the trainer).
    model = checkpoint.build_model(checkpoint.load_checkpoint(run_dir)).eval()
    val = data.load_split(config.data, "val", data.load_tokenizer(config.data))
    rescored = evaluate(model, val.tokens, config.model.block_size, 512)
    assert rescored.loss == pytest.approx(summary["final_val/loss"], rel=1e-6)


def test_a_run_that_ends_past_its_best_estimate_rewinds_to_it(tiny_corpus, tmp_path, monkeypatch):
    script_estimates(monkeypatch, {2: 4.0, 4: 4.5, 6: 4.6})
    summary = train.run(early_stopping_config(tiny_corpus, tmp_path, max_steps=6, early_stop_patience=5))
    assert trained_steps(tmp_path / "run") == list(range(1, 7))
    assert summary["step"] == 2 and summary["early_stop/stopped_at_step"] == 6


def test_a_run_whose_last_weights_are_its_best_keeps_them(tiny_corpus, tmp_path, monkeypatch):
    script_estimates(monkeypatch, {2: 4.0, 4: 4.5, 6: 3.9})
    summary = train.run(early_stopping_config(tiny_corpus, tmp_path, max_steps=6, early_stop_patience=5))
    assert summary["step"] == 6 and "early_stop/stopped_at_step" not in summary
    assert summary["val/best_step"] == 6


def test_resuming_an_early_stopped_run_trains_no_further(tiny_corpus, tmp_path, monkeypatch):
    script_estimates(monkeypatch, {2: 5.0, 4: 4.0, 6: 4.5, 8: 4.6})
    config = early_stopping_config(tiny_corpus, tmp_path)
    experiment = write_experiment(tmp_path / "experiment.py", config)
    assert run_script.main([str(experiment)]) == 0
    run_dir = tmp_path / "run"
    assert run_script.main([f"--resume={run_dir}"]) == 0
    assert trained_steps(run_dir) == list(range(1, 9))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    assert summary["early_stop/stopped_at_step"] == 8


def test_early_stopping_without_periodic_estimates_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match="train.early_stop_patience.*train.eval_interval"):
        TrainConfig(early_stop_patience=3, eval_interval=0)


def test_a_run_whose_best_estimate_is_the_untrained_models_rewinds_to_its_starting_weights(
    tiny_corpus, tmp_path, monkeypatch
):
    seen = script_estimates(monkeypatch, {0: 3.0, 2: 5.0, 4: 5.1})
    config = early_stopping_config(tiny_corpus, tmp_path, dense_log_steps=2)
    summary = train.run(config)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert summary["val/best_step"] == 0 and summary["step"] == 0
    assert summary["early_stop/stopped_at_step"] == 4
    kept = checkpoint.load_checkpoint(run_dir)["model"]
    for key, value in seen[0].items():
        assert torch.equal(kept[key], value), key
