"""Copy a suite's compact run records (no checkpoints, no W&B folders) to where a report can be committed.

    python -m analysis.records runs/sweeps/ablations-cpu reports/ablations-cpu-sweep/runs

For each run directory under SRC: ``config.json``, ``summary.json`` and ``metrics.jsonl``; and the sweep's
``sweep.json``. Run directories already in DST are replaced, so DST holds exactly SRC's runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Collection
from pathlib import Path

from minigpt.storage import atomic_write_bytes

RECORD_FILES = ("config.json", "summary.json", "metrics.jsonl")


def copy_records(src: str | Path, dst: str | Path, names: Collection[str] | None = None) -> int:
    """Copy the records of every run directory under ``src`` (of those named in ``names`` when given) into
    ``dst``; return how many runs."""
    src, dst = Path(src), Path(dst)
    run_dirs = sorted(p.parent for p in src.glob("**/config.json") if "wandb" not in p.parts)
    if names is not None:
        run_dirs = [d for d in run_dirs if d.relative_to(src).parts[0] in names]
    if not run_dirs:
        raise FileNotFoundError(f"no run directories (folders with config.json) under {src}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"records destination {dst} is the run folder itself; name another folder")
    for old in sorted(p.parent for p in dst.glob("*/config.json")):
        shutil.rmtree(old)
    for run_dir in run_dirs:
        for name in RECORD_FILES:
            if (run_dir / name).is_file():
                atomic_write_bytes(dst / run_dir.relative_to(src) / name, (run_dir / name).read_bytes())
    if (src / "sweep.json").is_file():
        atomic_write_bytes(dst / "sweep.json", (src / "sweep.json").read_bytes())
    return len(run_dirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.records", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="a sweep folder (or any folder of run directories)")
    parser.add_argument("dst", help="where the records go, e.g. reports/ablations-cpu-sweep/runs")
    args = parser.parse_args(argv)
    try:
        n = copy_records(args.src, args.dst)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"copied the records of {n} runs to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
