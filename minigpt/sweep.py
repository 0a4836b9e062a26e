"""Run a W&B sweep file locally, without a W&B server.

    python -m minigpt.sweep sweeps/ablations-norm.yaml [more.yaml ...] [--parallel N] [--threads T]
        [--sweep-id ID] [--out-dir runs/sweeps] [--count K] [--seed S] [--dry-run]

The same YAML works with ``wandb sweep FILE`` + ``wandb agent ID``. Here:

- ``grid`` is the Cartesian product of every parameter's values, in the order W&B's sweeps library
  enumerates it: parameters sorted by name, the last name varying fastest (``itertools.product``);
  ``int_uniform`` counts as ``range(min, max + 1)`` and ``q_uniform`` as ``numpy.arange(min, max, q)``.
- ``random`` draws ``--count`` (or the file's ``run_cap``) assignments from the declared distributions with
  a seeded generator, so a restart with the same ``--seed`` draws the same runs.
- ``bayes`` needs the W&B server's model of past results and is refused.

Each run's command is the file's ``command`` list with ``${env}``, ``${interpreter}``, ``${program}``,
``${args}``, ``${args_no_hyphens}``, ``${args_no_boolean_flags}`` and ``${args_json}`` substituted as the
W&B agent does (``--name=value`` with Python's ``str`` of the value, parameters sorted by name), except
that ``${interpreter}`` is this Python rather than ``python`` from ``PATH``. The runner then appends
``--log.out_dir``, ``--log.run_name``, ``--log.sweep`` (and ``--train.threads``), so the program must take
``--key=value`` overrides (and ``--resume=RUN_DIR``) the way ``run.py`` does. Runs go to
``<out-dir>/<sweep-id>/<run name>/`` with ``WANDB_MODE=offline`` and no ``WANDB_SWEEP_ID``: the sweep's name
travels as a config value and W&B tag, not as a W&B sweep id that no server knows, so ``wandb sync`` uploads
each run into its project with its own id. The sweep's state is kept in ``<out-dir>/<sweep-id>/sweep.json``
(every run made in that folder, by this invocation or an earlier one), with each run's one-minute load
average at its start and end (``load_start``, ``load_end``), to judge whether its throughput was measured on
a quiet machine. A restart skips runs whose ``summary.json`` says ``finished`` or ``diverged`` (a non-finite
loss is an outcome of its settings: resumed, it would meet the same step again; delete its directory to run it
afresh) and continues a run stopped part-way from its last checkpoint (``--resume``); a run that fails is
recorded as failed and the sweep carries on. Several files given together share one sweep id and one queue,
and a run that two files both define (same name, same changes to the same experiment) runs once.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minigpt import checkpoint
from minigpt.config import (
    REPLICATE,
    ConfigError,
    ExperimentConfig,
    all_keys,
    check_type,
    convert,
    key_roles,
    load_experiment,
    resolve_key,
    short_key,
)
from minigpt.storage import atomic_write_json

METHODS = ("grid", "random", "bayes")
MAX_NAME = 120
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


class SweepError(ValueError):
    """A sweep file or option the local runner cannot use; the message says why."""


@dataclass
class Sweep:
    path: Path
    method: str
    parameters: dict[str, dict[str, Any]]
    """Parameter name -> its W&B spec (``value``, ``values``, or a ``distribution`` with its bounds)."""
    command: list[str]
    program: str
    run_cap: int | None = None
    metric: dict[str, Any] = field(default_factory=dict)
    """The metric a W&B server optimises (``name``, ``goal``); the local runner only checks its form."""


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a W&B sweep YAML."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with method, parameters and program/command")
    method = spec.get("method")
    if method not in METHODS:
        raise SweepError(f"{path}: method must be one of {', '.join(METHODS)}, got {method!r}")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: parameters must be a non-empty mapping of name -> spec")
    for name, param in parameters.items():
        _check_parameter(path, name, param)
    command = spec.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise SweepError(f"{path}: command must be a list of strings")
    program = spec.get("program")
    if "${program}" in command and not program:
        raise SweepError(f"{path}: the command uses ${{program}} but no program is set")
    run_cap, metric = spec.get("run_cap"), spec.get("metric", {})
    if metric and not (isinstance(metric, dict) and isinstance(metric.get("name"), str)):
        raise SweepError(f"{path}: metric must be a mapping with a name (and a goal), e.g. final_val/loss")
    return Sweep(path, method, parameters, command, program or "", run_cap, metric)


_DISTRIBUTIONS = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max"),
    "log_uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max"),
    "normal": (),
    "log_normal": (),
}


def distribution_of(param: dict[str, Any]) -> str:
    """The W&B distribution a parameter spec declares or implies (``value`` -> constant, ``values`` ->
    categorical, ``min``/``max`` -> int_uniform when both are integers, else uniform)."""
    if "distribution" in param:
        return param["distribution"]
    if "value" in param:
        return "constant"
    if "values" in param:
        return "categorical"
    if "min" in param and "max" in param:
        both_int = all(isinstance(param[k], int) and not isinstance(param[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    return "unknown"


def _check_parameter(path: Path, name: str, param: Any) -> None:
    if not isinstance(param, dict):
        raise SweepError(f"{path}: parameter {name} must be a mapping such as {{values: [...]}}")
    if "parameters" in param:
        raise SweepError(f"{path}: parameter {name}: nested parameters are not supported by the local runner")
    kind = distribution_of(param)
    if kind not in _DISTRIBUTIONS:
        raise SweepError(
            f"{path}: parameter {name}: unsupported distribution {kind!r} "
            f"(supported: {', '.join(_DISTRIBUTIONS)})"
        )
    missing = [k for k in _DISTRIBUTIONS[kind] if k not in param]
    if missing:
        raise SweepError(f"{path}: parameter {name}: distribution {kind} needs {', '.join(missing)}")
    if kind == "categorical" and (not isinstance(param["values"], list) or not param["values"]):
        raise SweepError(f"{path}: parameter {name}: values must be a non-empty list")


# --------------------------------------------------------------------------------------------- assignments


def grid_axis(sweep: Sweep, name: str) -> list[Any]:
    """The values grid search takes for one parameter, as W&B's sweeps library lists them."""
    param = sweep.parameters[name]
    kind = distribution_of(param)
    if kind == "constant":
        return [param["value"]]
    if kind == "categorical" and "probabilities" not in param:
        return param["values"]
    if kind == "int_uniform":
        return list(range(param["min"], param["max"] + 1))
    if kind == "q_uniform":
        q = param.get("q", 1)
        return [param["min"] + i * q for i in range(math.ceil((param["max"] - param["min"]) / q))]
    raise SweepError(
        f"{sweep.path}: grid search takes value, values (without probabilities), int_uniform or q_uniform; "
        f"{name} is {kind}"
    )


