"""Train, evaluate and log one experiment.

    python run.py experiments/baseline.py [--key=value ...] [--resume=RUN_DIR]
    python run.py --resume=RUN_DIR [--key=value ...]

Overrides use dotted names (``--train.lr=1e-3``) or unique bare names (``--lr=1e-3``), the form
``wandb agent`` passes. ``python run.py [FILE] --help`` lists every key with its type, its default (the
file's value when a file is given) and what it does. Experiment files are Python and are
executed: run only files you trust.

Exit codes: 0 the run finished; 2 a usage error (a bad key, value, file or checkpoint: one line, nothing
trained); 3 the run diverged (a non-finite loss or gradient; its summary.json says "diverged"); 130
interrupted (Ctrl-C; resume from its checkpoint); 1 anything unexpected (with a traceback).
"""

from __future__ import annotations

import sys

from minigpt.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    describe_keys,
    load_experiment,
    parse_overrides,
    variant_label,
)


def main(argv: list[str]) -> int:
    if not argv or "-h" in argv or "--help" in argv:
        print(__doc__)
        experiment = argv[0] if argv and not argv[0].startswith("-") else None
        try:
            print("Keys:\n" + describe_keys(load_experiment(experiment) if experiment else None))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    from minigpt.checkpoint import CheckpointError, load_checkpoint
    from minigpt.data import DataError
    from minigpt.tracking import EXIT_CODES
    from minigpt.train import NonFiniteLossError, RunInterrupted, run

    try:
        experiment = None if argv[0].startswith("--") else argv[0]
        overrides = parse_overrides(argv[1:] if experiment else argv)
        resume = overrides.pop("resume", None)
        saved = load_checkpoint(resume) if resume is not None else None
        if experiment is not None:
            base = load_experiment(experiment)
            config = apply_overrides(base, overrides)
            if not config.log.group:  # W&B's group: the variant, named by what the command line changes
                config = apply_overrides(config, {"log.group": variant_label(base, config)})
        elif saved is not None:
            config = apply_overrides(ExperimentConfig.from_dict(saved["config"]), overrides)
        else:
            raise ConfigError(
                "name an experiment file (python run.py experiments/tiny.py) or --resume=RUN_DIR"
            )
        run(config, resume=saved, command=[sys.executable, *sys.argv])
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"diverged: {e}", file=sys.stderr)
        return EXIT_CODES["diverged"]
    except RunInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except KeyboardInterrupt:
        print("\ninterrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
