"""The study report on a fabricated study folder (study.json and run directories with known losses): the
exact sign-flip test, TOST, Fisher's test, Holm per question, per-comparison power, split outcomes, the
comparison at the baseline's lr, plots, and a report that regenerates byte for byte from its records."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from analysis import study_report  # noqa: E402
from analysis.stats import (  # noqa: E402
    detectable_difference,
    equivalence_verdict,
    holm,
    paired_summary,
    sign_flip_p,
    tost,
)

SEEDS = (1, 2, 3, 4, 5)
BASE = [6.00, 6.05, 6.10, 5.95, 6.02]
# variant -> per-seed offset of its test loss from the baseline's at the same seed
OFFSETS = {
    "pre-LN": [0.0] * 5,
    "post-LN": [0.10, 0.12, 0.08, 0.11, 0.09],
    "post-LN, no warmup": [1.6, 0.25, 1.5, 0.2, 1.55],  # seeds 1, 3 and 5 stall near the unigram level
    "1 head": [0.001, -0.002, 0.0015, -0.001, 0.0005],
    "16 heads": [0.05, 0.065, 0.035, 0.06, 0.04],
}
CHOSEN = {"pre-LN": 0.002, "post-LN": 0.001, "post-LN, no warmup": 0.001, "1 head": 0.002, "16 heads": 0.002}
OVERRIDES = {
    "pre-LN": {"model.norm_position": "pre"},
    "post-LN": {"model.norm_position": "post"},
    "post-LN, no warmup": {"model.norm_position": "post", "train.warmup_steps": 0},
    "1 head": {"model.n_head": 1},
    "16 heads": {"model.n_head": 16},
}
GRID = [0.0005, 0.001, 0.002, 0.004]
UNIGRAM = 7.6
QUESTIONS = [
    {"name": "norm", "title": "Does post-LN train worse than pre-LN?", "kind": "difference",
     "baseline": "pre-LN", "variants": ["post-LN", "post-LN, no warmup"]},
    {"name": "heads", "title": "Is the head count irrelevant?", "kind": "equivalence", "margin": 0.02,
     "baseline": "pre-LN", "variants": ["1 head", "16 heads"]},
    {"name": "post-ln-trains", "title": "Does post-LN without warmup train?", "kind": "success",
     "rule": {"metric": "final_val/loss", "below": 7.1}, "baseline": "pre-LN",
     "variants": ["post-LN, no warmup"]},
]  # fmt: skip


def write_run(
    root: Path, name: str, label: str, seed: int, lr: float, test_loss: float, fraction: float
) -> None:
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    steps = max(2, round(20 * fraction))
    model = {
        "block_size": 8,
        "n_layer": 2,
        "norm_position": OVERRIDES[label].get("model.norm_position", "pre"),
    }
    config = {"name": name, "model": model, "train": {"seed": seed, "lr": lr}}
    config["train"].update({"batch_size": 2, "max_steps": steps})
    (run_dir / "config.json").write_text(json.dumps(config))
    rows = []
    for step in range(0, steps + 1, 2):  # from step 0, as the study's runs log
        tokens = step * 16
        loss = test_loss + (10.8 - test_loss) * math.exp(-step / 4)
        rows.append({"step": step, "train/tokens": tokens, "val/loss": loss, "val/ppl": math.exp(loss)})
        rows.append({"step": step, "train/tokens": tokens, "grad_norm/layer_0": 1.0 / (1 + step)})
        rows[-1]["grad_norm/layer_1"] = 0.5 + 0.01 * seed
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "status": "finished",
        "step": steps,
        "final_val/loss": test_loss - 0.01,
        "final_test/loss": test_loss,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "ckpt-20.pt").write_bytes(b"not a record")
    (run_dir / "wandb").mkdir()
    (run_dir / "wandb" / "config.json").write_text("{}")


def entry(name: str, variant: str, phase: str, lr: float, seed: int, fraction: float) -> dict:
    return {
        "name": name, "variant": variant, "phase": phase, "lr": lr, "seed": seed, "fraction": fraction,
        "status": "finished", "seconds": 30.0, "load_start": 1.5 + 0.1 * seed, "load_end": 2.0,
        "cpu_user_s": 50.0, "cpu_sys_s": 1.0,
    }  # fmt: skip


def write_study(root: Path, questions: list[dict] = QUESTIONS) -> Path:
    """Phase 1 for pre-LN and post-LN (grid of 4 at 1/3 of the budget for seed 1, the best two at the
    whole budget for seeds 1 and 2), the heads variants reusing pre-LN's lr; phase 2 at the chosen lr."""
    runs = []
    for label in ("pre-LN", "post-LN"):
        for lr in GRID:
            penalty = 0.3 * abs(math.log2(lr / CHOSEN[label]))
            for seed, fraction in [(1, 1 / 3)] + ([(1, 1.0), (2, 1.0)] if lr in (0.001, 0.002) else []):
                loss = BASE[seed - 1] + OFFSETS[label][seed - 1] + penalty + (0.2 if fraction < 1 else 0)
                name = f"{label}_lr-{lr:g}_seed-{seed}_f-{fraction:.3f}_grid"
                write_run(root, name, label, seed, lr, loss, fraction)
                runs.append(entry(name, label, "lr", lr, seed, round(fraction, 3)))
    for label, offsets in OFFSETS.items():
        for seed, base, offset in zip(SEEDS, BASE, offsets, strict=True):
            name = f"{label}_lr-{CHOSEN[label]:g}_seed-{seed}_f-1.000"
            write_run(root, name, label, seed, CHOSEN[label], base + offset, 1.0)
            runs.append(entry(name, label, "seeds", CHOSEN[label], seed, 1.0))
    variants = [
        {"label": label, "overrides": OVERRIDES[label], "lr_grid": GRID if "head" not in label else None,
         "chosen_lr": CHOSEN[label], "lr_from": "pre-LN" if "head" in label else None}
        for label in OFFSETS
    ]  # fmt: skip
    study = {
        "study": "test-study", "file": "sweeps/studies/test.yaml", "base": "experiments/x.py",
        "select_metric": "final_val/loss", "test_metric": "final_test/loss",
        "budget": {"tokens": 640, "steps": 20}, "unigram_loss": UNIGRAM,
        "variants": variants, "questions": questions, "runs": runs,
    }  # fmt: skip
    (root / "study.json").write_text(json.dumps(study))
    return root


