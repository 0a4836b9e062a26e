"""Analysis on fabricated run directories: statistics against hand computations, labels, robustness to
failed, unfinished and mismatched runs, the report and its records, the committed reports, the notebook."""

import json
import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parent.parent
# `pip install -e .` installs analysis/, but an environment installed before it was a package has only
# minigpt; the checkout's analysis/ is what is under test either way.
sys.path.insert(0, str(REPO_ROOT))

from helpers import execute_notebook  # noqa: E402

from analysis import plots, report  # noqa: E402
from analysis.records import copy_records  # noqa: E402
from analysis.runs import load_runs  # noqa: E402
from analysis.stats import Curve, compare, detectable_difference, holm, mean_ci, mean_curve  # noqa: E402
from analysis.variants import make_variants  # noqa: E402
from minigpt.config import apply_overrides, load_experiment  # noqa: E402
from minigpt.sweep import load_sweep, plan  # noqa: E402

BASE = load_experiment(REPO_ROOT / "experiments" / "ablations" / "cpu_base.py")
SEEDS = (1, 2, 3)

# variant overrides -> final validation loss per seed (seed 3 is hard for everyone: the pairing matters)
LOSSES = {
    (): [6.00, 6.02, 6.10],
    (("model.norm_position", "post"),): [6.20, 6.21, 6.31],
    (("model.norm_position", "post"), ("train.warmup_steps", 0)): [6.25, 6.24, 6.36],
    (("model.n_head", 16),): [6.01, 6.00, 6.12],
}


def write_run(
    root: Path,
    overrides: dict,
    seed: int,
    loss: float,
    status: str = "finished",
    with_test: bool = True,
    tokens_per_sec: float = 2400.0,
) -> Path:
    config = apply_overrides(BASE, {**overrides, "train.seed": seed})
    name = "-".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(overrides.items())) or "baseline"
    run_dir = root / f"{name}-s{seed}"
    run_dir.mkdir(parents=True)
    run = {"device": "cpu", "precision": "fp32", "params": 7_000_000, "params_non_embedding": 800_000}
    (run_dir / "config.json").write_text(json.dumps({**config.to_dict(), "_run": run}))
    per_step = config.train.batch_size * config.model.block_size
    history = []
    for step in range(10, config.train.max_steps + 1, 10):
        row = {"step": step, "train/tokens": step * per_step, "train/loss": loss + 3.0 * 10 / step}
        row.update({"train/grad_norm": 0.5 * seed, "grad_norm/layer_0": 0.2 * seed, "grad_norm/layer_1": 0.1})
        history.append(row)
        if step % 50 == 0:
            history.append(
                {"step": step, "train/tokens": step * per_step, "val/ppl": math.exp(loss + 30 / step)}
            )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    summary = {"status": status, "final_val/loss": loss, "final_val/ppl": math.exp(loss)}
    summary.update({"final_val/tokens": 65535, "final_val/context": 128, "final_val/stride": 128})
    if with_test:
        summary.update({"final_test/loss": loss + 0.05, "final_test/tokens": 65535})
    summary.update({"tokens_per_sec": tokens_per_sec + seed, "train_seconds": 256.0})
    if status != "finished":
        summary = {"status": status}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "ckpt-300.pt").write_bytes(b"not a record")
    return run_dir


def write_suite(root: Path, loads: tuple[float, float] | None = None, **kwargs) -> Path:
    names = []
    for overrides, losses in LOSSES.items():
        for seed, loss in zip(SEEDS, losses, strict=True):
            names.append(write_run(root, dict(overrides), seed, loss, **kwargs).name)
    runs = [{"name": n, "status": "finished"} for n in names]
    if loads is not None:
        runs = [{**r, "load_start": loads[0], "load_end": loads[1]} for r in runs]
    (root / "sweep.json").write_text(json.dumps({"sweep_id": "test", "runs": runs}))
    return root


def losses_of(*overrides) -> dict[int, float]:
    return dict(zip(SEEDS, LOSSES[tuple(overrides)], strict=True))


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    return write_suite(tmp_path / "suite", loads=(2.1, 2.3))


