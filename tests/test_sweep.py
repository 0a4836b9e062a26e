"""The local sweep runner: W&B's grid order and argument forms, seeded random search, restart and failure
handling. A fake program stands in for run.py (one end-to-end test uses the real one)."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from minigpt import sweep

REPO_ROOT = Path(__file__).resolve().parent.parent

# Records its arguments and how often it ran, fails when --fail=True (diverges, exit 3, when
# --diverge=True), and writes summary.json like run.py.
FAKE_PROGRAM = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    run_dir = Path(args["log.out_dir"]) / args["log.run_name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    calls = run_dir / "calls.txt"
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    (run_dir / "args.json").write_text(json.dumps(sys.argv[1:]))
    wandb_env = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    (run_dir / "wandb_env.json").write_text(json.dumps(wandb_env))
    status = "failed" if args.get("fail") == "True" else "finished"
    status = "diverged" if args.get("diverge") == "True" else status
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    sys.exit({"failed": 1, "diverged": 3}.get(status, 0))
    """
)


def write_sweep(tmp_path: Path, parameters: dict, method: str = "grid", name: str = "s", **extra) -> Path:
    program = tmp_path / "fake_program.py"
    program.write_text(FAKE_PROGRAM)
    spec = {
        "method": method,
        "program": str(program),
        "command": ["${interpreter}", "${program}", "${args}"],
        "parameters": parameters,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_sorts_parameter_names_and_varies_the_last_fastest(tmp_path):
    path = write_sweep(
        tmp_path, {"train.seed": {"values": [1, 2]}, "model.n_head": {"values": [4, 8]}, "lr": {"value": 0.1}}
    )
    grid = sweep.grid_assignments(sweep.load_sweep(path))
    assert [list(a) for a in grid] == [["lr", "model.n_head", "train.seed"]] * 4
    assert [(a["model.n_head"], a["train.seed"]) for a in grid] == [(4, 1), (4, 2), (8, 1), (8, 2)]


def test_grid_lists_int_uniform_inclusive_and_q_uniform_exclusive(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "a": {"distribution": "int_uniform", "min": 1, "max": 3},
            "b": {"min": 0.0, "max": 1.0, "q": 0.5, "distribution": "q_uniform"},
        },
    )
    grid = sweep.grid_assignments(sweep.load_sweep(path))
    assert [(g["a"], g["b"]) for g in grid] == [(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5), (3, 0.0), (3, 0.5)]


def test_grid_refuses_continuous_distributions(tmp_path):
    path = write_sweep(tmp_path, {"lr": {"min": 0.1, "max": 0.2}})
    with pytest.raises(sweep.SweepError, match="grid search takes"):
        sweep.grid_assignments(sweep.load_sweep(path))


def test_arguments_are_formatted_like_the_wandb_agent():
    assignment = {
        "model.tie_embeddings": False,
        "train.lr": 0.001,
        "train.min_lr": 1e-05,
        "model.n_head": 4,
        "model.norm_position": "post",
    }
    forms = sweep.format_args(assignment)
    assert forms["args"] == [
        "--model.tie_embeddings=False",
        "--train.lr=0.001",
        "--train.min_lr=1e-05",
        "--model.n_head=4",
        "--model.norm_position=post",
    ]
    assert forms["args_no_hyphens"][0] == "model.tie_embeddings=False"
    assert "--model.tie_embeddings" not in forms["args_no_boolean_flags"]
    assert sweep.format_args({"flag": True})["args_no_boolean_flags"] == ["--flag"]
    assert json.loads(forms["args_json"][0]) == assignment


def test_command_substitutes_the_wandb_macros_into_an_argument_list(tmp_path):
    path = write_sweep(tmp_path, {"train.lr": {"value": 0.01}})
    s = sweep.load_sweep(path)
    s.command = ["${env}", "${interpreter}", "${program}", "experiments/tiny.py", "${args}"]
    assert sweep.build_command(s, {"train.lr": 0.01}) == [
        "/usr/bin/env",
        sys.executable,
        s.program,
        "experiments/tiny.py",
        "--train.lr=0.01",
    ]


