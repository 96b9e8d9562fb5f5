"""Checks every refusal test shares (the benchmarks, ``um-openood``, the core): an error is one
line naming what is wrong, and a refused command does no work."""
import re

import pytest


def forbid_work(monkeypatch, module, *names):
    """Make each ``module.<name>`` fail the test if called: a refused command does no work."""
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were validated")
    for name in names:
        monkeypatch.setattr(module, name, no_work)


def one_line(text, *says, prefix=""):
    """``text`` (a message, or a stream ending in a newline) is one line that starts with
    ``prefix`` and contains each of ``says`` (so no traceback); the line, without its newline."""
    line = text[:-1] if text.endswith("\n") else text
    assert line and "\n" not in line and line.startswith(prefix), text
    for part in says:
        assert part in line, (part, line)
    return line


def one_line_error(capsys, prog, *says):
    """What ``prog`` wrote to stderr: exactly one ``<prog>: error: ...`` line saying each of
    ``says``."""
    err = capsys.readouterr().err
    assert err.endswith("\n"), err
    return one_line(err, *says, prefix=f"{prog}: error: ")


def raises_one_line(call, *patterns, errors=(ValueError, FileNotFoundError)):
    """Run ``call``; it must raise one of ``errors`` whose message is one line matching each
    regular expression in ``patterns``; the message."""
    with pytest.raises(errors) as caught:
        call()
    message = one_line(str(caught.value))
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return message