def grid_assignments(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the parameters' values: names sorted, the last name varying fastest."""
    names = sorted(sweep.parameters)
    axes = [grid_axis(sweep, name) for name in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def sample_value(param: dict[str, Any], rng: random.Random) -> Any:
    """One draw from a parameter's distribution, following W&B's definitions (``log_uniform`` takes its
    bounds as natural logarithms, ``log_uniform_values`` as values; ``q`` rounds to a multiple of q)."""
    kind = distribution_of(param)
    q = param.get("q", 1)
    if kind == "constant":
        return param["value"]
    if kind == "categorical":
        return rng.choices(param["values"], weights=param.get("probabilities"))[0]
    if kind == "int_uniform":
        return rng.randint(param["min"], param["max"])
    if kind == "uniform":
        return rng.uniform(param["min"], param["max"])
    if kind == "q_uniform":
        return round(rng.uniform(param["min"], param["max"]) / q) * q
    if kind == "log_uniform":
        return math.exp(rng.uniform(param["min"], param["max"]))
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(param["min"]), math.log(param["max"])))
    if kind == "q_log_uniform_values":
        return round(math.exp(rng.uniform(math.log(param["min"]), math.log(param["max"]))) / q) * q
    if kind == "normal":
        return rng.gauss(param.get("mu", 0.0), param.get("sigma", 1.0))
    if kind == "log_normal":
        return math.exp(rng.gauss(param.get("mu", 0.0), param.get("sigma", 1.0)))
    raise SweepError(f"unsupported distribution {kind!r}")