# --------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (180, 1400, [200, 300, 500, 1000]),
        (150, 4000, [200, 500, 1000, 2000]),
        (185, 290, [200]),  # one tick: the axis falls back to evenly spaced ones
        (0.9, 6.5, [1, 2, 3, 5]),
        (3, 2000, [10, 100, 1000]),
    ],
)
def test_log_axes_get_round_ticks_in_every_decade(low, high, ticks):
    assert plots.log_tick_values(low, high) == ticks


def test_mean_ci_uses_the_t_distribution():
    e = mean_ci([10.0, 12.0, 14.0])
    assert e.mean == 12.0
    assert e.half_width == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0]).half_width)


def test_paired_and_welch_tests_match_hand_computed_statistics():
    variant, base = losses_of(("model.norm_position", "post")), losses_of()
    c = compare(variant, base)
    d = np.array([variant[s] - base[s] for s in SEEDS])
    t_paired = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert c.paired_p == pytest.approx(2 * stats.t.sf(abs(t_paired), 2), rel=1e-9)
    a, b = np.array(list(variant.values())), np.array(list(base.values()))
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    t_welch = (a.mean() - b.mean()) / math.sqrt(va + vb)
    assert c.welch_p == pytest.approx(2 * stats.t.sf(abs(t_welch), df), rel=1e-9)
    assert c.paired_p < c.welch_p  # the shared seed-3 difficulty cancels in the pairs


def test_without_shared_seeds_the_interval_is_welchs():
    variant, base = {4: 6.2, 5: 6.3, 6: 6.1}, {1: 6.0, 2: 6.05, 3: 5.95}
    c = compare(variant, base)
    a, b = np.array(list(variant.values())), np.array(list(base.values()))
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert math.isnan(c.paired_p)
    assert c.ci.mean == pytest.approx(a.mean() - b.mean())
    assert c.ci.half_width == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(va + vb), rel=1e-9)


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, math.nan])[0] == 0.5 and math.isnan(holm([0.5, math.nan])[1])


def test_a_difference_of_the_detectable_size_is_just_significant():
    sd, d = 0.03, detectable_difference(0.03, 3)
    diffs = [d - sd, d, d + sd]  # mean d, SD exactly sd
    assert stats.ttest_1samp(diffs, 0.0).pvalue == pytest.approx(0.05, rel=1e-6)
    assert detectable_difference(sd, 3, power=0.8) > d > detectable_difference(sd, 10)


def test_curves_on_log_axes_average_in_log_space(suite):
    runs = [r for r in load_runs([suite]) if r.name.startswith("baseline")]
    curve = mean_curve(runs, "train/grad_norm", log=True)
    assert curve.mean[0] == pytest.approx((0.5 * 1.0 * 1.0 * 1.5) ** (1 / 3))  # geometric mean of 0.5, 1, 1.5
    assert curve.high[0] / curve.mean[0] == pytest.approx(curve.mean[0] / curve.low[0])
    assert curve.tokens[0] == 10 * 16 * 128


# ------------------------------------------------------------------------------------------------ variants


def test_variants_are_labelled_by_what_differs_from_the_baseline(tmp_path):
    for seed in SEEDS:
        write_run(tmp_path, {}, seed, 6.0)
        write_run(tmp_path, {"model.norm_position": "post", "train.warmup_steps": 0}, seed, 6.2)
        deep = {"model.n_layer": 8, "train.lr": 4e-3, "model.norm_position": "post", "train.warmup_steps": 0}
        write_run(tmp_path, deep, seed, 6.3)
        write_run(tmp_path, {"model.tie_embeddings": False}, seed, 6.0)
    keys = ["model.n_layer", "train.lr", "model.norm_position", "train.warmup_steps", "model.tie_embeddings"]
    wanted = {"model.norm_position": "pre", "train.warmup_steps": "30"}  # both are tied 2 to 2
    variants = make_variants(load_runs([tmp_path]), keys, wanted)
    assert [v.label for v in variants] == [
        "baseline",
        "8 layers, lr 4e-3, post-LN, no warmup",
        "post-LN, no warmup",
        "untied embeddings",
    ]
    assert variants[0].is_baseline and len({v.colour for v in variants}) == 4


