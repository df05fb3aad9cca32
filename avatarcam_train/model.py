"""The few-shot talking-head networks of Zakharov et al. 2019 (arXiv:1905.08233).

Three networks, every size set through constructor arguments (see :class:`ModelConfig`):

- :class:`Embedder` E(frame, landmark image) -> an N-d identity vector; the K frames of one
  person are averaged into ê.
- :class:`Generator` G(landmark image, ψ): residual downsampling (instance norm), residual
  blocks and residual upsampling blocks whose adaptive instance norms take their scales and
  biases from ψ = P·ê (P is ``Generator.project``).
- :class:`Discriminator` D(frame, landmark image, video index): residual downsampling, a
  4x4 residual block, sum pooling, and a projection head with one learned column per
  training video (W) plus a shared column (w0) and bias (b).

Public, stable API (the latency benchmark imports it):
``build_generator(preset)``, ``generator_input_example(preset)``, ``build_embedder``,
``build_discriminator``, ``PRESETS``, ``ModelConfig``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of all three networks."""

    image_size: int = 256
    base_channels: int = 64  # channels after the first downsampling block
    max_channels: int = 512
    embed_dim: int = 512  # N, the size of ê (and of D's pooled vector)
    generator_down: int = 4  # downsampling blocks in G (256 -> 16)
    generator_res_blocks: int = 5  # AdaIN residual blocks at the bottleneck
    attention_down: tuple[int, ...] = (32,)  # resolutions with self-attention in every downsampling part
    attention_up: tuple[int, ...] = (64,)  # ... and in G's upsampling part
    spectral_norm: bool = True
    warp_guided: bool = False  # G also sees the warp engine's rendering (3 more input channels)

    @property
    def generator_in_channels(self) -> int:
        return 6 if self.warp_guided else 3

    @property
    def embed_down(self) -> int:
        """Downsampling blocks of E and D: down to 4x4, as in the paper."""
        return round(math.log2(self.image_size / 4))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_down"] = list(self.attention_down)
        d["attention_up"] = list(self.attention_up)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("attention_down", "attention_up"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


PRESETS: dict[str, ModelConfig] = {
    # A few seconds per step on a laptop CPU; for tests and smoke runs.
    "tiny": ModelConfig(image_size=64, base_channels=16, max_channels=64, embed_dim=64, generator_down=3,
                        generator_res_blocks=1, attention_down=(), attention_up=(), spectral_norm=True),
    # Trains on one GPU in minutes, on a CPU in an hour.
    "small": ModelConfig(image_size=128, base_channels=32, max_channels=256, embed_dim=256, generator_down=4,
                         generator_res_blocks=3, attention_down=(16,), attention_up=(32,)),
    # The published sizes at 256x256 (Zakharov et al. 2019, sec. 3.4): G downsamples with residual
    # blocks (instance norm) from 64 to 512 channels, then residual blocks (5, as in the Johnson et
    # al. transformation network G is based on) and upsampling residual blocks with AdaIN;
    # self-attention at 32x32 in every downsampling part and at 64x64 in G's upsampling part; E and
    # D downsample with residual blocks (no normalisation) to 512 channels and sum-pool to a 512-d
    # vector; D has one more residual block at 4x4; spectral norm on all layers.
    "paper": ModelConfig(),
}


def get_config(preset: str | ModelConfig, **overrides) -> ModelConfig:
    if isinstance(preset, ModelConfig):
        config = preset
    else:
        try:
            config = PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}") from None
    return replace(config, **overrides) if overrides else config


def _channels(config: ModelConfig, blocks: int) -> list[int]:
    return [min(config.base_channels * 2 ** i, config.max_channels) for i in range(blocks)]


class _SN:
    """Wraps layers in spectral norm when enabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, layer: nn.Module) -> nn.Module:
        return nn.utils.parametrizations.spectral_norm(layer) if self.enabled else layer


class SelfAttention(nn.Module):
    """SAGAN self-attention; starts as the identity (gamma = 0)."""

    def __init__(self, channels: int, sn: _SN) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = sn(nn.Conv2d(channels, inner, 1))
        self.key = sn(nn.Conv2d(channels, inner, 1))
        self.value = sn(nn.Conv2d(channels, channels, 1))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(x).flatten(2)  # (B, C', HW)
        attn = torch.softmax(q @ k, dim=-1)  # (B, HW, HW)
        v = self.value(x).flatten(2)  # (B, C, HW)
        out = (v @ attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


def _normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel instance normalisation, written out as mean then centred variance: ONNX
    runtimes' fused InstanceNormalization loses precision on nearly constant channels (a
    landmark image is mostly black), this form matches torch to ~1e-6."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred / torch.sqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + eps)


class InstanceNorm(nn.Module):
    """Instance norm with a learned per-channel scale and bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _normalize(x) * self.weight[:, None, None] + self.bias[:, None, None]


