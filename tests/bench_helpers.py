"""Checks the benchmark commands' tests share: a refused command is one line, before any work."""


def forbid_work(monkeypatch, module, *names):
    """Make each ``module.<name>`` fail the test if called: a refused command does no work."""
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were validated")
    for name in names:
        monkeypatch.setattr(module, name, no_work)


def one_line_error(capsys, prog):
    """What ``prog`` wrote to stderr: exactly one ``<prog>: error: ...`` line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    return err
