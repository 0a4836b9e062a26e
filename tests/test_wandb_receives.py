"""What a W&B run is given, recorded by a stand-in for ``wandb.init``: the axes it is told, the metrics it is
sent (a sweep's metric among them), the model it is handed at the end and the exit code it closes with; and
what the end-of-run figures mean (per-layer gradient norms, peak memory, MFU)."""

import math
from pathlib import Path
from typing import Any

import pytest
import wandb
from helpers import tiny_config

from minigpt import perf, train

SWEEP_METRIC = "val/loss"  # what every sweeps/*.yaml minimises


class RecordedRun:
    """Stands in for a ``wandb.Run``: keeps every call the logger makes."""

    id = "recorded-run"
    url = "http://wandb.invalid/recorded-run"

    def __init__(self, init_kwargs: dict[str, Any], directory: Path) -> None:
        self.init_kwargs = init_kwargs
        self.dir = str(directory)
        self.defined: list[tuple[str, dict[str, Any]]] = []
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.summary: dict[str, Any] = {}
        self.artifacts: list[dict[str, Any]] = []
        self.exit_codes: list[int] = []

    def define_metric(self, name: str, **kwargs: Any) -> None:
        self.defined.append((name, kwargs))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def log_artifact(self, artifact: "RecordedArtifact", aliases: list[str] | None = None) -> None:
        self.artifacts.append(
            {"name": artifact.name, "type": artifact.type, "paths": artifact.paths, "aliases": aliases}
        )

    def finish(self, exit_code: int = 0) -> None:
        self.exit_codes.append(exit_code)


class RecordedArtifact:
    def __init__(self, name: str, type: str, metadata: dict[str, Any] | None = None) -> None:
        self.name, self.type, self.paths, self.metadata = name, type, [], metadata

    def add_dir(self, path: str) -> None:
        self.paths.append(Path(path))

    def add_file(self, path: str) -> None:
        self.paths.append(Path(path))


def record_wandb(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[RecordedRun]:
    """Every W&B run started from now on, in order, as a ``RecordedRun``."""
    runs: list[RecordedRun] = []

    def init(**kwargs: Any) -> RecordedRun:
        runs.append(RecordedRun(kwargs, directory / f"run-{len(runs)}"))
        return runs[-1]

    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.invalid")  # never asks wandb.setup()
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "Artifact", RecordedArtifact)
    return runs


def offline_config(tiny_corpus, out_dir: Path, overrides: dict[str, Any] | None = None):
    return tiny_config(tiny_corpus, out_dir, {"wandb": "offline", **(overrides or {})})


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory) -> tuple[RecordedRun, Path, float, float]:
    """A two-layer run that logs per-layer gradient norms and exports to Hugging Face format, with the
    process's peak memory just before and just after it; trained once for the tests that read it."""
    out_dir = tmp_path_factory.mktemp("finished")
    overrides = {"n_layer": 2, "log_layer_grad_norms": True, "export_hf": True, "log.log_model": "end"}
    with pytest.MonkeyPatch.context() as monkeypatch:
        runs = record_wandb(monkeypatch, out_dir / "wandb-files")
        before = perf.peak_memory_mb(perf.pick_device("cpu"))
        train.run(offline_config(tiny_corpus, out_dir, overrides))
        after = perf.peak_memory_mb(perf.pick_device("cpu"))
    (run,) = runs
    return run, out_dir / "run", before, after


def logged_rows(run: RecordedRun, key: str) -> list[dict[str, float]]:
    return [metrics for _, metrics in run.logged if key in metrics]


@pytest.mark.slow
def test_wandb_is_told_the_token_axis_and_receives_the_sweep_metric(finished_run):
    run, _, _, _ = finished_run
    defined = dict(run.defined)
    assert defined["*"] == {"step_metric": "train/tokens"}
    assert defined["val/loss"] == {"step_metric": "train/tokens", "summary": "min"}
    evaluations = logged_rows(run, SWEEP_METRIC)
    # evaluations every 3 steps; the last step's is the final evaluation, which goes to the summary
    assert [step for step, metrics in run.logged if SWEEP_METRIC in metrics] == [3]
    assert all(math.isfinite(row[SWEEP_METRIC]) and "train/tokens" in row for row in evaluations)
    # 4 sequences of 16 tokens a step: the x-axis W&B plots against is the tokens seen
    assert [row["train/tokens"] for row in evaluations] == [3 * 64]


@pytest.mark.slow
def test_a_finished_run_hands_wandb_its_export_and_closes_with_exit_code_0(finished_run):
    run, run_dir, _, _ = finished_run
    # log.log_model=end: the weights-only export is handed to W&B (nothing is uploaded by default)
    ((artifact),) = run.artifacts
    assert (artifact["name"], artifact["type"]) == ("run-model", "model") and "latest" in artifact["aliases"]
    assert (run_dir / "hf" / "config.json").is_file()
    assert run.exit_codes == [0]


@pytest.mark.slow
def test_ctrl_c_closes_the_wandb_run_with_exit_code_130(tiny_corpus, tmp_path, monkeypatch):
    wandb_runs = record_wandb(monkeypatch, tmp_path / "wandb-files")
    real_step = train.Trainer.train_step

    def ctrl_c_in_step_two(self, *args, **kwargs):
        if self.state.step == 1:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_step", ctrl_c_in_step_two)
    with pytest.raises(train.RunInterrupted):
        train.run(offline_config(tiny_corpus, tmp_path, {"eval_interval": 0}))
    (run,) = wandb_runs
    assert run.exit_codes == [130]
    assert run.artifacts == []  # nothing is published from an unfinished run


@pytest.mark.slow
def test_layer_gradient_norms_fit_inside_the_global_norm(finished_run):
    """The blocks' gradients are part of all gradients: their norms, summed in quadrature, are at most the
    global norm (the embeddings and the final norm make up the rest), and each block has some."""
    run, _, _, _ = finished_run
    rows = logged_rows(run, "grad_norm/layer_0")
    assert len(rows) == 6
    for row in rows:
        layers = [row["grad_norm/layer_0"], row["grad_norm/layer_1"]]
        assert "grad_norm/layer_2" not in row
        assert all(norm > 0 for norm in layers)
        assert math.hypot(*layers) <= row["train/grad_norm"] * (1 + 1e-5)
        assert math.hypot(*layers) >= 0.01 * row["train/grad_norm"]


@pytest.mark.slow
def test_peak_memory_is_this_process_peak_in_megabytes(finished_run):
    """On a CPU the figure is the process's peak resident set: no less than the peak before the run, no more
    than the peak after it."""
    run, _, before, after = finished_run
    peaks = [row["perf/peak_mem_mb"] for row in logged_rows(run, "perf/peak_mem_mb")]
    assert peaks and all(before <= peak <= after for peak in peaks)
    assert before > 50  # a Python process with torch loaded: the unit is megabytes, not gigabytes


@pytest.mark.slow
def test_mfu_is_a_fraction_of_the_measured_peak(finished_run):
    run, _, _, _ = finished_run
    rows = logged_rows(run, "perf/mfu")
    assert rows and all(0 < row["perf/mfu"] <= 1 for row in rows)