def test_a_tied_baseline_asks_for_the_baseline_option(tmp_path, capsys):
    for seed in SEEDS:
        write_run(tmp_path / "runs", {}, seed, 6.0 + 0.01 * seed)
        write_run(tmp_path / "runs", {"model.norm_position": "post"}, seed, 6.2 + 0.02 * seed)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 2
    assert "pass --baseline model.norm_position=VALUE" in capsys.readouterr().err
    argv = [str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--baseline", "model.norm_position=pre"]
    assert report.main(argv) == 0


# -------------------------------------------------------------------------------------------------- report


@pytest.mark.slow
def test_report_tables_hold_the_paired_and_welch_results(suite, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(suite), "--out", str(out), "--baseline", "model.norm_position=pre"]) == 0
    text = (out / "report.md").read_text()
    post = compare(losses_of(("model.norm_position", "post")), losses_of())
    ratio = math.exp(post.ci.mean)
    p_values = [
        compare(losses_of(*o), losses_of()).paired_p
        for o in [(("model.n_head", 16),), (("model.norm_position", "post"),)]
        + [(("model.norm_position", "post"), ("train.warmup_steps", 0))]
    ]
    holm_post = holm(p_values)[1]
    row = next(line for line in table_lines(text) if line.startswith("| post-LN |"))
    assert f"| {ratio:.3f} [" in row
    assert f"| {report.fmt_p(post.paired_p)} ({report.fmt_p(holm_post)}) |" in row
    base_ppl = math.exp(np.mean(LOSSES[()]))
    assert f"| **baseline** | 3/3 | {base_ppl:,.1f} [" in text
    assert "paired t-test" in text and "Welch" in text and "Holm" in text
    assert "0.000" not in text
    for png in ("final_ppl.png", "train_loss.png", "val_ppl.png", "grad_norm.png", "layer_grad_norms.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in text
    assert "measured on a quiet machine" in text and (out / "throughput.png").is_file()


def test_p_values_below_a_thousandth_read_as_an_inequality():
    assert report.fmt_p(1e-7) == "< 0.001" and report.fmt_p(0.0123) == "0.012"


@pytest.mark.slow
def test_throughput_is_left_out_when_the_machine_was_busy_or_unmeasured(tmp_path):
    for loads in [(4.5, 5.0), None]:
        root = write_suite(tmp_path / f"suite-{loads}", loads=loads)
        out = tmp_path / f"report-{loads}"
        assert report.main([str(root), "--out", str(out), "--baseline", "model.norm_position=pre"]) == 0
        text = (out / "report.md").read_text()
        assert "Not shown:" in text and not (out / "throughput.png").exists()
        assert ("busy" if loads else "no load average") in text


@pytest.mark.slow
def test_runs_without_a_test_split_report_validation_only(tmp_path):
    root = write_suite(tmp_path / "suite", with_test=False)
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--baseline", "model.norm_position=pre"]) == 0
    text = (out / "report.md").read_text()
    assert "no test split" in text and "test ppl" not in text


def test_a_time_budgeted_sweep_reports_its_budget_and_the_tokens_each_run_saw(tmp_path):
    root = tmp_path / "suite"
    for overrides, tokens in (({}, 700_000), ({"model.n_head": 16}, 650_000)):
        run_dir = write_run(root, {**overrides, "train.max_minutes": 8}, 1, 6.0)
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "tokens": tokens}))
    assert report.main([str(root), "--out", str(tmp_path / "report"), "--baseline", "model.n_head=4"]) == 0
    text = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "each run trains for 8 minutes" in text and "650,000 to 700,000 per run" in text
    assert "training tokens per run" not in text


def test_a_single_run_is_described_with_its_curves(tmp_path):
    run_dir = write_run(tmp_path / "runs", {}, 1, 5.0)
    out = tmp_path / "report"
    assert report.main([str(run_dir), "--out", str(out)]) == 0  # the command a finished run suggests
    text = (out / "report.md").read_text()
    assert "| **ablation-cpu** | 1/1 | 148.4 (n = 1) |" in text and "described, not compared" in text
    assert (out / "val_ppl.png").is_file() and (out / "train_loss.png").is_file()
    assert not (out / "final_ppl.png").exists()  # no ratio to a baseline to draw


