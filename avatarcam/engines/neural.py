"""The neural engine: the few-shot talking-head generator (Zakharov et al. 2019) on onnxruntime.

A model directory (written by ``python -m export``) holds ``embedder.onnx``, ``generator.onnx``
and ``model.json``. Per avatar, the embedder runs once on the avatar's photos and its AdaIN
parameters ψ = P·ê are cached with the avatar; per frame, the pose's landmarks are drawn as the
landmark image in a square crop around the face, the generator turns it into a face, and the
face is blended through a soft mask into the warp engine's rendering of the same pose (which
moves hair, neck and background with the head). onnxruntime only: no torch here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from avatarcam.avatar import Avatar
from avatarcam.engines.warp import WarpEngine
from avatarcam.errors import AvatarcamError
from avatarcam.framing import Framing
from avatarcam.landmark_image import (
    SPEC_VERSION,
    FaceCrop,
    draw_landmark_image,
    face_mask,
    from_network,
    to_network,
)
from avatarcam.retarget import AvatarPose

log = logging.getLogger(__name__)

# The prepared data embeds the warp engine's (the background and the blend come from it),
# so a new warp version prepares avatars again here too.
VERSION = f"neural-1+{WarpEngine.version}"
# Bump when model.json or the ONNX inputs/outputs change; older model directories are refused.
MODEL_FORMAT = 1
HOW_TO_GET_ONE = ("train and export one: avatarcam-train meta --data VIDEOS --out RUN && "
                  "python -m export --checkpoint RUN/checkpoint.pt --out DIR (README: 'Neural engine')")
_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_model_dir() -> Path:
    """Where ``--engine neural`` looks without ``--model``: the user's data dir."""
    import platformdirs

    return Path(platformdirs.user_data_dir("avatarcam")) / "models" / "default"