def test_random_search_is_reproducible_and_within_bounds(tmp_path):
    params = {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.3},
        "layers": {"distribution": "int_uniform", "min": 2, "max": 4},
        "norm": {"values": ["pre", "post"]},
        "batch": {"value": 8},
    }
    s = sweep.load_sweep(write_sweep(tmp_path, params, method="random"))
    draws = sweep.assignments(s, count=50, seed=3)
    assert draws == sweep.assignments(s, count=50, seed=3)
    assert draws != sweep.assignments(s, count=50, seed=4)
    assert all(1e-4 <= d["lr"] <= 1e-2 and 0.0 <= d["dropout"] <= 0.3 for d in draws)
    assert {d["layers"] for d in draws} == {2, 3, 4}
    assert {d["norm"] for d in draws} == {"pre", "post"}
    assert {d["batch"] for d in draws} == {8}


def test_random_search_needs_a_count(tmp_path):
    s = sweep.load_sweep(write_sweep(tmp_path, {"x": {"min": 0.0, "max": 1.0}}, method="random"))
    with pytest.raises(sweep.SweepError, match="--count or run_cap"):
        sweep.assignments(s)


def test_bayes_is_refused_because_it_needs_the_server(tmp_path):
    s = sweep.load_sweep(write_sweep(tmp_path, {"x": {"min": 0.0, "max": 1.0}}, method="bayes"))
    with pytest.raises(sweep.SweepError, match="W&B server"):
        sweep.assignments(s)


def run_main(tmp_path: Path, *files: Path, extra: tuple = ()) -> int:
    return sweep.main([*map(str, files), "--out-dir", str(tmp_path / "runs"), "--sweep-id", "sw", *extra])


def state(tmp_path: Path) -> dict[str, str]:
    runs = json.loads((tmp_path / "runs" / "sw" / "sweep.json").read_text())["runs"]
    return {r["name"]: r["status"] for r in runs}


def calls(tmp_path: Path, name: str) -> int:
    return len((tmp_path / "runs" / "sw" / name / "calls.txt").read_text())


def test_a_failing_run_is_recorded_and_the_sweep_carries_on(tmp_path):
    path = write_sweep(tmp_path, {"fail": {"values": [True, False]}, "seed": {"values": [1, 2]}})
    assert run_main(tmp_path, path, extra=("--parallel", "2", "--threads", "1")) == 1
    assert state(tmp_path) == {
        "fail-True_seed-1": "failed",
        "fail-True_seed-2": "failed",
        "fail-False_seed-1": "finished",
        "fail-False_seed-2": "finished",
    }
    args = json.loads((tmp_path / "runs" / "sw" / "fail-False_seed-2" / "args.json").read_text())
    assert args[:2] == ["--fail=False", "--seed=2"]
    assert f"--log.out_dir={tmp_path / 'runs' / 'sw'}" in args and "--train.threads=1" in args


def test_a_restart_skips_finished_runs_and_retries_failed_ones(tmp_path):
    path = write_sweep(tmp_path, {"fail": {"values": [True, False]}})
    run_main(tmp_path, path)
    run_main(tmp_path, path)
    assert calls(tmp_path, "fail-False") == 1
    assert calls(tmp_path, "fail-True") == 2


def test_a_diverged_run_is_recorded_as_diverged_and_a_restart_does_not_resume_it(tmp_path):
    path = write_sweep(tmp_path, {"diverge": {"values": [True, False]}})
    assert run_main(tmp_path, path) == 1
    assert state(tmp_path) == {"diverge-True": "diverged", "diverge-False": "finished"}
    (tmp_path / "runs" / "sw" / "diverge-True" / "ckpt-7.pt").write_bytes(b"")  # its last good checkpoint
    run_main(tmp_path, path)
    assert calls(tmp_path, "diverge-True") == 1
    assert state(tmp_path)["diverge-True"] == "diverged"


def test_a_restart_continues_a_run_stopped_part_way_from_its_checkpoints(tmp_path):
    path = write_sweep(tmp_path, {"fail": {"values": [True]}})
    run_main(tmp_path, path)
    run_dir = tmp_path / "runs" / "sw" / "fail-True"
    assert not any(a.startswith("--resume") for a in json.loads((run_dir / "args.json").read_text()))
    (run_dir / "ckpt-7.pt").write_bytes(b"")  # what a run stopped after step 7's checkpoint leaves
    run_main(tmp_path, path)
    assert json.loads((run_dir / "args.json").read_text())[-1] == f"--resume={run_dir}"
    assert calls(tmp_path, "fail-True") == 2


