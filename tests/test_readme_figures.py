"""The figures the README quotes are the ones the records hold: the training-step table is the performance
log's (benchmarks/README.md), the CPU check's figures those of its committed table, each quoted ratio the
quotient of the two sides it stands beside, the CPU hour's perplexities its committed run's scores, the
ablation table the study report's, the warmup study's rate table and checks their committed runs', and each
per-seed range, Holm-adjusted p-value and grid score the heads study's README gives its committed runs' and
report's (and each of its grids at least five rates spanning 16x, its winner inside), and
the tying budget study's table, overfitting ranges and rate check its report's and committed runs'."""

import json
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def number(cell: str) -> float:
    """The first number in a table cell, thousands separators and a trailing × or x allowed."""
    return float(re.search(r"\d[\d,]*(?:\.\d+)?", cell).group().replace(",", ""))


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of each row of every Markdown table whose header begins with ``header_start``."""
    lines, rows = text.splitlines(), []
    for start in (i for i, line in enumerate(lines) if line.startswith(header_start)):
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


README_ROWS = table_rows(
    (REPO_ROOT / "README.md").read_text(), "| config | precision ours / HF | MiniGPT tok/s"
)
LOG_ROWS = table_rows(
    (REPO_ROOT / "benchmarks" / "README.md").read_text(),
    "| config | precision ours / HF | MiniGPT tok/s | HF tok/s | ratio | MFU",
)


def test_the_readme_quotes_a_training_step_table():
    assert len(README_ROWS) >= 4 and all(len(row) == 6 for row in README_ROWS)


def test_each_readme_throughput_and_memory_figure_is_in_the_performance_log():
    logged = {
        (number(row[2]), number(row[3]), number(row[4]), number(row[7]), number(row[8]), number(row[9]))
        for row in LOG_ROWS
    }
    for row in README_ROWS:
        memory = re.fullmatch(r"([\d,]+) / ([\d,]+) MB \((\d+\.\d+)×\)", row[5])
        assert memory, row
        quoted = (number(row[2]), number(row[3]), number(row[4]), *(number(g) for g in memory.groups()))
        assert quoted in logged, f"README row {row} is not in benchmarks/README.md"


def test_each_readme_ratio_is_the_quotient_of_its_two_sides():
    for row in README_ROWS:
        ours, theirs, speed = number(row[2]), number(row[3]), number(row[4])
        assert abs(ours / theirs - speed) <= 0.01, row
        mem_ours, mem_theirs, mem_ratio = (
            number(g) for g in re.fullmatch(r"([\d,]+) / ([\d,]+) MB \((\d+\.\d+)×\)", row[5]).groups()
        )
        assert abs(mem_ours / mem_theirs - mem_ratio) <= 0.01, row


CPU_CHECK_ROWS = table_rows((REPO_ROOT / "README.md").read_text(), "| what (fp32, batch 8) | MiniGPT")


def test_each_cpu_check_figure_in_the_readme_is_in_the_committed_check():
    measured = (REPO_ROOT / "benchmarks" / "cpu-check-avx2.md").read_text().replace(",", "")
    assert len(CPU_CHECK_ROWS) >= 6
    for what, *cells in CPU_CHECK_ROWS:
        for figure in re.findall(r"\d[\d,]*(?:\.\d+)?(?= (?:tok/s|s\b|MB|/))", " ".join(cells)):
            if not re.search(rf"(?<![\d.]){re.escape(figure.replace(',', ''))}(?![\d.])", measured):
                raise AssertionError(
                    f"README row {what!r} quotes {figure}, which benchmarks/cpu-check-avx2.md lacks"
                )


def test_each_cpu_check_ratio_is_the_quotient_of_its_two_sides():
    checked = 0
    for what, ours, theirs, ratio in CPU_CHECK_ROWS:
        if not theirs:
            continue
        pairs = zip(
            re.findall(r"[\d,.]+(?= |$)", ours),
            re.findall(r"[\d,.]+(?= |$)", theirs),
            re.findall(r"[\d.]+(?=×)", ratio.split(";")[0]),  # the speed ratios; peak memory follows ";"
            strict=True,
        )
        for a, b, r in pairs:
            assert abs(number(a) / number(b) - float(r)) <= 0.01, what
            checked += 1
        for a, b, r in re.findall(r"([\d,]+) / ([\d,]+) MB \((\d+\.\d+)×\)", ratio):  # peak memory
            assert abs(number(a) / number(b) - float(r)) <= 0.01, what
            checked += 1
    assert checked >= 10


def test_the_readme_rate_check_perplexities_are_the_committed_runs_scores():
    readme = (REPO_ROOT / "README.md").read_text()
    summaries = sorted((REPO_ROOT / "reports" / "ablations-cpu-depth" / "rate-check").glob("*/summary.json"))
    assert len(summaries) == 2
    for path in summaries:
        layers = json.loads((path.parent / "config.json").read_text())["model"]["n_layer"]
        ppl = math.exp(json.loads(path.read_text())["whole_test/loss"])
        assert f"{ppl:.0f} at {layers}" in readme, f"the README does not quote {path.parent.name}'s {ppl:.1f}"


HEADS = REPO_ROOT / "reports" / "ablations-cpu-heads"


def heads_grid(study: dict, seed: int) -> dict[str, dict[float, float]]:
    """Each heads variant's grid runs with ``seed`` in the records, rate -> whole validation loss (the
    study's select_metric)."""
    grid: dict[str, dict[float, float]] = {v["label"]: {} for v in study["variants"]}
    for run in study["runs"]:
        if run["in_grid"] and run["seed"] == seed:
            summary = json.loads((HEADS / "records" / "runs" / run["name"] / "summary.json").read_text())
            grid[run["variant"]][run["lr"]] = summary["whole_val/loss"]
    return grid