def diffs_of(label: str) -> list[float]:
    return [(b + o) - b for b, o in zip(BASE, OFFSETS[label], strict=True)]


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    return write_study(tmp_path / "study")


def question(study_dir: Path, name: str) -> study_report.QuestionResult:
    study = study_report.load_study(study_dir)
    return study_report.analyse_question(study, next(q for q in QUESTIONS if q["name"] == name))


# --------------------------------------------------------------------------------------------- statistics


def test_sign_flip_p_value_counts_sign_patterns_as_extreme_as_observed():
    # of the 16 sign patterns of the magnitudes (0.3, 0.1, 0.2, 0.4), |sum| reaches the observed 0.6 only for
    # 1.0 (no sign flipped), 0.8 (0.1 flipped), 0.6 (0.2 flipped) and their mirror images: 6 of 16
    assert sign_flip_p([0.3, 0.1, -0.2, 0.4]) == pytest.approx(6 / 16)
    assert sign_flip_p([0.1, 0.12, 0.08, 0.11, 0.09]) == pytest.approx(2 / 32)  # all one sign: the floor
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert math.isnan(sign_flip_p([0.1] * 17))  # past 2^16 patterns the t-test stands alone


def test_tost_says_equivalent_for_tiny_differences_and_not_for_large_ones():
    bound = math.log(1.02)
    tiny = tost(diffs_of("1 head"), bound)
    assert tiny.p < 0.05 and -bound < tiny.low < tiny.high < bound
    assert equivalence_verdict(tiny, tiny.p) == "equivalent"
    large = tost(diffs_of("16 heads"), bound)
    assert large.p > 0.5 and large.low > bound
    assert equivalence_verdict(large, large.p) == "not equivalent"
    noisy = tost([0.05, -0.04, 0.03, -0.05, 0.02], bound)
    assert equivalence_verdict(noisy, noisy.p) == "inconclusive"
    d = np.array(diffs_of("1 head"))
    se = d.std(ddof=1) / math.sqrt(5)
    by_hand = max(stats.t.sf((d.mean() + bound) / se, 4), stats.t.cdf((d.mean() - bound) / se, 4))
    assert tiny.p == pytest.approx(by_hand, rel=1e-12)


