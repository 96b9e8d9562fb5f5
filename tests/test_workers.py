"""Default loader workers are OpenOOD's 4 capped at the CPUs available (no torch warning about
more workers than CPUs on a 2-core runner); an explicit count is left alone."""
import argparse
import os
import warnings

import pytest
import torch

from um_plugin import workers


@pytest.mark.parametrize("cpus, want", [({0}, 1), ({0, 1}, 2), (set(range(8)), 4)])
def test_default_is_openood_s_four_capped_at_the_affinity_mask(monkeypatch, cpus, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    assert workers.available_cpus() == len(cpus) and workers.default_workers() == want


def test_a_default_loader_starts_no_more_workers_than_cpus_and_torch_stays_quiet():
    n = workers.default_workers()
    assert 1 <= n <= min(4, workers.available_cpus())
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "will create N worker processes" warning
        assert sorted(int(v) for batch in loader for v in batch) == list(range(8))


def test_um_openood_eval_and_repro_default_to_the_capped_count(oo, monkeypatch):
    from benchmarks.repro.pipeline import ReproConfig
    from um_plugin.cli import eval as eval_verb
    from um_plugin.openood.evaluation.evaluate import Plan
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    parser = argparse.ArgumentParser()
    eval_verb.add_parser(parser.add_subparsers(dest="command"))
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    assert eval_parser.get_default("num_workers") == 2  # 4 on a 2-CPU machine: capped
    monkeypatch.undo()
    for default in (ReproConfig.workers, Plan.num_workers):  # set when their module loaded
        assert default == workers.default_workers()
