"""Resuming: a run continued from its checkpoint ends bit-identical to one never stopped
(the RNG and a seeded loader's generator included); a checkpoint of another run, or another
batch count per epoch, is refused naming what differs."""
import pytest
import torch

from core_helpers import CountingLoader, fresh_copy, loader, seeded_loader, state_equal
from um_plugin.core import (FinetuneConfig, Finetuner, load_checkpoint, run_um, run_umap,
                            save_checkpoint)
from um_plugin.core.checkpoint import read_state


@pytest.mark.parametrize("mode", ["umap", "um"])
def test_resume_from_checkpoint_is_bit_exact(base, mode, tmp_path):
    config = FinetuneConfig(mode=mode, epochs=3, lr=0.05, progress=False)
    data = loader(shuffle=True)

    torch.manual_seed(11)
    full = fresh_copy(base)
    whole = Finetuner(full, 0.15, config, len(data))
    whole.fit(data)

    torch.manual_seed(11)
    part = fresh_copy(base)
    first = Finetuner(part, 0.15, config, len(data))
    first.train_epoch(data)
    path = save_checkpoint(first, tmp_path / "run.pt")
    torch.manual_seed(999)  # the checkpoint, not the caller, owns the RNG now
    resumed = load_checkpoint(fresh_copy(base), path)
    assert resumed.epoch == 1
    resumed.fit(data)

    assert state_equal(resumed.model, whole.model)
    assert resumed.history == whole.history
    assert state_equal(resumed.finish(), whole.finish())


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
        run_um(model, CountingLoader(seeded_loader(), stop_at=4), 0.15, config,
               checkpoint_path=path)
    assert state_equal(model, base)
    assert read_state(path)["epoch"] == 1
    run_um(model, seeded_loader(), 0.15, config, checkpoint_path=path)
    assert state_equal(model, whole)


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


def test_other_batch_size_after_resume_is_refused(base, tmp_path):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=2, progress=False))
    tuner.train_epoch(loader(batch_size=32))
    path = save_checkpoint(tuner, tmp_path / "run.pt")
    resumed = load_checkpoint(fresh_copy(base), path)
    with pytest.raises(ValueError, match=r"has 2 batches per epoch.*steps_per_epoch=3"):
        resumed.fit(loader(batch_size=48))
    assert resumed.epoch == 1
