"""benchmarks.metrics equals OpenOOD's metrics for the same scores."""
import numpy as np
import pytest
from openood_fixtures import need_openood

from benchmarks import metrics


pytestmark = pytest.mark.usefixtures("sklearn_extra")


def test_perfectly_separated_scores():
    m = metrics.id_ood_metrics([3.0, 4.0, 5.0], [1.0, 2.0])
    assert m == {"FPR@95": 0.0, "AUROC": 100.0, "AUPR_IN": 100.0, "AUPR_OUT": 100.0}


def test_fpr_at_95_is_read_at_first_tpr_reaching_95():
    # 20 OOD at 0..19, 20 ID at 10.5..29.5: flagging 19 OOD (conf <= 18) also flags 8 ID
    m = metrics.id_ood_metrics(np.arange(10, 30) + 0.5, np.arange(20.0))
    assert m["FPR@95"] == pytest.approx(100 * 8 / 20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_openood_compute_all_metrics(seed):
    need_openood()
    import openood.evaluators.metrics as oo
    rng = np.random.default_rng(seed)
    conf = np.round(rng.normal(size=300), 1)  # many ties
    label = rng.integers(0, 10, size=300)
    label[rng.random(300) < 0.4] = -1
    pred = rng.integers(0, 10, size=300)
    ours = metrics.compute_all_metrics(conf, label, pred)
    theirs = oo.compute_all_metrics(conf, label, pred)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="3 values but label has 2"):
        metrics.ood_metrics([1, 2, 3], [0, -1])
    with pytest.raises(ValueError, match="both ID .* and OOD"):
        metrics.ood_metrics([1, 2], [0, 1])
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.ood_metrics([1, float("nan")], [0, -1])
    assert metrics.mean_std([1.0]) == (1.0, 0.0)
    assert metrics.mean_std([1.0, 3.0])[1] == pytest.approx(2 ** 0.5)
