"""Read and check a ``main.py`` config before ``um-openood run`` starts the script.

``main.py`` reads its config with OpenOOD's ``setup_config`` (YAML files after ``--config``,
then ``--section.key value`` overrides) and only builds the trainer, where our options are
checked, after the pipeline has created its output folder. :func:`check_script_config` runs
that same ``setup_config`` on the same arguments first, then our option checks for a
``um`` / ``umap`` trainer or postprocessor, so a bad key or value stops before any work in one
line (a ``ValueError``) naming the file or key and what would be valid.
"""
from __future__ import annotations

import difflib
import os
import sys

from um_plugin.openood.registry.names import is_method_name, split_name
from um_plugin.openood.settings.options import TRAINER_NAMES, postprocessor_options, trainer_options
from um_plugin.openood.training.route_checks import check_route1


def reads_config(script: str) -> bool:
    """Whether ``script`` reads its config the way ``main.py`` does (``setup_config``)."""
    try:
        with open(script, encoding="utf-8", errors="replace") as f:
            return "setup_config(" in f.read()
    except OSError:
        return False


def _config_files(args: list) -> list:
    """The values after ``--config`` (or ``--config=a``), up to the next option."""
    files, inside = [], False
    for arg in args:
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
            inside = True
        elif arg == "--config":
            inside = True
        elif arg.startswith("-"):
            inside = False
        elif inside:
            files.append(arg)
    return files


def _overrides(args: list) -> list:
    """``(key, value)`` for each ``--key value`` / ``--key=value`` after the config files."""
    pairs, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--") and not arg.startswith("--config"):
            if "=" in arg:
                key, value = arg[2:].split("=", 1)
                index += 1
            else:
                key, value = arg[2:], args[index + 1] if index + 1 < len(args) else None
                index += 2
            pairs.append((key, value))
        else:
            index += 1
    return pairs


def _merged(files: list):
    """The YAML files merged as ``setup_config`` merges them, without the overrides."""
    from openood.utils.config import Config, merge_configs
    return merge_configs(*[Config(path) for path in files])


def _unknown_key(key: str, files: list) -> str:
    merged = _merged(files)
    keys = list(merged.all_keys())
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = sorted(k.rsplit(".", 1)[-1] for k in keys
                      if (k.rsplit(".", 1)[0] if "." in k else "") == parent)
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"did you mean --{close[0]}? " if close else ""
    where = f"'{parent}' has" if parent else "the top level has"
    names = [os.path.basename(path) for path in files]
    return (f"--{key}: no such key in the config merged from {names} (OpenOOD only overrides "
            f"keys the YAML files define); {hint}{where} {siblings}")


def _explain(exc: Exception, files: list, args: list) -> str:
    """One line saying which argument OpenOOD's config reader refused, and why."""
    pairs = _overrides(args)
    text = " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError):
        return (f"--config file {exc.filename or text!r} not found (cwd {os.getcwd()!r}); "
                "pass existing YAML files")
    if isinstance(exc, KeyError) and exc.args:
        bad = exc.args[0]
        if any(key == bad for key, _ in pairs):
            return _unknown_key(bad, files)
        for key, value in pairs:
            if value == bad:
                return (f"--{key}: {bad!r} is not a boolean; OpenOOD reads true, True, 1, false, "
                        "False or 0")
    if isinstance(exc, ValueError):
        merged = _merged(files)
        for key, value in pairs:
            if value is not None and repr(value) in text and key in merged:
                old = merged[key]
                return (f"--{key}: {value!r} is not a {type(old).__name__}, the type of its "
                        f"YAML value {old!r} ({text})")
    return (f"OpenOOD's setup_config could not read the config from --config {files} and the "
            f"overrides {[f'--{k}' for k, _ in pairs]}: {type(exc).__name__}: {text}")


def read_config(script: str, args: list):
    """``setup_config()`` as ``script`` will call it on ``args``; ValueError (one line) if it fails."""
    files = _config_files(args)
    if not files:
        raise ValueError(f"{os.path.basename(script)} needs --config followed by YAML files "
                         "(dataset, network, pipeline, preprocessor)")
    for path in files:
        if not path.endswith(".yml"):
            raise ValueError(f"--config file {path!r}: OpenOOD reads only YAML files ending in .yml")
        if not os.path.isfile(path):
            raise ValueError(f"--config file {path!r} not found (cwd {os.getcwd()!r}); pass "
                             "existing YAML files")
    from openood.utils.config import setup_config
    saved = sys.argv
    sys.argv = [script, *args]
    try:
        return setup_config()
    except SystemExit as exc:  # its argparse; a clean --config list cannot get here
        raise ValueError(f"{os.path.basename(script)} refused its arguments (exit {exc.code})") from None
    except Exception as exc:  # noqa: BLE001  any reader error, explained in one line
        raise ValueError(_explain(exc, files, args)) from None
    finally:
        sys.argv = saved


def check_methods(config) -> None:
    """Our option checks for a ``um`` / ``umap`` trainer or postprocessor in ``config``."""
    trainer = config.trainer.name if config.trainer is not None else None
    if trainer in TRAINER_NAMES:
        trainer_options(config, trainer)
    check_route1(config)
    section = config.postprocessor
    name = section.name if section is not None else None
    if is_method_name(name):
        mode, _ = split_name(name)
        postprocessor_options(section.postprocessor_args, mode)


def check_script_config(script: str, args: list) -> None:
    """For a script that reads its config like ``main.py``: read it and check our options."""
    if reads_config(script):
        check_methods(read_config(script, args))