def test_equivalence_question_gives_tost_verdicts_per_variant(study_dir):
    rows = {r.label: r for r in question(study_dir, "heads").rows}
    assert rows["1 head"].verdict == "equivalent"
    assert rows["16 heads"].verdict == "not equivalent"


def test_success_question_compares_counts_with_fishers_exact_test(study_dir):
    result = question(study_dir, "post-ln-trains")
    base, variant = result.rows
    assert base.trained == [1, 2, 3, 4, 5] and variant.trained == [2, 4]
    assert variant.fisher_p == pytest.approx(stats.fisher_exact([[2, 3], [5, 0]]).pvalue)
    text = "\n".join(study_report.question_lines(study_report.load_study(study_dir), QUESTIONS[2]))
    assert "Fisher's exact test" in text and "2/5" in text


def test_with_a_whole_split_selection_metric_a_run_trains_by_the_estimate_every_run_makes(study_dir):
    # whole_val/loss scores only the grid runs: the default rule must not call every other seed untrained
    spec = json.loads((study_dir / "study.json").read_text())
    spec["select_metric"] = "whole_val/loss"
    (study_dir / "study.json").write_text(json.dumps(spec))
    for run_dir in (study_dir / "runs").glob("*_grid"):
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps(summary | {"whole_val/loss": 5.0}))
    result = question(study_dir, "heads")
    assert result.rule["metric"] == "final_val/loss"
    assert all(row.trained == [1, 2, 3, 4, 5] and not row.split for row in result.rows)
    assert study_report.unfinished_lines(study_report.load_study(study_dir)) == []  # seeds need no whole_val


def test_holm_is_one_family_per_question(tmp_path):
    alone = write_study(tmp_path / "alone", [QUESTIONS[0]])
    together = write_study(tmp_path / "together", [QUESTIONS[0], QUESTIONS[1]])
    norm = [
        study_report.analyse_question(study_report.load_study(d), QUESTIONS[0]) for d in (alone, together)
    ]
    assert [r.t_holm for r in norm[0].rows[1:]] == [r.t_holm for r in norm[1].rows[1:]]
    raw = [r.paired.t_p for r in norm[0].rows[1:]]
    assert [r.t_holm for r in norm[0].rows[1:]] == holm(raw) != raw


def test_minimum_detectable_effect_uses_each_comparisons_own_sd(study_dir):
    rows = {r.label: r for r in question(study_dir, "heads").rows[1:]}
    for label, row in rows.items():
        sd = np.std(diffs_of(label), ddof=1)
        assert row.paired.spread.sd == pytest.approx(sd)
        assert row.paired.mde == pytest.approx(detectable_difference(sd, 5, power=0.8))
        assert row.paired.spread.low < sd < row.paired.spread.high
        assert row.paired.mde_low < row.paired.mde < row.paired.mde_high
        lower = sd * math.sqrt(4 / stats.chi2.ppf(0.975, 4))
        assert row.paired.spread.low == pytest.approx(lower)
    assert rows["1 head"].paired.mde < rows["16 heads"].paired.mde / 3  # not one pooled value


