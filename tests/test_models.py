import pytest
import torch
from torch import nn

from medclassify.errors import ConfigError
from medclassify.models import available_models, count_parameters, create_model, paper_cnn_blocks


def conv(cin, cout):
    return cin * cout * 9 + cout


def linear(cin, cout):
    return cin * cout + cout


def test_paper_cnn_at_28_is_exactly_the_papers_network():
    model = create_model("paper-cnn", in_channels=3, num_classes=8, image_size=28)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.ReLU, nn.Flatten))]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    conv1, conv2 = layers[0], layers[3]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding) == (3, 32, (3, 3), (1, 1))
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.padding) == (32, 64, (3, 3), (1, 1))
    assert (layers[7].in_features, layers[7].out_features) == (64 * 7 * 7, 128)
    assert (layers[9].in_features, layers[9].out_features) == (128, 8)
    assert count_parameters(model) == conv(3, 32) + conv(32, 64) + linear(64 * 7 * 7, 128) + linear(128, 8) == 421_960
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 8)


def test_paper_cnn_at_64_has_one_extra_conv_block_and_flattens_128x8x8():
    model = create_model("paper-cnn", in_channels=1, num_classes=11, image_size=64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64), (64, 128)]
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert fc[0].in_features == 128 * 8 * 8
    expected = conv(1, 32) + conv(32, 64) + conv(64, 128) + linear(128 * 8 * 8, 128) + linear(128, 11)
    assert count_parameters(model) == expected == 1_142_795
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 11)


@pytest.mark.parametrize("size, blocks", [(28, 2), (32, 2), (64, 3), (128, 4), (224, 5)])
def test_paper_cnn_block_rule(size, blocks):
    assert paper_cnn_blocks(size) == blocks
    model = create_model("paper-cnn", 3, 4, size)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == blocks
    assert model(torch.zeros(1, 3, size, size)).shape == (1, 4)


@pytest.mark.parametrize("name", sorted(available_models()))
@pytest.mark.parametrize("size, channels", [(28, 1), (64, 3)])
def test_every_registered_model_builds_and_runs(name, size, channels):
    model = create_model(name, channels, 5, size)
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 5)


def test_unknown_model_lists_the_registry():
    with pytest.raises(ConfigError, match="unknown model 'resnet999'; choose one of: .*paper-cnn"):
        create_model("resnet999", 3, 2, 28)