def test_the_sweep_state_keeps_the_runs_an_earlier_invocation_made_in_its_folder(tmp_path):
    run_main(tmp_path, write_sweep(tmp_path, {"seed": {"values": [1, 2]}}, name="a"))
    run_main(tmp_path, write_sweep(tmp_path, {"seed": {"values": [2, 3]}}, name="b"))
    assert state(tmp_path) == {f"base_seed-{s}": "finished" for s in (1, 2, 3)}
    assert calls(tmp_path, "base_seed-2") == 1


def test_files_run_together_share_one_queue_and_run_a_common_run_once(tmp_path):
    a = write_sweep(tmp_path, {"seed": {"value": 1}, "heads": {"values": [4, 8]}}, name="a")
    b = write_sweep(tmp_path, {"seed": {"value": 1}, "heads": {"values": [4, 1]}}, name="b")
    assert run_main(tmp_path, a, b) == 0
    assert sorted(state(tmp_path)) == ["heads-1_seed-1", "heads-4_seed-1", "heads-8_seed-1"]
    assert calls(tmp_path, "heads-4_seed-1") == 1


def write_experiment_sweep(tmp_path: Path, name: str, parameters: dict) -> Path:
    """A grid over ``experiments/tiny.py`` (n_head 2, lr 3e-3, seed 1337), as run.py would take it."""
    path = write_sweep(tmp_path, parameters, name=name)
    spec = yaml.safe_load(path.read_text())
    spec["command"] = ["${interpreter}", "${program}", str(REPO_ROOT / "experiments" / "tiny.py"), "${args}"]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_runs_are_named_by_what_they_change_in_the_base_experiment_the_seed_last(tmp_path):
    path = write_experiment_sweep(
        tmp_path,
        "abl",
        {
            "train.seed": {"values": [1, 2]},
            "model.n_head": {"values": [2, 4]},
            "lr": {"value": 0.003},
            "model.norm_position": {"values": ["pre", "post"]},
        },
    )
    names = [r.name for r in sweep.plan([sweep.load_sweep(path)], tmp_path, "s", None, 0, 1)]
    assert sorted(names) == sorted(
        [
            *(f"base_seed-{s}" for s in (1, 2)),
            *(f"norm_position-post_seed-{s}" for s in (1, 2)),
            *(f"n_head-4_seed-{s}" for s in (1, 2)),
            *(f"n_head-4_norm_position-post_seed-{s}" for s in (1, 2)),
        ]
    )


def test_a_new_sweep_file_that_omits_base_values_renames_nothing_and_shares_the_base_run(tmp_path):
    spelled_out = write_experiment_sweep(
        tmp_path,
        "a",
        {"model.n_head": {"values": [2, 4]}, "train.lr": {"value": 0.003}, "seed": {"value": 1}},
    )
    minimal = write_experiment_sweep(
        tmp_path, "b", {"model.tie_embeddings": {"values": [True, False]}, "seed": {"value": 1}}
    )
    runs = sweep.plan([sweep.load_sweep(p) for p in (spelled_out, minimal)], tmp_path, "s", None, 0, 1)
    assert sorted(r.name for r in runs) == ["base_seed-1", "n_head-4_seed-1", "tie_embeddings-False_seed-1"]
    alone = sweep.plan([sweep.load_sweep(spelled_out)], tmp_path, "s", None, 0, 1)
    assert [r.name for r in alone] == [r.name for r in runs if "tie_embeddings" not in r.name]


def test_runs_of_one_name_from_different_experiments_are_refused(tmp_path):
    tiny = write_experiment_sweep(tmp_path, "a", {"seed": {"value": 1}})
    other = write_sweep(tmp_path, {"seed": {"value": 1}}, name="b")  # no experiment file: the defaults
    with pytest.raises(sweep.SweepError, match="two runs are named base_seed-1 but differ"):
        sweep.plan([sweep.load_sweep(p) for p in (tiny, other)], tmp_path, "s", None, 0, 1)