def heads_two_seed_choice(study: dict) -> dict[str, float]:
    """Each heads variant's rate with the lowest mean over selection seeds 1 and 6, among those both ran."""
    seed_1, seed_6 = heads_grid(study, 1), heads_grid(study, 6)
    return {
        label: min(seed_6[label], key=lambda lr: seed_1[label][lr] + seed_6[label][lr]) for label in seed_1
    }


def test_the_heads_grid_table_is_every_grid_runs_score_and_each_grid_spans_16x():
    folder = HEADS
    header = "| variant | 0.0005 | 0.001 | 0.002 | 0.004 | 0.008 | 0.016 | 0.032 | 0.064 | 0.128 | chosen |"
    rates = header.strip("|").split("|")[1:-1]
    rows = {cells[0]: cells for cells in table_rows((folder / "README.md").read_text(), header)}
    study = json.loads((folder / "records" / "study.json").read_text())
    chosen = {v["label"]: v["chosen_lr"] for v in study["variants"]}
    assert chosen == heads_two_seed_choice(study)
    grid = heads_grid(study, 1)
    assert sorted(rows) == sorted(grid)
    for label, losses in grid.items():
        cells = rows[label]
        quoted = {float(rate): cell for rate, cell in zip(rates, cells[1:-1], strict=True) if cell}
        assert sorted(quoted) == sorted(losses), f"{label}: the table's rates are not its grid's"
        for lr, loss in losses.items():
            assert number(quoted[lr]) == float(f"{loss:.4f}"), f"{label} at {lr:g}: not its run's {loss:.4f}"
        assert chosen[label] == number(cells[-1]), f"{label}: the last column is not the records' choice"
        best = min(losses, key=losses.get)
        assert quoted[best].startswith("**") and sum(cell.startswith("**") for cell in quoted.values()) == 1
        # the grid: at least five rates spanning 16x, the winners inside it
        assert len(losses) >= 5 and max(losses) / min(losses) >= 16, f"{label}'s grid is narrower"
        for rate in (best, chosen[label]):
            assert min(losses) < rate < max(losses), f"{label}'s rate {rate:g} sits on its grid's edge"


