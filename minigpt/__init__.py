"""MiniGPT: a from-scratch GPT-2-style transformer for small research experiments."""

from minigpt.model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
