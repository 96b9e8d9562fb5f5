"""The authors' DenseNet-BC-100, registered as OpenOOD network ``densenet_bc100``."""
import pytest
import torch


def their_parameter_count(num_classes, depth=100, growth=12):
    """Parameters of their models/densenet.py DenseNet3 (bottleneck, compression 0.5,
    bias-free convolutions, NonAffineBatchNorm: BN has none), counted from its constructor."""
    n = (depth - 4) // 6
    planes, count = 2 * growth, 3 * 2 * growth * 9
    for block in range(3):
        for i in range(n):
            cin = planes + i * growth
            count += cin * 4 * growth + 4 * growth * growth * 9  # 1x1 then 3x3 convolution
        planes += n * growth
        if block < 2:
            count += planes * (planes // 2)
            planes //= 2
    return count + planes * num_classes + num_classes


@pytest.mark.parametrize("num_classes", [10, 100])
def test_architecture_is_theirs(oo, num_classes):
    from openood.networks.densenet import DenseNet3

    from um_plugin.openood.registry.densenet import DenseNetBC100
    net = DenseNetBC100(num_classes)
    ours = sum(p.numel() for p in net.parameters())
    assert ours == their_parameter_count(num_classes)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.affine for m in bns)
    # OpenOOD's densenet is the same network with affine BatchNorm and no dropout
    theirs = DenseNet3(num_classes=num_classes)
    assert sum(p.numel() for p in theirs.parameters()) - ours == sum(2 * m.num_features for m in bns)
    keys = net.state_dict().keys()
    assert {"conv1.weight", "block1.layer.0.bn1.running_mean", "block3.layer.15.conv2.weight",
            "trans2.conv1.weight", "bn1.running_var", "fc.weight", "fc.bias"} <= set(keys)
    assert net.feature_size == 342 and net.block1.layer[0].droprate == 0.3


def test_openood_forward_contract_and_dropout(oo):
    from um_plugin.openood.registry.densenet import DenseNetBC100
    torch.manual_seed(0)
    net = DenseNetBC100(10).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feature = net(x, return_feature=True)
    assert logits.shape == (2, 10) and feature.shape == (2, 342)
    _, features = net(x, return_feature_list=True)
    assert [tuple(f.shape[1:]) for f in features] == [(24, 32, 32), (108, 16, 16), (150, 8, 8),
                                                     (342, 8, 8)]
    assert torch.equal(net(x), logits)
    assert torch.allclose(net.forward_threshold(x, 1e9), logits)
    assert not torch.allclose(net.forward_threshold(x, 0.0), logits)
    net.train()
    assert not torch.equal(net(x), net(x))  # dropout 0.3 in training, as theirs


def test_main_py_and_eval_build_it_by_name_and_load_their_checkpoint_format(oo, tmp_path):
    from openood.pipelines import train_oe_pipeline
    from openood.utils import Config

    from um_plugin.openood.registry.densenet import DenseNetBC100
    from um_plugin.openood.evaluation.evaluate import network_factory, openood_network_names
    assert "densenet_bc100" in openood_network_names() and "densenet" in openood_network_names()
    saved = DenseNetBC100(10)
    path = tmp_path / "densenet_cifar10_last.state"  # their save_checkpoint, DataParallel keys
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in
                                             saved.state_dict().items()}}, path)
    config = Config({"name": "densenet_bc100", "num_classes": 10, "pretrained": True,
                     "checkpoint": str(path), "num_gpus": 0})
    net = train_oe_pipeline.get_network(config)  # the copy a pipeline imported
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                  saved.state_dict().values()))
    from um_plugin.openood.cpu import enable_cpu_fallback
    with enable_cpu_fallback():  # as `um-openood eval --cpu`: get_network's .cuda() stays put
        assert isinstance(network_factory("densenet_bc100", 100, "cpu")(), DenseNetBC100)
    config.num_classes = 100
    with pytest.raises(ValueError, match=r"network.checkpoint .* does not fit network "
                                         r"'densenet_bc100'"):
        train_oe_pipeline.get_network(config)


def test_the_shipped_network_yaml_builds_it(oo):
    import os

    from openood.networks import get_network
    from openood.utils import Config

    from um_plugin.openood.registry.densenet import DenseNetBC100
    from um_plugin.shipped import configs_root
    config = Config(os.path.join(configs_root(), "networks", "densenet_bc100.yml"))
    config.network.update(num_classes=100, num_gpus=0)  # main.py fills the '@{...}' references
    assert isinstance(get_network(config.network), DenseNetBC100)
