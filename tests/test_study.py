"""The study command: its file is checked line by line, phase 1 finds the best rate (and grows the grid past a
winning edge), and the whole protocol runs, resumes and never repeats a finished run."""

import json
import math
import subprocess
from pathlib import Path

import pytest
from helpers import tiny_config, write_experiment

from analysis import study_report
from minigpt import study as study_mod
from minigpt.study import Executor, RunSpec, StudyError, choose_learning_rates, load_study, main

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def base_file(tiny_corpus, tmp_path) -> Path:
    return write_experiment(tmp_path / "base.py", tiny_config(tiny_corpus, tmp_path / "unused"))


def write_study(tmp_path: Path, base: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"name: s\nbase: {base}\n" + text)
    return path


GOOD = """lr_grid: [0.001, 0.002, 0.004, 0.008, 0.016]
variants:
  - label: a
  - label: b
    overrides: {model.n_head: 1}
    lr_from: a
questions:
  - {name: q, kind: difference, baseline: a, variants: [b]}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "colour: red\n", r"study.yaml:11: unknown key 'colour' in the study"),
        (GOOD.replace("lr_from: a", "lr_form: a"), r"study.yaml:8: unknown key 'lr_form' in variant 'b'"),
        (
            GOOD.replace("kind: difference,", "kind: difference, margin: 0.02,"),
            r":10: .*margin needs kind: equiv",
        ),
        (GOOD.replace("kind: difference", "kind: equivalence"), r":10: .*equivalence test needs its margin"),
        (GOOD + "seeds: [1]\n", r":11: question 'q' is a paired test and needs at least two seeds"),
        (GOOD + "seeds: [1, 2, 2]\n", r"study.yaml:11: seeds is a list of distinct integers"),
        (
            GOOD.replace("lr_from: a", "lr_from: a\n    seeds: [1, 6]"),
            r"study.yaml:6: question 'q' is a paired test and needs at least two seeds that 'b' shares "
            r"with 'a', got \[1\]",
        ),
        (GOOD.replace("lr_from: a", "lr_from: a\n    seeds: [1, 1]"), r":6: variant 'b': seeds is a list of"),
        (GOOD.replace("lr_from: a", "lr_from: a\n    seeds: 5"), r":6: variant 'b': seeds is a list of"),
        (GOOD.replace("variants: [b]", "variants: [c]"), r":10: .*unknown: c"),
        (GOOD.replace("{model.n_head: 1}", "{train.lr: 0.1}"), r":6: variant 'b': the study chooses lr"),
        (GOOD.replace("{model.n_head: 1}", "{model.n_haed: 1}"), r":6: variant 'b': .*n_haed"),
        (GOOD.replace("lr_from: a", "lr_from: b"), r":6: variant 'b': lr_from must name"),
        (GOOD.replace("kind: difference", "kind: success"), r":10: .*success question needs a rule"),
        (
            GOOD.replace("lr_from: a", "lr_from: a\n    lr_grid: [0.1, 0.2]"),
            r":6: .*lr_from and lr_grid exclude",
        ),
        (GOOD.replace("lr_from: a", "lr_from: a\n    lr: 0.1"), r":6: .*lr_from and lr exclude"),
        (GOOD.replace("lr_from: a", "lr: [0.1]"), r":6: variant 'b': lr is one positive number"),
        (GOOD.replace("lr_from: a", "lr: 0"), r":6: variant 'b': lr is one positive number"),
        (
            GOOD.replace("lr_from: a", "lr: 0.1\n  - label: c\n    lr_from: b"),
            r":9: variant 'c': lr_from must name a variant that chooses its own rate",
        ),
        (GOOD.replace("lr_from: a", "lr_grid: [0.1]"), r":6: variant 'b': lr_grid needs at least two"),
        (GOOD.replace("lr_from: a", "lr_grid: [0.1, fast]"), r":6: variant 'b': lr_grid needs at least two"),
        (GOOD.replace("lr_from: a", "lr_grid: [0.1, true]"), r":6: variant 'b': lr_grid needs at least two"),
        (GOOD + "select_metric: whole_test/loss\n", r"study.yaml:11: .*chosen on validation.*whole_val/loss"),
        (GOOD.replace("0.016]", "true]"), r"study.yaml:3: lr_grid needs at least two positive .*True"),
        (GOOD.replace("0.001, 0.002, 0.004, 0.008, 0.016", "0.001"), r"study.yaml:3: lr_grid needs"),
    ],
)
def test_a_bad_study_file_is_an_error_naming_its_line(tmp_path, base_file, text, message):
    with pytest.raises(StudyError, match=message):
        load_study(write_study(tmp_path, base_file, text))


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "sweeps" / "studies").glob("*.yaml")), ids=lambda path: path.name
)
def test_every_committed_study_file_loads_with_its_base_experiment_and_overrides(path, monkeypatch):
    # the GPU study waits for a GPU session: a typo in it must show up here, not there
    monkeypatch.chdir(REPO_ROOT)
    study = load_study(path)
    assert study.variants and study.questions


def test_a_bad_study_file_exits_2_with_one_line(tmp_path, base_file, capsys):
    assert main([str(write_study(tmp_path, base_file, GOOD + "colour: red\n")), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'colour'" in err[0]


def fake_runs(best_lr: float, calls: list[str]):
    """Stand in for training: a run's validation loss is a bowl in log(lr) around ``best_lr``, lower for
    longer runs, so the best rate is known."""

    def run_batch(self: Executor, specs: list[RunSpec]) -> None:
        for spec in specs:
            run_dir = self.runs_dir / spec.name(self.study)
            if (run_dir / "summary.json").exists():
                continue
            calls.append(spec.name(self.study))
            run_dir.mkdir(parents=True)
            loss = math.log(spec.lr / best_lr) ** 2 + 10 / spec.steps + 0.01 * spec.seed
            summary = {"status": "finished", "final_val/loss": loss}
            (run_dir / "summary.json").write_text(json.dumps(summary))

    return run_batch


@pytest.mark.parametrize(
    "best_lr, chosen",
    [
        (0.004, 0.004),  # inside the grid
        (0.0045, 0.004),
        (0.05, 0.064),  # past the top edge: the grid grows twice, to 0.032 then 0.064
        (0.0006, 0.0005),  # past the bottom edge: grows once, and 0.00025 would be worse
    ],
)
def test_phase_one_finds_the_best_rate_of_a_known_objective(
    tmp_path, base_file, monkeypatch, best_lr, chosen
):
    study = load_study(write_study(tmp_path, base_file, GOOD.replace("max_steps", "") + "max_extend: 2\n"))
    calls: list[str] = []
    monkeypatch.setattr(Executor, "run_batch", fake_runs(best_lr, calls))
    ex = Executor(study, tmp_path / "out", parallel=1, threads=1)
    assert choose_learning_rates(study, ex) == {"a": pytest.approx(chosen)}
    # 5 rates at 1/9 of the budget, the best 2 at 1/3, the best one at the whole budget with 2 seeds
    assert sum(c.endswith("_steps-1") for c in calls) == 5  # 6 steps x 1/9 rounds to 1
    assert sum(c.endswith("_steps-2") for c in calls) == 2
    assert len(calls) >= 5 + 2 + 2


def test_successive_halving_keeps_the_best_third_and_runs_the_winner_with_every_selection_seed(
    tmp_path, base_file, monkeypatch
):
    study = load_study(write_study(tmp_path, base_file, GOOD))
    calls: list[str] = []
    monkeypatch.setattr(Executor, "run_batch", fake_runs(0.004, calls))
    choose_learning_rates(study, Executor(study, tmp_path / "out", parallel=1, threads=1))
    whole = [c for c in calls if c.endswith("_steps-6")]
    assert whole == ["a_lr-0.004_seed-1_steps-6", "a_lr-0.004_seed-2_steps-6"]
    assert {c.split("_")[1] for c in calls if c.endswith("_steps-2")} == {"lr-0.004", "lr-0.002"}


def test_whole_budget_rungs_rank_every_rate_on_one_seed_then_give_the_best_half_every_selection_seed(
    tmp_path, base_file, monkeypatch
):
    # the fake loss adds 0.01 per seed, so seed 2 cannot reorder the rates: 0.004 wins and 0.008 is second
    repeated = GOOD + "rungs: [1.0, 1.0]\nkeep: 0.4\nmax_extend: 0\n"
    study = load_study(write_study(tmp_path, base_file, repeated))
    calls: list[str] = []
    monkeypatch.setattr(Executor, "run_batch", fake_runs(0.005, calls))
    chosen = choose_learning_rates(study, Executor(study, tmp_path / "out", parallel=1, threads=1))
    assert chosen == {"a": 0.004}
    assert sorted(c.split("_")[1] for c in calls if c.endswith("_seed-1_steps-6")) == [
        "lr-0.001",
        "lr-0.002",
        "lr-0.004",
        "lr-0.008",
        "lr-0.016",
    ]
    assert sorted(c.split("_")[1] for c in calls if c.endswith("_seed-2_steps-6")) == ["lr-0.004", "lr-0.008"]
    assert len(calls) == 5 + 2  # the seed-1 runs of the kept rates are not repeated


def test_a_variant_with_its_own_grid_chooses_its_rate_from_that_grid(tmp_path, base_file, monkeypatch):
    own = GOOD.replace("lr_from: a", "lr_grid: [0.02, 0.04, 0.08]") + "rungs: [1.0]\nmax_extend: 0\n"
    study = load_study(write_study(tmp_path, base_file, own))
    calls: list[str] = []
    monkeypatch.setattr(Executor, "run_batch", fake_runs(0.04, calls))
    chosen = choose_learning_rates(study, Executor(study, tmp_path / "out", parallel=1, threads=1))
    assert chosen == {"a": 0.016, "b": 0.04}  # a's grid tops out at 0.016; b's holds the best rate
    rates = sorted(c.split("_")[1] for c in calls if c.startswith("b_"))
    assert rates == ["lr-0.02", "lr-0.02", "lr-0.04", "lr-0.04", "lr-0.08", "lr-0.08"]  # 2 selection seeds
    assert sum(c.startswith("a_") for c in calls) == 5 * 2  # the study's grid, whole budget, 2 seeds


def test_a_variant_with_a_rate_fixed_in_advance_trains_only_its_seeds_at_that_rate(
    tmp_path, base_file, monkeypatch, capsys
):
    fixed = GOOD.replace("lr_from: a", "lr: 0.0005") + "rungs: [1.0]\nmax_extend: 0\nseeds: [1, 2, 3]\n"
    path = write_study(tmp_path, base_file, fixed)
    study = load_study(path)
    calls: list[str] = []
    monkeypatch.setattr(Executor, "run_batch", fake_runs(0.004, calls))
    ex = Executor(study, tmp_path / "out", parallel=1, threads=1)
    chosen = choose_learning_rates(study, ex)
    assert chosen == {"a": 0.004, "b": 0.0005}  # b's rate is not chosen, though 0.004 would score better
    assert not any(c.startswith("b_") for c in calls)  # no grid runs for b
    ex.chosen = chosen
    study_mod.seed_runs(study, ex, chosen)
    fixed_runs = [f"b_lr-0.0005_seed-{seed}_steps-6" for seed in (1, 2, 3)]
    assert sorted(c for c in calls if c.startswith("b_")) == fixed_runs
    ex.save()
    variant = json.loads((tmp_path / "out" / "study.json").read_text())["variants"][1]
    assert (variant["lr"], variant["chosen_lr"], variant["lr_grid"]) == (0.0005, 0.0005, [])
    assert main([str(path), "--out-dir", str(tmp_path / "plan"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(1 with their own lr grid)" in out
    assert "phase 2 (3 seeds; the selection seeds' runs at the chosen rate are reused): 4 runs" in out


SMALL = """lr_grid: [0.003, 0.01]
rungs: [0.5, 1.0]
keep: 0.5
max_extend: 0
selection_seeds: [1]
seeds: [1, 2]
variants:
  - label: a
  - label: b
    overrides: {model.n_head: 1}
    lr_from: a
