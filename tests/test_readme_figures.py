"""The training-step figures the README quotes are the ones the performance log records
(benchmarks/README.md), and each quoted ratio is the quotient of the two sides it stands beside."""

import re
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
