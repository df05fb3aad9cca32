"""Checkpoint -> ONNX (+ TensorRT fp16) model directory for ``avatarcam --engine neural``."""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avatarcam.engines.neural import MODEL_FORMAT
from avatarcam.landmark_image import spec as landmark_spec
from avatarcam_train.model import (
    Embedder,
    Generator,
    ModelConfig,
    get_config,
    remove_spectral_norm,
)

log = logging.getLogger("export")

OPSET = 17


class ExportError(Exception):
    """A problem with the user's input, shown as one line."""


class IdentityNet(nn.Module):
    """K photos and their landmark images -> (ê (1, N), ψ = P·ê (1, P)): what runs once per avatar."""

    def __init__(self, embedder: Embedder, generator: Generator) -> None:
        super().__init__()
        self.embedder = embedder
        self.project = generator.project

    def forward(self, frames: torch.Tensor, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embedder(frames, landmarks).mean(dim=0, keepdim=True)
        return e, self.project(e)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(checkpoint: str | None, preset: str | None, random_weights: bool):
    """(config, embedder, generator, identity or None, provenance)."""
    if random_weights:
        config = get_config(preset or "paper")
        torch.manual_seed(0)
        return config, Embedder(config), Generator(config), None, {"random_weights": True, "preset": preset or "paper"}
    if not checkpoint:
        raise ExportError("pass --checkpoint CKPT (or --preset NAME --random-weights for a timing-only model)")
    from avatarcam_train.train import TrainError, load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
    except TrainError as e:
        raise ExportError(str(e)) from None
    config = ModelConfig.from_dict(state["config"])
    embedder, generator = Embedder(config), Generator(config)
    embedder.load_state_dict(state["embedder"])
    generator.load_state_dict(state["generator"])
    provenance = {"checkpoint": str(checkpoint), "stage": state["stage"], "step": int(state["step"]),
                  "videos": len(state.get("videos", []))}
    return config, embedder, generator, state.get("identity"), provenance


def _max_diff(session_outputs, torch_outputs) -> float:
    return float(max(np.abs(a - b.detach().numpy()).max() for a, b in zip(session_outputs, torch_outputs)))


def build_tensorrt(onnx_path: Path, plan_path: Path, input_shapes: dict[str, tuple[int, ...]]) -> str:
    """An fp16 TensorRT engine of ``onnx_path``; returns a one-line status."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed: no fp16 engine built (install tensorrt on an NVIDIA machine to get one)"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return f"TensorRT could not parse {onnx_path.name}: {errors}"
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, shape in input_shapes.items():
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return "TensorRT failed to build the fp16 engine"
    plan_path.write_bytes(bytes(serialized))
    return f"TensorRT fp16 engine written to {plan_path}"


def export_model(out: str | os.PathLike, checkpoint: str | None = None, *, preset: str | None = None,
                 random_weights: bool = False, tensorrt: bool = True, verbose: bool = True) -> dict:
    """Write the model directory; returns its ``model.json`` content."""
    import onnx
    import onnxruntime as ort

    say = print if verbose else (lambda *a, **k: None)
    config, embedder, generator, identity, provenance = _load(checkpoint, preset, random_weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for m in (embedder, generator):
        remove_spectral_norm(m).eval()
    identity_net = IdentityNet(embedder, generator).eval()
    size = config.image_size
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    landmarks = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    with torch.no_grad():
        _, adain = identity_net(frames, landmarks)
    # Like a landmark image: black with sparse strokes (nearly constant channels are where
    # runtimes differ most).
    g_input = torch.rand(1, config.generator_in_channels, size, size, generator=gen) * 2 - 1
    g_input = torch.where(torch.rand(g_input.shape, generator=gen) > 0.9, g_input, torch.full_like(g_input, -1.0))

    emb_path, gen_path = out / "embedder.onnx", out / "generator.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(identity_net, (frames, landmarks), str(emb_path), input_names=["frames", "landmarks"],
                          output_names=["embedding", "adain_params"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"frames": {0: "k"}, "landmarks": {0: "k"}})
        torch.onnx.export(generator, (g_input, adain), str(gen_path), input_names=["landmark_image", "adain_params"],
                          output_names=["image"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"landmark_image": {0: "batch"}, "adain_params": {0: "batch"},
                                        "image": {0: "batch"}})
    for path in (emb_path, gen_path):
        onnx.checker.check_model(str(path))
    say(f"onnx checker: {emb_path.name} and {gen_path.name} are valid (opset {OPSET})")

    # onnxruntime (CPU, as a user without a GPU runs it) against torch on the same inputs.
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    emb_sess = ort.InferenceSession(str(emb_path), opts, providers=["CPUExecutionProvider"])
    gen_sess = ort.InferenceSession(str(gen_path), opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch_emb = identity_net(frames, landmarks)
        torch_img = generator(g_input, adain)
    ort_emb = emb_sess.run(None, {"frames": frames.numpy(), "landmarks": landmarks.numpy()})
    ort_img = gen_sess.run(None, {"landmark_image": g_input.numpy(), "adain_params": adain.numpy()})
    diff = {"embedder": _max_diff(ort_emb, torch_emb), "generator": _max_diff(ort_img, [torch_img])}
    say(f"onnxruntime vs torch, max abs difference: embedder {diff['embedder']:.2e}, generator {diff['generator']:.2e}")

    files = {"embedder": emb_path.name, "generator": gen_path.name}
    if identity is not None:
        np.save(out / "identity.npy", identity["adain_params"].numpy().astype(np.float32))
        files["identity"] = "identity.npy"
    sizes = {name: (out / f).stat().st_size for name, f in files.items()}
    digest = hashlib.sha256("|".join(_sha256(out / f) for f in files.values()).encode()).hexdigest()[:16]
    info = {
        "format": MODEL_FORMAT,
        "model_id": digest,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": provenance.get("preset"),
        "config": config.to_dict(),
        "image_size": size,
        "generator_in_channels": config.generator_in_channels,
        "warp_guided": config.warp_guided,
        "embed_dim": config.embed_dim,
        "adain_params": int(generator.num_adain_params),
        "landmark_image": landmark_spec(),
        "files": files,
        "file_sizes": sizes,
        "onnx_opset": OPSET,
        "max_abs_diff": diff,
        "source": provenance,
    }
    if identity is not None:
        info["identity"] = {"faces_sha256": list(identity["faces_sha256"]), "file": "identity.npy"}
    if tensorrt:
        status = build_tensorrt(gen_path, out / "generator.fp16.plan",
                                {"landmark_image": tuple(g_input.shape), "adain_params": tuple(adain.shape)})
        info["tensorrt"] = status
        say(status)
    tmp = out / "model.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, out / "model.json")
    say(f"model written to {out} (id {digest})")
    return info