def test_the_heads_second_selection_seed_table_is_each_grids_best_two_and_names_the_moved_choices():
    folder = HEADS
    readme = (folder / "README.md").read_text()
    study = json.loads((folder / "records" / "study.json").read_text())
    chosen = {v["label"]: v["chosen_lr"] for v in study["variants"]}

    seed_1 = heads_grid(study, 1)
    seed_6 = {
        (label, lr): loss for label, losses in heads_grid(study, 6).items() for lr, loss in losses.items()
    }
    assert len(seed_6) == 2 * len(chosen)
    rows = table_rows(readme, "| variant | rate | seed 1 | seed 6 | mean |")
    assert len(rows) == len(seed_6)
    two_seed_choice = {}
    for label, losses in seed_1.items():
        best_two = sorted(sorted(losses, key=losses.get)[:2])  # the rung's keep: 0.4 of five rates
        mine = [row for row in rows if row[0] == label]
        assert [number(row[1].strip("*")) for row in mine] == best_two, f"{label}: not its best two rates"
        means = {}
        for row, lr in zip(mine, best_two, strict=True):
            means[lr] = (losses[lr] + seed_6[label, lr]) / 2
            quoted = [cell.strip("*") for cell in row[2:]]
            assert quoted == [f"{x:.4f}" for x in (losses[lr], seed_6[label, lr], means[lr])], (label, lr)
        two_seed_choice[label] = min(means, key=means.get)
        bold = [number(row[1].strip("*")) for row in mine if row[1].startswith("**")]
        assert bold == [two_seed_choice[label]], f"{label}: the bold rate is not the lower mean"
    section = readme[readme.index("## Choosing on two seeds") :]
    moved = {
        m[0]: (float(m[1]), float(m[2]))
        for m in re.findall(r"\*\*([^*]+)\*\* \(([\d.]+) → ([\d.]+)\)", section)
    }
    one_seed_choice = {label: min(losses, key=losses.get) for label, losses in seed_1.items()}
    assert two_seed_choice == chosen
    assert moved == {
        label: (one_seed_choice[label], lr) for label, lr in chosen.items() if lr != one_seed_choice[label]
    }


def test_the_warmup_rate_choice_table_is_the_committed_grid_runs():
    folder = REPO_ROOT / "reports" / "ablations-cpu-warmup"
    study = json.loads((folder / "records" / "study.json").read_text())
    header = "| variant | 0.0005 | 0.001 | 0.002 | 0.004 | 0.008 | 0.016 | 0.032 | chosen |"
    rates = [float(cell) for cell in header.strip("|").split("|")[1:-1]]
    rows = {cells[0]: cells[1:] for cells in table_rows((folder / "README.md").read_text(), header)}
    chosen = {v["label"]: v["chosen_lr"] for v in study["variants"] if v["lr_grid"]}
    assert rows.keys() == chosen.keys()
    for label, cells in rows.items():
        assert float(cells[-1]) == chosen[label], label
        for rate, cell in zip(rates, cells[:-1], strict=True):
            # seed 1, then seed 2 where the grid gave the rate a second seed
            runs = {
                (r["seed"], r["name"]) for r in study["runs"] if r["variant"] == label and r["lr"] == rate
            }
            summaries = [
                folder / "records" / "runs" / n / "summary.json" for s, n in sorted(runs) if s in (1, 2)
            ]
            losses = [json.loads(path.read_text())["final_val/loss"] for path in summaries]
            assert cell.strip("*") == ", ".join(f"{loss:.4f}" for loss in losses), (label, rate)


def test_the_warmup_checks_outside_the_study_are_quoted_as_their_runs_ended():
    folder = REPO_ROOT / "reports" / "ablations-cpu-warmup"
    readme = (folder / "README.md").read_text()
    # the 8-layer rate check and pre-LN's warmup check
    summaries = sorted(folder.glob("*check*/*/summary.json"))
    assert len(summaries) == 4
    for path in summaries:
        loss = json.loads(path.read_text())["final_val/loss"]
        assert f"{loss:.4f}" in readme, f"the README does not quote {path.parent.name}'s {loss:.4f}"


def cpu_hour_summaries() -> dict[int, dict]:
    """The committed CPU-hour runs' summaries, by their context length."""
    found = {}
    for path in (REPO_ROOT / "reports" / "cpu-hour" / "runs").glob("*/summary.json"):
        config = json.loads((path.parent / "config.json").read_text())
        found[config["model"]["block_size"]] = json.loads(path.read_text())
    return found


def test_the_readme_cpu_hour_perplexities_are_the_committed_runs_scores():
    rows = table_rows((REPO_ROOT / "README.md").read_text(), "| whole split | context 256")
    summaries = cpu_hour_summaries()
    assert sorted(summaries) == [64, 256]
    assert [row[0].split(" (")[0] for row in rows] == ["validation", "test"]
    for row, split in zip(rows, ("val", "test"), strict=True):
        assert number(row[0].split("(")[1]) == summaries[256][f"final_{split}/tokens"], row
        scores = [
            summaries[context][f"final_{split}{kind}/ppl"]
            for context in (256, 64)
            for kind in ("", "_sliding")
        ]
        assert [number(cell) for cell in row[1:5]] == [round(score, 2) for score in scores], row