def test_split_outcome_is_reported_as_such_not_as_a_t_interval(study_dir):
    result = question(study_dir, "norm")
    rows = {r.label: r for r in result.rows}
    assert rows["post-LN, no warmup"].split and not rows["post-LN"].split
    verdicts = study_report.verdict_lines(result)
    assert "split outcome" in verdicts[1] and "2 of 5 seeds" in verdicts[1]
    trained = [BASE[i] + OFFSETS["post-LN, no warmup"][i] for i in (1, 3)]  # seeds 2 and 4
    assert f"among those that trained: {math.exp(np.mean(trained)):,.1f} [" in verdicts[1]
    assert "split outcome" not in verdicts[0] and "higher" in verdicts[0]


def test_a_variant_whose_seeds_split_is_drawn_one_line_per_seed_not_as_a_mean(study_dir, tmp_path):
    study = study_report.load_study(study_dir)
    curves = study_report.split_seed_curves(study, "val/loss")
    assert list(curves) == ["post-LN, no warmup"]  # 2 of 5 train; every other variant trains in every seed
    finals = [float(c.mean[-1]) for c in curves["post-LN, no warmup"]]
    assert len(finals) == 5 and max(finals) - min(finals) > 1.0  # the stalled and the trained seeds, apart
    from analysis import plots

    colours = {v["label"]: f"C{i}" for i, v in enumerate(study.variants)}
    means = {"pre-LN": study_report.mean_curve(list(study.phase2("pre-LN").values()), "val/loss")}
    path = plots.plot_loss_curves(means, colours, UNIGRAM, "loss", "t", tmp_path / "split.png", curves)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_a_variant_that_never_trains_is_named_as_such_beside_its_ratio():
    base = study_report.Row("pre-LN", {1: 6.0, 2: 6.1, 3: 6.05}, trained=[1, 2, 3])
    stalled = {1: 7.5, 2: 7.62, 3: 7.55}
    row = study_report.Row("post-LN", stalled, trained=[], t_holm=0.001)
    row.paired = paired_summary([stalled[s] - base.losses[s] for s in (1, 2, 3)])
    result = study_report.QuestionResult(
        QUESTIONS[0], {"metric": "final_val/loss", "below": 7.1}, [base, row]
    )
    (line,) = study_report.verdict_lines(result)
    assert "higher" in line and "0 of 3 seeds train by `final_val/loss` < 7.1, against 3 of 3" in line
    assert "split outcome" not in line


def test_variant_at_the_baseline_lr_is_compared_where_the_grid_ran_it(study_dir):
    study = study_report.load_study(study_dir)
    rows = study_report.at_baseline_lr(study, QUESTIONS[0])
    assert [(r.label, r.lr, r.paired.diff.n) for r in rows] == [("post-LN", 0.002, 2)]
    penalty = 0.3  # one lr step from post-LN's best
    expected = np.mean([OFFSETS["post-LN"][i] + penalty for i in (0, 1)])
    assert rows[0].paired.diff.mean == pytest.approx(expected)


def test_seed_runs_at_a_rate_chosen_before_the_choice_moved_are_left_out_of_the_statistics(study_dir):
    before = {r.label: r for r in question(study_dir, "heads").rows}
    spec = json.loads((study_dir / "study.json").read_text())
    # 16 heads' seeds 2-5 also ran at 0.004, once its choice: listed after its runs at the chosen 0.002, as
    # the study appends them when a second selection seed moves the choice back, and near 1 head's losses
    for seed in SEEDS[1:]:
        name = f"16 heads_lr-0.004_seed-{seed}_f-1.000"
        write_run(study_dir, name, "16 heads", seed, 0.004, BASE[seed - 1] + 0.001, 1.0)
        spec["runs"].append(entry(name, "16 heads", "seeds", 0.004, seed, 1.0))
    (study_dir / "study.json").write_text(json.dumps(spec))
    study = study_report.load_study(study_dir)
    assert {r.config["train.lr"] for r in study.phase2("16 heads").values()} == {0.002}
    after = {r.label: r for r in question(study_dir, "heads").rows}
    assert after["16 heads"].verdict == before["16 heads"].verdict == "not equivalent"
    assert after["16 heads"].paired.diff.mean == pytest.approx(before["16 heads"].paired.diff.mean)
    setup = "\n".join(study_report.setup_lines(study))
    assert "25 at the chosen lr, 4 seed runs at a rate their variant chose before (the choice moved)" in setup


