"""Analysis on synthetic run directories: grouping, means, t-intervals, Welch's test, plots, the report, and
the notebook executed top to bottom."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(
    0, str(REPO_ROOT)
)  # analysis/ is a folder of the repository, not part of the installed package

from analysis import report  # noqa: E402
from analysis.runs import load_runs, make_variants  # noqa: E402
from analysis.stats import mean_ci, mean_curve, welch  # noqa: E402

# variant (norm_position, n_head) -> final val/ppl per seed
FINAL_PPL = {
    ("pre", 4): [100.0, 104.0, 102.0],
    ("post", 4): [110.0, 118.0, 114.0],
    ("pre", 1): [101.0, 103.0],
}


def write_run(root: Path, norm: str, heads: int, seed: int, ppl: float, status: str = "finished") -> None:
    run_dir = root / f"{norm}-{heads}-s{seed}"
    run_dir.mkdir(parents=True)
    config = {
        "name": "synthetic",
        "model": {
            "norm_position": norm,
            "n_head": heads,
            "n_layer": 2,
            "n_embd": 32,
            "block_size": 8,
            "dropout": 0.0,
        },
        "data": {"dataset": "wikitext-2-v1"},
        "train": {
            "seed": seed,
            "batch_size": 2,
            "max_steps": 4,
            "lr": 1e-3,
            "warmup_steps": 1,
            "min_lr_ratio": 0.1,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "threads": 1,
            "eval_max_tokens": 0,
        },
        "_run": {"device": "cpu", "precision": "fp32", "params": 1000, "params_non_embedding": 100},
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    history = [
        {
            "step": s,
            "train/loss": 5.0 - s + seed * 0.1,
            "train/grad_norm": 1.0,
            "grad_norm/layer_0": 0.5 * seed,
            "grad_norm/layer_1": 0.25 * seed,
        }
        for s in (1, 2, 3, 4)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    summary = {
        "status": status,
        "final_val/ppl": ppl,
        "final_test/ppl": ppl + 1,
        "tokens_per_sec": 100.0 + seed,
        "train_seconds": 5.0,
        "final_val/tokens": 99,
        "final_test/tokens": 99,
        "final_val/context": 8,
        "final_val/stride": 8,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def synthetic_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (norm, heads), values in FINAL_PPL.items():
        for seed, ppl in enumerate(values, start=1):
            write_run(root, norm, heads, seed, ppl)
    write_run(root, "post", 4, 9, float("nan"), status="failed")
    return root


KEYS = ["model.norm_position", "model.n_head"]


def test_mean_ci_uses_the_t_distribution():
    e = mean_ci([10.0, 12.0, 14.0])
    assert e.mean == 12.0
    assert e.half_width == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0]).half_width)


def test_welch_matches_the_hand_computed_statistic():
    a, b = [110.0, 118.0, 114.0], [100.0, 104.0, 102.0]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    c = welch(a, b)
    assert c.difference == pytest.approx(12.0)
    assert c.p_value == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)


def test_runs_group_by_config_keys_and_label_by_what_varies(synthetic_runs):
    variants = make_variants(load_runs([synthetic_runs]), KEYS)
    by_label = {v.label: v for v in variants}
    assert sorted(by_label) == [
        "norm_position=post, n_head=4",
        "norm_position=pre, n_head=1",
        "norm_position=pre, n_head=4",
    ]
    assert len(by_label["norm_position=post, n_head=4"].runs) == 4  # three finished, one failed
    assert len({v.colour for v in variants}) == 3


def test_analysis_keeps_failed_runs_out_and_picks_the_modal_baseline(synthetic_runs):
    a = report.analyse(load_runs([synthetic_runs]), KEYS)
    assert a.baseline.values == {"model.norm_position": "pre", "model.n_head": 4}
    post = next(v for v in a.variants if v.values["model.norm_position"] == "post")
    assert [r.summary["final_val/ppl"] for r in post.runs] == [110.0, 118.0, 114.0]
    assert [r.status for r in a.unfinished[post.label]] == ["failed"]


def test_mean_curve_averages_runs_at_equal_tokens(synthetic_runs):
    a = report.analyse(load_runs([synthetic_runs]), KEYS)
    curve = mean_curve(a.baseline.runs, "train/loss")
    assert list(curve.tokens) == [16, 32, 48, 64]  # step x batch 2 x context 8
    assert curve.mean[0] == pytest.approx(4.0 + 0.2)  # seeds 1..3 add 0.1 x seed
    assert curve.low[0] < curve.mean[0] < curve.high[0]


def test_report_has_the_right_numbers_and_non_empty_plots(synthetic_runs, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(synthetic_runs), "--group-by", *KEYS, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    e = mean_ci(FINAL_PPL[("post", 4)])
    assert f"| norm_position=post, n_head=4 | 3/4 | {e.mean:,.2f} ± {e.half_width:,.2f}" in text
    p = welch(FINAL_PPL[("post", 4)], FINAL_PPL[("pre", 4)]).p_value
    assert f"| norm_position=post, n_head=4 | +12.00 (+11.8%) | {p:.3f} |" in text
    assert "is failed" in text
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {
        "train_loss.png",
        "final_ppl.png",
        "throughput.png",
        "layer_grad_norms.png",
    }
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    for png in pngs:
        assert f"]({png.name})" in text


def test_report_refuses_an_unknown_group_key(synthetic_runs, tmp_path, capsys):
    assert report.main([str(synthetic_runs), "--group-by", "model.nope", "--out", str(tmp_path / "r")]) == 2
    assert "model.nope" in capsys.readouterr().err


def test_notebook_executes_top_to_bottom(synthetic_runs, tmp_path, monkeypatch):
    import nbclient  # in the test extra: pip install -e .[test]
    import nbformat

    # A kernelspec named python3 that runs this interpreter, found first through JUPYTER_PATH, so the
    # notebook runs in this environment whatever other python3 kernels the machine has.
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MINIGPT_REPORT_RUNS", str(synthetic_runs))
    monkeypatch.setenv("MINIGPT_REPORT_GROUP_BY", " ".join(KEYS))
    monkeypatch.setenv("MINIGPT_REPORT_OUT", str(tmp_path / "nb-report"))
    notebook = nbformat.read(REPO_ROOT / "analysis" / "report.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(REPO_ROOT)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "nb-report" / "report.md").is_file()
