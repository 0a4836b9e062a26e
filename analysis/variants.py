"""Variants: groups of runs that differ only in seed, one of them the baseline, each labelled by what differs
from the baseline ("post-LN, no warmup") and given a colour that every plot uses."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analysis.runs import Run, RunsError, group_runs

BASELINE_COLOUR = "black"
PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
)
LABEL_ORDER = (
    "model.n_layer",
    "model.n_embd",
    "model.block_size",
    "train.lr",
    "model.norm_position",
    "train.warmup_steps",
    "model.tie_embeddings",
    "model.n_head",
)
"""Keys in the order a label names them (size, then optimisation, then architecture); others follow."""


@dataclass
class Variant:
    values: dict[str, Any]
    runs: list[Run]
    label: str
    colour: str
    is_baseline: bool = False


def short_float(x: float) -> str:
    """``0.004`` -> ``4e-3``: a learning rate as people write it."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def describe(key: str, value: Any) -> str:
    """One config value as a reader would name it: ``post-LN``, ``no warmup``, ``16 heads``."""
    name = key.rsplit(".", 1)[-1]
    if key == "model.norm_position":
        return f"{value}-LN"
    if key == "train.warmup_steps":
        return "no warmup" if value == 0 else f"warmup {value}"
    if key == "model.tie_embeddings":
        return "tied embeddings" if value else "untied embeddings"
    if key == "model.n_head":
        return f"{value} head" + ("" if value == 1 else "s")
    if key == "model.n_layer":
        return f"{value} layer" + ("" if value == 1 else "s")
    if key == "model.n_embd":
        return f"width {value}"
    if key == "train.lr":
        return f"lr {short_float(value)}"
    if isinstance(value, float):
        return f"{name} {short_float(value)}"
    return f"{name} {value}"


def _label_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in LABEL_ORDER if k in keys] + [k for k in keys if k not in LABEL_ORDER]


def label_against(values: dict[str, Any], baseline: dict[str, Any]) -> str:
    """What ``values`` change from ``baseline``, in a fixed order; ``baseline`` when nothing."""
    changed = [describe(k, values[k]) for k in _label_keys(list(values)) if values[k] != baseline[k]]
    return ", ".join(changed) or "baseline"


def baseline_values(groups: Sequence[dict[str, Any]], wanted: dict[str, str]) -> dict[str, Any]:
    """The baseline: ``wanted`` (key=value strings from ``--baseline``) for the keys it names, else each
    key's most common value over the variants. A tie for most common is an error naming the key."""
    keys = list(groups[0])
    unknown = [k for k in wanted if k not in keys]
    if unknown:
        raise RunsError(f"--baseline names {', '.join(unknown)}, which is not among the grouping keys {keys}")
    spec: dict[str, Any] = {}
    for key in keys:
        counts = Counter(json.dumps(g[key]) for g in groups)
        if key in wanted:
            matching = [g[key] for g in groups if str(g[key]) == wanted[key]]
            if not matching:
                values = sorted({str(g[key]) for g in groups})
                raise RunsError(f"--baseline {key}={wanted[key]} matches no variant; it takes {values}")
            spec[key] = matching[0]
            continue
        (top, n), *rest = counts.most_common()
        if rest and rest[0][1] == n:
            tied = [json.loads(v) for v, m in counts.items() if m == n]
            raise RunsError(
                f"{key} has no single most common value ({tied} are tied), so the baseline is ambiguous; "
                f"pass --baseline {key}=VALUE"
            )
        spec[key] = json.loads(top)
    if spec not in list(groups):
        raise RunsError(f"no variant has the baseline's values {spec}; name it with --baseline key=value ...")
    return spec


def make_variants(
    runs: Sequence[Run], keys: Sequence[str], wanted: dict[str, str] | None = None
) -> list[Variant]:
    """Group ``runs`` by ``keys``; the baseline first, then the others in order of their labels."""
    groups = group_runs(runs, keys)
    values = [dict(zip(keys, g, strict=True)) for g in groups]
    base = baseline_values(values, wanted or {})
    variants = [
        Variant(v, members, label_against(v, base), "", v == base)
        for v, members in zip(values, groups.values(), strict=True)
    ]
    variants.sort(key=lambda v: (not v.is_baseline, v.label))
    for n, v in enumerate(variants):
        v.colour = BASELINE_COLOUR if v.is_baseline else PALETTE[(n - 1) % len(PALETTE)]
    return variants
