"""benchmarks/latency.py and benchmarks/reference_models.py: short real runs, checked for a
well-formed, self-consistent report (never for speed: the machine is shared)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import latency
import reference_models


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory, astronaut_path) -> Path:
    """A short clip of the astronaut nodding and turning, written with avatarcam's own sink."""
    from avatarcam.sinks import VideoFileSink

    rgb = cv2.cvtColor(cv2.imread(str(astronaut_path)), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (320, 320), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("clip") / "astronaut.mp4"
    with VideoFileSink(path, (320, 320), 30) as sink:
        for i in range(48):
            phase = 2 * np.pi * i / 24
            m = cv2.getRotationMatrix2D((160, 140), 6 * np.sin(phase), 1.0)
            m[:, 2] += (6 * np.sin(phase), 4 * np.cos(phase))
            sink.write(cv2.warpAffine(rgb, m, (320, 320), borderMode=cv2.BORDER_REPLICATE))
    return path


def run_benchmark(capsys, argv: list[str]) -> dict:
    assert latency.main(argv + ["--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, "--json must print exactly one line: one JSON object"
    return json.loads(out[0])


def check_run(run: dict, sent: int, stages: tuple[str, ...]) -> None:
    # The live loop may bridge a late camera frame with a repeat ("filler"); both count as sent.
    assert run["frames"] + run["filler_frames"] == sent and run["frames"] > sent // 2
    frames = run["frames"]
    assert 0 < run["frames_with_face"] <= run["frames"]
    assert isinstance(run["frames_dropped"], int) and run["frames_dropped"] >= 0
    e2e = run["e2e_ms"]
    assert e2e["n"] == frames
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
    assert set(stages) <= set(run["stages_ms"])
    for name in ("track", "retarget", "render", "sink"):
        s = run["stages_ms"][name]
        assert s["n"] == frames and 0 < s["p50"] <= s["p99"] <= s["max"], name
    # The processing stages happen inside the end-to-end interval.
    inside = sum(run["stages_ms"][k]["p50"] for k in ("track", "retarget", "render", "sink"))
    assert inside <= e2e["max"]
    assert run["achieved_fps"] == pytest.approx(run["frames"] / run["seconds"], rel=1e-6)
    assert run["cpu_percent"] > 0 and run["rss_peak_mb"] > 50


def test_as_fast_as_possible_report(capsys, tmp_path, astronaut_clip, grace_path):
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    report = run_benchmark(capsys, [
        "--clip", str(astronaut_clip), "--face", str(grace_path), "--frames", "20", "--warmup", "4",
        "--sizes", "320x240", "--no-reference-models", "--output", str(report_path), "--plot", str(plot_path)])

    assert set(report["e2e_ms"]) == {"320x240"}
    assert report["vs_fomm_fps_ratio"] is None and "not timed" in report["vs_fomm_basis"]
    run = report["runs"]["320x240"]
    check_run(run, 20, ("capture_decode", "track", "retarget", "render", "sink"))
    assert run["frames_dropped"] == 0  # a file source never drops
    assert report["e2e_ms"]["320x240"] == {k: run["e2e_ms"][k] for k in report["e2e_ms"]["320x240"]}
    # The floor (Face Mesh alone + one remap) is measured in the same run.
    floor = report["floor_ms"]
    assert floor["face_mesh_ms"]["n"] > 10 and 0 < floor["face_mesh_ms"]["p50"] <= floor["face_mesh_ms"]["max"]
    assert floor["total_ms"]["320x240"] == pytest.approx(
        floor["face_mesh_ms"]["p50"] + floor["remap_ms"]["320x240"]["p50"])
    assert report["e2e_over_floor"]["320x240"] == pytest.approx(run["e2e_ms"]["p50"] / floor["total_ms"]["320x240"])
    # The file report is the same object (timelines are only kept on request).
    assert json.loads(report_path.read_text())["e2e_ms"] == report["e2e_ms"]
    image = cv2.imread(str(plot_path))
    assert image is not None and image.shape[0] > 300 and image.std() > 5  # a drawn plot


@pytest.mark.shared
def test_paced_camera_report(capsys, tmp_path, shared_data):
    clip = shared_data / "driving" / "lp_d6_woman_funny_faces_long.mp4"
    face = shared_data / "portraits" / "mona_lisa__avatarify_mona.jpg"
    report = run_benchmark(capsys, [
        "--clip", str(clip), "--face", str(face), "--paced", "30", "--frames", "30", "--warmup", "5",
        "--sizes", "512x512", "--no-reference-models", "--no-plot", "--timelines",
        "--output", str(tmp_path / "paced.json")])

    assert report["config"]["paced_fps"] == 30
    run = report["runs"]["512x512"]
    check_run(run, 30, ("capture_decode", "queue", "track", "retarget", "render", "sink"))
    assert run["camera_size"] == "480x480"
    assert run["stages_ms"]["capture_decode"]["n"] >= run["frames"]  # every captured frame was decoded
    # A camera cannot deliver faster than its rate: frames come 1/30 s apart.
    assert run["achieved_fps"] <= 30 * 1.1
    timeline = run["timeline"]["e2e_ms"]
    assert len(timeline) == run["frames"] and max(timeline) == pytest.approx(run["e2e_ms"]["max"], abs=1e-2)
    assert run["frames_over_interval"] == sum(v > 1000 / 30 for v in timeline)


def test_fomm_graphs_export_and_match_torch(tmp_path):
    """A narrow FOMM of the same architecture exports to ONNX and onnxruntime agrees with torch."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    rm = reference_models
    torch.manual_seed(0)
    kp = rm.KeypointDetector(num_kp=4, block_expansion=4, max_features=16, num_blocks=3).eval()
    gen = rm.OcclusionAwareGenerator(rm.DenseMotion(num_kp=4, block_expansion=4, max_features=16, num_blocks=3),
                                     block_expansion=4, max_features=16, num_bottleneck_blocks=2).eval()
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        kp_s, jac_s = kp(source)
        kp_d, jac_d = kp(driving)
        expected = gen(source, kp_s, jac_s, kp_d, jac_d)
    assert kp_s.shape == (1, 4, 2) and jac_s.shape == (1, 4, 2, 2)
    assert float(kp_s.abs().max()) <= 1.0  # expected positions under a softmax lie in the image
    assert expected.shape == (1, 3, 64, 64)

    rm._export(kp, (source,), tmp_path / "kp.onnx", ["image"], ["kp", "jacobian"])
    rm._export(gen, (source, kp_s, jac_s, kp_d, jac_d), tmp_path / "gen.onnx",
               ["source", "kp_source", "jacobian_source", "kp_driving", "jacobian_driving"], ["prediction"])
    kp_sess = ort.InferenceSession(str(tmp_path / "kp.onnx"), providers=["CPUExecutionProvider"])
    gen_sess = ort.InferenceSession(str(tmp_path / "gen.onnx"), providers=["CPUExecutionProvider"])
    got_kp, got_jac = kp_sess.run(None, {"image": driving.numpy()})
    np.testing.assert_allclose(got_kp, kp_d.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_jac, jac_d.numpy(), atol=1e-3)
    (got,) = gen_sess.run(None, {"source": source.numpy(), "kp_source": kp_s.numpy(), "jacobian_source": jac_s.numpy(),
                                 "kp_driving": kp_d.numpy(), "jacobian_driving": jac_d.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_fomm_vox256_has_the_published_size():
    """At the vox-256 configuration the networks have FOMM's published parameter count
    (about 59.8 M: keypoint detector 14.2 M, dense motion + generator 45.6 M)."""
    pytest.importorskip("torch")
    kp, gen = reference_models.fomm_vox256()
    assert reference_models.parameter_count(kp) == pytest.approx(14.2e6, rel=0.01)
    assert reference_models.parameter_count(gen) == pytest.approx(45.6e6, rel=0.01)


# -- rendering no more pixels than the photo has ------------------------------------------------


def test_render_framing_keeps_the_view(astronaut_avatar):
    from avatarcam.framing import Framing
    from avatarcam.pipeline import render_framing

    xy = astronaut_avatar.landmarks[:, :2]
    box = (*xy.min(axis=0), *xy.max(axis=0))
    small = Framing.cover(astronaut_avatar.size, (320, 240), box)
    assert render_framing(small) is small  # shrinking the photo: rendered as asked

    big = Framing.cover(astronaut_avatar.size, (1280, 720), box)
    inner = render_framing(big)
    assert big.scale < 0.8 and inner.scale == pytest.approx(1.0, abs=0.01)
    (ow, oh), (w, h) = big.output_size, inner.output_size
    assert w < ow and h < oh and w / h == pytest.approx(ow / oh, rel=0.01)
    # Internal pixel q is shown at output pixel (q + 0.5) * r - 0.5 after the resize: both
    # framings put the same photo point there (to within a photo pixel, at the far corner too).
    q = np.array([[0.0, 0.0], [w - 1.0, h - 1.0], [w / 2, h / 3]])
    p = (q + 0.5) * np.array([ow / w, oh / h]) - 0.5
    assert np.abs(inner.to_avatar(q) - big.to_avatar(p)).max() < 1.0


def test_render_framing_draws_a_large_face_no_wider_than_the_cap(astronaut_avatar):
    from avatarcam.framing import Framing
    from avatarcam.pipeline import MAX_FACE_WIDTH, render_framing

    xy = astronaut_avatar.landmarks[:, :2]
    box = (*xy.min(axis=0), *xy.max(axis=0))
    framing = Framing.cover(astronaut_avatar.size, (320, 180), box)  # shrinks the photo
    assert render_framing(framing) is framing
    # A face three times the cap's width in the output, as from a photo that much larger.
    face = 3 * MAX_FACE_WIDTH * framing.scale
    inner = render_framing(framing, face_width=face)
    assert face / inner.scale == pytest.approx(MAX_FACE_WIDTH, rel=0.01)
    (ow, oh), (w, h) = framing.output_size, inner.output_size
    assert w / h == pytest.approx(ow / oh, rel=0.01)
    q = np.array([[0.0, 0.0], [w - 1.0, h - 1.0], [w / 2, h / 3]])
    p = (q + 0.5) * np.array([ow / w, oh / h]) - 0.5
    assert np.abs(inner.to_avatar(q) - framing.to_avatar(p)).max() < 1.0  # the same view
    # A face drawn a little over the cap is rendered as asked: a resize would cost more.
    assert render_framing(framing, face_width=1.05 * MAX_FACE_WIDTH * framing.scale) is framing


def test_enlarged_render_matches_the_direct_render(astronaut_avatar):
    from avatarcam import landmarks as lm
    from avatarcam.engines import WarpEngine
    from avatarcam.framing import Framing
    from avatarcam.pipeline import EnlargedEngine, build_engine
    from avatarcam.retarget import Retargeter

    xy = astronaut_avatar.landmarks[:, :2]
    framing = Framing.cover(astronaut_avatar.size, (1280, 720), (*xy.min(axis=0), *xy.max(axis=0)))
    fast = build_engine(WarpEngine, astronaut_avatar, framing)
    direct = WarpEngine(astronaut_avatar, framing)
    assert isinstance(fast, EnlargedEngine) and fast.framing == framing
    retargeter = Retargeter(astronaut_avatar.landmarks, astronaut_avatar.proportions)
    pose = retargeter.neutral_pose()
    # Move the head and open the mouth, so the warp does real work.
    moved = pose.landmarks.copy()
    moved[:, :2] += np.array([6.0, -3.0])
    moved[list(lm.INNER_LIP_LOWER), 1] += 8.0
    pose = retargeter.pose(moved)
    a, b = fast.render(pose), direct.render(pose)
    assert a.shape == b.shape == (720, 1280, 3) and a.dtype == np.uint8
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 33  # the same picture, up to interpolation
    assert np.abs(a.astype(int) - direct.render(retargeter.neutral_pose())).mean() > 0.5  # and it moved


def test_landmarks_read_from_wire_bytes_equal_the_attributes(grace_path):
    """tracking reads Face Mesh's landmarks from the message's bytes; they are the very floats
    the protobuf attributes give, and any other layout falls back to the attributes."""
    from mediapipe.framework.formats import landmark_pb2

    from avatarcam.tracking import _landmark_array, _mediapipe_face_mesh

    rgb = cv2.cvtColor(cv2.imread(str(grace_path)), cv2.COLOR_BGR2RGB)
    with _mediapipe_face_mesh().FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        face = mesh.process(rgb).multi_face_landmarks[0]
    expected = np.array([(p.x, p.y, p.z) for p in face.landmark])
    got = _landmark_array(face)
    assert got.shape == (478, 3) and got.dtype == np.float64
    assert np.array_equal(got, expected)

    odd = landmark_pb2.NormalizedLandmarkList()
    for k in range(4):
        p = odd.landmark.add(x=0.0, y=0.25 * k, z=-0.5)
    p.visibility = 0.5  # an extra field changes the layout
    assert np.array_equal(_landmark_array(odd), [[0.0, 0.25 * k, -0.5] for k in range(4)])
    assert _landmark_array(landmark_pb2.NormalizedLandmarkList()).shape == (0, 3)


def test_bench_backend_is_gone_after_the_run():
    """The in-memory virtual camera exists only during a run: afterwards pyvirtualcam's own
    search for a camera (and the rest of the test suite) cannot pick it up."""
    import pyvirtualcam

    with latency.bench_backend() as name:
        assert name in pyvirtualcam.camera.BACKENDS
        with pyvirtualcam.Camera(32, 16, 30, fmt=pyvirtualcam.PixelFormat.RGB, backend=name) as cam:
            cam.send(np.zeros((16, 32, 3), np.uint8))
    assert name not in pyvirtualcam.camera.BACKENDS
