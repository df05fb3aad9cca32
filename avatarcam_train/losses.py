"""Losses of the meta-learning and fine-tuning stages.

The paper's content loss compares VGG19/VGGFace activations; no pretrained weights can be
downloaded here, so the content loss is L1 + multi-scale SSIM (+ D's feature matching), and
:class:`VGGContentLoss` is used only when the user passes a VGG19 state dict.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: max(0, 1 - r(real)) + max(0, 1 + r(fake))."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial term: -r(fake)."""
    return -fake_scores.mean()


def feature_matching_loss(real_features: list[torch.Tensor], fake_features: list[torch.Tensor]) -> torch.Tensor:
    """L1 between D's activations on the real and the generated frame (real ones fixed)."""
    return sum(F.l1_loss(f, r.detach()) for r, f in zip(real_features, fake_features)) / max(len(real_features), 1)


def embedding_match_loss(columns: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """L1 between D's video columns W_i and the embedder's ê_i (the paper's L_MCH)."""
    return F.l1_loss(columns, embeddings)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    pad = window.shape[-1] // 2
    mu_x = F.conv2d(x, window, padding=pad, groups=c)
    mu_y = F.conv2d(y, window, padding=pad, groups=c)
    sxx = F.conv2d(x * x, window, padding=pad, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, window, padding=pad, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, window, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # for images in [0, 1]
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (luminance * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int = 5, window_size: int = 11) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of images in [-1, 1], per image (B,); as many of
    the standard 5 scales as the image size allows."""
    x, y = (x + 1) / 2, (y + 1) / 2
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], device=x.device, dtype=x.dtype)
    scales = max(1, min(scales, int(torch.log2(torch.tensor(min(x.shape[-2:]) / 8.0)).item()) + 1))
    weights = weights[:scales] / weights[:scales].sum()
    window = _gaussian_window(min(window_size, min(x.shape[-2:])), 1.5, x.shape[1], x.device, x.dtype)
    result = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
    for s in range(scales):
        ssim, cs = _ssim_parts(x, y, window)
        value = ssim if s == scales - 1 else cs
        result = result * value.clamp(min=1e-6) ** weights[s]
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result


def ms_ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - ms_ssim(x, y).mean()


# VGG19's convolutional layers ("M" = max pool), torchvision's ``features`` numbering.
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


class VGGContentLoss(nn.Module):
    """L1 between VGG19 activations (the paper's conv1, 6, 11, 20, 29 ReLUs) of two images.

    ``weights``: a torchvision-layout VGG19 state dict (``features.N.weight``) the user has.
    """

    layers = (1, 6, 11, 20, 29)

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        cin = 3
        for v in _VGG19:
            if v == "M":
                modules.append(nn.MaxPool2d(2))
            else:
                modules += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*modules[:max(self.layers) + 1])
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) < len(self.features)})
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).add(1).div(2).sub(self.mean).div(self.std)
        loss = h.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.layers:
                a, b = h.chunk(2)
                loss = loss + F.l1_loss(a, b.detach())
        return loss