def test_the_readme_cpu_hour_budgets_are_the_committed_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    for summary in cpu_hour_summaries().values():
        assert f"{summary['step']:,} steps, **{summary['tokens']:,} training tokens**" in readme
        assert f"at {summary['tokens_per_sec']:,.0f} tokens/s" in readme


def test_the_width_128_grid_and_its_rate_claim_are_the_committed_runs_scores():
    folder = HEADS
    readme = " ".join((folder / "README.md").read_text().split())
    runs = folder / "records" / "runs"

    def whole_val(name: str) -> float:
        return json.loads((runs / name / "summary.json").read_text())["whole_val/loss"]

    grid = {
        lr: whole_val(f"8-heads-of-16-width-128_lr-{lr}_seed-1_steps-1024")
        for lr in ("0.002", "0.004", "0.008", "0.016", "0.032")
    }
    assert min(grid, key=grid.get) == "0.004"
    for lr, loss in grid.items():
        assert f"{loss:.4f} at {lr}" in readme, f"the README does not quote width 128's {loss:.4f} at {lr}"
    # against 4 heads' seed 1 at its own 0.016: behind at that rate, ahead at width 128's own
    four_heads = whole_val("pre-ln_lr-0.016_seed-1_steps-1024")
    behind = 100 * (math.exp(grid["0.016"] - four_heads) - 1)
    ahead = 100 * (1 - math.exp(grid["0.004"] - four_heads))
    assert f"{behind:.1f}% *behind* 4 heads' seed 1" in readme and f"against {ahead:.1f}% ahead" in readme


HEADS_BULLET = re.compile(r"^- \*\*(\d+ heads?)( of 16 \(width \d+)?.*?(?=^- |^$)", re.M | re.S)
# "per seed 0.985–1.010" (ratios), "each seed 22-28% worse", "better in all five seeds (by 0.4–1.5%"
SEED_RANGE = re.compile(r"(?:per seed|each seed|by) ([\d.]+)[–-]([\d.]+)(%)?(?: (worse|better))?")


def test_each_heads_variants_per_seed_range_is_its_committed_runs_paired_ratios():
    folder = HEADS
    study = json.loads((folder / "records" / "study.json").read_text())
    chosen = {v["label"]: v["chosen_lr"] for v in study["variants"]}

    def whole_test_loss(label: str) -> dict[int, float]:
        """Each seed's whole-test loss at the variant's chosen rate."""
        runs = [
            r
            for r in study["runs"]
            if r["variant"] == label and r["lr"] == chosen[label] and r["seed"] in study["seeds"]
        ]
        summaries = {r["seed"]: folder / "records" / "runs" / r["name"] / "summary.json" for r in runs}
        return {seed: json.loads(path.read_text())["whole_test/loss"] for seed, path in summaries.items()}

    baseline = whole_test_loss("pre-LN")
    checked = []
    for bullet in HEADS_BULLET.finditer((folder / "README.md").read_text()):
        label = bullet[1] + (bullet[2] + ")" if bullet[2] else "")
        text = " ".join(bullet[0].split())
        quoted = SEED_RANGE.search(text)
        if label not in chosen or quoted is None:
            continue
        low, high, percent, direction = quoted.groups()
        variant = whole_test_loss(label)
        ratios = [math.exp(variant[s] - baseline[s]) for s in variant]  # the seeds both sides ran
        if percent:
            better = direction == "better" or (direction is None and "better in all" in text)
            values = sorted(100 * (1 - r) if better else 100 * (r - 1) for r in ratios)
        else:
            values = sorted(ratios)
        assert (rounds_to(low, values[0]), rounds_to(high, values[-1])) == (True, True), (
            f"{label}: the README says {low}-{high}, its five seeds give {values[0]:.3f}-{values[-1]:.3f}"
        )
        checked.append(label)
    assert len(checked) >= 8, f"found per-seed ranges only for {checked}"


