"""How our wrappers over OpenOOD's functions point back at the function they wrap.

A leaf (no other module of the adapter, no OpenOOD import): ``register`` marks each wrapper
it installs, and ``spawn``, the base-method builder and the registry reader look through it.
"""
from __future__ import annotations

WRAPPED = "__um_plugin_wraps__"  # attribute on our wrappers pointing at OpenOOD's original


def original(func):
    """OpenOOD's own function behind one of our wrappers (or ``func`` itself)."""
    return getattr(func, WRAPPED, func)
