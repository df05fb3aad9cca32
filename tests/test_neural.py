"""The neural engine end to end on a CPU: a tiny configuration trains (loss falls), resumes,
fine-tunes, exports to ONNX (onnxruntime matches torch), and drives the live program; bad
model directories are one clear line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from avatarcam import cli
from avatarcam.landmark_image import FaceCrop, draw_landmark_image, to_network
from avatarcam_train import train
from avatarcam_train.model import PRESETS, build_generator, generator_input_example

pytestmark = pytest.mark.neural
ROOT = Path(__file__).resolve().parents[1]
# onnxruntime and torch sum in different orders (~1e-6 measured); instance norm can magnify
# that, so the bound is 1e-4, a 78th of one 8-bit grey level.
ONNX_TOLERANCE = 1e-4
TINY = ["--preset", "tiny", "--batch", "2", "--k", "2", "--lr-g", "1e-3", "--lr-d", "1e-3", "-q"]


def _jittered(image: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` copies of a photo, each turned, scaled and shifted a little: a stand-in 'video'."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), rng.uniform(0.9, 1.1))
        m[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
        out.append(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    return out


@pytest.fixture(scope="module")
def packaged_videos(tmp_path_factory, astronaut_path, grace_path) -> Path:
    """Two 'videos' (folders of frames) made from the packaged faces."""
    root = tmp_path_factory.mktemp("videos")
    for k, path in enumerate((astronaut_path, grace_path)):
        folder = root / path.stem
        folder.mkdir()
        for i, frame in enumerate(_jittered(cv2.imread(str(path)), 6, seed=k)):
            cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    return root


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("frames")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny networks are too small to gain from threads; on a busy machine, torch's
    spinning worker threads cost ten times the CPU time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(args: list[str]) -> int:
    torch.manual_seed(0)
    return train.main(args)


def _first_last(log: list[dict], key: str = "l1", n: int = 6) -> tuple[float, float]:
    values = [row[key] for row in log]
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, packaged_videos, frame_cache) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert _train(["meta", "--data", str(packaged_videos), "--out", str(out), "--steps", "30",
                   "--save-every", "10", "--cache-dir", str(frame_cache), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_run) -> Path:
    from export import export_model

    out = tmp_path_factory.mktemp("model")
    export_model(out, str(tiny_run / "checkpoint.pt"), verbose=False)
    return out


@pytest.fixture(scope="module")
def driving_clip(tmp_path_factory, grace_path) -> Path:
    """Grace Hopper turning her head, as an mp4 (no shared data needed)."""
    path = tmp_path_factory.mktemp("clip") / "grace.mp4"
    frames = _jittered(cv2.imread(str(grace_path)), 10, seed=7)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_landmark_image_and_face_crop(astronaut_avatar):
    from avatarcam import landmarks as lm

    points = astronaut_avatar.landmarks
    crop = FaceCrop.around(points, 128)
    inside = crop.to_crop(points)
    assert (inside[:, :2] > 0).all() and (inside[:, :2] < 128).all()
    assert np.allclose(crop.to_image(inside)[:, :2], points[:, :2])
    image = draw_landmark_image(inside, 128)
    assert 0.02 < (image.max(axis=2) > 0).mean() < 0.3  # thin curves on black
    # Opening the mouth changes the image around the mouth only.
    moved = inside.copy()
    moved[list(lm.INNER_LIP_LOWER + lm.OUTER_LIP_LOWER), 1] += 6
    changed = np.argwhere((draw_landmark_image(moved, 128) != image).any(axis=2))
    mouth = inside[list(lm.MOUTH), :2]
    assert len(changed) > 20
    assert (changed[:, 0] > mouth[:, 1].min() - 4).all() and (changed[:, 1] > mouth[:, 0].min() - 4).all()
    # Cut and paste back: the photo is unchanged outside the square, restored inside it.
    photo = astronaut_avatar.image
    target = photo.copy()
    crop.paste(crop.cut(photo), target, np.ones((128, 128), np.float32))
    assert np.abs(target.astype(int) - photo.astype(int)).mean() < 1.0


def test_generator_presets_and_example_inputs():
    for name, config in PRESETS.items():
        if name == "paper":  # the published sizes, checked without running them
            g = build_generator(name, spectral_norm=False)
            assert g.config.image_size == 256 and g.config.max_channels == 512 and g.config.embed_dim == 512
            assert [b.conv2.out_channels for b in g.down] == [64, 128, 256, 512]
            continue
        g = build_generator(name).eval()
        landmark, adain = generator_input_example(name)
        assert landmark.shape == (1, 3, config.image_size, config.image_size)
        assert adain.shape == (1, g.num_adain_params)
        with torch.no_grad():
            image = g(landmark, adain)
        assert image.shape == landmark.shape and float(image.abs().max()) <= 1.0
        # ψ really drives the output: other AdaIN parameters, another image.
        with torch.no_grad():
            other = g(landmark, adain + 0.5)
        assert float((other - image).abs().mean()) > 1e-3


def test_tiny_meta_learning_loss_falls_on_packaged_faces(tiny_run):
    log = train.read_log(tiny_run / "log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, 31))
    first, last = _first_last(log)
    assert last < 0.75 * first, (first, last)
    state = train.load_checkpoint(tiny_run / "checkpoint.pt")
    assert state["stage"] == "meta" and state["step"] == 30 and len(state["videos"]) == 2
    # One learned projection column per training video.
    assert state["discriminator"]["W"].shape == (PRESETS["tiny"].embed_dim, 2)


@pytest.mark.shared
def test_tiny_meta_learning_on_a_shared_clip(shared_data, tmp_path, frame_cache):
    clip = shared_data / "driving" / "lp_d3_woman_expressions.mp4"
    assert _train(["meta", "--data", str(clip), "--out", str(tmp_path), "--steps", "20", "--every", "4",
                   "--max-frames", "20", "--cache-dir", str(frame_cache), *TINY]) == 0
    first, last = _first_last(train.read_log(tmp_path / "log.csv"), n=4)
    assert last < 0.75 * first, (first, last)


def test_resume_continues_from_the_checkpoint(tiny_run, tmp_path, packaged_videos, frame_cache):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = train.read_log(run / "log.csv")
    assert _train(["meta", "--data", str(packaged_videos), "--out", str(run), "--steps", "34", "--resume",
                   "--cache-dir", str(frame_cache), *TINY]) == 0
    log = train.read_log(run / "log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, 35))
    assert log[:30] == before
    # The resumed model is the trained one, not a fresh one: its loss starts where training ended.
    trained = np.mean([r["l1"] for r in before[-6:]])
    fresh = np.mean([r["l1"] for r in before[:3]])
    assert abs(log[30]["l1"] - trained) < abs(log[30]["l1"] - fresh)
    assert train.load_checkpoint(run / "checkpoint.pt")["step"] == 34


def test_export_matches_torch(tiny_run, tiny_model, astronaut_avatar):
    import onnxruntime as ort

    from avatarcam_train.model import Embedder, Generator, ModelConfig

    info = json.loads((tiny_model / "model.json").read_text())
    assert info["format"] == 1 and info["image_size"] == 64 and info["max_abs_diff"]["generator"] < ONNX_TOLERANCE
    assert "tensorrt" in info  # built, or the one-line reason why not
    state = train.load_checkpoint(tiny_run / "checkpoint.pt")
    config = ModelConfig.from_dict(state["config"])
    g, e = Generator(config).eval(), Embedder(config).eval()
    g.load_state_dict(state["generator"])
    e.load_state_dict(state["embedder"])
    # A real face: the astronaut's crop and landmark image, through both runtimes.
    crop = FaceCrop.around(astronaut_avatar.landmarks, 64)
    frame = to_network(crop.cut(astronaut_avatar.image))[None]
    marks = to_network(draw_landmark_image(crop.to_crop(astronaut_avatar.landmarks), 64))[None]
    with torch.no_grad():
        adain_t = g.adain_params(e(torch.from_numpy(frame), torch.from_numpy(marks)))
        image_t = g(torch.from_numpy(marks), adain_t).numpy()
    emb = ort.InferenceSession(str(tiny_model / "embedder.onnx"), providers=["CPUExecutionProvider"])
    gen = ort.InferenceSession(str(tiny_model / "generator.onnx"), providers=["CPUExecutionProvider"])
    adain_o = emb.run(None, {"frames": frame, "landmarks": marks})[1]
    image_o = gen.run(None, {"landmark_image": marks, "adain_params": adain_o})[0]
    assert np.abs(adain_o - adain_t.numpy()).max() < ONNX_TOLERANCE
    assert np.abs(image_o - image_t).max() < ONNX_TOLERANCE


def test_live_program_renders_with_the_neural_engine(tiny_model, astronaut_path, driving_clip, tmp_path, capsys):
    import imageio.v3 as iio

    out = tmp_path / "out.mp4"
    cache = tmp_path / "cache"
    args = ["--engine", "neural", "--model", str(tiny_model), "--face", str(astronaut_path), "--input",
            str(driving_clip), "--output", str(out), "--cache-dir", str(cache)]
    assert cli.main(args) == 0, capsys.readouterr().err
    frames = np.stack(list(iio.imiter(out)))
    assert len(frames) == 10
    # The same run with the warp engine: the neural engine changed the face, and only the face.
    warp_out = tmp_path / "warp.mp4"
    assert cli.main(["--face", str(astronaut_path), "--input", str(driving_clip), "--output", str(warp_out),
                     "--cache-dir", str(cache)]) == 0
    warp = np.stack(list(iio.imiter(warp_out)))
    diff = np.abs(frames.astype(int) - warp.astype(int)).mean(axis=(0, 3))
    from avatarcam.avatar import AvatarCache

    cached = [AvatarCache(cache).load(p.stem) for p in cache.glob("*.npz")]
    neural = [a for a in cached if a is not None and "adain_params" in a.engine_data]
    assert len(neural) == 1  # ψ computed once and cached with the avatar
    face = neural[0].landmarks
    x0, y0 = face[:, :2].min(axis=0).astype(int)
    x1, y1 = face[:, :2].max(axis=0).astype(int)
    inside = diff[y0:y1, x0:x1].mean()
    outside = np.concatenate([diff[:, : max(x0 - 60, 1)].ravel(), diff[:, x1 + 60:].ravel()]).mean()
    assert inside > 10 and outside < 2, (inside, outside)
    # The rendered face moves with the driver.
    assert np.abs(frames[0, y0:y1, x0:x1].astype(int) - frames[5, y0:y1, x0:x1].astype(int)).mean() > 2


def test_finetune_sets_the_identity_used_at_run_time(tiny_run, astronaut_path, tmp_path):
    from avatarcam.avatar import AvatarCache, prepare_avatar
    from avatarcam.engines import engine_class
    from avatarcam.retarget import AvatarPose
    from export import export_model

    run = tmp_path / "ft"
    assert _train(["finetune", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--face", str(astronaut_path),
                   "--out", str(run), "--steps", "4", "-q"]) == 0
    state = train.load_checkpoint(run / "checkpoint.pt")
    assert state["stage"] == "finetune" and state["identity"]["adain_params"].shape[0] == 1
    model = tmp_path / "model"
    export_model(model, str(run / "checkpoint.pt"), verbose=False)
    engine = engine_class("neural", model_dir=str(model))
    avatar = prepare_avatar([str(astronaut_path)], engine_version=engine.version, prepare_engine_data=engine.prepare,
                            cache=AvatarCache(tmp_path / "cache"))
    assert np.allclose(avatar.engine_data["adain_params"], np.load(model / "identity.npy").reshape(1, -1))
    image = engine(avatar).render(AvatarPose(avatar.landmarks, np.array([[1.0, 0, 0], [0, 1.0, 0]])))
    assert image.shape == avatar.image.shape


def test_warp_guided_generator_gets_the_warp_rendering(packaged_videos, frame_cache, tmp_path, astronaut_avatar):
    from avatarcam.engines.neural import NeuralModel  # noqa: F401  (import check: no torch needed there)
    from export import export_model

    run = tmp_path / "run"
    assert _train(["meta", "--data", str(packaged_videos), "--out", str(run), "--steps", "3", "--warp-guided",
                   "--cache-dir", str(frame_cache), *TINY]) == 0
    state = train.load_checkpoint(run / "checkpoint.pt")
    assert state["config"]["warp_guided"]
    info = export_model(tmp_path / "model", str(run / "checkpoint.pt"), verbose=False, tensorrt=False)
    assert info["generator_in_channels"] == 6 and info["max_abs_diff"]["generator"] < ONNX_TOLERANCE


def test_live_path_never_imports_torch(tiny_model, astronaut_path, tmp_path):
    code = ("import sys; from avatarcam.engines import engine_class; "
            f"e = engine_class('neural', model_dir={str(tiny_model)!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _bad_model(kind: str, tiny_model: Path, tmp_path: Path) -> Path:
    import shutil

    if kind == "missing":
        return tmp_path / "nowhere"
    model = tmp_path / kind
    shutil.copytree(tiny_model, model)
    info = json.loads((model / "model.json").read_text())
    if kind == "no-json":
        (model / "model.json").unlink()
    elif kind == "damaged-json":
        (model / "model.json").write_text("{ not json")
    elif kind == "old-format":
        info["format"] = 0
        (model / "model.json").write_text(json.dumps(info))
    elif kind == "other-landmarks":
        info["landmark_image"]["version"] = 99
        (model / "model.json").write_text(json.dumps(info))
    elif kind == "truncated":
        data = (model / "generator.onnx").read_bytes()
        (model / "generator.onnx").write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":  # same size, garbage inside
        size = (model / "generator.onnx").stat().st_size
        (model / "generator.onnx").write_bytes(b"\0" * size)
    elif kind == "file":
        return model / "model.json"
    return model


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["missing", "no-json", "damaged-json", "old-format", "other-landmarks",
                                  "truncated", "corrupt", "file"])
def test_bad_model_dir_is_one_clear_line(kind, tiny_model, tmp_path, astronaut_path, driving_clip, capsys):
    model = _bad_model(kind, tiny_model, tmp_path)
    out = tmp_path / "out.mp4"
    rc = cli.main(["--engine", "neural", "--model", str(model), "--face", str(astronaut_path),
                   "--input", str(driving_clip), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("avatarcam: error:") and "Traceback" not in err, err
    assert str(model.name) in err or "model" in err
    assert not out.exists()


@pytest.mark.faults
def test_bad_model_from_the_command_line(tiny_model, tmp_path, astronaut_path):
    """The real program: exit code 1, one line, no traceback."""
    model = _bad_model("truncated", tiny_model, tmp_path)
    r = subprocess.run([sys.executable, "-m", "avatarcam", "--engine", "neural", "--model", str(model),
                        "--face", str(astronaut_path), "--output", str(tmp_path / "o.mp4"), "--input",
                        str(astronaut_path)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "AVATARCAM_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "incomplete" in r.stderr, r.stderr


@pytest.mark.faults
def test_training_and_export_input_errors_are_one_line(tmp_path, capsys):
    from export.__main__ import main as export_main

    assert train.main(["meta", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), "-q"]) == 1
    assert capsys.readouterr().err.strip() == f"avatarcam-train: error: training data not found: {tmp_path / 'nothing'}"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert export_main(["--checkpoint", str(bad), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("export: error: cannot read checkpoint") and len(err.splitlines()) == 1


def test_a_new_warp_engine_prepares_neural_avatars_again(tiny_model):
    """The neural engine's prepared avatar embeds the warp engine's layers (background, lids,
    irises): an avatar cached under another warp version lacks what this warp reads, so the
    cache key (the engine's version) must change with the warp's."""
    from avatarcam.engines import engine_class
    from avatarcam.engines.warp import WarpEngine

    assert WarpEngine.version in engine_class("neural", model_dir=str(tiny_model)).version
