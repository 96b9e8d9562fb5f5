"""Faults of a launched ``main.py``: each ends every rank with one line, and nothing is written as
if the run had finished (no best.ckpt, no last_epoch*, no "Completed!").

Bound on a lost rank: on its own machine, OpenOOD's launcher (``mp.spawn``) sees the death at
once and stops the other ranks (SIGTERM, SIGKILL 30 s later); on another machine, a rank waiting
on it fails as soon as gloo sees the connection close, and at the latest after
``--dist_timeout`` (30 s here; OpenOOD's own is 30 minutes).
"""
import glob
import os
import socket

import pytest

from bench_helpers import one_line_error
from core_helpers import free_port
from launch_helpers import finish, start, tiny_setup


@pytest.fixture(scope="module")
def tiny(oo, checkout, tmp_path_factory):
    return tiny_setup(str(tmp_path_factory.mktemp("faults")))


def _one_error_line(err):
    """The one error line, last but for the warning Python's resource tracker prints at exit
    about the semaphores a SIGKILLed process could not release."""
    kept = err.strip().splitlines()
    if len(kept) >= 2 and "resource_tracker: There appear to be" in kept[-2]:
        kept = kept[:-2]
    lines = [line for line in kept if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err[-4000:]
    assert kept[-1] == lines[0], err[-4000:]
    return lines[0]


def _nothing_finished(out_dir, out):
    assert not glob.glob(os.path.join(str(out_dir), "**", "best.ckpt"), recursive=True)
    assert not glob.glob(os.path.join(str(out_dir), "**", "last_epoch*"), recursive=True)
    assert "Completed!" not in out.splitlines() and "wrote best.ckpt" not in out


@pytest.mark.slow
@pytest.mark.parametrize("probe, starts, says", [
    ({"UM_PROBE_NAN_RANK": "1"}, "um-openood: error: rank ",
     "NonFiniteLossError: loss became non-finite on 1 rank(s) at epoch 1, step 0"),
    ({"UM_PROBE_KILL_RANK": "1"}, "um-openood: error: rank 1 (pid ",
     "was killed by SIGKILL; the other ranks were stopped"),
], ids=["nan_on_one_rank", "a_killed_rank"])
def test_a_failing_rank_stops_every_rank_in_one_line_naming_why(checkout, tiny, tmp_path, probe,
                                                                starts, says):
    proc = start(checkout, tiny, "um", tmp_path / "out", "--num_gpus", "2",
                 "--dataset.train.batch_size", "12", probe=tmp_path / "probe", env=probe)
    [(code, out, err)] = finish(proc)
    line = _one_error_line(err)
    assert code == 1 and line.startswith(starts), line
    assert says in line
    _nothing_finished(tmp_path / "out", out)


@pytest.mark.slow
def test_a_rank_killed_on_another_machine_stops_this_one_in_one_line(checkout, tiny, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    common = ("--num_gpus", "1", "--num_machines", "2", "--dataset.train.batch_size", "12",
              "--dist_url", url)
    machine0 = start(checkout, tiny, "um", tmp_path / "out", *common, "--machine_rank", "0",
                     probe=tmp_path / "probe")
    machine1 = start(checkout, tiny, "um", tmp_path / "out", *common, "--machine_rank", "1",
                     probe=tmp_path / "probe", env={"UM_PROBE_KILL_RANK": "1"})
    (code0, out0, err0), (code1, _, err1) = finish(machine0, machine1)
    assert code1 == 1 and _one_error_line(err1).startswith("um-openood: error: rank 1 (pid ")
    line = _one_error_line(err0)
    assert code0 == 1 and line.startswith("um-openood: error: rank 0 lost its connection to "
                                          "another rank, which stopped or died"), line
    _nothing_finished(tmp_path / "out", out0)


def _cli(*args):
    from um_plugin.cli import main
    return main(list(map(str, args)))


@pytest.mark.parametrize("url, expect", [
    ("127.0.0.1:29500", "give tcp://HOST:PORT"),
    ("tcp://127.0.0.1", "give tcp://HOST:PORT"),
    ("tcp://127.0.0.1:notaport", "give tcp://HOST:PORT"),
    ("tcp://no-such-host.invalid:29500", "host 'no-such-host.invalid' does not resolve"),
    ("in use", "cannot be bound"),
])
def test_a_bad_dist_url_is_one_line_and_exit_2_before_any_work(checkout, tiny, tmp_path, capsys,
                                                                url, expect):
    from um_plugin.shipped import configs_root
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if url == "in use":
            url = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        code = _cli("run", "--cpu", os.path.join(checkout, "main.py"), "--config",
                         tiny["yml"], os.path.join(checkout, "configs/networks/lenet.yml"),
                         os.path.join(configs_root(), "train_um.yml"),
                         os.path.join(checkout, "configs/preprocessors/base_preprocessor.yml"),
                         "--output_dir", tmp_path / "out", "--num_machines", "2",
                         "--machine_rank", "0", "--dist_url", url)
    assert code == 2
    line = one_line_error(capsys, "um-openood", expect)
    assert line.startswith(f"um-openood: error: --dist_url {url!r}: "), line
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("args, expect", [
    (("--num_machines", "2"), "--num_machines 2 needs --dist_url tcp://HOST:PORT"),
    (("--num_machines", "2", "--machine_rank", "2", "--dist_url", "tcp://127.0.0.1:1"),
     "--machine_rank 2: give this machine's rank, 0 to 1"),
    (("--dist_timeout", "0"), "--dist_timeout '0': give the collective timeout in seconds"),
    (("--dist_url",), "--dist_url needs a value"),
])
def test_bad_launch_settings_are_one_line_and_exit_2(checkout, tiny, tmp_path, capsys,
                                                     monkeypatch, args, expect):
    from um_plugin.shipped import configs_root
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    code = _cli("run", "--cpu", os.path.join(checkout, "main.py"), "--config",
                     tiny["yml"], os.path.join(checkout, "configs/networks/lenet.yml"),
                     os.path.join(configs_root(), "train_um.yml"),
                     os.path.join(checkout, "configs/preprocessors/base_preprocessor.yml"),
                     "--output_dir", tmp_path / "out", *args)
    assert code == 2
    one_line_error(capsys, "um-openood", expect)
    assert not os.path.exists(tmp_path / "out")
