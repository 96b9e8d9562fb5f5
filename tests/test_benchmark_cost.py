"""The cost benchmark runs through the core engine and reports every ratio with its target
(timings themselves are not asserted: they depend on the machine)."""
import json

import pytest
import torch

from bench_helpers import one_line_error
from benchmarks import cost
from benchmarks.cost import measure


@pytest.mark.slow
def test_cost_lenet_tiny_reports_every_ratio_with_its_target(tmp_path, capsys):
    rc = cost.main(["--models", "lenet", "--batches", "8", "--rounds", "1", "--round-steps", "1",
                    "--warmup", "0", "--xi-images", "16", "--device", "cpu", "--out", str(tmp_path),
                    "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "(target <= 1.05:" in printed and "(target >= 20.00:" in printed
    assert "(target ~ 1.00:" in printed
    r = json.loads((tmp_path / "cost.json").read_text())
    assert r["mask"]["mask_equal_to_sort"] is True
    assert r["mask"]["layer_weights"] == 512 * 512 * 9 and r["mask"]["kept"] == r["mask"]["kept_expected"]
    m = r["models"][0]
    assert (m["model"], m["batch"]) == ("lenet", 8) and m["baked_has_no_parametrizations"] is True
    for key in ("ratio_umap_vs_plain", "ratio_um_vs_plain", "ratio_baked_vs_base_inference",
                "xi_images_per_s"):
        assert m[key] > 0
    assert 0 < m["selection_share_of_umap_step"] < 1  # timed within the UMAP steps
    faults = m["minor_faults_per_step"]
    if measure.counts_faults():
        assert set(faults) == {"plain", "um", "umap"} and all(v >= 0 for v in faults.values())
    else:  # a platform whose getrusage counts nothing: no column of zeros
        assert faults is None
    assert "| lenet | 8 |" in (tmp_path / "cost.md").read_text()


@pytest.mark.slow
def test_mask_only_measures_the_selection_alone(tmp_path, capsys):
    """``--mask-only``: the one mask-timing measurement, no training steps, no model table."""
    assert cost.main(["--mask-only", "--rounds", "1", "--warmup", "0", "--device", "cpu",
                      "--out", str(tmp_path), "--no-progress"]) == 0
    assert "(target >= 20.00:" in capsys.readouterr().out
    r = json.loads((tmp_path / "cost.json").read_text())
    assert r["models"] == [] and r["mask"]["mask_equal_to_sort"] is True
    assert r["mask"]["kept"] == r["mask"]["kept_expected"]
    assert "| model |" not in (tmp_path / "cost.md").read_text()


def test_plain_step_is_the_engine_at_xi_zero_and_equals_cross_entropy_sgd():
    """The 'plain' variant the ratios divide by is plain CE training, bit for bit."""
    import copy

    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    base, _ = measure.build_model("lenet")
    x, y = torch.randn(8, 3, 28, 28), torch.randint(0, 10, (8,))
    a, b = copy.deepcopy(base).train(), copy.deepcopy(base).train()
    tuner = measure.tuner_for(a, "um", 0.0, 0.8, steps=1)
    opt = torch.optim.SGD(b.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
    for _ in range(3):
        tuner.train_epoch([(x, y)])
        opt.zero_grad()
        F.cross_entropy(b(x), y).backward()
        opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("argv, message", [
    (["--models", "vgg"], "unknown model(s) ['vgg']; valid"),
    (["--batches", "64,0"], "--batches must be an integer >= 1, got 0"),
    (["--rounds", "0"], "--rounds must be an integer >= 1, got 0"),
    (["--threads", "-1"], "--threads must be an integer >= 0, got -1"),
    (["--keep-ratio", "2"], "--keep-ratio: keep_ratio must be in (0, 1]"),
    (["--device", "tpu"], "--device must be 'auto', 'cpu' or 'cuda'"),
    (["--batches", "x"], "argument --batches: invalid"),
])
def test_bad_arguments_get_one_line(argv, message, tmp_path, capsys):
    assert cost.main(argv + ["--out", str(tmp_path)]) == 2
    err = one_line_error(capsys, "python -m benchmarks.cost")
    assert message in err, err


def test_sync_counter_counts_cuda_sync_warnings_and_restores_the_mode(monkeypatch):
    """The CUDA sync count (no GPU here): warnings of the sync debug mode are counted, nothing
    else is, and the previous debug mode comes back."""
    import warnings

    import torch
    modes = [0]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: modes.append(m))

    def three_syncs():
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)
        warnings.warn("something else", UserWarning)

    assert measure.count_syncs(three_syncs) == 3
    assert modes == [0, "warn", 0]


def test_rounds_rotate_the_order_and_ratios_pair_within_a_round():
    """No variant always runs right after the same other one; a ratio is taken per round."""
    import torch
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = measure.interleaved(fns, rounds=4, warmup=0, device=torch.device("cpu"))
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc" and all(len(v) == 4 for v in times.values())
    # round by round the ratio is 2, 2, 1: its median is 2, where the ratio of medians is 1
    ratio, (low, high) = measure.paired_ratio({"x": [2, 10, 3], "y": [1, 5, 3]}, "x", "y")
    assert (ratio, low, high) == (2, 1, 2)
    ratio, (q1, q3) = measure.paired_ratio({"x": [1, 2, 3, 4, 5], "y": [1] * 5}, "x", "y")
    assert ratio == 3 and q1 < 3 < q3


def test_profile_mode_breaks_the_umap_step_down_by_op_and_states_the_floor(tmp_path, capsys):
    assert cost.main(["--profile", "--models", "lenet", "--batches", "4", "--rounds", "2",
                      "--round-steps", "1", "--warmup", "0", "--device", "cpu",
                      "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "UMAP minus plain, self CPU time by op (lenet, batch 4)" in printed
    assert "Floor: 1 x forward: weight * mask" in printed
    (prof,) = json.loads((tmp_path / "profile.json").read_text())["profiles"]
    assert prof["masked_weights"] == 61_770 and prof["umap_only_calls_per_step"] > 0
    assert "_MaskedWeightBackward" in prof["by_op_share"] or any(
        "mask" in op.lower() for op in prof["by_op_share"])
    assert 0 < prof["floor_share"] < 1


def test_versus_times_this_checkout_against_a_commit_with_identical_masks(tmp_path, capsys):
    from benchmarks.cost import versus
    assert versus.main(["--baseline", "HEAD", "--models", "lenet", "--batch", "4", "--rounds",
                        "1", "--round-steps", "1", "--warmup", "0", "--out",
                        str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "versus.json").read_text())["rows"]
    assert row["masks_identical_before_after"] is True and row["masks_equal_stable_sort"] is True
    assert row["ratio_umap_after_vs_plain"] > 0 and len(row["load_start"]) == 3
    assert versus.main(["--baseline", "no-such-commit", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, versus.PROG, "--baseline 'no-such-commit' is not a commit")


@pytest.mark.skipif(not measure.counts_faults(), reason="getrusage counts no page faults here")
def test_interleaved_counts_each_calls_page_faults():
    """A call that writes to 4,096 pages mapped afresh from the system faults about that many
    times, whatever malloc or huge pages would do; an empty call faults (almost) never."""
    pages, faults = 4096, {}
    times = measure.interleaved({"fresh": lambda: measure.touch_fresh_pages(pages),
                                 "none": lambda: None},
                                rounds=3, warmup=1, device=torch.device("cpu"), faults=faults)
    assert len(times["fresh"]) == len(faults["fresh"]) == 3
    assert min(faults["fresh"]) >= pages // 2 and max(faults["none"]) < min(faults["fresh"]) / 10


def test_a_platform_whose_counter_never_moves_counts_no_faults(monkeypatch):
    """Where getrusage answers the same count after fresh pages were touched, the cost run
    reports no fault counts (None, "n/a" in its table), never a column of zeros."""
    import resource

    class Usage:
        ru_minflt = 0
    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    measure.counts_faults.cache_clear()
    try:
        assert measure.counts_faults() is False and measure.minor_faults() is None
        faults = {}
        measure.interleaved({"a": lambda: None}, rounds=2, warmup=0,
                            device=torch.device("cpu"), faults=faults)
        assert faults == {}
    finally:
        measure.counts_faults.cache_clear()