class NeuralModel:
    """An exported model directory, checked and opened with onnxruntime."""

    def __init__(self, model_dir: str | os.PathLike) -> None:
        root = Path(model_dir).expanduser()
        self.root = root
        if not root.exists():
            raise AvatarcamError(f"neural model {root} not found; {HOW_TO_GET_ONE}")
        if not root.is_dir():
            raise AvatarcamError(f"neural model {root} is not a folder; pass the folder python -m export wrote")
        meta_path = root / "model.json"
        if not meta_path.is_file():
            raise AvatarcamError(f"{root} has no model.json, so it is not an exported avatarcam model; {HOW_TO_GET_ONE}")
        try:
            info = json.loads(meta_path.read_text())
            if not isinstance(info, dict):
                raise TypeError("not an object")
        except (OSError, ValueError, TypeError) as e:
            raise AvatarcamError(f"{meta_path} is damaged ({e.__class__.__name__}); export the model again") from None
        if info.get("format") != MODEL_FORMAT:
            raise AvatarcamError(f"{root} is model format {info.get('format')!r} but this avatarcam reads format "
                                 f"{MODEL_FORMAT}; export it again with this version (python -m export)")
        spec = info.get("landmark_image", {})
        if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
            raise AvatarcamError(f"{root} was trained on landmark images of another version "
                                 f"({spec.get('version') if isinstance(spec, dict) else spec!r}, this avatarcam draws "
                                 f"version {SPEC_VERSION}); train and export it again")
        try:
            self.model_id = str(info["model_id"])
            self.image_size = int(info["image_size"])
            self.in_channels = int(info["generator_in_channels"])
            self.num_adain = int(info["adain_params"])
            files = {k: str(v) for k, v in info["files"].items()}
            sizes = {k: int(v) for k, v in info.get("file_sizes", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AvatarcamError(f"{meta_path} lacks {e}; export the model again") from None
        self.warp_guided = self.in_channels == 6
        self.info = info
        for key in ("embedder", "generator"):
            if key not in files:
                raise AvatarcamError(f"{meta_path} names no {key} file; export the model again")
        for key, name in files.items():
            path = root / name
            if not path.is_file():
                raise AvatarcamError(f"{path} is missing; export the model again")
            if key in sizes and path.stat().st_size != sizes[key]:
                raise AvatarcamError(f"{path} is incomplete ({path.stat().st_size} of {sizes[key]} bytes); "
                                     "copy or export the model again")
        self.identity = None
        if "identity" in files:
            ident = info.get("identity", {})
            self.identity = (set(ident.get("faces_sha256", [])), np.load(root / files["identity"]).astype(np.float32))
        self.providers = self._providers()
        self.embedder = self._session(root / files["embedder"])
        self.generator = self._session(root / files["generator"])

    def _providers(self) -> list:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        chosen: list = []
        for name in _PROVIDERS:
            if name not in available:
                continue
            if name == "TensorrtExecutionProvider":
                cache = self.root / "trt-cache"
                chosen.append((name, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": str(cache)}))
            else:
                chosen.append(name)
        return chosen

    def _session(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own, unexported exception types)
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise AvatarcamError(f"cannot load {path}: {first}; export the model again") from None

    def embed(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(K, 3, S, S) photos and landmark images in [-1, 1] -> AdaIN parameters (1, P)."""
        _, adain = self.embedder.run(None, {"frames": frames.astype(np.float32),
                                            "landmarks": landmarks.astype(np.float32)})
        return adain

    def generate(self, landmark_image: np.ndarray, adain: np.ndarray) -> np.ndarray:
        """(1, C, S, S) input and (1, P) AdaIN parameters -> (1, 3, S, S) image in [-1, 1]."""
        return self.generator.run(None, {"landmark_image": landmark_image.astype(np.float32),
                                         "adain_params": adain.astype(np.float32)})[0]


_MODELS: dict[str, NeuralModel] = {}


def load_model(model_dir: str | os.PathLike) -> NeuralModel:
    """The model in ``model_dir``, opened once per process."""
    key = str(Path(model_dir).expanduser().resolve())
    if key not in _MODELS:
        _MODELS[key] = NeuralModel(model_dir)
    return _MODELS[key]


def _sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _identity_examples(avatar: Avatar, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The avatar's photos (all of them, few-shot) as crops and landmark images."""
    from avatarcam.images import load_image
    from avatarcam.tracking import detect_faces

    shots = [(avatar.image, avatar.landmarks)]
    for src in avatar.sources[1:] if len(avatar.sources) > 1 else []:
        try:
            image = load_image(src)
        except AvatarcamError:
            continue
        found = detect_faces(image, max_faces=1)
        if found:
            shots.append((image, found[0]))
    frames, marks = [], []
    for image, points in shots:
        crop = FaceCrop.around(points, size)
        frames.append(to_network(crop.cut(image)))
        marks.append(to_network(draw_landmark_image(crop.to_crop(points), size)))
    return np.stack(frames), np.stack(marks)


class NeuralEngine:
    """Renders an avatar with a trained generator. Use :func:`neural_engine_class` to bind a
    model directory; the bound class has the WarpEngine interface."""

    name = "neural"
    version = VERSION
    model: NeuralModel | None = None

    @classmethod
    def prepare(cls, avatar: Avatar) -> dict[str, np.ndarray]:
        """Warp data plus the identity's AdaIN parameters (the embedder runs here, once)."""
        model = cls._model()
        data = {f"warp_{k}": v for k, v in WarpEngine.prepare(avatar).items()}
        adain = None
        if model.identity is not None:
            hashes, params = model.identity
            if avatar.sources and all(_sha256(s) in hashes for s in avatar.sources):
                adain = params.reshape(1, -1)  # the model was fine-tuned on exactly these photos
        if adain is None:
            frames, marks = _identity_examples(avatar, model.image_size)
            adain = model.embed(frames, marks)
        data["adain_params"] = np.asarray(adain, np.float32).reshape(1, -1)
        return data

    @classmethod
    def _model(cls) -> NeuralModel:
        if cls.model is None:
            raise AvatarcamError("the neural engine needs a model: pass --model DIR")
        return cls.model

    def __init__(self, avatar: Avatar, framing: Framing | None = None) -> None:
        model = self._model()
        self.avatar = avatar
        self.framing = framing or Framing.native(avatar.size)
        data = avatar.engine_data
        if "adain_params" not in data or data["adain_params"].shape[-1] != model.num_adain:
            raise AvatarcamError(f"avatar {avatar.name} was prepared for another model; prepare it again")
        self.adain = data["adain_params"].reshape(1, -1).astype(np.float32)
        warp_avatar = Avatar(avatar.name, avatar.image, avatar.landmarks, avatar.proportions, avatar.sources,
                             avatar.key, {k[5:]: v for k, v in data.items() if k.startswith("warp_")})
        self.warp = WarpEngine(warp_avatar, self.framing)
        self.size = model.image_size

    def render(self, pose: AvatarPose) -> np.ndarray:
        """The avatar in this pose, RGB uint8 of the framing's output size."""
        model = self._model()
        image = self.warp.render(pose)
        points = np.array(pose.landmarks, dtype=np.float64, copy=True)
        points[:, :2] = self.framing.to_output(points[:, :2])
        points[:, 2] /= self.framing.scale
        crop = FaceCrop.around(points, self.size)
        in_crop = crop.to_crop(points)
        net_in = to_network(draw_landmark_image(in_crop, self.size))
        if model.warp_guided:
            net_in = np.concatenate([net_in, to_network(crop.cut(image))])
        face = from_network(model.generate(net_in[None], self.adain)[0])
        crop.paste(face, image, face_mask(in_crop, self.size))
        return image


def neural_engine_class(model_dir: str | os.PathLike | None = None) -> type[NeuralEngine]:
    """A NeuralEngine class bound to the model in ``model_dir`` (default: the user's data dir).
    Its ``version`` carries the model's id, so avatars are prepared again for another model."""
    if model_dir is None:
        model_dir = default_model_dir()
        if not model_dir.is_dir():
            raise AvatarcamError(f"no neural model given and none in {model_dir}: pass --model DIR, or {HOW_TO_GET_ONE}")
    model = load_model(model_dir)
    return type("BoundNeuralEngine", (NeuralEngine,), {"model": model, "version": f"{VERSION}:{model.model_id}"})
