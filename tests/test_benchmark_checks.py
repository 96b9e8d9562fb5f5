"""The three benchmarks share one error class and one message per rule (benchmarks/checks.py)."""
import pytest

from benchmarks import cost, repro
from benchmarks.checks import BenchmarkError
from benchmarks.cost.measure import build_model
from benchmarks.embedded import BenchConfig
from um_plugin.core.checkpoint import check_writable


def test_one_error_class_for_every_benchmark(tmp_path):
    with pytest.raises(BenchmarkError, match=r"unknown model 'vgg'"):
        build_model("vgg")
    with pytest.raises(BenchmarkError, match=r"^--keep-ratio: keep_ratio must be in \(0, 1\]"):
        BenchConfig(out=str(tmp_path), keep_ratio=2.0).validate()


@pytest.mark.parametrize("flag, value", [("--keep-ratio", "2"), ("--xi", "-1")])
def test_repro_names_the_flag_of_a_core_rule_as_the_others_do(flag, value, tmp_path, capsys):
    """The reproduction printed the core's message without the flag that held the value."""
    assert repro.main(["cifar10", flag, value, "--data-root", str(tmp_path),
                       "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"python -m benchmarks.repro: error: {flag}: ")


def test_one_write_probe_for_checkpoints_and_output_folders(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file where a folder should be")
    for main in (cost.main, lambda argv: repro.main(["cifar10", "--dry-run", *argv])):
        assert main(["--out", str(taken / "out")]) == 2
        err = capsys.readouterr().err
        assert f"--out folder {str(taken / 'out')!r} is not writable (Not a directory)" in err, err
    with pytest.raises(ValueError, match=r"is not writable \(Not a directory\)"):
        check_writable(taken / "sub" / "run.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
