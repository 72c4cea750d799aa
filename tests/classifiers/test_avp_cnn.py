"""The AVP-CNN module: shapes per preset, the two-channel input, ImageNet initialisation."""

import re

import pytest
import torch

from classifiers.avp_cnn import AVPCNN, init_from_imagenet
from classifiers.config import CLASSIFIER_PRESETS, ClassifierConfig, classifier_preset
from classifiers.errors import ClassifierError

SMALL = ClassifierConfig(image_size=32, init_features=8, growth_rate=4, block_config=(1, 2), bn_size=2)

SHAPE_CASES = [
    # config, batch, expected logits shape
    (SMALL, 3, (3, 15)),
    (classifier_preset("tiny"), 1, (1, 15)),
    (classifier_preset("cpu"), 2, (2, 15)),
]


@pytest.mark.parametrize("config,batch,expected", SHAPE_CASES)
def test_logits_and_features_shapes(config, batch, expected):
    model = AVPCNN(config).eval()
    x = torch.rand(batch, 1, config.image_size, config.image_size)
    m = (torch.rand_like(x) > 0.5).float()
    assert model(x, m).shape == expected
    assert model.features(x, m).shape == (batch, model.num_features)


def test_presets_exist_and_paper_is_densenet121():
    assert set(CLASSIFIER_PRESETS) >= {"cpu", "paper", "tiny"}
    paper = classifier_preset("paper")
    assert (paper.init_features, paper.growth_rate, paper.block_config) == (64, 32, (6, 12, 24, 16))
    assert paper.image_size == 256 and classifier_preset("cpu").image_size == 64


def test_hidden_pixels_do_not_matter():
    """The network sees x*m: changing pixels where m = 0 changes nothing."""
    torch.manual_seed(0)
    model = AVPCNN(SMALL).eval()
    x = torch.rand(2, 1, 32, 32)
    m = torch.zeros_like(x)
    m[..., :16, :] = 1
    y = x.clone()
    y[..., 16:, :] = torch.rand(2, 1, 16, 32)
    assert torch.equal(model(x, m), model(y, m))
    assert not torch.equal(model(x, m), model(x, torch.ones_like(m)))


def _torchvision_style_state_dict(model: AVPCNN, old_names: bool = False) -> dict[str, torch.Tensor]:
    """Turn a MONAI DenseNet state dict into torchvision's naming, with a 3-channel conv0 and 1000 classes."""
    out = {}
    for key, value in model.net.state_dict().items():
        m = re.match(r"^(.*denselayer\d+)\.layers\.(norm|relu|conv)([12])\.(.*)$", key)
        if m:
            sep = "." if old_names else ""
            key = f"{m[1]}.{m[2]}{sep}{m[3]}.{m[4]}"
        if key.startswith("class_layers"):
            continue
        out[key] = value.clone()
    conv0 = out["features.conv0.weight"]
    out["features.conv0.weight"] = torch.randn(conv0.shape[0], 3, *conv0.shape[2:])
    out["classifier.weight"] = torch.randn(1000, model.num_features)
    out["classifier.bias"] = torch.randn(1000)
    return out


@pytest.mark.parametrize("fmt,old_names", [("safetensors", False), ("pt", True)])
def test_imagenet_init_maps_names_and_first_conv(tmp_path, fmt, old_names):
    torch.manual_seed(0)
    source_model = AVPCNN(SMALL)
    state = _torchvision_style_state_dict(source_model, old_names=old_names)
    path = tmp_path / f"imagenet.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    model = AVPCNN(SMALL)
    counts = init_from_imagenet(model, path)
    assert counts["loaded"] > 10
    target = model.net.state_dict()
    conv0 = target["features.conv0.weight"]
    assert torch.allclose(conv0[:, 0], state["features.conv0.weight"].mean(dim=1))
    assert torch.count_nonzero(conv0[:, 1]) == 0  # mask channel starts at zero
    key = "features.denseblock1.denselayer1.layers.conv1.weight"
    assert torch.equal(target[key], source_model.net.state_dict()[key])


def test_imagenet_init_errors(tmp_path):
    model = AVPCNN(SMALL)
    with pytest.raises(ClassifierError, match="not found"):
        init_from_imagenet(model, tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ClassifierError, match="cannot read"):
        init_from_imagenet(model, bad)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"features.denseblock1.denselayer1.norm1.weight": torch.ones(3)}, str(other))
    with pytest.raises(ClassifierError, match="no DenseNet weights match"):
        init_from_imagenet(model, other)