@pytest.mark.slow
def test_a_hugging_face_export_inside_a_run_is_not_read_as_a_run(tmp_path):
    from transformers import GPT2Config

    run_dir = write_run(tmp_path, {}, 1, 6.0)
    GPT2Config(n_layer=2, n_embd=64, n_head=4).save_pretrained(run_dir / "hf")  # what log.export_hf writes
    assert [r.name for r in load_runs([tmp_path])] == [run_dir.name]


def test_failed_and_unfinished_runs_are_listed_and_left_out(suite, tmp_path):
    write_run(suite, {"model.n_head": 16}, 4, 9.0, status="failed")
    run_dir = write_run(suite, {"model.n_head": 16}, 5, 9.0, status="running")
    (run_dir / "summary.json").unlink()  # killed before its first summary
    out = tmp_path / "report"
    assert report.main([str(suite), "--out", str(out), "--baseline", "model.norm_position=pre"]) == 0
    text = (out / "report.md").read_text()
    assert "| 16 heads | 3/5 |" in text
    assert "is failed" in text and "is not started" in text


@pytest.mark.slow
def test_mixed_token_budgets_are_refused_unless_allowed(suite, tmp_path, capsys):
    for seed in SEEDS:
        write_run(suite, {"model.n_head": 1, "train.max_steps": 150}, seed, 6.1 + 0.01 * seed)
    argv = [str(suite), "--out", str(tmp_path / "r"), "--baseline", "model.norm_position=pre"]
    assert report.main(argv) == 2
    err = capsys.readouterr().err
    assert "different training-token budgets" in err and "--allow-mixed-budgets" in err
    assert report.main([*argv, "--allow-mixed-budgets"]) == 0
    assert "allowed by --allow-mixed-budgets" in (tmp_path / "r" / "report.md").read_text()


def test_bad_input_is_a_message_not_a_traceback(suite, tmp_path, capsys):
    assert report.main([str(suite), "--group-by", "model.nope", "--out", str(tmp_path / "r")]) == 2
    assert "model.nope" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (suite / "baseline-s1" / "summary.json").write_text("{")
    assert report.main([str(suite), "--out", str(tmp_path / "r")]) == 2
    assert "summary.json is not valid JSON" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- records


@pytest.mark.slow
def test_records_keep_only_the_compact_files_and_give_the_same_report(suite, tmp_path):
    records = tmp_path / "committed" / "runs"
    from_source, from_records = tmp_path / "a", tmp_path / "b"
    argv = ["--baseline", "model.norm_position=pre"]
    assert report.main([str(suite), "--records", str(records), "--out", str(from_source), *argv]) == 0
    assert sorted(p.name for p in (records / "baseline-s1").iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "summary.json",
    ]
    assert (records / "sweep.json").is_file()
    assert report.main([str(records), "--out", str(from_records), *argv]) == 0
    source_text, records_text = (
        (from_source / "report.md").read_text(),
        (from_records / "report.md").read_text(),
    )
    assert f"`python -m analysis.report {records} --out {from_source} --baseline" in source_text
    assert source_text.replace(str(from_source), str(from_records)) == records_text
    assert copy_records(suite, records) == 12  # a second copy replaces, never accumulates


COMMITTED = sorted(
    p for p in REPO_ROOT.glob("reports/*/report.md") if "Generated from the run records by" in p.read_text()
)


