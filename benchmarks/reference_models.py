"""Reference networks for the latency benchmark, timed on the same CPU runtime as avatarcam.

``fomm_vox256()`` builds the First Order Motion Model (Siarohin et al., NeurIPS 2019) at the
published ``vox-256`` sizes, the model avatarify runs: a keypoint detector (hourglass, 10
keypoints with jacobians), a dense motion network (hourglass predicting per-keypoint masks
and an occlusion map) and an occlusion-aware generator (2 down blocks, 6 residual blocks).
Speed does not depend on the weights, so they are random; ``export_fomm`` writes the two
graphs avatarify runs per frame as ONNX files and ``time_fomm`` times them with onnxruntime.

``time_paper_generator`` times the paper's generator (Zakharov et al. 2019) from
``avatarcam_train.model`` when that package is importable.
"""
from __future__ import annotations

import hashlib
import importlib
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # torch is only needed to build and export; timing uses onnxruntime alone
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - the benchmark reports the reference as skipped
    torch = None  # type: ignore[assignment]
    nn = None  # type: ignore[assignment]

FOMM_SIZE = 256
OPSET = 17  # GridSample needs 16 or newer


if nn is not None:

    class SameBlock(nn.Module):
        """Convolution, batch norm, ReLU at the same resolution."""

        def __init__(self, in_ch: int, out_ch: int, kernel: int = 3) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
            self.norm = nn.BatchNorm2d(out_ch)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.norm(self.conv(x)))

    class DownBlock(SameBlock):
        """``SameBlock`` followed by 2x average pooling."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(super().forward(x), 2)

    class UpBlock(SameBlock):
        """2x nearest upsampling followed by ``SameBlock``."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    class ResBlock(nn.Module):
        """Pre-activation residual block (BN, ReLU, conv, twice)."""

        def __init__(self, channels: int, kernel: int = 3) -> None:
            super().__init__()
            self.norm1 = nn.BatchNorm2d(channels)
            self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
            self.norm2 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(F.relu(self.norm1(x)))
            return x + self.conv2(F.relu(self.norm2(y)))

    class Hourglass(nn.Module):
        """U-Net-like encoder/decoder; the output is the decoder's features concatenated
        with the input, ``block_expansion + in_ch`` channels at the input's resolution."""

        def __init__(self, in_ch: int, block_expansion: int, num_blocks: int, max_features: int) -> None:
            super().__init__()

            def width(i: int) -> int:
                return min(max_features, block_expansion * 2 ** i)

            self.down = nn.ModuleList(
                DownBlock(in_ch if i == 0 else width(i), width(i + 1)) for i in range(num_blocks))
            self.up = nn.ModuleList(
                UpBlock((1 if i == num_blocks - 1 else 2) * width(i + 1), width(i))
                for i in reversed(range(num_blocks)))
            self.out_channels = block_expansion + in_ch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = [x]
            for block in self.down:
                skips.append(block(skips[-1]))
            out = skips.pop()
            for block in self.up:
                out = torch.cat([block(out), skips.pop()], dim=1)
            return out

    class AntiAliasDownsample(nn.Module):
        """Gaussian blur then keep every ``1/scale``-th pixel (no aliasing on 4x shrink)."""

        def __init__(self, channels: int, scale: float) -> None:
            super().__init__()
            self.step = round(1 / scale)
            sigma = (1 / scale - 1) / 2
            size = 2 * round(sigma * 4) + 1
            ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
            g = torch.exp(-ax ** 2 / (2 * sigma ** 2))
            kernel = torch.outer(g, g)
            kernel = kernel / kernel.sum()
            self.register_buffer("kernel", kernel.expand(channels, 1, size, size).clone())
            self.pad = size // 2
            self.channels = channels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.conv2d(F.pad(x, [self.pad] * 4), self.kernel, groups=self.channels)
            return x[:, :, ::self.step, ::self.step]

    def coordinate_grid(h: int, w: int) -> torch.Tensor:
        """(h, w, 2) grid of (x, y) in [-1, 1], the convention of ``grid_sample``."""
        ys = torch.linspace(-1.0, 1.0, h)
        xs = torch.linspace(-1.0, 1.0, w)
        return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)

    def inverse_2x2(m: torch.Tensor) -> torch.Tensor:
        """Closed-form inverse of (..., 2, 2) matrices (ONNX has no general Inverse op)."""
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        det = a * d - b * c
        return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]

    class KeypointDetector(nn.Module):
        """Hourglass on a downscaled frame; keypoints are the expected positions under
        softmax heatmaps, jacobians heatmap-weighted sums of a 4-channel regression."""

        def __init__(self, num_kp: int = 10, num_channels: int = 3, block_expansion: int = 32,
                     max_features: int = 1024, num_blocks: int = 5, temperature: float = 0.1,
                     scale_factor: float = 0.25, kernel: int = 7) -> None:
            super().__init__()
            self.num_kp, self.temperature = num_kp, temperature
            self.down = AntiAliasDownsample(num_channels, scale_factor)
            self.hourglass = Hourglass(num_channels, block_expansion, num_blocks, max_features)
            self.heat = nn.Conv2d(self.hourglass.out_channels, num_kp, kernel, padding=kernel // 2)
            self.jac = nn.Conv2d(self.hourglass.out_channels, 4 * num_kp, kernel, padding=kernel // 2)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feat = self.hourglass(self.down(image))
            b, _, h, w = feat.shape
            heat = F.softmax(self.heat(feat).flatten(2) / self.temperature, dim=2)  # (B, K, h*w)
            grid = coordinate_grid(h, w).reshape(1, 1, h * w, 2)
            kp = (heat[..., None] * grid).sum(dim=2)  # (B, K, 2)
            jac = self.jac(feat).reshape(b, self.num_kp, 4, h * w)
            jac = (jac * heat[:, :, None]).sum(dim=-1).reshape(b, self.num_kp, 2, 2)
            return kp, jac

    class DenseMotion(nn.Module):
        """Per-keypoint local affine motions, combined by predicted soft masks into one
        dense backward flow, plus an occlusion map; all at ``scale_factor`` resolution."""

        def __init__(self, num_kp: int = 10, num_channels: int = 3, block_expansion: int = 64,
                     max_features: int = 1024, num_blocks: int = 5, scale_factor: float = 0.25,
                     kp_variance: float = 0.01, kernel: int = 7) -> None:
            super().__init__()
            self.num_kp, self.kp_variance = num_kp, kp_variance
            self.down = AntiAliasDownsample(num_channels, scale_factor)
            in_ch = (num_kp + 1) * (num_channels + 1)
            self.hourglass = Hourglass(in_ch, block_expansion, num_blocks, max_features)
            self.mask = nn.Conv2d(self.hourglass.out_channels, num_kp + 1, kernel, padding=kernel // 2)
            self.occlusion = nn.Conv2d(self.hourglass.out_channels, 1, kernel, padding=kernel // 2)

        def _gaussians(self, kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
            d = grid[None, None] - kp[:, :, None, None, :]  # (B, K, h, w, 2)
            return torch.exp(-0.5 * (d ** 2).sum(-1) / self.kp_variance)

        def forward(self, source: torch.Tensor, kp_src: torch.Tensor, jac_src: torch.Tensor,
                    kp_drv: torch.Tensor, jac_drv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            small = self.down(source)
            b, c, h, w = small.shape
            k = self.num_kp
            grid = coordinate_grid(h, w)
            heat = self._gaussians(kp_drv, grid) - self._gaussians(kp_src, grid)  # (B, K, h, w)
            heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)[:, :, None]  # (B, K+1, 1, h, w)
            # Driving-frame position -> source position, near each keypoint.
            jac = jac_src @ inverse_2x2(jac_drv)  # (B, K, 2, 2)
            rel = grid[None, None] - kp_drv[:, :, None, None, :]  # (B, K, h, w, 2)
            motion = (jac[:, :, None, None] @ rel[..., None])[..., 0] + kp_src[:, :, None, None, :]
            motion = torch.cat([grid[None, None].expand(b, 1, h, w, 2), motion], dim=1)  # (B, K+1, h, w, 2)
            warped = F.grid_sample(
                small[:, None].expand(b, k + 1, c, h, w).reshape(b * (k + 1), c, h, w),
                motion.reshape(b * (k + 1), h, w, 2), align_corners=False,
            ).reshape(b, k + 1, c, h, w)
            feat = self.hourglass(torch.cat([heat, warped], dim=2).reshape(b, -1, h, w))
            mask = F.softmax(self.mask(feat), dim=1)[..., None]  # (B, K+1, h, w, 1)
            flow = (mask * motion).sum(dim=1)  # (B, h, w, 2)
            return flow, torch.sigmoid(self.occlusion(feat))

    class OcclusionAwareGenerator(nn.Module):
        """Encoder, feature warp by the dense motion, occlusion masking, residual
        bottleneck, decoder."""

        def __init__(self, dense_motion: DenseMotion, num_channels: int = 3, block_expansion: int = 64,
                     max_features: int = 512, num_down_blocks: int = 2, num_bottleneck_blocks: int = 6) -> None:
            super().__init__()
            self.dense_motion = dense_motion

            def width(i: int) -> int:
                return min(max_features, block_expansion * 2 ** i)

            self.first = SameBlock(num_channels, block_expansion, kernel=7)
            self.down = nn.Sequential(*(DownBlock(width(i), width(i + 1)) for i in range(num_down_blocks)))
            self.bottleneck = nn.Sequential(*(ResBlock(width(num_down_blocks)) for _ in range(num_bottleneck_blocks)))
            self.up = nn.Sequential(*(UpBlock(width(i + 1), width(i)) for i in reversed(range(num_down_blocks))))
            self.final = nn.Conv2d(block_expansion, num_channels, 7, padding=3)

        def forward(self, source: torch.Tensor, kp_src: torch.Tensor, jac_src: torch.Tensor,
                    kp_drv: torch.Tensor, jac_drv: torch.Tensor) -> torch.Tensor:
            feat = self.down(self.first(source))
            flow, occlusion = self.dense_motion(source, kp_src, jac_src, kp_drv, jac_drv)
            if flow.shape[1:3] != feat.shape[2:]:
                flow = F.interpolate(flow.permute(0, 3, 1, 2), size=feat.shape[2:], mode="bilinear").permute(0, 2, 3, 1)
                occlusion = F.interpolate(occlusion, size=feat.shape[2:], mode="bilinear")
            feat = F.grid_sample(feat, flow, align_corners=False) * occlusion
            return torch.sigmoid(self.final(self.up(self.bottleneck(feat))))


def fomm_vox256() -> tuple[Any, Any]:
    """(keypoint detector, generator) at FOMM's published vox-256 configuration."""
    if torch is None:
        raise RuntimeError("torch is not installed (pip install 'avatarcam[train]')")
    kp = KeypointDetector(num_kp=10, block_expansion=32, max_features=1024, num_blocks=5,
                          temperature=0.1, scale_factor=0.25)
    motion = DenseMotion(num_kp=10, block_expansion=64, max_features=1024, num_blocks=5, scale_factor=0.25)
    gen = OcclusionAwareGenerator(motion, block_expansion=64, max_features=512, num_down_blocks=2,
                                  num_bottleneck_blocks=6)
    return kp.eval(), gen.eval()


def parameter_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _export(module: Any, args: tuple, path: Path, input_names: list[str], output_names: list[str]) -> None:
    import warnings

    tmp = path.with_suffix(".partial.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=output_names,
                          opset_version=OPSET, dynamo=False)
    tmp.replace(path)


def export_fomm(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Write ``fomm_kp_detector.onnx`` and ``fomm_generator.onnx`` (dense motion inside),
    random weights, into ``out_dir``; existing files are reused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kp_path, gen_path = out_dir / "fomm_kp_detector.onnx", out_dir / "fomm_generator.onnx"
    torch.manual_seed(seed)
    kp, gen = fomm_vox256()
    info = {"kp_detector_params": parameter_count(kp), "dense_motion_params": parameter_count(gen.dense_motion),
            "generator_params": parameter_count(gen) - parameter_count(gen.dense_motion)}
    image = torch.rand(1, 3, FOMM_SIZE, FOMM_SIZE)
    if not kp_path.exists():
        _export(kp, (image,), kp_path, ["image"], ["kp", "jacobian"])
    if not gen_path.exists():
        with torch.no_grad():
            kp_s, jac_s = kp(image)
        _export(gen, (image, kp_s, jac_s, kp_s + 0.01, jac_s), gen_path,
                ["source", "kp_source", "jacobian_source", "kp_driving", "jacobian_driving"], ["prediction"])
    return {"kp_detector": kp_path, "generator": gen_path, **info}


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


def time_fomm(out_dir: Path, frames: int = 10, warmup: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Per-frame cost of FOMM as avatarify runs it: keypoints of the driving frame, then
    dense motion + generator against the source (whose keypoints are computed once)."""
    t0 = time.perf_counter()
    paths = export_fomm(out_dir)
    export_s = time.perf_counter() - t0
    kp_sess, gen_sess = _session(paths["kp_detector"], threads), _session(paths["generator"], threads)
    rng = np.random.default_rng(0)
    source = rng.random((1, 3, FOMM_SIZE, FOMM_SIZE), dtype=np.float32)
    kp_s, jac_s = kp_sess.run(None, {"image": source})
    kp_ms, gen_ms, total_ms = [], [], []
    for i in range(warmup + frames):
        driving = rng.random((1, 3, FOMM_SIZE, FOMM_SIZE), dtype=np.float32)
        a = time.perf_counter()
        kp_d, jac_d = kp_sess.run(None, {"image": driving})
        b = time.perf_counter()
        (pred,) = gen_sess.run(None, {"source": source, "kp_source": kp_s, "jacobian_source": jac_s,
                                      "kp_driving": kp_d, "jacobian_driving": jac_d})
        c = time.perf_counter()
        assert pred.shape == (1, 3, FOMM_SIZE, FOMM_SIZE) and np.isfinite(pred).all()
        if i >= warmup:
            kp_ms.append(1000 * (b - a))
            gen_ms.append(1000 * (c - b))
            total_ms.append(1000 * (c - a))
    total = _stats(total_ms)
    return {
        "model": "FOMM vox-256 (kp detector + dense motion + occlusion-aware generator), random weights",
        "runtime": "onnxruntime CPUExecutionProvider",
        "input": f"{FOMM_SIZE}x{FOMM_SIZE}",
        "params": {k: paths[k] for k in ("kp_detector_params", "dense_motion_params", "generator_params")},
        "kp_detector_ms": _stats(kp_ms),
        "generator_ms": _stats(gen_ms),
        "frame_ms": total,
        "fps": 1000.0 / total["p50"],
        "export_s": export_s,
        "onnx_dir": str(out_dir),
    }


def time_paper_generator(out_dir: Path, frames: int = 10, warmup: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Per-frame cost of the paper's generator at 256x256, built by ``avatarcam_train.model``
    (``build_generator("paper")``; the identity's AdaIN parameters are an input, computed
    once per avatar, as ``--engine neural`` runs it)."""
    try:
        model = importlib.import_module("avatarcam_train.model")
    except ImportError as exc:
        return {"skipped": f"avatarcam_train.model could not be imported ({exc}); the paper generator was not timed"}
    torch.manual_seed(0)
    gen = model.build_generator("paper").eval()
    inputs = model.generator_input_example("paper", generator=gen)
    params = parameter_count(gen) - parameter_count(gen.project)  # P runs once per avatar, not per frame
    # Spectral norm is a training-time reparametrisation; deployed weights are plain.
    gen = model.remove_spectral_norm(gen)
    # The export is cached under a name that changes with the model's definition.
    digest = hashlib.sha256(Path(model.__file__).read_bytes()).hexdigest()[:12]
    path = out_dir / f"paper_generator-{digest}.onnx"
    t0 = time.perf_counter()
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        _export(gen, inputs, path, ["landmark_image", "adain_params"], ["image"])
    export_s = time.perf_counter() - t0
    sess = _session(path, threads)
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), inputs)}
    ms = []
    for i in range(warmup + frames):
        a = time.perf_counter()
        (image,) = sess.run(None, feeds)
        if i >= warmup:
            ms.append(1000 * (time.perf_counter() - a))
    assert np.isfinite(image).all()
    stats = _stats(ms)
    return {"model": "Zakharov et al. 2019 generator (avatarcam_train.model, preset 'paper'), random weights",
            "runtime": "onnxruntime CPUExecutionProvider",
            "input": "x".join(str(d) for d in inputs[0].shape[-2:]),
            "params": params, "frame_ms": stats, "fps": 1000.0 / stats["p50"],
            "export_s": export_s, "onnx_dir": str(out_dir)}


def fomm_gmacs() -> float:
    """Multiply-accumulates per frame (billions) of FOMM's convolutions: keypoints of
    the driving frame plus dense motion and generator."""
    kp, gen = fomm_vox256()
    total = 0

    def hook(mod: Any, inp: Any, out: Any) -> None:
        nonlocal total
        k = mod.weight.shape
        total += out.numel() * k[1] * k[2] * k[3]

    handles = [m.register_forward_hook(hook) for m in list(kp.modules()) + list(gen.modules())
               if isinstance(m, nn.Conv2d) and m.groups == 1]
    image = torch.rand(1, 3, FOMM_SIZE, FOMM_SIZE)
    with torch.no_grad():
        kp_s, jac_s = kp(image)
        gen(image, kp_s, jac_s, kp_s, jac_s)
    for h in handles:
        h.remove()
    return total / 1e9
