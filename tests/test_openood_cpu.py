"""The opt-in CPU fallback: .cuda() becomes a no-op only while it is on."""
import pytest
import torch

from bench_helpers import raises_one_line


def test_fallback_on_off_and_nesting(oo):
    from um_plugin.openood.cpu import cpu_fallback_enabled
    if torch.cuda.is_available():
        pytest.skip("the fallback is refused on a machine with a GPU")
    original = torch.Tensor.cuda
    with oo.enable_cpu_fallback():
        t = torch.ones(2)
        assert t.cuda() is t and t.cuda(non_blocking=True) is t
        assert torch.load.__name__ == "cpu_load"  # checkpoints saved on a GPU load on the CPU
        m = torch.nn.Linear(2, 2)
        assert m.cuda() is m and torch.cuda.device_count() == 0
        with oo.enable_cpu_fallback():  # nested: the inner exit keeps it on
            pass
        assert cpu_fallback_enabled()
    assert not cpu_fallback_enabled() and torch.Tensor.cuda is original
    assert torch.load.__name__ == "load"


def test_route2_on_a_cpu_only_machine_is_refused_before_any_work_naming_use_cpu(
        oo, tiny_bench, quick_configs, monkeypatch):
    """Without the switch OpenOOD's Evaluator would fine-tune, then crash in .cuda(); the
    refusal comes first, the network untouched, and the switch it names makes the same call run."""
    from openood.evaluation_api import Evaluator

    from um_plugin.core import runs
    from openood_fixtures import lenet
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, even here
    calls = []
    monkeypatch.setitem(runs.RUNNERS, "umap", lambda *a, **k: calls.append(a))
    net = lenet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kwargs = dict(id_name=tiny_bench["name"], data_root=tiny_bench["data_root"],
                  config_root=quick_configs, postprocessor_name="umap_ebo", batch_size=8,
                  num_workers=0)
    raises_one_line(lambda: Evaluator(net, **kwargs), "postprocessor 'umap_ebo'",
                    r"um_plugin\.openood\.use_cpu\(\)", errors=RuntimeError)
    assert calls == [] and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with oo.use_cpu():
        Evaluator(net, **kwargs)
    assert len(calls) == 1  # the switch named is the one that lets the route run
