"""The opt-in CPU fallback: .cuda() becomes a no-op only while it is on."""
import pytest
import torch


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
