"""The engine's guarantees: the model comes back intact on failure, checkpoints resume exactly
(loader generators included) or are refused naming what differs, and bad inputs stop early."""
import math
import os
import stat

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from core_helpers import fresh_copy, loader, separable_data, state_equal, trained_model
from um_plugin.core import (FinetuneConfig, Finetuner, NonFiniteLossError, load_checkpoint,
                            run_um, run_umap, save_checkpoint)
from um_plugin.core.checkpoint import read_state
from um_plugin.core.masks import attach_score_masks, has_score_masks


@pytest.fixture(scope="module")
def base():
    return trained_model()


def seeded_loader(seed=5, batch_size=32):
    x, y = separable_data(96)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


class Interrupting:
    """A loader that raises ``exc`` when batch ``at`` (counted over all epochs) is asked for."""

    def __init__(self, inner, at, exc=KeyboardInterrupt):
        self.inner, self.at, self.exc, self.seen = inner, at, exc, 0

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):  # generator, sampler, ... as the wrapped DataLoader's
        return getattr(self.inner, name)

    def __iter__(self):
        for batch in self.inner:
            if self.seen == self.at:
                raise self.exc()
            self.seen += 1
            yield batch


def zero_fraction(model):
    weights = [model.conv.weight, model.fc.weight]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


@pytest.mark.parametrize("run,exc", [(run_umap, KeyboardInterrupt), (run_umap, RuntimeError),
                                     (run_um, KeyboardInterrupt)])
def test_failed_run_gives_the_model_back_as_it_came(base, run, exc):
    model = fresh_copy(base)
    model.bn.eval()  # a submodule flag that must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc):
        run(model, Interrupting(loader(), at=4, exc=exc), 0.1,
            FinetuneConfig(epochs=3, progress=False))
    assert not has_score_masks(model)
    assert all(p.requires_grad for p in model.parameters())
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert model.training and not model.bn.training


def test_retry_after_failure_uses_the_new_keep_ratio(base):
    model = fresh_copy(base)
    with pytest.raises(KeyboardInterrupt):
        run_umap(model, Interrupting(loader(), at=1), 0.1,
                 FinetuneConfig(epochs=1, keep_ratio=0.8, progress=False))
    run_umap(model, loader(), 0.1, FinetuneConfig(epochs=1, keep_ratio=0.95, progress=False))
    assert abs(zero_fraction(model) - 0.05) < 0.01


def test_premasked_model_with_other_keep_ratio_is_refused(base):
    model = fresh_copy(base)
    attach_score_masks(model, 0.5)
    with pytest.raises(ValueError, match=r"keep_ratio=0.5.*keep_ratio=0.8"):
        run_umap(model, loader(), 0.1, FinetuneConfig(epochs=1, keep_ratio=0.8, progress=False))
    assert has_score_masks(model)  # the user's masks are left alone


def test_checkpoint_of_another_run_is_refused_naming_the_field(base, tmp_path):
    saved = Finetuner(fresh_copy(base), 0.1,
                      FinetuneConfig(mode="umap", epochs=2, keep_ratio=0.8, progress=False), 3)
    path = save_checkpoint(saved, tmp_path / "run.pt")
    other = Finetuner(fresh_copy(base), 0.1,
                      FinetuneConfig(mode="umap", epochs=2, keep_ratio=0.5, progress=False), 3)
    with pytest.raises(ValueError, match=r"keep_ratio: 0.5 vs 0.8"):
        other.load_state_dict(read_state(path))
    with pytest.raises(ValueError, match=r"xi: 0.2 vs 0.1"):
        run_umap(fresh_copy(base), loader(), 0.2,
                 FinetuneConfig(epochs=2, keep_ratio=0.8, progress=False), checkpoint_path=path)


def test_resume_is_bit_exact_with_a_seeded_loader_generator(base, tmp_path):
    config = FinetuneConfig(mode="umap", epochs=3, lr=0.05, progress=False)
    whole = Finetuner(fresh_copy(base), 0.15, config)
    whole.fit(seeded_loader())

    first = Finetuner(fresh_copy(base), 0.15, config)
    first.train_epoch(seeded_loader())
    path = save_checkpoint(first, tmp_path / "run.pt")
    resumed = load_checkpoint(fresh_copy(base), path)
    resumed.fit(seeded_loader())  # a loader rebuilt from its seed, as after a restart
    assert state_equal(resumed.model, whole.model)
    assert resumed.history == whole.history


def test_run_with_existing_checkpoint_resumes_instead_of_restarting(base, tmp_path):
    config = FinetuneConfig(epochs=3, lr=0.05, progress=False)
    whole = fresh_copy(base)
    run_um(whole, seeded_loader(), 0.15, config)

    path = tmp_path / "run.pt"
    model = fresh_copy(base)
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 2, after epoch 1 was saved
        run_um(model, Interrupting(seeded_loader(), at=4), 0.15, config, checkpoint_path=path)
    assert state_equal(model, base)
    assert read_state(path)["epoch"] == 1
    run_um(model, seeded_loader(), 0.15, config, checkpoint_path=path)
    assert state_equal(model, whole)


