"""Where metrics go: the run directory's files, torn lines, W&B modes, and W&B without a network."""

import json
import math
import socket
import threading
import warnings
from pathlib import Path

import pytest
import torch
import wandb
from helpers import tiny_config, write_experiment

import run as run_script
from minigpt import tracking
from minigpt.config import ExperimentConfig, apply_overrides
from minigpt.tracking import (
    ConsoleLogger,
    Logger,
    MultiLogger,
    RunDirLogger,
    WandbLogger,
    build_logger,
    can_connect,
    new_run_dir,
    read_metrics,
    wandb_mode,
)


def strict_json(line: str):
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_run_directory_logger_writes_config_metrics_and_summary(tmp_path):
    logger = RunDirLogger(tmp_path / "run")
    logger.start({"name": "x", "train": {"lr": 0.1}}, total_steps=3)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"status": "running"}
    logger.log({"train/loss": 2.5}, step=1)
    logger.log({"train/loss": float("nan"), "train/grad_norm": float("inf")}, step=2)
    # Line-buffered: a line is on disk as soon as it is logged, before the run ends.
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    logger.summary({"val/ppl": 12.5})
    logger.finish()
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"name": "x", "train": {"lr": 0.1}}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line) for line in lines] == [
        {"step": 1, "train/loss": 2.5},
        {"step": 2, "train/loss": "nan", "train/grad_norm": "inf"},
    ]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {
        "val/ppl": 12.5,
        "status": "finished",
    }


def test_a_failed_run_is_marked_failed(tmp_path):
    logger = RunDirLogger(tmp_path)
    logger.start({}, total_steps=1)
    logger.finish("failed")
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_reader_skips_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a"\n[1, 2]\n{"step": 3, "a": 3}\n{"step": 4, "a": 4')
    assert read_metrics(path) == [{"step": 1, "a": 1}, {"step": 3, "a": 3}]


def test_resume_drops_lines_after_the_checkpoint_and_torn_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": step, "train/loss": float(step)} for step in range(1, 7)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 7, "train/lo')
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running", "val/ppl": 9.0}))
    logger = RunDirLogger(tmp_path)
    logger.start({}, total_steps=10, first_step=4)
    logger.log({"train/loss": 50.0}, step=5)
    logger.finish()
    assert [strict_json(line) for line in path.read_text().splitlines()] == [
        *rows[:4],
        {"step": 5, "train/loss": 50.0},
    ]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "finished", "val/ppl": 9.0}


def test_samples_are_kept_one_per_line_and_a_resume_drops_those_after_the_checkpoint(tmp_path):
    logger = RunDirLogger(tmp_path)
    logger.start({}, total_steps=10)
    for step in (0, 3, 6):
        logger.sample("The history of", f" text at {step}", tokens=step * 64, step=step)
    logger.finish("interrupted")
    resumed = RunDirLogger(tmp_path)
    resumed.start({}, total_steps=10, first_step=3)
    resumed.sample("The history of", " text again at 6", tokens=384, step=6)
    resumed.finish()
    assert read_metrics(tmp_path / "samples.jsonl") == [
        {"step": 0, "train/tokens": 0, "prompt": "The history of", "text": " text at 0"},
        {"step": 3, "train/tokens": 192, "prompt": "The history of", "text": " text at 3"},
        {"step": 6, "train/tokens": 384, "prompt": "The history of", "text": " text again at 6"},
    ]


def test_a_fresh_start_clears_the_lines_of_a_run_that_crashed_before_its_first_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 10.0}\n{"step": 2, "tr')
    logger = RunDirLogger(tmp_path)
    logger.start({}, total_steps=2)
    logger.log({"train/loss": 9.0}, step=1)
    logger.finish()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 9.0}]


def test_wandb_mode_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode("disabled") == "disabled"
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode("auto") == "offline"
    # Without WANDB_MODE, auto depends on credentials and the agent (tests/test_wandb.py).


class Recorder(Logger):
    def __init__(self, run_id=None):
        self.calls = []
        self._id = run_id

    def log(self, metrics, step):
        self.calls.append((step, metrics))

    @property
    def run_id(self):
        return self._id


