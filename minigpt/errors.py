"""The one error type for a bad configuration, and the one way a configuration rule is enforced.

It lives apart from ``config.py`` so that the config dataclasses of ``model.py`` and ``lora.py``, which
``config.py`` composes, check their fields the same way without importing it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad experiment file, override key or value. The message says what is wrong and how to fix it."""


def check(condition: bool, key: str, message: str) -> None:
    """``ConfigError("<key>: <message>")`` unless ``condition``. ``key`` is the dotted name the user sets
    (``train.lr``); ``message`` says what is wrong and what fits."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def check_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def first_line(error: BaseException) -> str:
    """An exception's first message line, or its type's name when it has no message: enough to say what went
    wrong in a one-line error without the library's multi-line explanation."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
