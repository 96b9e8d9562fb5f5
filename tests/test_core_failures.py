"""A failed run gives the model back as it came; a NaN loss stops naming the step; bad
labels, loaders, settings and models are refused before they do harm."""
import math

import pytest
import torch

from bench_helpers import one_line
from core_helpers import CountingLoader, fresh_copy, loader, state_equal
from um_plugin.core import FinetuneConfig, Finetuner, NonFiniteLossError, run_um, run_umap
from um_plugin.core.masks import attach_score_masks, has_score_masks


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
        run(model, CountingLoader(loader(), stop_at=4, exc=exc), 0.1,
            FinetuneConfig(epochs=3, progress=False))
    assert not has_score_masks(model)
    assert all(p.requires_grad for p in model.parameters())
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert model.training and not model.bn.training


def test_retry_after_failure_uses_the_new_keep_ratio(base):
    model = fresh_copy(base)
    with pytest.raises(KeyboardInterrupt):
        run_umap(model, CountingLoader(loader(), stop_at=1), 0.1,
                 FinetuneConfig(epochs=1, keep_ratio=0.8, progress=False))
    run_umap(model, loader(), 0.1, FinetuneConfig(epochs=1, keep_ratio=0.95, progress=False))
    assert abs(zero_fraction(model) - 0.05) < 0.01


def test_nan_loss_stops_naming_epoch_step_and_keeps_last_good_model(base):
    good = [(x, y) for x, y in loader()]
    bad = list(good)
    bad[2] = (torch.full_like(good[2][0], math.nan), good[2][1])
    torch.manual_seed(0)
    reference = fresh_copy(base)
    ref_tuner = Finetuner(reference, 0.1, FinetuneConfig(epochs=1, progress=False), 3)
    for x, y in good[:2]:
        ref_tuner.step(x, y)
    model = fresh_copy(base)
    tuner = Finetuner(model, 0.1, FinetuneConfig(epochs=1, progress=False), 3)
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 2") as err:
        tuner.train_epoch(bad)
    assert (err.value.epoch, err.value.step) == (0, 2)
    assert state_equal(model, reference)  # BN running stats included


def test_premasked_model_with_other_keep_ratio_is_refused(base):
    model = fresh_copy(base)
    attach_score_masks(model, 0.5)
    with pytest.raises(ValueError, match=r"keep_ratio=0.5.*keep_ratio=0.8"):
        run_umap(model, loader(), 0.1, FinetuneConfig(epochs=1, keep_ratio=0.8, progress=False))
    assert has_score_masks(model)  # the user's masks are left alone


def test_um_on_masked_model_refused(base):
    model = fresh_copy(base)
    Finetuner(model, 0.1, FinetuneConfig(mode="umap", progress=False), 1)
    with pytest.raises(RuntimeError, match="score masks"):
        Finetuner(model, 0.1, FinetuneConfig(mode="um", progress=False), 1)


def test_model_without_parameters_is_refused():
    with pytest.raises(ValueError, match="no parameters"):
        Finetuner(torch.nn.Flatten(), 0.1, FinetuneConfig(progress=False))


def test_bad_labels_and_loaders(base):
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 1)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\]"):
        tuner.train_epoch([(torch.zeros(2, 1, 8, 8), torch.tensor([0, 7]))])
    with pytest.raises(ValueError, match="loader is empty"):
        tuner.train_epoch([])
    with pytest.raises(ValueError, match="labels of shape"):
        tuner.train_epoch([(torch.zeros(2, 1, 8, 8), torch.tensor([0]))])


@pytest.mark.parametrize("labels", [[0, -100], [0, 3]])
def test_ignore_index_and_out_of_range_labels_are_refused(base, labels):
    good = (torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    bad = (torch.zeros(2, 1, 8, 8), torch.tensor(labels))
    tuner = Finetuner(fresh_copy(base), 0.1, FinetuneConfig(epochs=1, progress=False), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\].*ignore_index"):
        tuner.train_epoch([good, bad])


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
    one_line(str(caught.value))
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


@pytest.mark.parametrize("field,value", [("mode", "prune"), ("epochs", 0), ("lr", -1.0),
                                         ("keep_ratio", 1.2), ("threshold", "x"), ("beta", 0.0),
                                         ("lr", math.nan), ("momentum", 5.0), ("momentum", 1.0),
                                         ("seed", 1.5), ("precision", "fp8"), ("min_lr", 1.0),
                                         ("nesterov", "yes")])
def test_bad_config_values_named(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        FinetuneConfig(momentum=0.0, nesterov=True)
    assert FinetuneConfig(momentum=0.0, nesterov=False).momentum == 0.0