def test_each_heads_variants_holm_p_value_is_its_report_rows():
    folder = HEADS
    rows = table_rows((folder / "report.md").read_text(), "| variant | seeds | test ppl [95% CI]")
    # the Holm-adjusted value stands in parentheses: "0.011 (0.032)"
    holm = {row[0]: {"paired t": row[4], "TOST": row[9]} for row in rows}
    checked = 0
    for bullet in HEADS_BULLET.finditer((folder / "README.md").read_text()):
        label = bullet[1] + (bullet[2] + ")" if bullet[2] else "")
        text = " ".join(bullet[0].split())
        for test, quoted in re.findall(r"(paired t|TOST) Holm(?:-adjusted)? p = ([\d.]+)", text):
            reported = re.search(r"\(([\d.]+)\)", holm[label][test])[1]
            assert rounds_to(quoted, reported), (
                f"{label}: the README's {test} Holm p {quoted}, the report's {reported}"
            )
            checked += 1
    assert checked >= 5


TYING = REPO_ROOT / "reports" / "ablations-cpu-tying-budget"


def report_rows(report: str) -> dict[str, list[str]]:
    """Each variant's cells in a study report's question tables, by variant name (bold baselines unbolded)."""
    rows = table_rows(report, "| variant | seeds | test ppl [95% CI] | ppl ratio")
    return {row[0].replace("**", "").removesuffix(" (baseline)"): row for row in rows}


def test_the_tying_budget_table_is_its_report():
    readme = (TYING / "README.md").read_text()
    header = next(
        line for line in readme.splitlines() if line.startswith("| budget | kept step / stopped at")
    )
    rows = table_rows(readme, header)
    report = (TYING / "report.md").read_text()
    questions, setup = report_rows(report), table_rows(report, "| variant | overrides | steps (warmup)")
    kept = {row[0]: row[3] for row in setup}
    assert [row[0] for row in rows] == ["1/4 epoch", "1 epoch", "4 epochs", "16 epochs"]
    for budget, kept_cell, tied_ppl, ratio, detects in rows:
        tied, untied = questions[f"tied, {budget}"], questions[f"untied, {budget}"]
        seeds = int(untied[1])
        assert f"(mean of {seeds})" in header and f"| {seeds} seeds detect |" in header, (budget, seeds)
        assert tied_ppl == tied[2].split(" [")[0], budget
        quoted = re.fullmatch(r"([\d.]+ \[[\d.]+, [\d.]+\]), p = ([\d.]+)", ratio)
        assert quoted and quoted[1] == untied[3], (budget, ratio, untied[3])
        assert rounds_to(quoted[2], untied[4].split(" (")[0]), (budget, quoted[2], untied[4])
        mde = 100 * (number(untied[7]) - 1)
        assert detects == f"{mde:.{len(detects.partition('.')[2].rstrip('%'))}f}%", (budget, detects, mde)
        tied_kept, untied_kept = kept[f"tied, {budget}"], kept[f"untied, {budget}"]
        expected = tied_kept if tied_kept == untied_kept else f"tied {tied_kept}, untied {untied_kept}"
        assert kept_cell == expected, (budget, kept_cell, expected)


def test_the_tying_budget_overfitting_ranges_are_its_committed_curves():
    """Each tying's rise of the validation estimate from its best to where the 16-epoch run stopped."""
    readme = " ".join((TYING / "README.md").read_text().split())
    quoted = re.search(
        r"validation estimate rises by (\d+\.\d+)[–-](\d+\.\d+) nats in the 16-epoch runs, "
        r"tied's by (\d+\.\d+)[–-](\d+\.\d+)",
        readme,
    )
    assert quoted, "the README no longer says how far each tying's validation estimate rises"
    rises: dict[str, list[float]] = {"untied": [], "tied": []}
    for run in sorted((TYING / "records" / "runs").glob("*-16-epochs_lr-*_seed-*")):
        summary = json.loads((run / "summary.json").read_text())
        if "whole_test/loss" not in summary:  # grid runs at other rates: not scored, not quoted
            continue
        estimates = {
            r["step"]: r["val/loss"]
            for r in map(json.loads, (run / "metrics.jsonl").open())
            if "val/loss" in r
        }
        stopped = summary["early_stop/stopped_at_step"]
        rises[run.name.split("-")[0]].append(estimates[stopped] - estimates[summary["val/best_step"]])
    assert len(rises["tied"]) == len(rises["untied"]) >= 3
    for (low, high), tying in zip(
        (quoted.groups()[:2], quoted.groups()[2:]), ("untied", "tied"), strict=True
    ):
        least, most = min(rises[tying]), max(rises[tying])
        assert (rounds_to(low, least), rounds_to(high, most)) == (True, True), (
            f"{tying}: the README says {low}-{high}, its runs give {least:.3f}-{most:.3f}"
        )


