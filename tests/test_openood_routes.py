"""Every route is the core engine: same data order, seed and ξ give bit-identical weights.

The trainer has no loop or defaults of its own, and the Evaluator route fine-tunes on shuffled
batches (not in dataset order, i.e. on single-class batches of a class-sorted list).
"""
import os

import pytest
import torch
from torch.utils.data import DataLoader

from openood_fixtures import colour_classes, lenet, make_tiny_benchmark


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.mark.parametrize("mode", ["um", "umap"])
def test_trainer_route_gives_the_core_engines_weights(oo, mode):
    from openood.trainers import get_trainer
    from openood.utils import Config

    from um_plugin.core import FinetuneConfig
    from um_plugin.core.runs import RUNNERS
    x = torch.randn(24, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(24) % 3
    data = [{"data": a, "label": b} for a, b in zip(x, y)]

    def loader():
        return DataLoader(data, batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    args = {"loss_constraint": 0.3, **({"keep_ratio": 0.8} if mode == "umap" else {})}
    config = Config({"trainer": {"name": mode, "trainer_args": args},
                     "optimizer": {"name": "sgd", "num_epochs": 2, "lr": 0.05, "momentum": 0.9,
                                   "weight_decay": 0.0005}})
    trainer = get_trainer(lenet(), loader(), None, config)
    for epoch in (1, 2):
        out, _ = trainer.train_epoch(epoch)

    core = lenet()
    finetune = FinetuneConfig(mode=mode, epochs=2, lr=0.05, momentum=0.9, weight_decay=0.0005,
                              keep_ratio=0.8, progress=False)
    RUNNERS[mode](core, loader(), 0.3, finetune)
    assert _same_weights(out, core) == []
    assert _same_weights(trainer.net, core) == []  # the original network, masks baked


@pytest.mark.parametrize("name", ["um_msp", "umap_msp"])
def test_evaluator_fine_tunes_on_shuffled_batches_of_a_sorted_list(oo, quick_configs, tmp_path,
                                                                  name):
    from openood.evaluation_api import Evaluator

    from um_plugin.core.runs import RUNNERS
    kwargs = make_tiny_benchmark(str(tmp_path), name="sortedbench", sort_train=True)
    with open(os.path.join(kwargs["data_root"], kwargs["id_train"])) as f:
        labels = [int(line.split()[1]) for line in f]
    assert labels == sorted(labels) and len(set(labels)) == 3  # sorted by class
    oo.register_benchmark(**kwargs)
    try:
        net = lenet()
        batches = []
        hook = net.register_forward_pre_hook(
            lambda module, args: batches.append(colour_classes(args[0])) if module.training else None)
        with oo.enable_cpu_fallback():
            evaluator = Evaluator(net, id_name="sortedbench", data_root=kwargs["data_root"],
                                  config_root=quick_configs,
                                  postprocessor_name=name, batch_size=8, num_workers=0)
        hook.remove()
        assert batches and all(len(set(b)) > 1 for b in batches), batches  # mixed-class batches
        pp = evaluator.postprocessor
        finetune = pp.options.finetune
        assert len(batches) == finetune.epochs * 3

        # the core engine on an identically seeded shuffled loader over the same images
        dataset = evaluator.dataloader_dict["id"]["train"].dataset
        loader = DataLoader(dataset, batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(finetune.seed))
        core = lenet()
        RUNNERS[pp.mode](core, loader, pp.xi, finetune)
        assert _same_weights(net, core) == []
    finally:
        oo.unregister_benchmark("sortedbench")