def test_other_batch_size_after_resume_is_refused(base, tmp_path):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=2, progress=False))
    tuner.train_epoch(loader(batch_size=32))
    path = save_checkpoint(tuner, tmp_path / "run.pt")
    resumed = load_checkpoint(fresh_copy(base), path)
    with pytest.raises(ValueError, match=r"has 2 batches per epoch.*steps_per_epoch=3"):
        resumed.fit(loader(batch_size=48))
    assert resumed.epoch == 1


@pytest.mark.parametrize("labels", [[0, -100], [0, 3]])
def test_ignore_index_and_out_of_range_labels_are_refused(base, labels):
    good = (torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    bad = (torch.zeros(2, 1, 8, 8), torch.tensor(labels))
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\].*ignore_index"):
        tuner.train_epoch([good, bad])


def test_truncated_checkpoint_names_the_file(base, tmp_path):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 1)
    path = save_checkpoint(tuner, tmp_path / "run.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"run\.pt.*cannot be read"):
        load_checkpoint(fresh_copy(base), path)


def test_unwritable_checkpoint_path_fails_before_training(base, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    counted = Interrupting(loader(), at=10 ** 9)
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


def test_loader_without_len_needs_steps_per_epoch(base):
    batches = [(x, y) for x, y in loader()]
    generator_loader = (b for b in batches)
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match="has no len.*steps_per_epoch"):
        tuner.train_epoch(generator_loader)
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 3)
    assert tuner.train_epoch(b for b in batches)["acc"] > 0.5


class Batches:
    """A loader without len(): ``per_epoch`` batches each time it is iterated; counts draws."""

    def __init__(self, per_epoch):
        self.batches = [b for b in loader(n=16 * per_epoch, batch_size=16)]
        self.drawn = 0

    def __iter__(self):
        for batch in self.batches:
            self.drawn += 1
            yield batch


@pytest.mark.parametrize("per_epoch,steps,pattern,applied", [
    (4, 2, r"yielded at least 3 batches in epoch 1, .*steps_per_epoch=2", 2),  # stops at batch 3
    (4, 8, r"yielded 4 batches in epoch 1, .*steps_per_epoch=8", 4),  # stops at the epoch's end
])
def test_steps_per_epoch_that_does_not_match_a_loader_without_len_stops(base, per_epoch, steps,
                                                                          pattern, applied):
    data = Batches(per_epoch)
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=2, progress=False), steps)
    with pytest.raises(ValueError, match=pattern) as caught:
        tuner.fit(data)
    assert "\n" not in str(caught.value)
    assert tuner.scheduler.last_epoch == applied  # steps taken before the stop
    assert data.drawn == min(per_epoch, steps + 1)
    assert tuner.epoch == 0 and tuner.history.epoch == []  # the epoch was not counted as done


def test_a_loader_whose_len_is_wrong_is_stopped_too(base):
    class Lying(Batches):
        def __len__(self):
            return 3

    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match=r"at least 4 batches in epoch 1 \(its len\(\) says 3\)"):
        tuner.fit(Lying(5))


@pytest.mark.parametrize("field,value", [("momentum", 5.0), ("momentum", 1.0), ("seed", 1.5),
                                         ("precision", "fp8"), ("min_lr", 1.0),
                                         ("nesterov", "yes")])
def test_more_bad_config_values_named(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        FinetuneConfig(momentum=0.0, nesterov=True)
    assert FinetuneConfig(momentum=0.0, nesterov=False).momentum == 0.0


def test_model_without_parameters_is_refused():
    with pytest.raises(ValueError, match="no parameters"):
        Finetuner(torch.nn.Flatten(), 0.1, FinetuneConfig(progress=False))


@pytest.mark.parametrize("mode", ["um", "umap"])
def test_bf16_autocast_trains_and_nan_still_stops(base, mode):
    model = fresh_copy(base)
    history = run_um(model, loader(), 0.1, FinetuneConfig(epochs=2, precision="bf16",
                                                          progress=False)) if mode == "um" else \
        run_umap(model, loader(), 0.1, FinetuneConfig(epochs=2, precision="bf16", progress=False))
    assert all(math.isfinite(v) for v in history.loss) and history.acc[-1] > 0.5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    bad = [(torch.full((4, 1, 8, 8), math.nan), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(NonFiniteLossError):
        Finetuner(fresh_copy(base), 0.1, FinetuneConfig(mode=mode, precision="bf16",
                                                        progress=False), 1).train_epoch(bad)