class AdaIN(nn.Module):
    """Instance norm whose per-channel scale and bias come from ψ. Scale is ``1 + s`` so a
    freshly initialised P leaves activations normalised rather than zeroed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_params = 2 * channels

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        scale, bias = params[:, :self.channels], params[:, self.channels:]
        return _normalize(x) * (1 + scale[:, :, None, None]) + bias[:, :, None, None]


class ResBlockDown(nn.Module):
    """Residual downsampling block (BigGAN-style); instance norm in G, none in E and D."""

    def __init__(self, cin: int, cout: int, sn: _SN, norm: bool, first: bool = False) -> None:
        super().__init__()
        self.first = first  # no activation before the first conv: the input is an image
        # The first block sees the input image itself, which is not normalised.
        self.norm1 = InstanceNorm(cin) if norm and not first else nn.Identity()
        self.conv1 = sn(nn.Conv2d(cin, cout, 3, padding=1))
        self.norm2 = InstanceNorm(cout) if norm else nn.Identity()
        self.conv2 = sn(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h = h if self.first else F.relu(h)
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)


class ResBlock(nn.Module):
    """Residual block at constant resolution; AdaIN when ``adain``, no norm otherwise."""

    def __init__(self, channels: int, sn: _SN, adain: bool) -> None:
        super().__init__()
        self.norm1 = AdaIN(channels) if adain else None
        self.norm2 = AdaIN(channels) if adain else None
        self.conv1 = sn(nn.Conv2d(channels, channels, 3, padding=1))
        self.conv2 = sn(nn.Conv2d(channels, channels, 3, padding=1))
        self.num_params = 4 * channels if adain else 0

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm1 is None:
            return x + self.conv2(F.relu(self.conv1(F.relu(x))))
        p1, p2 = params.split([self.norm1.num_params, self.norm2.num_params], dim=1)
        h = self.conv1(F.relu(self.norm1(x, p1)))
        h = self.conv2(F.relu(self.norm2(h, p2)))
        return x + h


class ResBlockUp(nn.Module):
    """Residual upsampling block with AdaIN (nearest-neighbour x2)."""

    def __init__(self, cin: int, cout: int, sn: _SN) -> None:
        super().__init__()
        self.norm1 = AdaIN(cin)
        self.conv1 = sn(nn.Conv2d(cin, cout, 3, padding=1))
        self.norm2 = AdaIN(cout)
        self.conv2 = sn(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = sn(nn.Conv2d(cin, cout, 1))
        self.num_params = 2 * cin + 2 * cout

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        p1, p2 = params.split([self.norm1.num_params, self.norm2.num_params], dim=1)
        h = F.interpolate(F.relu(self.norm1(x, p1)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), p2)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    """G(landmark image, AdaIN parameters) -> image, all in [-1, 1].

    ``project`` is the paper's matrix P: ``adain_params(ê) = P·ê`` gives ψ, the scales and
    biases of every AdaIN layer, concatenated in forward order (``adain_sizes``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        sn = _SN(config.spectral_norm)
        chans = _channels(config, config.generator_down)
        self.down = nn.ModuleList()
        self.down_attention = nn.ModuleDict()
        cin, size = config.generator_in_channels, config.image_size
        for i, cout in enumerate(chans):
            self.down.append(ResBlockDown(cin, cout, sn, norm=True, first=i == 0))
            cin, size = cout, size // 2
            if size in config.attention_down:
                self.down_attention[str(i)] = SelfAttention(cout, sn)
        self.res = nn.ModuleList(ResBlock(cin, sn, adain=True) for _ in range(config.generator_res_blocks))
        self.up = nn.ModuleList()
        self.up_attention = nn.ModuleDict()
        up_chans = list(reversed(chans[:-1])) + [chans[0]]
        for i, cout in enumerate(up_chans):
            self.up.append(ResBlockUp(cin, cout, sn))
            cin, size = cout, size * 2
            if size in config.attention_up:
                self.up_attention[str(i)] = SelfAttention(cout, sn)
        self.out_norm = AdaIN(cin)
        self.out_conv = sn(nn.Conv2d(cin, 3, 3, padding=1))
        self.adain_sizes = [b.num_params for b in self.res] + [b.num_params for b in self.up] + [self.out_norm.num_params]
        self.num_adain_params = sum(self.adain_sizes)
        self.project = sn(nn.Linear(config.embed_dim, self.num_adain_params, bias=False))  # P

    def adain_params(self, embedding: torch.Tensor) -> torch.Tensor:
        """ψ = P·ê for embeddings (B, N) -> (B, num_adain_params)."""
        return self.project(embedding)

    def forward(self, landmark_image: torch.Tensor, adain_params: torch.Tensor) -> torch.Tensor:
        chunks = adain_params.split(self.adain_sizes, dim=1)
        h = landmark_image
        for i, block in enumerate(self.down):
            h = block(h)
            if str(i) in self.down_attention:
                h = self.down_attention[str(i)](h)
        k = 0
        for block in self.res:
            h = block(h, chunks[k])
            k += 1
        for i, block in enumerate(self.up):
            h = block(h, chunks[k])
            k += 1
            if str(i) in self.up_attention:
                h = self.up_attention[str(i)](h)
        h = F.relu(self.out_norm(h, chunks[k]))
        return torch.tanh(self.out_conv(h))


class _Encoder(nn.Module):
    """Residual downsampling to 4x4, then global sum pooling and ReLU (E and D's trunk).
    ``forward`` returns the pooled vector and every block's activations (for feature matching)."""

    def __init__(self, config: ModelConfig, extra_block: bool) -> None:
        super().__init__()
        sn = _SN(config.spectral_norm)
        chans = _channels(config, config.embed_down)
        chans[-1] = config.embed_dim
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        cin, size = 6, config.image_size
        for i, cout in enumerate(chans):
            self.blocks.append(ResBlockDown(cin, cout, sn, norm=False, first=i == 0))
            cin, size = cout, size // 2
            if size in config.attention_down:
                self.attention[str(i)] = SelfAttention(cout, sn)
        self.final = ResBlock(cin, sn, adain=False) if extra_block else None

    def forward(self, image: torch.Tensor, landmark_image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.cat([image, landmark_image], dim=1)
        features = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
            features.append(h)
        if self.final is not None:
            h = self.final(h)
            features.append(h)
        return F.relu(h.sum(dim=(2, 3))), features


class Embedder(nn.Module):
    """E(frame, landmark image) -> (B, N) identity vectors."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config, extra_block=False)

    def forward(self, image: torch.Tensor, landmark_image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image, landmark_image)[0]


class Discriminator(nn.Module):
    """Projection discriminator: r = V(x, y)ᵀ(W_i + w0) + b, one column W_i per training video.

    ``forward`` returns the realism scores (B,) and the trunk's activations. ``column(i)``
    is W_i, matched to the video's embeddings by the embedding-match loss.
    """

    def __init__(self, config: ModelConfig, num_videos: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config, extra_block=True)
        self.W = nn.Parameter(torch.randn(config.embed_dim, max(num_videos, 1)) * 0.02)
        self.w0 = nn.Parameter(torch.randn(config.embed_dim) * 0.02)
        self.b = nn.Parameter(torch.zeros(1))

    @property
    def num_videos(self) -> int:
        return self.W.shape[1]

    def column(self, index: torch.Tensor) -> torch.Tensor:
        return self.W[:, index].T  # (B, N)

    def forward(self, image: torch.Tensor, landmark_image: torch.Tensor,
                index: torch.Tensor | None = None, column: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        v, features = self.encoder(image, landmark_image)
        w = column if column is not None else self.column(index)
        score = (v * (w + self.w0)).sum(dim=1) + self.b
        return score, features


def build_generator(preset: str | ModelConfig = "paper", **overrides) -> Generator:
    """The generator of a preset ("tiny", "small", "paper") or config, randomly initialised.

    ``G(landmark_image, adain_params)``: landmark_image (B, 3, H, W) float in [-1, 1] (6 channels
    when warp-guided: the landmark image then the warp rendering), adain_params
    (B, G.num_adain_params) -> image (B, 3, H, W) in [-1, 1].
    """
    return Generator(get_config(preset, **overrides))


def build_embedder(preset: str | ModelConfig = "paper", **overrides) -> Embedder:
    return Embedder(get_config(preset, **overrides))


def build_discriminator(preset: str | ModelConfig = "paper", num_videos: int = 1, **overrides) -> Discriminator:
    return Discriminator(get_config(preset, **overrides), num_videos)


def generator_input_example(preset: str | ModelConfig = "paper", batch: int = 1, generator: Generator | None = None,
                            **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    """Example ``(landmark_image, adain_params)`` for G of this preset (for export and timing)."""
    config = generator.config if generator is not None else get_config(preset, **overrides)
    num = generator.num_adain_params if generator is not None else Generator(config).num_adain_params
    size = config.image_size
    landmark = torch.rand(batch, config.generator_in_channels, size, size) * 2 - 1
    adain = torch.randn(batch, num) * 0.1
    return landmark, adain


def remove_spectral_norm(module: nn.Module) -> nn.Module:
    """Bake spectral-norm weights into plain weights (in place), for export and inference."""
    from torch.nn.utils import parametrize

    # In training mode spectral norm runs one more power iteration as it is evaluated, which
    # would bake a slightly different sigma than the one the trained model uses in eval mode.
    training = module.training
    module.eval()
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module.train(training)


__all__ = [
    "PRESETS",
    "AdaIN",
    "Discriminator",
    "Embedder",
    "Generator",
    "ModelConfig",
    "SelfAttention",
    "build_discriminator",
    "build_embedder",
    "build_generator",
    "generator_input_example",
    "get_config",
    "remove_spectral_norm",
]