@pytest.mark.slow
@pytest.mark.parametrize("committed", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_reports_regenerate_from_their_committed_records(committed, tmp_path, monkeypatch):
    text = committed.read_text()
    command = next(line for line in text.splitlines() if line.startswith("Generated from the run records by"))
    argv = shlex.split(command.split("`")[1])[3:]
    assert (REPO_ROOT / argv[0]).is_dir(), f"{committed} names records {argv[0]} that are not committed"
    out_at = argv.index("--out") + 1
    argv[out_at] = str(tmp_path / "regenerated")
    monkeypatch.chdir(REPO_ROOT)
    assert report.main(argv) == 0
    assert table_lines((tmp_path / "regenerated" / "report.md").read_text()) == table_lines(text)


# ------------------------------------------------------------------------------------------- suite, notebook


def test_the_ablation_sweeps_plan_24_runs_of_8_variants_baseline_once(tmp_path):
    files = [REPO_ROOT / "sweeps" / f"ablations-{n}.yaml" for n in ("norm", "tying", "heads", "warmup")]
    runs = plan([load_sweep(f) for f in files], tmp_path, "s", None, 0, 1)
    assert len(runs) == 24
    variants = {
        tuple(a for a in r.command if a.startswith(("--model.", "--train.lr", "--train.warmup")))
        for r in runs
    }
    assert len(variants) == 8
    deep = (
        "--model.n_head=4",
        "--model.n_layer=8",
        "--model.norm_position=post",
        "--model.tie_embeddings=True",
    )
    assert (*deep, "--train.lr=0.004", "--train.warmup_steps=0") in variants
    baseline = [
        r for r in runs if "--model.norm_position=pre" in r.command and "--model.n_head=4" in r.command
    ]
    assert len([r for r in baseline if "--model.tie_embeddings=True" in r.command]) == 3


@pytest.mark.slow
def test_notebook_executes_from_the_analysis_folder(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_REPORT_RUNS", str(suite))
    monkeypatch.setenv("MINIGPT_REPORT_OUT", str(tmp_path / "nb"))
    analysis_dir = REPO_ROOT / "analysis"
    outputs = execute_notebook(analysis_dir / "report.ipynb", analysis_dir, tmp_path, monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "nb" / "final_ppl.png").is_file()


def test_the_report_command_copies_nothing_but_records(suite, tmp_path):
    shutil.copytree(suite, tmp_path / "copy")
    (tmp_path / "copy" / "baseline-s1" / "wandb").mkdir()
    (tmp_path / "copy" / "baseline-s1" / "wandb" / "config.json").write_text("{}")
    copy_records(tmp_path / "copy", tmp_path / "records")
    assert not (tmp_path / "records" / "baseline-s1" / "wandb").exists()
    assert not list((tmp_path / "records").glob("**/*.pt"))


def test_lr_sensitivity_draws_the_unigram_line_only_where_it_leaves_the_losses_room(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))

    def unigram_lines(fig) -> list:
        return [line for line in fig.axes[0].lines if list(line.get_ydata()) == [7.02, 7.02]]

    trained = {"a": [(0.004, 1.0, 5.19), (0.008, 1.0, 5.15), (0.016, 1.0, 5.17)]}
    plots.plot_lr_sensitivity(trained, {"a": 0.008}, {"a": "C0"}, 7.02, "m", tmp_path / "x.png")
    fig = figures[-1]
    low, high = fig.axes[0].get_ylim()
    assert low < 5.15 and 5.19 < high < 5.3  # the rates' differences fill the axis
    assert not unigram_lines(fig)
    assert any("unigram level 7.02" in t.get_text() for t in fig.legends[0].get_texts())
    stalled = {"a": [*trained["a"], (0.032, 1.0, 6.98)]}  # a rate that learned nothing
    plots.plot_lr_sensitivity(stalled, {"a": 0.008}, {"a": "C0"}, 7.02, "m", tmp_path / "x.png")
    assert unigram_lines(figures[-1]) and figures[-1].axes[0].get_ylim()[1] > 7.02


def test_loss_curves_add_a_zoomed_second_half_only_when_it_is_too_flat_to_read(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    tokens = np.arange(0, 1100, 100.0)

    def curve(end: float) -> Curve:
        mean = end + 6.0 * np.exp(-tokens / 50)  # from about 11 nats to a slow tail near ``end``
        return Curve(tokens, mean, mean - 0.01, mean + 0.01)

    flat_tail = {"a": curve(5.0), "b": curve(5.03)}
    plots.plot_loss_curves(flat_tail, {"a": "C0", "b": "C1"}, 7.02, "loss", "t", tmp_path / "x.png")
    whole, zoomed = figures[-1].axes[:2]
    assert zoomed.get_xlim()[0] == 500 and zoomed.get_ylim()[1] - zoomed.get_ylim()[0] < 0.1
    assert whole.get_ylim()[1] > 10
    apart = {"a": curve(5.0), "b": curve(8.0)}  # the whole axis already tells them apart
    plots.plot_loss_curves(apart, {"a": "C0", "b": "C1"}, 7.02, "loss", "t", tmp_path / "x.png")
    assert len([ax for ax in figures[-1].axes if ax.get_visible()]) == 1
