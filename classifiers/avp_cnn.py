"""The AVP-CNN g: a DenseNet that maps a partial observation to label probabilities.

Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models" (2021),
§5 and appendix B.4: g is a DenseNet-121 (Huang, Liu, van der Maaten & Weinberger, "Densely
Connected Convolutional Networks", 2017) on masked chest x-rays with 15 sigmoid outputs, the 14
ChestX-ray14 findings and "Any" (here: one output per label of the training data), trained with
cross-entropy on masks of 0-5 squares of 25% of the image width. The network sees the masked
image and the mask as two channels, ``cat([x*m, m])``, so "not observed" is distinguishable from
"observed and dark".

Shapes: ``observed``, ``mask`` ``(B, 1, H, W)`` float32 (mask in {0, 1}); logits ``(B, L)``;
features ``(B, F)`` (the globally pooled activations before the last linear layer).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from monai.networks.nets import DenseNet
from torch import nn

from classifiers.config import ClassifierConfig
from classifiers.errors import ClassifierError


class AVPCNN(nn.Module):
    """DenseNet on ``cat([x*m, m])`` returning one logit per label (``config.labels``)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.net = DenseNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.num_labels,
            init_features=config.init_features,
            growth_rate=config.growth_rate,
            block_config=tuple(config.block_config),
            bn_size=config.bn_size,
            dropout_prob=config.dropout,
        )

    @property
    def num_features(self) -> int:
        return self.net.class_layers.out.in_features

    @staticmethod
    def network_input(observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H, W)``: the observed pixels (re-masked, so full images are accepted) and the mask."""
        return torch.cat([observed * mask, mask], dim=1)

    def features(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled DenseNet features ``(B, F)``."""
        h = self.net.features(self.network_input(observed, mask))  # (B, F, h, w)
        h = torch.relu(h)
        return h.mean(dim=(2, 3))

    def forward(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L)``."""
        return self.net.class_layers.out(self.features(observed, mask))


# torchvision names dense-layer modules "norm1"/"conv1" (old files "norm.1"); MONAI nests them in ".layers".
_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var)$"
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ClassifierError(f"{path}: ImageNet weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # tensors only: weights_only=True refuses arbitrary pickled objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is the user's file
        raise ClassifierError(f"{path}: cannot read ImageNet weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ClassifierError(f"{path}: expected a state dict of tensors")
    return state


def init_from_imagenet(model: AVPCNN, path: str | Path) -> dict[str, int]:
    """Initialise ``model`` from a user-supplied ImageNet DenseNet state dict (torchvision names).

    The first convolution's image channel gets the mean of the RGB filters (the pixel intensities
    are grey), the mask channel zero, so at the start the network sees the image as the ImageNet
    model would. The classification layer (1000 ImageNet classes) is not loaded. Nothing is
    downloaded: ``path`` is a local ``.safetensors`` file or a torch file read with
    ``weights_only=True``.

    Returns:
        counts ``{"loaded": n, "skipped": k}`` of the model's tensors.
    """
    path = Path(path)
    source = {}
    for key, value in _read_state_dict(path).items():
        key = key.removeprefix("module.")
        match = _DENSE_LAYER_KEY.match(key)
        if match:
            key = f"{match[1]}.layers.{match[2]}{match[3]}.{match[4]}"
        source[key] = value
    target = model.net.state_dict()
    conv0 = source.get("features.conv0.weight")
    if conv0 is not None and conv0.ndim == 4 and conv0.shape[1] == 3:
        first = torch.zeros_like(target["features.conv0.weight"])
        if first.shape[0] == conv0.shape[0] and first.shape[2:] == conv0.shape[2:]:
            first[:, 0] = conv0.mean(dim=1)
            source["features.conv0.weight"] = first
    loaded = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not any(k.startswith("features.denseblock") for k in loaded):
        raise ClassifierError(
            f"{path}: no DenseNet weights match this architecture "
            f"(init_features={model.config.init_features}, growth_rate={model.config.growth_rate}, "
            f"block_config={model.config.block_config}); ImageNet init needs the DenseNet-121 (paper) preset"
        )
    target.update({k: v.to(target[k].dtype) for k, v in loaded.items()})
    model.net.load_state_dict(target)
    return {"loaded": len(loaded), "skipped": len(target) - len(loaded)}
