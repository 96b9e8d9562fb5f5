"""The engine's results did not change when it was unified and sped up: UM and UMAP give the
weights the version before (commit 66faca0) gave, for the same model, data order, seed and ξ."""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "golden"))
from make_engine_golden import CASES, golden_runs  # noqa: E402


@pytest.fixture(scope="module")
def runs():
    threads = torch.get_num_threads()
    try:
        return golden_runs()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", [name for name, _, _ in CASES])
def test_same_weights_and_losses_as_before(runs, case):
    golden = torch.load(os.path.join(HERE, "golden", "engine_66faca0.pt"), weights_only=True)[case]
    state = runs[case]["state"]
    assert set(state) == set(golden["state"])  # (the order of baked keys was fixed since)
    for key, value in golden["state"].items():
        # bit-identical on the machine that wrote the file; 1e-6 allows another CPU's kernels
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)
    assert runs[case]["loss"] == pytest.approx(golden["loss"], abs=1e-6)