def test_a_parameter_value_its_key_cannot_take_is_refused_when_planning(tmp_path):
    path = write_experiment_sweep(tmp_path, "a", {"model.n_head": {"values": [True]}})
    with pytest.raises(
        sweep.SweepError, match="parameter model.n_head: model.n_head=True: expected an integer"
    ):
        sweep.plan([sweep.load_sweep(path)], tmp_path, "s", None, 0, 1)


@pytest.mark.slow
def test_end_to_end_with_run_py_on_a_minuscule_experiment(tmp_path, data_root, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(data_root))
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path / "cache"))
    text = "The quick brown fox jumps over the lazy dog. " * 40
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.txt").write_text(text)
    spec = {
        "method": "grid",
        "program": "run.py",
        "command": ["${env}", "${interpreter}", "${program}", "experiments/tiny.py", "${args}"],
        "parameters": {
            "data.dataset": {"value": "text"},
            "data.train_file": {"value": str(tmp_path / "train.txt")},
            "data.val_file": {"value": str(tmp_path / "val.txt")},
            "data.test_file": {"value": str(tmp_path / "test.txt")},
            "model.n_layer": {"value": 1},
            "model.n_embd": {"value": 32},
            "model.block_size": {"value": 16},
            "train.max_steps": {"value": 2},
            "train.batch_size": {"value": 2},
            "train.micro_batch_size": {"value": 2},
            "train.eval_interval": {"value": 0},
            "train.eval_stride": {"value": 0},
            "train.eval_max_tokens": {"value": 64},
            "log.wandb": {"value": "disabled"},
            "train.seed": {"values": [1]},
        },
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run_main(tmp_path, path, extra=("--threads", "1")) == 0
    (name,) = state(tmp_path)
    summary = json.loads((tmp_path / "runs" / "sw" / name / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_val/tokens"] == 63


def test_a_local_sweep_child_has_no_wandb_sweep_id_and_carries_the_sweep_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "from-an-outer-agent")
    monkeypatch.setenv("WANDB_RUN_ID", "outer-run")
    path = write_sweep(tmp_path, {"seed": {"values": [1]}})
    assert run_main(tmp_path, path) == 0
    run_dir = tmp_path / "runs" / "sw" / "base_seed-1"
    env = json.loads((run_dir / "wandb_env.json").read_text())
    assert "WANDB_SWEEP_ID" not in env and "WANDB_RUN_ID" not in env
    assert env["WANDB_MODE"] == "offline"
    assert "--log.sweep=sw" in json.loads((run_dir / "args.json").read_text())


def test_each_run_records_the_load_average_at_its_start_and_end(tmp_path, monkeypatch):
    """Each record holds the one-minute load the system reported at that moment: a load that rises by one
    at each reading shows up in the records in the order the runs started and ended."""
    readings = iter((0.25, 1.25, 2.25, 3.25))
    monkeypatch.setattr(sweep.os, "getloadavg", lambda: (next(readings), 9.0, 9.0))
    path = write_sweep(tmp_path, {"seed": {"values": [1, 2]}})
    assert run_main(tmp_path, path) == 0
    runs = json.loads((tmp_path / "runs" / "sw" / "sweep.json").read_text())["runs"]
    assert [(record["load_start"], record["load_end"]) for record in runs] == [(0.25, 1.25), (2.25, 3.25)]


@pytest.mark.parametrize("option, value", [("--parallel", "0"), ("--parallel", "-1"), ("--threads", "-2")])
def test_impossible_parallelism_is_a_usage_error(tmp_path, capsys, option, value):
    path = write_sweep(tmp_path, {"seed": {"values": [1]}})
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path, path, extra=(option, value))
    assert exit_info.value.code == 2
    assert f"{option} must be >= " in capsys.readouterr().err


def test_a_metric_without_a_name_is_refused(tmp_path):
    path = write_sweep(tmp_path, {"seed": {"values": [1]}}, metric={"goal": "minimize"})
    with pytest.raises(sweep.SweepError, match="metric must be a mapping with a name"):
        sweep.load_sweep(path)