def random_assignments(sweep: Sweep, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = sorted(sweep.parameters)
    return [{name: sample_value(sweep.parameters[name], rng) for name in names} for _ in range(count)]


def assignments(sweep: Sweep, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    if sweep.method == "bayes":
        raise SweepError(
            f"{sweep.path}: method bayes chooses each run from the results of earlier runs, which needs the "
            "W&B server: run it with `wandb sweep` + `wandb agent`, or use grid or random locally"
        )
    if sweep.method == "grid":
        return grid_assignments(sweep)
    count = count or sweep.run_cap
    if not count:
        raise SweepError(f"{sweep.path}: random search runs forever on W&B; give --count or run_cap")
    return random_assignments(sweep, count, seed)


# ------------------------------------------------------------------------------------------------ commands


def format_args(assignment: dict[str, Any]) -> dict[str, list[str]]:
    """The W&B agent's argument forms for one assignment (values formatted with Python's ``str``)."""
    flags = [f"--{name}={value}" for name, value in assignment.items()]
    no_booleans = [
        (f"--{name}" if value else None) if isinstance(value, bool) else f"--{name}={value}"
        for name, value in assignment.items()
    ]
    return {
        "args": flags,
        "args_no_hyphens": [f"{name}={value}" for name, value in assignment.items()],
        "args_no_boolean_flags": [f for f in no_booleans if f is not None],
        "args_json": [json.dumps(assignment)],
    }


def build_command(sweep: Sweep, assignment: dict[str, Any]) -> list[str]:
    """The sweep's ``command`` with W&B's macros substituted: one argument list, no shell."""
    macros = {"env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [sweep.program]}
    macros.update(format_args(assignment))
    command: list[str] = []
    for item in sweep.command:
        match = re.fullmatch(r"\$\{(\w+)\}", item)
        if match is None:
            command.append(item)
        elif match.group(1) in macros:
            command.extend(macros[match.group(1)])
        else:
            raise SweepError(f"{sweep.path}: unknown macro {item} in command")
    return command


def base_experiment(sweep: Sweep) -> ExperimentConfig:
    """The experiment the sweep's runs start from: the first experiment file its ``command`` names besides
    the program (``experiments/ablations/cpu_base.py``), else the config's defaults."""
    literals = [item for item in sweep.command if not re.fullmatch(r"\$\{\w+\}", item)]
    path = next((item for item in literals if item.endswith(".py")), None)
    if path is None:
        return ExperimentConfig()
    try:
        return load_experiment(path)
    except ConfigError as e:
        raise SweepError(f"{sweep.path}: the command's experiment: {e}") from None


@dataclass(frozen=True)
class Change:
    """One parameter's value where it differs from the base experiment (or where no base value is known)."""

    label: str
    """The bare field name where it is unique (``lr``), else the dotted key; a parameter that is no config
    key (a program other than ``run.py``) as the file spells it."""
    value: Any
    replicate: bool = False
    """The seed: named in every run, last, and not a difference in the experiment."""


def differences(base: ExperimentConfig, assignment: dict[str, Any]) -> list[Change]:
    """The parameters of ``assignment`` that change ``base`` (the seed always), the experiment's keys first in
    dotted order and the seed last. A parameter that is no config key always counts: its base is unknown."""
    keys, roles = all_keys(), key_roles()
    found: list[tuple[tuple[bool, str], Change]] = []
    for name, value in assignment.items():
        dotted = _resolve_or_none(name)
        if dotted is None:
            found.append(((False, name), Change(name, value)))
            continue
        try:
            typed = convert(dotted, value, keys[dotted]) if isinstance(value, str) else value
            typed = check_type(dotted, typed, keys[dotted])
        except ConfigError as e:
            raise SweepError(f"parameter {name}: {e}") from None
        current: Any = base
        for part in dotted.split("."):
            current = getattr(current, part)
        replicate = roles[dotted] == REPLICATE
        if typed != current or replicate:
            label = short_key(dotted)
            found.append(((replicate, dotted), Change(label, value, replicate)))
    return [change for _, change in sorted(found, key=lambda f: f[0])]


def _resolve_or_none(key: str) -> str | None:
    try:
        return resolve_key(key)
    except ConfigError:
        return None


def run_name(sweep: Sweep, assignment: dict[str, Any], index: int, base: ExperimentConfig) -> str:
    """Grid runs are named by what they change in the experiment they start from (``base``), the seed last:
    ``n_head-1_seed-2``, and ``base_seed-1`` for the base itself. A value equal to the base's leaves the name
    out, so a sweep file may list or omit such parameters, the same run in two files gets the same name, and
    a new sweep file renames no run. Random runs are named by their index in the seeded sequence."""
    if sweep.method != "grid":
        return f"trial-{index:03d}"
    changes = differences(base, assignment)
    parts = [f"{c.label}-{c.value}" for c in changes]
    if all(c.replicate for c in changes):
        parts.insert(0, "base")
    name = re.sub(r"[^A-Za-z0-9_.=-]", "", "_".join(parts))
    if len(name) > MAX_NAME:  # file systems cap names at 255 bytes; a hash keeps long names distinct
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


# ------------------------------------------------------------------------------------------------- running


@dataclass
class PlannedRun:
    name: str
    command: list[str]
    status: str = "pending"
    """pending, running, finished or diverged (both skipped on restart), or failed."""
    returncode: int | None = None
    seconds: float | None = None
    load_start: float | None = None
    """The one-minute load average when the run started (``load_end``: when it ended)."""
    load_end: float | None = None
    cpu_user_s: float | None = None
    """CPU time the run's process (and the processes it waited for) spent in user code and in the kernel."""
    cpu_sys_s: float | None = None


def plan(
    sweeps: list[Sweep], out_dir: Path, sweep_id: str, count: int | None, seed: int, threads: int
) -> list[PlannedRun]:
    """The runs of all ``sweeps``, the files taken in turn (first run of each, then the second, ...), a run
    that several files define once."""
    per_file = []
    for sweep in sweeps:
        base = base_experiment(sweep)
        file_runs = []
        for index, assignment in enumerate(assignments(sweep, count, seed)):
            name = run_name(sweep, assignment, index, base)
            extra = [f"--log.out_dir={out_dir / sweep_id}", f"--log.run_name={name}"]
            extra.append(f"--log.sweep={sweep_id}")
            if threads:
                extra.append(f"--train.threads={threads}")
            # Runs of one name are one run when they start from the same command and change the same things
            # (a grid file may spell out base values that another leaves out); random trials must match.
            same_as = (build_command(sweep, {}), differences(base, assignment))
            if sweep.method != "grid":
                same_as = (build_command(sweep, assignment), [])
            file_runs.append((PlannedRun(name, build_command(sweep, assignment) + extra), same_as))
        per_file.append(file_runs)
    runs: dict[str, tuple[PlannedRun, Any]] = {}
    for item in itertools.chain.from_iterable(itertools.zip_longest(*per_file)):
        if item is None:
            continue
        r, same_as = item
        if r.name in runs and runs[r.name][1] != same_as:
            earlier = runs[r.name][0].command
            raise SweepError(f"two runs are named {r.name} but differ: {earlier} vs {r.command}")
        runs.setdefault(r.name, (r, same_as))
    return [r for r, _ in runs.values()]


def load_average() -> float | None:
    """The one-minute load average (None where the system does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


OUTCOMES = ("finished", "diverged")
"""The statuses a run ends in for good: a restart skips it."""


def run_status(run_dir: Path) -> str | None:
    """What the run's ``summary.json`` says it came to (None when it has none)."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def is_finished(run_dir: Path) -> bool:
    return run_status(run_dir) == "finished"


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def recorded_runs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """What ``sweep.json`` in ``sweep_dir`` says of each run, by name: the runner writes a run's outcome, time
    and CPU time there the moment it ends, so it outlives a stop that its caller's own records do not."""
    try:
        runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
        return {r["name"]: r for r in runs}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class SweepRunner:
    """Keeps up to ``parallel`` runs going, records each outcome in ``sweep.json`` as it happens."""

    def __init__(
        self,
        runs: list[PlannedRun],
        sweep_dir: Path,
        parallel: int,
        threads: int,
        finished: Callable[[str], bool] | None = None,
    ) -> None:
        self.runs, self.sweep_dir, self.parallel, self.threads = runs, sweep_dir, parallel, threads
        self.finished = finished or (lambda name: is_finished(sweep_dir / name))
        """Whether the job of that name has done its work (default: its run directory says finished)."""
        self.state_path = sweep_dir / "sweep.json"
        ours = {r.name for r in runs}
        # Another invocation into this folder (a study's next batch) keeps the records of the runs it left.
        self.earlier = [e for name, e in recorded_runs(sweep_dir).items() if name not in ours]

    def save_state(self) -> None:
        runs = self.earlier + [vars(r) for r in self.runs]
        atomic_write_json(
            self.state_path, {"sweep_id": self.sweep_dir.name, "runs": runs, "updated": time.time()}
        )

    def child_env(self) -> dict[str, str]:
        # Without a server no W&B sweep exists: a sweep id here would make the run unsyncable.
        env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID")}
        env["WANDB_MODE"] = "offline"
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def command_of(self, r: PlannedRun) -> list[str]:
        """The run's command; a run that an earlier start left with checkpoints continues from its last one
        (run.py refuses to start afresh over them), so a stopped suite loses at most ``ckpt_interval``
        steps of it."""
        run_dir = self.sweep_dir / r.name
        if not checkpoint.list_checkpoints(run_dir):
            return r.command
        return [*r.command, f"--resume={run_dir}"]

    def run(self) -> list[PlannedRun]:
        for r in self.runs:
            if self.finished(r.name):
                r.status = "finished"
                print(f"[sweep] skip {r.name}: already finished")
            elif run_status(self.sweep_dir / r.name) == "diverged":
                r.status = "diverged"
                print(f"[sweep] skip {r.name}: it diverged (delete {self.sweep_dir / r.name} to rerun it)")
        queue = [r for r in self.runs if r.status not in OUTCOMES]
        active: dict[str, tuple[PlannedRun, subprocess.Popen, float, Any]] = {}
        log_dir = self.sweep_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.save_state()
        # A background job started from a script ignores SIGINT, so stop on SIGTERM too, ending the runs.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while queue or active:
                while queue and len(active) < self.parallel:
                    r = queue.pop(0)
                    command = self.command_of(r)
                    log = open(log_dir / f"{r.name}.log", "a")  # noqa: SIM115 (closed when the run ends)
                    print(f"[sweep] start {r.name}: {' '.join(command)}", flush=True)
                    proc = subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, env=self.child_env()
                    )
                    r.status, r.load_start = "running", load_average()
                    active[r.name] = (r, proc, time.monotonic(), log)
                    self.save_state()
                time.sleep(0.2)
                for name, (r, proc, started, log) in list(active.items()):
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # wait4, unlike poll, gives CPU time
                    if pid == 0:
                        continue
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    r.cpu_user_s, r.cpu_sys_s = round(usage.ru_utime, 1), round(usage.ru_stime, 1)
                    log.close()
                    r.returncode, r.seconds = proc.returncode, round(time.monotonic() - started, 1)
                    r.load_end = load_average()
                    if proc.returncode == 0 and self.finished(r.name):
                        r.status = "finished"
                    elif run_status(self.sweep_dir / r.name) == "diverged":
                        r.status = "diverged"
                    else:
                        r.status = "failed"
                    print(f"[sweep] {r.status} {r.name} (rc {r.returncode}, {r.seconds}s)", flush=True)
                    del active[name]
                    self.save_state()
        finally:
            for r, proc, _, log in active.values():
                proc.terminate()
                proc.wait()
                log.close()
                r.status = "failed"
            if active:
                self.save_state()
        return self.runs


def format_table(runs: list[PlannedRun]) -> str:
    width = max(len(r.name) for r in runs)
    lines = [f"{'run':<{width}}  {'status':<8}  {'rc':>4}  {'seconds':>8}"]
    for r in runs:
        rc = "" if r.returncode is None else str(r.returncode)
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(f"{r.name:<{width}}  {r.status:<8}  {rc:>4}  {seconds:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigpt.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="W&B sweep YAML files")
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per run (default: cores // parallel)"
    )
    parser.add_argument("--sweep-id", default="", help="default: the first file's name without .yaml")
    parser.add_argument("--out-dir", default="runs/sweeps")
    parser.add_argument("--count", type=int, default=None, help="runs to draw for random search")
    parser.add_argument("--seed", type=int, default=0, help="seed for random search")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: cores // parallel), got {args.threads}")
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.parallel)
    if args.parallel * threads > cores:
        print(f"[sweep] warning: {args.parallel} x {threads} threads exceed {cores} cores", file=sys.stderr)
    try:
        sweeps = [load_sweep(f) for f in args.files]
        sweep_id = args.sweep_id or sweeps[0].path.stem
        runs = plan(sweeps, Path(args.out_dir), sweep_id, args.count, args.seed, threads)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for r in runs:
            print(" ".join(r.command))
        return 0
    print(f"[sweep] {sweep_id}: {len(runs)} runs, {args.parallel} at a time, {threads} thread(s) each")
    finished = SweepRunner(runs, Path(args.out_dir) / sweep_id, args.parallel, threads).run()
    print(format_table(finished))
    return 0 if all(r.status == "finished" for r in finished) else 1


if __name__ == "__main__":
    sys.exit(main())
