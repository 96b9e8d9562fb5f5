"""Postprocessor names: the one grammar of ours, and the base names OpenOOD knows.

Ours are ``um`` and ``umap`` (:data:`~um_plugin.core.config.MODES`) and ``<mode>_<base>``,
e.g. ``umap_odin``. Every name that starts that way is ours: ``um_`` (no base) is refused in
our words instead of being handed to OpenOOD, which would look for a ``um_.yml`` to download.
"""
from __future__ import annotations

import re
import types

from um_plugin.core.config import MODES

from um_plugin.openood.registry.wrapping import original

# '(umap|um)' tries the longer mode first, so 'umap_x' is ('umap', 'x'), never ('um', 'ap_x')
_NAME = re.compile(f"({'|'.join(sorted(map(re.escape, MODES), key=len, reverse=True))})"
                   r"(?:_(.*))?", re.DOTALL)


def is_method_name(name) -> bool:
    """Whether ``name`` is ours: ``um``, ``umap``, or starts with ``um_`` / ``umap_``."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def split_name(name: str):
    """``'umap_odin'`` -> ``('umap', 'odin')``; ``'um'`` -> ``('um', None)``; a name that is
    not ours, or ``'um_'`` with no base, raises."""
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or match.group(2) == "":
        raise ValueError(f"{name!r} is not a UM postprocessor name; use one of {MODES} or "
                         f"'<mode>_<base>' (e.g. 'umap_ebo')")
    return match.group(1), match.group(2)


def literal_names(func) -> set:
    """String constants of a function: the keys of the registry dict literal inside it."""
    names, stack = set(), [original(func).__code__]
    while stack:
        code = stack.pop()
        consts = list(code.co_consts)
        while consts:
            const = consts.pop()
            if isinstance(const, str) and const.isidentifier():
                names.add(const)
            elif isinstance(const, (tuple, frozenset)):  # keys of a small dict literal
                consts.extend(const)
            elif isinstance(const, types.CodeType):
                stack.append(const)
    return names


def known_postprocessor_names() -> list:
    """Every base postprocessor name OpenOOD knows, from both registries."""
    from openood.evaluation_api import postprocessor as eval_pp
    from openood.postprocessors import utils as pp_utils
    names = set(eval_pp.postprocessors) | literal_names(pp_utils.get_postprocessor)
    return sorted(n for n in names if not is_method_name(n))
