"""The main command's run-side promises: Ctrl-C saves and says how to continue, a time budget stops the run
and ends its schedule, and a batch or folder that cannot work is refused before any data loads."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_config, write_experiment

import run as run_script
from minigpt import checkpoint, perf, train
from minigpt.config import ConfigError, apply_overrides, load_experiment
from minigpt.model import GPTConfig
from minigpt.tracking import read_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_how_to_resume(tiny_corpus, tmp_path, monkeypatch, capsys):
    config = tiny_config(tiny_corpus, tmp_path, {"max_steps": 8, "ckpt_interval": 0, "eval_interval": 0})
    experiment = write_experiment(tmp_path / "experiment.py", config)
    real_step = train.Trainer.train_step

    def ctrl_c_in_step_four(self, *args, **kwargs):
        if self.state.step == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_step", ctrl_c_in_step_four)
    assert run_script.main([str(experiment)]) == 130
    run_dir = tmp_path / "run"
    out, err = capsys.readouterr()
    assert out == ""  # the run speaks on one stream, stderr
    assert "interrupted at step 3 of 8" in err and f"python run.py --resume={run_dir}" in err
    assert "Traceback" not in err
    assert [step for step, _ in checkpoint.list_checkpoints(run_dir)] == [3]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(train.Trainer, "train_step", real_step)
    assert run_script.main([f"--resume={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 8
    assert [row["step"] for row in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in row] == list(
        range(1, 9)
    )


@pytest.mark.slow
def test_a_real_sigint_stops_a_training_process_with_a_checkpoint(tiny_corpus, tmp_path):
    config = tiny_config(
        tiny_corpus,
        tmp_path,
        {"max_steps": 100_000, "ckpt_interval": 0, "eval_interval": 0, "log_interval": 1},
    )
    experiment = write_experiment(tmp_path / "experiment.py", config)
    child = subprocess.Popen(
        [sys.executable, "run.py", str(experiment)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests")},
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300  # generous: the test must not flake on a loaded machine
    while not (metrics.exists() and read_metrics(metrics)) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    assert "interrupted at step" in err and "--resume=" in err and "Traceback" not in err
    (step, path), *_ = checkpoint.list_checkpoints(tmp_path / "run")
    assert step >= 1 and checkpoint.load_checkpoint(path)["step"] == step


STEP_SECONDS = 0.125  # a binary fraction: sums of it are exact


@pytest.fixture
def step_clock(monkeypatch) -> None:
    """The loop's clock reads a virtual time that each training step advances by ``STEP_SECONDS``, so a
    time budget ends after a known number of steps however busy the machine is."""
    now = [0.0]
    real_step = train.Trainer.train_step

    def timed_step(self, *args, **kwargs):
        now[0] += STEP_SECONDS
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(train.Trainer, "train_step", timed_step)
    monkeypatch.setattr(perf, "measure_matmul_flops", lambda *args, **kwargs: 1e12)  # it times a matmul


@pytest.mark.slow
@pytest.mark.usefixtures("step_clock")
def test_a_time_budget_stops_training_and_ends_the_schedule(tiny_corpus, tmp_path):
    config = tiny_config(
        tiny_corpus, tmp_path, {"max_steps": 1_000_000, "max_minutes": 0.02, "eval_interval": 0}
    )
    summary = train.run(config)
    # 1.2 s of budget: the first step that reaches it is the 10th (10 x 0.125 s = 1.25 s)
    assert summary["step"] == 10
    assert summary["train_seconds"] == pytest.approx(10 * STEP_SECONDS)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


def test_the_schedule_under_a_time_budget_follows_the_time_spent(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path, {"max_steps": 1000, "warmup_steps": 10, "min_lr_ratio": 0.1})
    lr = config.train.lr
    assert train.lr_at(20, config, time_spent=0.0) == pytest.approx(train.lr_at(20, config))
    assert train.lr_at(20, config, time_spent=0.5) == pytest.approx(lr * (0.1 + 0.9 * 0.5))
    assert train.lr_at(20, config, time_spent=1.0) == pytest.approx(0.1 * lr)
    assert train.lr_at(5, config, time_spent=1.0) == pytest.approx(lr * 6 / 10)  # warmup is counted in steps


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_data_loads(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(perf, "available_memory_bytes", lambda device: 2**20)  # 1 MiB left
    config = tiny_config(tiny_corpus, tmp_path)
    with pytest.raises(ConfigError, match="does not fit in memory: micro_batch_size=2 at context 16"):
        train.run(config)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_the_memory_estimate_grows_with_the_batch_and_counts_every_parameter_four_times():
    config = GPTConfig(vocab_size=1000, block_size=64, n_layer=2, n_head=2, n_embd=32)
    states, small = perf.training_memory_bytes(config, micro_batch_size=1)
    _, large = perf.training_memory_bytes(config, micro_batch_size=8)
    params = 1000 * 32 + 64 * 32 + 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32
    assert states == 16 * params  # fp32 weights, gradients and AdamW's two moments
    assert large == 8 * small > 0


@pytest.mark.parametrize(
    ("make_out_dir", "fragment"),
    [
        (lambda tmp: tmp / "a-file" / "runs", "cannot create"),
        (lambda tmp: Path("/proc/minigpt-runs"), "is not writable"),
    ],
)
def test_an_output_folder_that_cannot_be_made_is_refused_up_front(
    tiny_corpus, tmp_path, make_out_dir, fragment, capsys
):
    (tmp_path / "a-file").write_text("not a folder")
    out_dir = make_out_dir(tmp_path)
    config = apply_overrides(tiny_config(tiny_corpus, tmp_path), {"out_dir": str(out_dir)})
    assert run_script.main([str(write_experiment(tmp_path / "experiment.py", config))]) == 2
    err = capsys.readouterr().err
    assert fragment in err and f"log.out_dir={out_dir}" in err and "Traceback" not in err


def test_the_cpu_hour_profile_keeps_the_seed_recipe_under_a_60_minute_budget():
    config = load_experiment(REPO_ROOT / "experiments" / "cpu_hour.py")
    assert config.train.max_minutes == 60
    ceiling_tokens = config.train.max_steps * config.train.batch_size * config.model.block_size
    assert ceiling_tokens > 10**6 * 3600  # the step count binds only above a million tokens a second
    assert (config.model.norm_position, config.data.dataset) == ("pre", "wikitext-2-v1")
    assert config.train.warmup_steps > 0 and config.train.min_lr_ratio < 1  # warmup, then cosine decay
    states, activations = perf.training_memory_bytes(config.model, config.train.micro_batch_size)
    assert states + activations < 4 * 2**30  # trains on any laptop


@pytest.mark.slow
@pytest.mark.usefixtures("step_clock")
def test_the_cpu_hour_file_runs_and_its_schedule_ends_with_the_budget(tiny_corpus, tmp_path):
    profile = load_experiment(REPO_ROOT / "experiments" / "cpu_hour.py")
    config = apply_overrides(
        profile,
        {
            **{f"data.{key}": value for key, value in tiny_corpus.items()},
            **{"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16},
            **{"batch_size": 4, "micro_batch_size": 4},
            "max_minutes": 0.02,
            "warmup_steps": 2,
            "eval_stride": 8,
            "eval_interval": 0,
            "log_interval": 1,
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
            "out_dir": str(tmp_path),
            "run_name": "run",
            "wandb": "disabled",
        },
    )
    summary = train.run(config)
    assert summary["step"] == 10  # 10 x 0.125 s reaches the 1.2 s budget
    rows = [row for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/lr" in row]
    # the last step's lr follows the time spent before it (9 steps of the budget), near the cosine's floor
    assert rows[-1]["train/lr"] == pytest.approx(train.lr_at(9, config, time_spent=9 * STEP_SECONDS / 1.2))
    assert rows[-1]["train/lr"] < 0.2 * profile.train.lr
    assert "final_val_sliding/ppl" in summary


def test_a_fine_tune_with_an_unwritable_out_dir_is_refused_before_the_base_loads(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    def load_base(*args, **kwargs):
        raise AssertionError("the base weights were loaded before the output folder was checked")

    monkeypatch.setattr(train, "load_base", load_base)
    (tmp_path / "a-file").write_text("not a folder")
    overrides = {"out_dir": str(tmp_path / "a-file" / "runs"), "init_from": "gpt2", "lora.rank": 4}
    config = apply_overrides(tiny_config(tiny_corpus, tmp_path), overrides)
    assert run_script.main([str(write_experiment(tmp_path / "experiment.py", config))]) == 2
    err = capsys.readouterr().err
    assert "cannot create" in err and "log.out_dir=" in err and "Traceback" not in err