# ---------------------------------------------------------------------------------------------- the report


@pytest.mark.slow
def test_report_regenerates_byte_identical_from_its_records_which_hold_only_the_studys_runs(
    study_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    stray = study_dir / "runs" / "copied-in-from-another-study"  # a run directory study.json does not record
    stray.mkdir()
    (stray / "config.json").write_text("{}")
    records, out = Path("records"), Path("report")
    assert study_report.main([str(study_dir), "--out", str(out), "--records", str(records)]) == 0
    first = (out / "report.md").read_bytes()
    run = records / "runs" / "pre-LN_lr-0.002_seed-1_f-1.000"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]
    assert not (records / "runs" / stray.name).exists()
    assert (records / "study.json").read_bytes() == (study_dir / "study.json").read_bytes()
    assert study_report.main([str(records), "--out", str(out)]) == 0
    assert (out / "report.md").read_bytes() == first
    text = first.decode()
    assert "`python -m analysis.study_report records --out report`" in text
    assert str(tmp_path) not in text


def test_report_holds_setup_questions_and_plots(study_dir, tmp_path):
    path = study_report.write_study_report(study_dir, tmp_path / "out")
    text = path.read_text()
    assert "total CPU time (user + sys) 0.58 h (2,091 s)" in text  # 41 runs x 51 s
    assert "load average at the runs' starts and ends: 1.60 to 2.00" in text
    assert '| post-LN | `model.norm_position="post"` | 0.0005, 0.001, 0.002, 0.004 | 0.001 | 8 | 5 |' in text
    assert "| 1 head | `model.n_head=1` | none (reuses pre-LN's) | 0.002 | 0 | 5 |" in text
    assert (
        "successive halving with rungs at 0.333, 1 of the budget: seed 1 at every rung but the last, "
        "seeds 1, 2 at the last" in text
    )
    for png in ("lr_sensitivity.png", "val_loss.png", "layer_grad_norms_norm.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in text
    assert "layer_grad_norms_heads.png" not in text  # only questions that move the LayerNorm


def test_setup_names_the_rungs_from_the_study_file_when_a_rung_repeats_the_whole_budget(study_dir, tmp_path):
    # rungs [1, 1]: every rate on seed 1, then the best half on seeds 1 and 2; the runs' fractions are all 1
    spec = json.loads((study_dir / "study.json").read_text())
    for run in spec["runs"]:
        run["fraction"] = 1.0
    (study_dir / "study.json").write_text(json.dumps(spec | {"rungs": [1.0, 1.0], "selection_seeds": [1, 2]}))
    text = study_report.write_study_report(study_dir, tmp_path / "two").read_text()
    assert "rungs at 1, 1 of the budget: seed 1 at every rung but the last, seeds 1, 2 at the last" in text
    (study_dir / "study.json").write_text(json.dumps(spec | {"rungs": [1.0], "selection_seeds": [1]}))
    text = study_report.write_study_report(study_dir, tmp_path / "one").read_text()
    assert "Learning-rate grid (phase 1): seeds 1, successive halving with rungs at 1 of the budget." in text


def test_variants_with_seeds_of_their_own_are_named_with_their_seeds_and_compared_over_shared_seeds(
    study_dir, tmp_path
):
    spec = json.loads((study_dir / "study.json").read_text())
    # 16 heads ran seeds 1-3 only (the study gave it fewer seeds than the others)
    spec["runs"] = [e for e in spec["runs"] if not (e["variant"] == "16 heads" and e["seed"] > 3)]
    (study_dir / "study.json").write_text(json.dumps(spec))
    text = study_report.write_study_report(study_dir, tmp_path / "out").read_text()
    assert (
        "seeds 1, 2, 3, 4, 5 for `pre-LN`, `post-LN`, `post-LN, no warmup`, `1 head`; seeds 1, 2, 3 for "
        "`16 heads` "
        "(same seed = same data order, so differences are paired over shared seeds)" in text
    )
    sixteen = next(r for r in question(study_dir, "heads").rows if r.label == "16 heads")
    assert sorted(sixteen.losses) == [1, 2, 3]
    assert sixteen.paired.diff.mean == pytest.approx(np.mean(diffs_of("16 heads")[:3]))
    assert sixteen.paired.mde == pytest.approx(
        detectable_difference(np.std(diffs_of("16 heads")[:3], ddof=1), 3, power=0.8)
    )


def test_runs_copied_in_from_another_study_are_said_to_be_left_out_of_the_cpu_time(study_dir, tmp_path):
    spec = json.loads((study_dir / "study.json").read_text())
    for e in spec["runs"][:2]:  # two run directories made elsewhere: no runner record of their time
        for key in ("cpu_user_s", "cpu_sys_s", "seconds"):
            del e[key]
    (study_dir / "study.json").write_text(json.dumps(spec))
    text = study_report.write_study_report(study_dir, tmp_path / "out").read_text()
    assert "total CPU time (user + sys) 0.55 h (1,989 s)" in text  # 39 runs x 51 s
    assert "2 of the finished runs were not trained by this study's runner" in text


def test_variants_with_their_own_budgets_and_early_stopping_show_steps_kept_and_stopped(study_dir, tmp_path):
    spec = json.loads((study_dir / "study.json").read_text())
    for v in spec["variants"]:
        steps = 80 if v["label"] == "post-LN" else 20
        v["budget"] = {"steps": steps, "warmup_steps": steps // 10}
    (study_dir / "study.json").write_text(json.dumps(spec))
    study = study_report.load_study(study_dir)
    for seed, run in study.phase2("post-LN").items():
        kept, stopped = 40 + 8 * seed, 60 + 8 * seed  # seeds 1-5: kept 48..80, stopped 68..100
        run_dir = study_dir / "runs" / run.name
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.update({"step": kept, "early_stop/stopped_at_step": stopped})
        (run_dir / "summary.json").write_text(json.dumps(summary))
    text = "\n".join(study_report.setup_lines(study_report.load_study(study_dir)))
    assert "Budget per full run: each variant's own" in text
    assert "| variant | overrides | steps (warmup) | kept step / stopped at | lr grid |" in text
    assert '| post-LN | `model.norm_position="post"` | 80 (8) | 64 / 84 | 0.0005, 0.001' in text
    assert "| 1 head | `model.n_head=1` | 20 (2) | 20 / 20 | none (reuses pre-LN's)" in text


def test_a_variant_with_a_single_validation_estimate_is_drawn_as_a_point(tmp_path):
    from analysis import plots
    from analysis.stats import Curve

    one = Curve(*(np.array([v]) for v in (32.0, 7.1, 7.0, 7.2)))
    colours = {"short": "#1f77b4"}
    path = plots.plot_loss_curves({"short": one}, colours, 7.0, "loss", "title", tmp_path / "one.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert plots.plot_loss_curves({"short": None}, colours, 7.0, "loss", "title", tmp_path / "no.png") is None


def test_whole_split_scores_give_each_variant_its_bootstrap_width_beside_its_seed_spread(study_dir, tmp_path):
    spec = json.loads((study_dir / "study.json").read_text())
    spec["test_metric"] = "whole_test/loss"
    for e in spec["runs"]:
        if e["phase"] == "seeds":
            e.update(score_seconds=20.0, score_cpu_user_s=35.0, score_cpu_sys_s=1.0)
            path = study_dir / "runs" / e["name"] / "summary.json"
            summary = json.loads(path.read_text())
            loss = summary["final_test/loss"]
            half = 0.05 if e["variant"] == "pre-LN" else 0.1 * e["seed"]
            summary.update({"whole_test/loss": loss, "whole_test/blocks": 74})
            summary.update({"whole_test/loss_low": loss - half, "whole_test/loss_high": loss + half})
            path.write_text(json.dumps(summary))
    (study_dir / "study.json").write_text(json.dumps(spec))
    text = study_report.write_study_report(study_dir, tmp_path / "out").read_text()
    assert "Scoring 25 seed runs on the whole split after training took 0.25 CPU-hours more" in text
    assert "(74 blocks of contiguous text)" in text
    pre_ln = [BASE[i] + OFFSETS["pre-LN"][i] for i in range(5)]
    mean, sd = sum(pre_ln) / 5, math.sqrt(sum((x - sum(pre_ln) / 5) ** 2 for x in pre_ln) / 4)
    assert f"| pre-LN | 5 | {mean:.4f} | 0.0500 [0.0500, 0.0500] | {sd:.4f} |" in text
    assert "| post-LN | 5 | " in text and "| 0.3000 [0.1000, 0.5000] |" in text


def test_a_folder_without_study_json_is_a_usage_error(tmp_path, capsys):
    assert study_report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study.json in") and err.count("\n") == 1


def test_a_question_naming_an_unknown_variant_is_a_usage_error(tmp_path, capsys):
    bad = dict(QUESTIONS[0], variants=["post LN"])
    study_dir = write_study(tmp_path / "study", [bad])
    assert study_report.main([str(study_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "error: study.json: a question names variant 'post LN', which is not among its variants\n"


def test_grid_runs_need_no_test_score_and_failed_runs_are_listed_not_analysed(study_dir, tmp_path):
    grid_run = study_dir / "runs" / "pre-LN_lr-0.0005_seed-1_f-0.333_grid" / "summary.json"
    grid_run.write_text(json.dumps({"status": "finished", "final_val/loss": 6.9}))
    spec = json.loads((study_dir / "study.json").read_text())
    failed = next(e for e in spec["runs"] if e["variant"] == "post-LN" and e["phase"] == "seeds")
    failed["status"] = "failed"
    (study_dir / "study.json").write_text(json.dumps(spec))
    study = study_report.load_study(study_dir)
    assert len(study_report.lr_points(study)["pre-LN"]) == 8
    assert sorted(study.phase2("post-LN")) == [2, 3, 4, 5]
    text = study_report.write_study_report(study_dir, tmp_path / "out").read_text()
    assert f"- `{failed['name']}` (seeds): failed" in text
    assert "| post-LN | 4 |" in text  # the norm question's row: four seeds


COMMITTED_STUDIES = sorted(
    p for p in REPO_ROOT.glob("reports/*/report.md") if "Generated from the study records by" in p.read_text()
)


def test_the_cpu_study_report_is_committed():
    assert REPO_ROOT / "reports" / "ablations-cpu" / "report.md" in COMMITTED_STUDIES


@pytest.mark.slow
@pytest.mark.parametrize("committed", COMMITTED_STUDIES, ids=[p.parent.name for p in COMMITTED_STUDIES])
def test_committed_study_reports_regenerate_from_their_committed_records(committed, tmp_path, monkeypatch):
    import shlex

    text = committed.read_text()
    line = next(x for x in text.splitlines() if x.startswith("Generated from the study records by"))
    argv = shlex.split(line.split("`")[1])[3:]
    assert (REPO_ROOT / argv[0] / "study.json").is_file(), f"{committed} names records that are not committed"
    out_at = argv.index("--out") + 1
    committed_out, argv[out_at] = argv[out_at], str(tmp_path / "regenerated")
    monkeypatch.chdir(REPO_ROOT)
    assert study_report.main(argv) == 0
    regenerated = (tmp_path / "regenerated" / "report.md").read_text()
    assert regenerated.replace(str(tmp_path / "regenerated"), committed_out) == text


@pytest.mark.slow
def test_the_study_notebook_executes_on_the_committed_records(tmp_path, monkeypatch):
    from helpers import execute_notebook

    monkeypatch.setenv("MINIGPT_STUDY_OUT", str(tmp_path / "nb"))
    analysis_dir = REPO_ROOT / "analysis"
    outputs = execute_notebook(analysis_dir / "study.ipynb", analysis_dir, tmp_path, monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
    assert (tmp_path / "nb" / "lr_sensitivity.png").is_file()