questions:
  - {name: q, kind: difference, baseline: a, variants: [b]}
"""
"""Two rates at half the budget, then the better at the whole budget; two seeds; ``b`` at ``a``'s rate."""


@pytest.mark.slow
def test_the_whole_protocol_runs_resumes_and_never_repeats_a_run(tmp_path, base_file, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    path = write_study(tmp_path, base_file, SMALL)
    out = tmp_path / "studies"
    assert main([str(path), "--out-dir", str(out), "--parallel", "2", "--threads", "1"]) == 0
    state = json.loads((out / "s" / "study.json").read_text())
    runs = {r["name"]: r for r in state["runs"]}
    # 2 rates at half the budget, the better at the whole budget (seed 1, reused in phase 2), seed 2 of a,
    # and both seeds of b at a's rate
    assert len(runs) == 2 + 1 + 1 + 2
    assert all(r["status"] == "finished" for r in runs.values())
    assert all(r["cpu_user_s"] > 0 and r["load_start"] is not None for r in runs.values())
    chosen = state["variants"][0]["chosen_lr"]
    assert state["variants"][1]["chosen_lr"] == chosen and chosen in (0.003, 0.01)
    assert state["unigram_loss"] > 0
    mtimes = {p: p.stat().st_mtime for p in (out / "s" / "runs").glob("*/summary.json")}
    # Two runs killed part-way. One before its first checkpoint: its directory holds a partial record, which
    # the restart replaces. One after a checkpoint (here its last): the restart continues it from there.
    killed_early, killed_late = (p.parent for p in list(mtimes)[:2])
    for path_ in killed_early.glob("ckpt-*.pt"):
        path_.unlink()
    (killed_early / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    (killed_early / "metrics.jsonl").write_text('{"step": 1, "train/loss": 99.0}\n')
    late_summary = json.loads((killed_late / "summary.json").read_text())
    (killed_late / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    for killed in (killed_early, killed_late):
        del mtimes[killed / "summary.json"]
    capsys.readouterr()
    assert main([str(path), "--out-dir", str(out), "--parallel", "2", "--threads", "1"]) == 0
    after = {p: p.stat().st_mtime for p in (out / "s" / "runs").glob("*/summary.json")}
    assert {p: t for p, t in after.items() if p in mtimes} == mtimes  # finished runs were not repeated
    assert json.loads((killed_early / "summary.json").read_text())["status"] == "finished"
    rows = [json.loads(line) for line in (killed_early / "metrics.jsonl").read_text().splitlines()]
    assert all(row.get("train/loss") != 99.0 for row in rows)  # the partial record was replaced
    resumed = json.loads((killed_late / "summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["final_val/loss"] == late_summary["final_val/loss"]
    printed = capsys.readouterr().out
    assert "4 already finished" in printed
    assert f"--resume={killed_late}" in printed and f"--resume={killed_early}" not in printed


def recording_runner(started: list[str]) -> type:
    """A stand-in for the sweep runner: it notes the runs it is given, in the order given, and runs none."""

    class Runner:
        def __init__(self, runs, *args) -> None:
            self.runs = runs

        def run(self) -> list:
            started.extend(r.name for r in self.runs)
            return self.runs

    return Runner


def test_a_diverged_run_is_an_outcome_that_a_restart_neither_resumes_nor_repeats(
    tmp_path, base_file, monkeypatch
):
    study = load_study(write_study(tmp_path, base_file, GOOD))
    ex = Executor(study, tmp_path / "out", parallel=1, threads=1)
    diverged, interrupted = RunSpec("a", 0.016, 1, 6, "lr"), RunSpec("a", 0.008, 1, 6, "lr")
    for spec, status in ((diverged, "diverged"), (interrupted, "interrupted")):
        run_dir = ex.runs_dir / spec.name(study)
        run_dir.mkdir(parents=True)
        (run_dir / "ckpt-4.pt").write_bytes(b"")  # the last good checkpoint
        (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    started: list[str] = []
    monkeypatch.setattr(study_mod, "SweepRunner", recording_runner(started))
    ex.run_batch([diverged, interrupted])
    assert started == [interrupted.name(study)]
    assert ex.records[diverged.name(study)]["status"] == "diverged"
    assert study_mod.score(study, ex, [diverged]) == math.inf  # its rate loses


def test_a_batch_starts_its_costliest_runs_first_so_no_long_run_ends_alone(tmp_path, base_file, monkeypatch):
    wide = GOOD.replace("{model.n_head: 1}\n    lr_from: a", "{model.n_embd: 64}")
    study = load_study(write_study(tmp_path, base_file, wide))
    ex = Executor(study, tmp_path / "out", parallel=2, threads=1)
    short, narrow, wider = (
        RunSpec("a", 0.004, 1, 2, "lr"),
        RunSpec("a", 0.004, 1, 6, "lr"),
        RunSpec("b", 0.004, 1, 6, "lr"),
    )
    assert study_mod.training_flops(study, wider) > study_mod.training_flops(study, narrow) > 0
    assert study_mod.training_flops(study, narrow) == 3 * study_mod.training_flops(study, short)
    started: list[str] = []
    monkeypatch.setattr(study_mod, "SweepRunner", recording_runner(started))
    ex.run_batch([short, narrow, wider])
    assert started == [spec.name(study) for spec in (wider, narrow, short)]
    assert [r["name"] for r in json.loads((ex.study_dir / "study.json").read_text())["runs"]] == [
        spec.name(study) for spec in (short, narrow, wider)
    ]  # the records keep the batch's own order


def test_a_study_stopped_mid_batch_keeps_the_times_of_the_runs_that_ended(tmp_path, base_file, monkeypatch):
    study = load_study(write_study(tmp_path, base_file, GOOD))
    ex = Executor(study, tmp_path / "out", parallel=1, threads=1)
    ended, cut_short = RunSpec("a", 0.016, 1, 6, "lr"), RunSpec("a", 0.008, 1, 6, "lr")

    class Runner:
        def __init__(self, runs, *args) -> None:
            self.runs = runs

        def run(self) -> list:
            first = self.runs[0]
            (ex.runs_dir / first.name).mkdir(parents=True)
            (ex.runs_dir / first.name / "summary.json").write_text(json.dumps({"status": "finished"}))
            first.returncode, first.seconds, first.cpu_user_s, first.cpu_sys_s = 0, 60.0, 59.0, 0.5
            raise KeyboardInterrupt  # the stop, while the second run trains

    monkeypatch.setattr(study_mod, "SweepRunner", Runner)
    with pytest.raises(KeyboardInterrupt):
        ex.run_batch([ended, cut_short])
    saved = {r["name"]: r for r in json.loads((ex.study_dir / "study.json").read_text())["runs"]}
    assert (saved[ended.name(study)]["seconds"], saved[ended.name(study)]["cpu_user_s"]) == (60.0, 59.0)
    assert saved[ended.name(study)]["status"] == "finished"
    assert saved[cut_short.name(study)].get("seconds") is None
    assert saved[cut_short.name(study)]["status"] == "failed"


def test_a_restart_takes_the_times_of_runs_finished_before_a_stop_from_the_runners_record(
    tmp_path, base_file, monkeypatch
):
    study = load_study(write_study(tmp_path, base_file, GOOD))
    ex = Executor(study, tmp_path / "out", parallel=1, threads=1)
    spec = RunSpec("a", 0.016, 1, 6, "lr")
    run_dir = ex.runs_dir / spec.name(study)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
    # what the sweep runner wrote as the run ended, before the study was stopped with its records unsaved
    times = {"returncode": 0, "seconds": 61.5, "load_start": 0.1, "load_end": 1.9, "cpu_user_s": 60.2}
    (ex.runs_dir / "sweep.json").write_text(json.dumps({"runs": [{"name": spec.name(study)} | times]}))

    def no_runner(*args):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(study_mod, "SweepRunner", no_runner)
    ex.run_batch([spec])
    record = json.loads((ex.study_dir / "study.json").read_text())["runs"][0]
    assert {k: record[k] for k in times} == times and record["status"] == "finished"


def test_a_variant_with_seeds_of_its_own_runs_those_in_phase_two_and_the_plan_counts_them(
    tmp_path, base_file, monkeypatch, capsys
):
    own = GOOD.replace("lr_from: a", "lr_from: a\n    seeds: [1, 2, 3, 4, 5, 6, 7]") + "seeds: [1, 2, 3]\n"
    path = write_study(tmp_path, base_file, own)
    study = load_study(path)
    assert study.seeds_of(study.variant("a")) == [1, 2, 3]
    assert study.seeds_of(study.variant("b")) == [1, 2, 3, 4, 5, 6, 7]
    calls: list[str] = []
    monkeypatch.setattr(Executor, "run_batch", fake_runs(0.004, calls))
    study_mod.seed_runs(study, Executor(study, tmp_path / "out", parallel=1, threads=1), {"a": 0.004})
    assert sorted(int(c.split("_seed-")[1].split("_")[0]) for c in calls if c.startswith("b_")) == list(
        range(1, 8)
    )
    assert sorted(int(c.split("_seed-")[1].split("_")[0]) for c in calls if c.startswith("a_")) == [1, 2, 3]
    assert main([str(path), "--out-dir", str(tmp_path / "o"), "--dry-run"]) == 0
    # a: seed 3 (its selection seeds' runs are reused); b, at a's rate: all seven
    assert "phase 2 (3/7 seeds; the selection seeds' runs at the chosen rate are reused): 8 runs" in (
        capsys.readouterr().out
    )


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, base_file, capsys):
    assert (
        main([str(write_study(tmp_path, base_file, GOOD)), "--out-dir", str(tmp_path / "o"), "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "phase 1, rung 1 (0.111 of the budget, 5 rates x 1 seed(s)): 5 runs" in out
    assert "phase 2" in out and "training tokens" in out
    assert not (tmp_path / "o").exists()
    assert study_mod.load_study  # the module imports without a GPU or W&B


def test_dry_run_counts_finished_run_directories_copied_in_without_study_records(tmp_path, base_file, capsys):
    path = write_study(tmp_path, base_file, GOOD)
    study = load_study(path)
    b = study.variant("b")
    steps = study_mod.budget(study, b)[0]
    runs = tmp_path / "o" / "s" / "runs"
    seeds = study.seeds_of(b)
    # b's seed runs copied in (no study.json), twice its plan; one interrupted run; one not of this study
    for seed in range(1, 2 * len(seeds) + 1):
        (runs / f"b_lr-0.004_seed-{seed}_steps-{steps}").mkdir(parents=True)
        (runs / f"b_lr-0.004_seed-{seed}_steps-{steps}" / "summary.json").write_text('{"status": "finished"}')
    (runs / f"a_lr-0.004_seed-1_steps-{steps}").mkdir()
    (runs / f"a_lr-0.004_seed-1_steps-{steps}" / "summary.json").write_text('{"status": "interrupted"}')
    (runs / f"c_lr-0.004_seed-1_steps-{steps}").mkdir()
    (runs / f"c_lr-0.004_seed-1_steps-{steps}" / "summary.json").write_text('{"status": "finished"}')
    assert main([str(path), "--out-dir", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    total = int(out.split("  at most ")[1].split(" runs")[0])
    # only as many of b's as its plan holds count; the interrupted run and the stranger do not
    assert f"{len(seeds)} already finished" in out
    assert f"for the {total - len(seeds)} left" in out


def test_a_study_whose_records_hold_runs_its_folder_lacks_refuses_to_start_and_says_how_to_copy_them(
    tmp_path, base_file, capsys
):
    path = write_study(tmp_path, base_file, GOOD)
    records = tmp_path / "report" / "records"
    (records / "runs" / "b_lr-0.004_seed-1_steps-9").mkdir(parents=True)
    (records / "runs" / "b_lr-0.004_seed-1_steps-9" / "summary.json").write_text('{"status": "finished"}')
    args = [str(path), "--out-dir", str(tmp_path / "o"), "--report-out", str(tmp_path / "report")]
    args += ["--records", str(records), "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds 1 run(s)" in err and "b_lr-0.004_seed-1_steps-9" in err
    assert not (tmp_path / "o").exists()
    command = err.split("Copy them in first (")[1].split("), or give")[0]
    subprocess.run(command, shell=True, check=True)  # the command it names copies them in
    assert (tmp_path / "o" / "s" / "runs" / "b_lr-0.004_seed-1_steps-9" / "summary.json").is_file()
    assert main(args) == 0


class FakeWandb:
    """Records the sweeps a study creates and serves the runs it is told have finished, as W&B's API would."""

    def __init__(self) -> None:
        self.sweeps: list[dict] = []
        self.finished: dict[str, float] = {}

    def sweep(self, config: dict, entity: str | None = None, project: str | None = None) -> str:
        self.sweeps.append({"config": config, "entity": entity, "project": project})
        return f"sweep{len(self.sweeps)}"

    def Api(self):  # noqa: N802 (wandb's name)
        fake = self

        class Remote:
            def __init__(self, name: str, loss: float) -> None:
                self.config = {"log": {"run_name": name}}
                self.summary = {"final_val/loss": loss, "_step": 6}
                self.state = "finished"

        class Api:
            def runs(self, path: str, filters: dict) -> list:
                assert path == "me/proj" and filters == {"tags": {"$in": ["s"]}}
                return [Remote(n, loss) for n, loss in fake.finished.items()]

        return Api()


def test_with_a_wandb_server_each_phase_becomes_a_sweep_and_the_next_follows_from_its_results(
    tmp_path, base_file, monkeypatch, capsys
):
    import wandb

    fake = FakeWandb()
    monkeypatch.setattr(wandb, "sweep", fake.sweep)
    monkeypatch.setattr(wandb, "Api", fake.Api)
    monkeypatch.setattr(study_mod, "unigram_loss", lambda study: 7.0)
    path = write_study(tmp_path, base_file, GOOD.replace("lr_grid:", "rungs: [0.5, 1.0]\nlr_grid:"))
    args = [str(path), "--out-dir", str(tmp_path / "o"), "--wandb-sweep", "me/proj"]
    assert main(args) == 0
    assert "wandb agent me/proj/sweep1" in capsys.readouterr().out
    (first,) = fake.sweeps
    names = first["config"]["parameters"]["study.run"]["values"]
    assert len(names) == 5 and all(n.endswith("_seed-1_steps-3") for n in names)
    assert first["config"]["command"][-2:] == ["--run-one", "${args}"] and first["project"] == "proj"
    assert main(args) == 0 and len(fake.sweeps) == 1  # nothing new finished: the same sweep, not another
    fake.finished = {n: abs(math.log(float(n.split("_lr-")[1].split("_")[0]) / 0.004)) for n in names}
    assert main(args) == 0
    second = fake.sweeps[1]["config"]["parameters"]["study.run"]["values"]
    assert sorted(second) == sorted(f"a_lr-{lr}_seed-{s}_steps-6" for lr in (0.002, 0.004) for s in (1, 2))
    assert "wandb agent me/proj/sweep2" in capsys.readouterr().out


def test_an_agent_run_trains_the_run_its_name_stands_for(tmp_path, base_file, monkeypatch):
    calls = []
    monkeypatch.setattr(study_mod.subprocess, "call", lambda command: calls.append(command) or 0)
    path = write_study(tmp_path, base_file, GOOD)
    assert (
        main(
            [
                str(path),
                "--out-dir",
                str(tmp_path / "o"),
                "--run-one",
                "--study.run=b_lr-0.004_seed-3_steps-6",
            ]
        )
        == 0
    )
    (command,) = calls
    assert "--train.lr=0.004" in command and "--train.seed=3" in command and "--model.n_head=1" in command
    assert f"--log.out_dir={tmp_path / 'o' / 's' / 'runs'}" in command
    assert main([str(path), "--run-one", "--study.run=zzz_lr-1_seed-1_steps-6"]) == 2


@pytest.mark.slow
def test_a_whole_split_test_metric_scores_every_seed_run_at_the_chosen_rate_once_with_a_bootstrap_interval(
    tmp_path, base_file, monkeypatch
):
    monkeypatch.chdir(REPO_ROOT)
    path = write_study(tmp_path, base_file, SMALL + "test_metric: whole_test/loss\n")
    out = tmp_path / "studies"
    assert main([str(path), "--out-dir", str(out), "--parallel", "2", "--threads", "1"]) == 0
    state = json.loads((out / "s" / "study.json").read_text())
    scored = [r for r in state["runs"] if r["phase"] == "seeds"]
    assert len(scored) == 4 and all(r["score_returncode"] == 0 for r in scored)
    for record in scored:
        summary = json.loads((out / "s" / "runs" / record["name"] / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["whole_test/loss_low"] < summary["whole_test/loss"] < summary["whole_test/loss_high"]
        # the whole split, not the prefix the run's own final evaluation was limited to
        assert summary["whole_test/tokens"] >= summary["final_test/tokens"]
        assert summary["whole_test/step"] == summary["step"]
    # a seed run at a rate chosen before a second selection seed moved the choice, copied in from records
    # (no weights, no test score): it is left alone, not scored (which would stop the study on it)
    superseded = dict(scored[0], name="a_lr-0.5_seed-2_superseded", lr=0.5)
    for key in [k for k in superseded if k.startswith("score_")]:
        del superseded[key]
    state["runs"].append(superseded)
    (out / "s" / "study.json").write_text(json.dumps(state))
    summary = json.loads((out / "s" / "runs" / scored[0]["name"] / "summary.json").read_text())
    (out / "s" / "runs" / superseded["name"]).mkdir()
    (out / "s" / "runs" / superseded["name"] / "summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if not k.startswith("whole_test")})
    )
    mtimes = {p: p.stat().st_mtime for p in (out / "s" / "runs").glob("*/summary.json")}
    assert main([str(path), "--out-dir", str(out), "--parallel", "2", "--threads", "1"]) == 0
    assert {p: p.stat().st_mtime for p in (out / "s" / "runs").glob("*/summary.json")} == mtimes


@pytest.mark.slow
def test_choosing_on_the_whole_validation_split_scores_every_grid_run_once_and_ranks_by_that_score(
    tmp_path, base_file, monkeypatch, capsys
):
    monkeypatch.chdir(REPO_ROOT)
    path = write_study(tmp_path, base_file, SMALL + "select_metric: whole_val/loss\n")
    out = tmp_path / "studies"
    assert main([str(path), "--out-dir", str(out), "--parallel", "2", "--threads", "1"]) == 0
    state = json.loads((out / "s" / "study.json").read_text())
    summaries = {
        r["name"]: json.loads((out / "s" / "runs" / r["name"] / "summary.json").read_text())
        for r in state["runs"]
    }
    grid = [r for r in state["runs"] if r["in_grid"]]
    assert len(grid) == 3 and all(r["select_score_returncode"] == 0 for r in grid)
    for record in grid:
        summary = summaries[record["name"]]
        assert (
            summary["whole_val/tokens"] >= summary["final_val/tokens"]
            and summary["whole_val/step"] == summary["step"]
        )
    half = {r["lr"]: summaries[r["name"]]["whole_val/loss"] for r in grid if r["fraction"] == 0.5}
    assert state["variants"][0]["chosen_lr"] == min(half, key=half.get)
    setup = "\n".join(study_report.setup_lines(study_report.load_study(out / "s")))
    assert "Scoring 3 grid runs on the whole validation split to choose the rate took" in setup
    capsys.readouterr()
    assert main([str(path), "--out-dir", str(out), "--parallel", "2", "--threads", "1"]) == 0
    assert "score-val-" not in capsys.readouterr().out  # every grid run was scored once, not again


def test_a_copied_in_run_without_weights_that_needs_a_whole_split_score_is_an_error_not_a_losing_rate(
    tmp_path, base_file
):
    study = load_study(write_study(tmp_path, base_file, GOOD + "select_metric: whole_val/loss\n"))
    ex = Executor(study, tmp_path / "out", parallel=1, threads=1)
    scored, weightless = RunSpec("a", 0.004, 1, 6, "lr"), RunSpec("a", 0.004, 2, 6, "lr")
    for spec, summary in ((scored, {"whole_val/loss": 5.0}), (weightless, {"final_val/loss": 5.1})):
        run_dir = ex.runs_dir / spec.name(study)
        run_dir.mkdir(parents=True)  # as records keep a run: its summary, no checkpoint
        (run_dir / "summary.json").write_text(json.dumps({"status": "finished", **summary}))
    study_mod.score_whole(ex, study.select_metric, [scored.name(study)], "select_score_")  # nothing to do
    with pytest.raises(StudyError, match=rf"hold no checkpoint.*{weightless.name(study)}.*minigpt.evaluate"):
        study_mod.score_whole(ex, study.select_metric, [s.name(study) for s in (scored, weightless)], "x_")


def test_a_study_error_found_mid_study_exits_2_with_one_line(tmp_path, base_file, monkeypatch, capsys):
    def unscorable(study, ex):
        raise StudyError("1 finished run(s) need a whole_val/loss score but hold no checkpoint to score")

    monkeypatch.setattr(study_mod, "choose_learning_rates", unscorable)
    monkeypatch.setattr(study_mod, "unigram_loss", lambda study: 7.0)
    path = write_study(tmp_path, base_file, GOOD)
    assert main([str(path), "--out-dir", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 finished run(s)") and err.count("\n") == 1 and "Traceback" not in err


def test_a_study_stopped_mid_study_exits_130_with_one_line_saying_how_to_resume(
    tmp_path, base_file, monkeypatch, capsys
):
    def stopped(study, ex):
        raise KeyboardInterrupt  # what the sweep runner raises on SIGTERM or Ctrl-C

    monkeypatch.setattr(study_mod, "choose_learning_rates", stopped)
    monkeypatch.setattr(study_mod, "unigram_loss", lambda study: 7.0)
    path = write_study(tmp_path, base_file, GOOD)
    assert main([str(path), "--out-dir", str(tmp_path / "studies")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("[study] stopped") and "same command resumes" in err and "\n" not in err
    assert (tmp_path / "studies" / "s" / "study.json").is_file()


def test_the_rate_is_ranked_by_the_select_metric_not_the_runs_own_estimate(tmp_path, base_file):
    study = load_study(write_study(tmp_path, base_file, GOOD + "select_metric: whole_val/loss\n"))

    class Records:
        summaries = {
            "a_lr-0.001_seed-1_steps-6": {"status": "finished", "final_val/loss": 5.0, "whole_val/loss": 6.0},
            "a_lr-0.002_seed-1_steps-6": {"status": "finished", "final_val/loss": 6.0, "whole_val/loss": 5.5},
        }

        def summary(self, name: str) -> dict:
            return self.summaries[name]

    ex = Records()
    specs = {lr: [RunSpec("a", lr, 1, 6, "lr")] for lr in (0.001, 0.002)}
    assert {lr: study_mod.score(study, ex, s) for lr, s in specs.items()} == {0.001: 6.0, 0.002: 5.5}
    del Records.summaries["a_lr-0.002_seed-1_steps-6"]["whole_val/loss"]  # not scored: it cannot win
    assert study_mod.score(study, ex, specs[0.002]) == math.inf


def test_choosing_on_a_whole_split_is_refused_with_wandb_agents(tmp_path, base_file, capsys):
    path = write_study(tmp_path, base_file, GOOD + "select_metric: whole_val/loss\n")
    assert main([str(path), "--out-dir", str(tmp_path / "o"), "--wandb-sweep", "me/proj"]) == 2
    assert "choose on final_val/loss with --wandb-sweep" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_each_run_is_grouped_in_wandb_by_its_variant_label_rate_and_budget(tmp_path, base_file):
    study = load_study(write_study(tmp_path, base_file, GOOD))
    steps = study_mod.budget(study, study.variant("b"))[0]
    full = study_mod.command_for(study, RunSpec("b", 0.004, 3, steps, "seeds"), tmp_path, threads=1)
    short = study_mod.command_for(study, RunSpec("b", 0.004, 1, 2, "lr"), tmp_path, threads=1)
    assert "--log.group=b, lr 0.004" in full  # every seed of one variant at its rate: one group
    assert "--log.group=b, lr 0.004, 2 steps" in short