def test_the_tying_rate_check_table_is_the_committed_runs_scores():
    rows = table_rows((TYING / "README.md").read_text(), "| tying | lr | seed 1 | seed 2 | mean |")
    assert len(rows) == 10  # each tying's five rates
    for tying, lr, *cells in rows:
        losses = []
        for seed in (1, 2):
            name = f"{tying}-1-epoch_lr-{lr}_seed-{seed}_steps-128"
            found = [TYING / folder / name / "summary.json" for folder in ("rate-check", "records/runs")]
            (path,) = [f for f in found if f.is_file()]  # made by the check or by the study, not both
            losses.append(json.loads(path.read_text())["final_val/loss"])
        quoted = [f"{loss:.4f}" for loss in (*losses, sum(losses) / 2)]
        assert cells == quoted, (tying, lr, cells, quoted)


STUDIES = (
    "ablations-cpu",
    "ablations-cpu-long",
    "ablations-cpu-tying-budget",
    "ablations-cpu-controls",
    "ablations-cpu-depth",
    "ablations-cpu-warmup",
    "ablations-cpu-heads",
    "ablations-cpu-deep",
    "ablations-cpu-tying-long",
)
TRIPLE = re.compile(r"(\d+\.\d+),? \[(\d+\.\d+), (\d+\.\d+)\]")


def rounds_to(quoted: str, value: str | float) -> bool:
    """Whether ``value`` rounds to the README's ``quoted`` at the README's precision: a computed value as
    Python prints it, a figure copied from a report half up from its printed digits (0.345 to 0.35)."""
    if isinstance(value, str):
        return str(Decimal(value).quantize(Decimal(quoted), ROUND_HALF_UP)) == quoted
    return f"{value:.{len(quoted.partition('.')[2])}f}" == quoted


def test_each_figure_the_readme_quotes_from_the_ablation_study_is_in_its_report():
    rows = table_rows((REPO_ROOT / "README.md").read_text(), "| question (test perplexity")
    # the reports of the CPU, long, tying budget, controls, depth, warmup, heads, deep and tying-long studies
    report = "\n".join((REPO_ROOT / "reports" / d / "report.md").read_text() for d in STUDIES)
    in_report = TRIPLE.findall(report)
    quoted = [(row[0], triple) for row in rows for triple in TRIPLE.findall(row[1])]
    assert len(rows) >= 5 and len(quoted) >= 5
    for question, triple in quoted:
        assert any(all(map(rounds_to, triple, found)) for found in in_report), (
            f"README row {question!r} quotes {triple}, which no study report holds"
        )
    # the test-perplexity cells, rounded as the README rounds them
    perplexities = {f"{number(p):,.0f}" for p in re.findall(r"\| (\d[\d,]*\.\d) \[", report)}
    for row in rows:
        # "824 vs 320" are perplexities; "0/5 vs 5/5" are counts
        for pair in re.findall(r"(?<![\d/])(\d[\d,]{2,}) vs (\d[\d,]{2,})", row[1]):
            for ppl in pair:
                assert ppl in perplexities, f"README row {row[0]!r} quotes perplexity {ppl}: in no report"


def test_the_readme_tokenizing_figures_are_the_committed_measurement():
    readme = (REPO_ROOT / "README.md").read_text()
    measured = (REPO_ROOT / "benchmarks" / "data-prep-avx2.md").read_text()
    quoted = re.search(r"WikiText-2 train to \*\*([\d.]+) s\*\*.*?([\d.]+)× faster", readme, re.S)
    prepare, speedup = quoted.groups()
    assert re.search(rf"read \+ tokenize \+ cache\s*│\s*{re.escape(prepare)} \(", measured), prepare
    assert re.search(rf"own call / encode_batch\s*│\s*{re.escape(speedup)}x", measured), speedup
