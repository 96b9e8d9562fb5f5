"""Checkpoint files: a checksum over their content, so a damaged, truncated or zero-filled file is
refused in one line naming it (and never resumed from), while the last good one still resumes
bit-exactly; every other checkpoint error names the path, the fault and what would be valid."""
import os
import re
import stat

import pytest
import torch

from bench_helpers import raises_one_line
from core_helpers import (CountingLoader, TinyCNN, fresh_copy, loader, seeded_loader,
                          state_equal)
from um_plugin.core import (FinetuneConfig, Finetuner, load_checkpoint, run_um, run_umap,
                            save_checkpoint)
from um_plugin.core.checkpoint import read_state, write_state

CONFIG = FinetuneConfig(epochs=3, lr=0.05, progress=False)


def flip(data, offset, width=64):
    out = bytearray(data)
    for i in range(offset, min(offset + width, len(out))):
        out[i] ^= 0xFF
    return bytes(out)


def damaged_versions(good: bytes) -> dict:
    n = len(good)
    return {
        "flip header": flip(good, 0, 8),
        "flip checksum": flip(good, 40, 1),
        "flip first payload bytes": flip(good, good.index(b"\n") + 1, 4),
        "flip quarter": flip(good, n // 4),
        "flip middle": flip(good, n // 2),
        "flip one bit in the middle": good[:n // 2] + bytes([good[n // 2] ^ 1]) + good[n // 2 + 1:],
        "flip last byte": flip(good, n - 1, 1),
        "truncated to half": good[:n // 2],
        "truncated by one byte": good[:-1],
        "truncated inside the header": good[:30],
        "zero-filled": bytes(n),
        "tail zeroed": good[:n // 2] + bytes(n - n // 2),
        "appended to": good + b"\0",
    }


def test_damaged_checkpoints_are_refused_and_the_last_good_one_resumes_bit_exactly(base, tmp_path):
    torch.manual_seed(3)
    whole = fresh_copy(base)
    uninterrupted = Finetuner(whole, 0.15, CONFIG)
    uninterrupted.fit(seeded_loader())

    torch.manual_seed(3)
    first = Finetuner(fresh_copy(base), 0.15, CONFIG)
    first.train_epoch(seeded_loader())
    good_path = save_checkpoint(first, tmp_path / "good.pt")
    good = good_path.read_bytes()

    for what, data in damaged_versions(good).items():
        bad = tmp_path / "bad.pt"
        bad.write_bytes(data)
        raises_one_line(lambda: load_checkpoint(fresh_copy(base), bad), re.escape(str(bad)),
                       "cannot be read", "earlier checkpoint")
        model, data_loader = fresh_copy(base), CountingLoader(seeded_loader())
        raises_one_line(lambda: run_um(model, data_loader, 0.15, CONFIG, checkpoint_path=bad),
                       re.escape(str(bad)))
        assert data_loader.seen == 0, what  # a resume never starts from it
        assert state_equal(model, base), what
        assert bad.read_bytes() == data, what  # and it is left for the user to look at

    torch.manual_seed(999)  # the checkpoint owns the RNG
    resumed = load_checkpoint(fresh_copy(base), good_path)
    resumed.fit(seeded_loader())
    assert state_equal(resumed.model, whole)
    assert resumed.history == uninterrupted.history

    # through run_um too: the good file resumes to the uninterrupted run's weights
    model = fresh_copy(base)
    run_um(model, seeded_loader(), 0.15, CONFIG, checkpoint_path=good_path)
    assert state_equal(model, whole)


def test_truncated_checkpoint_names_the_file(base, tmp_path):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 1)
    path = save_checkpoint(tuner, tmp_path / "run.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"run\.pt.*cannot be read"):
        load_checkpoint(fresh_copy(base), path)


def test_zero_filled_checkpoint_names_the_path(base, tmp_path):
    path = save_checkpoint(Finetuner(fresh_copy(base), 0.1, CONFIG, 3), tmp_path / "run.pt")
    path.write_bytes(bytes(path.stat().st_size))
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), path), re.escape(str(path)),
                   r"all its \d+ bytes are zero", "earlier checkpoint")


def test_folder_as_checkpoint_is_called_a_folder(base, tmp_path):
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), tmp_path), re.escape(str(tmp_path)),
                   "is a folder, not a checkpoint file", "save_checkpoint")
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), tmp_path / "none.pt"),
                   "none.pt' does not exist")


def test_a_file_that_is_not_a_checkpoint_says_so(base, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), path), re.escape(str(path)),
                   "is not a um-plugin checkpoint", "save_checkpoint")
    path = write_state([1, 2], tmp_path / "list.pt")
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), path), "holds a list")