def test_multi_logger_fans_out_and_reports_the_first_run_id():
    a, b = Recorder(), Recorder("abc")
    multi = MultiLogger([a, b])
    multi.log({"x": 1.0}, step=3)
    assert a.calls == b.calls == [(3, {"x": 1.0})]
    assert multi.run_id == "abc"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_probe_answers_for_open_closed_and_stalled_hosts(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert can_connect(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert not can_connect(f"http://127.0.0.1:{closed_port()}")
    assert not can_connect("not a url")

    released = threading.Event()

    def stall(*_args, **_kwargs):
        released.wait()
        raise OSError("timed out")

    monkeypatch.setattr(tracking.wandb.socket, "create_connection", stall)
    assert not can_connect("https://api.example.invalid", timeout=0.2)
    # The probe answered while the connection attempt was still stalled: it did not wait for it.
    assert not released.is_set()
    released.set()


@pytest.mark.slow
def test_wandb_online_without_a_network_falls_back_to_offline_quickly(tmp_path, monkeypatch):
    """Quickly means: the connection probe answers, and wandb is never started online, where it would
    retry the server for its whole init_timeout."""
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    started_modes, real_init = [], wandb.init

    def recorded_init(**kwargs):
        started_modes.append(kwargs["mode"])
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", recorded_init)
    logger = WandbLogger("online", "minigpt-test", tmp_path / "run", "fallback")
    with pytest.warns(UserWarning, match=r"W&B online start failed .* logging offline instead"):
        logger.start({"lr": 0.1}, total_steps=1)
    logger.log({"train/loss": 1.0}, step=1)
    logger.finish()
    assert started_modes == ["offline"]
    assert logger.mode == "offline"
    assert [p.name.startswith("offline-run-") for p in (tmp_path / "wandb").glob("*run-*")] == [True]

    # A later run in the same process still starts in the mode it asks for.
    monkeypatch.setenv("WANDB_MODE", "online")
    offline = WandbLogger("offline", "minigpt-test", tmp_path / "run2", "later")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        offline.start({}, total_steps=1)
    offline.finish()
    assert len(list(Path(tmp_path / "wandb").glob("offline-run-*"))) == 2


class BrokenRun:
    """A W&B run whose backend has gone away."""

    id = "abc123"
    dir = "/nonexistent/wandb/offline-run-abc123/files"

    def define_metric(self, *_args, **_kwargs):
        pass

    def log(self, *_args, **_kwargs):
        raise ConnectionError("wandb-core exited")

    def finish(self, *_args, **_kwargs):
        raise ConnectionError("wandb-core exited")


def test_wandb_failing_mid_run_does_not_stop_training(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **_kwargs: BrokenRun())
    logger = WandbLogger("offline", "minigpt-test", tmp_path, "broken")
    logger.start({}, total_steps=3)
    with pytest.warns(UserWarning, match=r"W&B stopped working \(wandb-core exited\); training goes on"):
        logger.log({"train/loss": 1.0}, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then quiet
        logger.log({"train/loss": 0.9}, step=2)
        logger.summary({"val/ppl": 3.0})
        logger.finish()
    assert logger.run_id == "abc123"  # a resumed run can still continue the same W&B run


class FrozenClock:
    """``datetime.now()`` that always answers the same second."""

    @staticmethod
    def now():
        from datetime import datetime

        return datetime(2026, 1, 2, 3, 4, 5)


def test_runs_started_in_the_same_second_get_their_own_directories_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking.rundir, "datetime", FrozenClock)
    monkeypatch.setenv("WANDB_RUN_ID", "agentid1")  # the same id twice: the second must still get its own
    first, second = new_run_dir(tmp_path, "tiny"), new_run_dir(tmp_path, "tiny")
    assert first.name == "tiny-20260102-030405-agentid1"
    assert second.name.startswith("tiny-20260102-030405-") and second != first
    loggers = [RunDirLogger(first), RunDirLogger(second)]
    for index, logger in enumerate(loggers):
        logger.start({"run": index}, total_steps=3)
    for step in (1, 2, 3):
        for index, logger in enumerate(loggers):
            logger.log({"train/loss": float(10 * index + step)}, step=step)
    for logger in loggers:
        logger.finish()
    for index, run_dir in enumerate((first, second)):
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert rows == [{"step": s, "train/loss": float(10 * index + s)} for s in (1, 2, 3)]


def test_without_an_agent_the_suffix_is_random(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setattr(tracking.rundir, "datetime", FrozenClock)
    names = {new_run_dir(tmp_path, "x").name for _ in range(5)}
    assert len(names) == 5 and all(name.startswith("x-20260102-030405-") for name in names)


RUN_METADATA = {
    "run_dir": "runs/tiny-1",
    "device": "cpu",
    "world_size": 1,
    "threads": 2,
    "precision": "fp32",
    "params": 1234567,
    "tokens_planned": 153600,
    "max_minutes": 0,
}


def console_started(total_steps=150, **run) -> ConsoleLogger:
    console = ConsoleLogger()
    console.start({"name": "tiny", "_run": {**RUN_METADATA, **run}}, total_steps=total_steps)
    return console


def test_the_start_line_says_where_and_how_the_run_goes(capsys):
    console_started(max_minutes=60)
    line = " ".join(capsys.readouterr().err.split())
    for part in (
        "run directory runs/tiny-1",
        "device cpu",
        "2 threads",
        "precision fp32",
        "1,234,567 parameters",
        "training for 60 minutes (at most 153,600 tokens, 150 steps)",
    ):
        assert part in line
    console_started()
    assert "153,600 tokens planned over 150 steps" in " ".join(capsys.readouterr().err.split())


def test_a_time_budget_says_where_it_will_end_once_the_pace_is_known(capsys):
    console = console_started(total_steps=100_000, tokens_planned=409_600_000, max_minutes=60)
    for step in (10, 20, 30):  # a quarter second a step on the Trainer's clock: 14,400 steps in the hour
        console.log({"train/loss": 5.0, "train/seconds": step * 0.25}, step=step)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("budget ends") == 1
    assert "the 60-minute budget ends near step 14,400, about 58,982,400 tokens" in err


def test_eta_follows_the_pace_and_the_time_budget():
    console = console_started(total_steps=100)
    assert console.eta_seconds(10, 20.0) is None  # the first logged step only starts the clock
    assert console.eta_seconds(20, 40.0) == pytest.approx(80 * 2.0)  # 10 steps in 20 s
    console = console_started(total_steps=100, max_minutes=1)
    console.eta_seconds(10, 0.0)
    assert console.eta_seconds(20, 20.0) == pytest.approx(40)  # the budget ends first


def test_a_resumed_timed_run_forecasts_from_the_budget_its_trainer_has_left(capsys):
    # 50 of the 60 minutes were spent before the interruption; the console starts at the resumed step
    console = ConsoleLogger()
    run = {**RUN_METADATA, "max_minutes": 60, "tokens_planned": 409_600_000}
    console.start({"name": "tiny", "_run": run}, total_steps=100_000, first_step=15_000)
    console.log({"train/loss": 5.0, "train/seconds": 3000.0}, step=15_010)
    console.log({"train/loss": 5.0, "train/seconds": 3002.5}, step=15_020)
    assert console.eta_seconds(15_030, 3005.0) == pytest.approx(595.0)  # not the hour's 3,595 s
    err = " ".join(capsys.readouterr().err.split())
    assert "the 60-minute budget ends near step 17,410" in err  # 597.5 s left at 0.25 s a step


def test_a_many_hour_cpu_run_suggests_the_cpu_profile_once(capsys):
    console = console_started(total_steps=100_000)
    for step in (10, 20, 30):
        console.log({"train/loss": 5.0, "train/seconds": step * 1.0}, step=step)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("experiments/cpu_hour.py") == 1 and "--train.max_minutes=60" in err
    gpu = console_started(total_steps=100_000, device="cuda:0")
    for step in (10, 20, 30):
        gpu.log({"train/loss": 5.0, "train/seconds": step * 1.0}, step=step)
    assert "experiments/tiny.py" not in capsys.readouterr().err


def test_the_end_says_where_the_run_is_and_what_comes_next(capsys):
    console_started().finish()
    err = capsys.readouterr().err
    assert "finished: run directory runs/tiny-1" in err
    assert 'python -m minigpt.sample --checkpoint runs/tiny-1 --prompt "The history of"' in err
    assert "python -m minigpt.export runs/tiny-1 --out runs/tiny-1/hf" in err
    assert "python -m analysis.report runs/tiny-1 --out reports/tiny-1" in err
    console_started().finish("interrupted")
    err = capsys.readouterr().err
    assert "interrupted: run directory runs/tiny-1" in err and "python run.py --resume=runs/tiny-1" in err


def test_after_a_lora_run_the_sample_command_names_the_adapter_folder(tmp_path, capsys):
    overrides = {"lora.rank": 8, "init_from": "runs/base", "log.wandb": "disabled"}
    loggers = build_logger(apply_overrides(ExperimentConfig(name="ft"), overrides), tmp_path / "ft-1").loggers
    console = next(logger for logger in loggers if isinstance(logger, ConsoleLogger))
    console.start({"_run": {"run_dir": "runs/ft-1"}}, total_steps=10)
    console.finish()
    err = " ".join(capsys.readouterr().err.split())
    assert "python -m minigpt.sample --checkpoint runs/base --adapter runs/ft-1/adapter --prompt" in err


def test_a_diverged_run_says_how_to_go_on_past_the_bad_step(capsys):
    console_started().finish("diverged")
    err = capsys.readouterr().err
    assert "diverged: run directory runs/tiny-1" in err
    assert "python run.py --resume=runs/tiny-1 --skip_nonfinite=true" in err


@pytest.mark.slow
def test_a_diverged_run_exits_3_and_is_marked_diverged_while_a_mistyped_key_exits_2(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    experiment = write_experiment(tmp_path / "experiment.py", tiny_config(tiny_corpus, tmp_path))
    assert run_script.main([str(experiment), "--lrr=1e-3"]) == 2
    assert not (tmp_path / "run").exists()
    # Every gradient norm is infinite: the first step diverges.
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *_a, **_k: torch.tensor(math.inf))
    assert run_script.main([str(experiment)]) == tracking.EXIT_CODES["diverged"] == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
    err = capsys.readouterr().err
    assert "diverged: non-finite gradient norm at step 1" in err and "Traceback" not in err


FULL_SUMMARY = {
    **{
        f"final_{split}/{k}": v for split in ("val", "test") for k, v in {"loss": 4.5, "ppl": 90.0171}.items()
    },
    **{f"final_{split}/{k}": 1 for split in ("val", "test") for k in ("tokens", "context", "stride", "bpb")},
    "final_val/describe": "ppl 90.02 (...)",
    "final_val_sliding/ppl": 80.5,
    "final_val_sliding/loss": 4.39,
    "final_val_sliding/stride": 64,
    "final_test_sliding/ppl": 81.25,
    "val_before/ppl": 300.0,
    "val_before/loss": 5.7,
    "step": 500,
    "tokens": 1_024_000,
    "train_seconds": 750.0,
    "tokens_per_sec": 1365.3,
    "best_val_loss": 4.41,
    "best_step": 450,
    "skipped_steps": 0,
    "run_dir": "runs/tiny-1",
}


def test_the_end_of_run_summary_is_a_few_lines_of_what_a_person_reads(capsys):
    console_started().summary(FULL_SUMMARY)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-6:] == [
        "final: validation ppl 90.02 (loss 4.5000), test ppl 90.02 (loss 4.5000)",
        "sliding window (stride 64): validation ppl 80.50, test ppl 81.25",
        "fine-tune: validation ppl 300.00 -> 90.02",
        "best validation loss 4.4100 at step 450",
        "1,024,000 tokens in 12m30s of training, 1,365 tokens/s",
        "every figure: runs/tiny-1/summary.json",
    ]
    assert not any("describe" in line or "bpb" in line for line in lines)
