"""Every shipped sweep file is one ``wandb sweep`` accepts, optimises a metric the run really logs, and
plans into runs whose overrides its experiment file accepts (nothing is trained but one tiny run that
shows which keys a run logs)."""

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import tiny_config

from minigpt import sweep, train
from minigpt.config import apply_overrides, load_experiment, parse_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((REPO_ROOT / "sweeps").glob("*.yaml"))


def test_there_are_sweep_files():
    assert SWEEP_FILES


@pytest.fixture(scope="module")
def sweep_schema() -> dict:
    """W&B's JSON schema for sweep configurations, as shipped by its ``sweeps`` package (``wandb[sweeps]``).
    The package is located, not imported: importing it pulls in scikit-learn, which the schema does not
    need."""
    spec = importlib.util.find_spec("sweeps")
    if spec is None or spec.origin is None:
        pytest.fail("W&B's sweeps package is missing: pip install 'wandb[sweeps]' (or sweeps)")
    schema = json.loads((Path(spec.origin).parent / "config" / "schema.json").read_text())
    # W&B's server takes `run_cap` (the most runs a sweep starts, documented among the top-level sweep keys)
    # although the last released schema (sweeps 0.2.0) predates it and forbids unknown keys.
    schema["properties"].setdefault("run_cap", {"type": "integer", "minimum": 1})
    return schema


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_fits_wandbs_schema(path, sweep_schema):
    config = yaml.safe_load(path.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(sweep_schema).iter_errors(config)]
    assert errors == []


@pytest.fixture(scope="module")
def logged_keys(tmp_path_factory, tiny_corpus) -> set[str]:
    """Every key a (tiny) run logs in its metric rows or its summary."""
    out = tmp_path_factory.mktemp("logged-keys")
    train.run(tiny_config(tiny_corpus, out, {"max_steps": 2, "eval_interval": 1, "eval_stride": 8}))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return set().union(*rows) | set(json.loads((out / "run" / "summary.json").read_text()))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
@pytest.mark.slow
def test_sweep_metric_is_a_key_the_run_logs(path, logged_keys):
    metric = sweep.load_sweep(path).metric
    assert metric.get("name") in logged_keys, f"{path.name} optimises {metric.get('name')!r}, never logged"
    assert metric.get("goal") in ("minimize", "maximize")


def experiment_and_overrides(command: list[str]) -> tuple[Path, list[str]]:
    """The experiment file a planned ``run.py`` command names, and the overrides after it."""
    index = next(i for i, arg in enumerate(command) if arg.endswith(".py") and arg != "run.py")
    return REPO_ROOT / command[index], command[index + 1 :]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_plans_runs_its_experiment_accepts(path, tmp_path):
    runs = sweep.plan([sweep.load_sweep(path)], tmp_path, "check", count=3, seed=0, threads=1)
    assert runs
    for planned in runs:
        experiment, overrides = experiment_and_overrides(planned.command)
        config = apply_overrides(load_experiment(experiment), parse_overrides(overrides))
        assert config.log.run_name == planned.name and config.log.sweep == "check"