@pytest.mark.parametrize("edit,patterns", [
    (lambda s: s.pop("optimizer"), [r"lacks the 'optimizer' entry", "save_checkpoint"]),
    (lambda s: s["config"].update(colour="red"),
     [r"unknown config key\(s\) 'colour'", "FinetuneConfig knows mode, epochs"]),
    (lambda s: s["config"].update(lr=-1.0), [r"invalid setting: lr must be a finite number > 0"]),
    (lambda s: s.update(xi=float("nan")), [r"invalid setting: loss constraint xi"]),
])
def test_malformed_state_is_refused_naming_the_path_and_entry(base, tmp_path, edit, patterns):
    state = Finetuner(fresh_copy(base), 0.1, CONFIG, 3).state_dict()
    edit(state)
    path = write_state(state, tmp_path / "edited.pt")
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), path), re.escape(str(path)), *patterns)
    model = fresh_copy(base)
    raises_one_line(lambda: run_um(model, seeded_loader(), 0.1, CONFIG, checkpoint_path=path),
                   re.escape(str(path)), *patterns)
    assert state_equal(model, base)


def test_state_dict_without_an_entry_is_refused_before_anything_changes(base):
    tuner = Finetuner(fresh_copy(base), 0.1, CONFIG, 3)
    state = tuner.state_dict()
    del state["optimizer"]
    other = Finetuner(fresh_copy(base), 0.1, CONFIG, 3)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    raises_one_line(lambda: other.load_state_dict(state), "the checkpoint lacks the 'optimizer'")
    assert all(torch.equal(before[k], v) for k, v in other.model.state_dict().items())


def test_a_finished_umap_runs_file_is_called_finished(base, tmp_path):
    config = FinetuneConfig(mode="umap", epochs=1, progress=False)
    tuner = Finetuner(fresh_copy(base), 0.1, config)
    tuner.fit(seeded_loader())
    tuner.finish()  # bakes the mask
    path = save_checkpoint(tuner, tmp_path / "baked.pt")
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), path), re.escape(str(path)),
                   "finished UMAP run's file", "cannot resume", "before finish")
    raises_one_line(lambda: run_umap(fresh_copy(base), seeded_loader(), 0.1, config,
                                    checkpoint_path=path), "finished UMAP run's file")


class Wider(TinyCNN):
    def __init__(self):
        super().__init__(num_classes=5)


class Renamed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = TinyCNN()

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("arch,pattern", [
    (Wider, r"'fc.weight' has shape \(3, 32\) in the file but \(5, 32\) in Wider"),
    (Renamed, r"Renamed needs 9 entries the file lacks \(e.g. 'body.conv.weight'\); the file "
              r"has 9 that Renamed lacks \(e.g. 'conv.weight'\)"),
])
def test_another_architectures_file_names_the_path_and_the_entry(base, tmp_path, arch, pattern):
    config = FinetuneConfig(epochs=2, progress=False)
    path = save_checkpoint(Finetuner(fresh_copy(base), 0.1, config, 3), tmp_path / "tiny.pt")
    for call in (lambda: load_checkpoint(arch(), path),
                 lambda: run_um(arch(), seeded_loader(), 0.1, config, checkpoint_path=path)):
        raises_one_line(call, re.escape(str(path)), f"does not fit {arch.__name__}", pattern,
                       "architecture it was saved from")


def test_another_architectures_file_is_refused_by_load_checkpoint(base, tmp_path):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 1)
    path = save_checkpoint(tuner, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="does not fit Wider"):
        load_checkpoint(Wider(), path)


def test_a_bare_torch_save_file_is_refused_naming_what_is_valid(base, tmp_path):
    """Only save_checkpoint's format (header, checksum) is read; a bare ``torch.save`` of a run's
    state is not a checkpoint."""
    path = tmp_path / "bare.pt"
    torch.save(Finetuner(fresh_copy(base), 0.15, CONFIG).state_dict(), path)
    raises_one_line(lambda: load_checkpoint(fresh_copy(base), path), re.escape(str(path)),
                    "is not a um-plugin checkpoint", "save_checkpoint")


def test_unwritable_checkpoint_path_fails_before_training(base, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    counted = CountingLoader(loader())
    with pytest.raises(ValueError, match="not writable"):
        run_um(fresh_copy(base), counted, 0.1, FinetuneConfig(epochs=1, progress=False),
               checkpoint_path=blocker / "run.pt")
    assert counted.seen == 0


def test_saves_leave_no_temporary_files_and_respect_the_umask(base, tmp_path, monkeypatch):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 1)
    (tmp_path / ".run.pt.tmp").write_bytes(b"stale, as a killed save leaves it")
    path = save_checkpoint(tuner, tmp_path / "run.pt")
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

    good = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tuner, path)
    assert sorted(os.listdir(tmp_path)) == ["run.pt"] and path.read_bytes() == good
