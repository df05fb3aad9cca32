"""benchmarks/quality.py: its metrics, and a small real run on the shared clips."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qm():
    return _load("quality_metrics")


@pytest.fixture(scope="module")
def quality():
    return _load("quality")


def test_scores_match_skimage_and_plain_numpy(qm):
    from skimage import data
    from skimage.metrics import structural_similarity

    real = data.astronaut()
    # A shifted, noisier copy: SSIM well below 1, L1 well above 0.
    rng = np.random.default_rng(1)
    shifted = np.roll(real, (3, -2), axis=(0, 1)).astype(np.float64) + rng.normal(0, 8, real.shape)
    output = np.clip(shifted, 0, 255).astype(np.uint8)
    mask = np.zeros(real.shape[:2], bool)
    mask[100:300, 150:350] = True
    scores = qm.FrameComparer(real, mask)(output)
    assert scores["ssim"] == pytest.approx(structural_similarity(output, real, channel_axis=2, data_range=255), abs=1e-4)
    diff = np.abs(output.astype(np.float64) - real) / 255
    assert scores["l1"] == pytest.approx(diff.mean(), rel=1e-5)
    assert scores["face_l1"] == pytest.approx(diff[mask].mean(), rel=1e-5)
    assert scores["face_mse"] == pytest.approx((diff[mask] ** 2).mean(), rel=1e-4)
    assert 0.2 < scores["ssim"] < 0.9
    same = qm.FrameComparer(real, mask)(real)
    assert same["l1"] == 0 and same["face_ssim"] == pytest.approx(1.0, abs=1e-5)


def test_motion_and_jitter_definitions(qm):
    t = np.linspace(0, 1, 30)
    assert qm.pearson(t, 2 * t + 1) == pytest.approx(1.0)
    assert qm.pearson(t, -t) == pytest.approx(-1.0)
    assert qm.pearson(t, np.ones_like(t)) == 0.0  # a still output carries no motion
    base = np.zeros((478, 3))
    base[:, 0] = np.linspace(0, 100, 478)
    smooth = [base + [k, 0, 0] for k in range(10)]  # steady motion: no second difference
    shaky = [base + [k + (k % 2) * 3.0, 0, 0] for k in range(10)]
    assert qm.jitter(smooth) == pytest.approx(0.0, abs=1e-9)
    assert qm.jitter(shaky) > 1.0


def test_detector_control_moves_the_first_frame_along_the_head_path(quality, qm):
    """The control for MediaPipe's own jitter: the first output frame, moved whole by each
    frame's head motion relative to the first's, and a face MediaPipe finds in it moves
    with it."""
    from skimage import data

    image = data.astronaut()
    start = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]])  # the first head need not be the identity
    step = np.array([[1.0, 0.0, 12.0], [0.0, 1.0, 7.0]])
    frames = list(quality._rigid_path(image, [start, start, step]))
    assert len(frames) == 3
    assert np.array_equal(frames[0], image) and np.array_equal(frames[1], image)
    found = [qm.FaceMeshDetector()(f) for f in (frames[0], frames[2])]
    assert found[0] is not None and found[1] is not None
    moved = (found[1][:, :2] - found[0][:, :2]).mean(axis=0)
    assert moved == pytest.approx((7.0, 10.0), abs=1.0)
    # A head that never moves gives a still control: no jitter at all.
    still = [qm.FaceMeshDetector()(f) for f in quality._rigid_path(image, [start] * 4)]
    assert qm.jitter(still) == 0.0


def test_bad_data_folder_is_one_line(quality, tmp_path, capsys):
    assert quality.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quality: error:") and "driving" in err[0]


@pytest.mark.shared
def test_small_real_run(quality, qm, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data", str(shared_data), "--out", str(out), "--clips", "lp_d10", "--portraits", "woman_photo",
            "--frames", "20", "--aed-every", "5", "--json", "--quiet"]
    aed = qm.dlib_available()
    if not aed:
        argv.append("--no-aed")
    assert quality.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    summary = report["summary"]
    engine, static, delaunay, oracle = (summary[m]["self"] for m in ("engine", "static", "delaunay", "oracle"))
    for method in (engine, static, delaunay, oracle):
        assert {"l1", "psnr", "ssim", "face_l1", "face_ssim", "akd", "aed", "motion_r", "jitter"} <= set(method)
        assert 0 <= method["l1"] < 0.2 and 0 < method["ssim"] <= 1
    cross = summary["engine"]["cross"]
    assert {"identity_distance", "motion_r", "tracker_r", "pose_r", "face_found", "jitter", "jitter_excess",
            "detector_jitter"} <= set(cross)
    assert 0.0 <= cross["detector_jitter"] < 5.0
    # The live tracker reads the driver's mouth as the re-detection does, the retargeting
    # hands it on, and the output keeps no more of it than the tracker gave.
    assert cross["tracker_r_signals"]["mouth"] > 0.8
    assert cross["pose_r_signals"]["mouth"] > 0.8
    assert cross["motion_r_signals"]["mouth"] < cross["tracker_r_signals"]["mouth"] + 0.05
    assert set(summary["targets"]) >= {"self.face_l1", "self.akd", "cross.motion_r", "cross.face_found"}
    assert all(t["ok"] in (True, False) for k, t in summary["targets"].items() if aed or "aed" not in k and "identity" not in k)

    # The references behave as references: warping onto the true landmarks beats a still frame.
    assert delaunay["face_l1"] < static["face_l1"]
    assert delaunay["akd"] < 0.5 * static["akd"]
    assert static["motion_r"] == 0.0
    # The flow oracle sees each real frame, so it comes closer to it than any landmark-driven warp.
    assert oracle["face_l1"] < 0.7 * min(delaunay["face_l1"], engine["face_l1"])
    assert oracle["face_ssim"] > max(delaunay["face_ssim"], engine["face_ssim"]) + 0.05
    # The engine follows the driver's mouth (this clip opens it within 20 frames), in both protocols.
    assert engine["motion_r_signals"]["mouth"] > 0.5
    assert cross["motion_r_signals"]["mouth"] > 0.3
    assert cross["face_found"] > 0.9 and engine["face_found"] > 0.9
    if aed:
        # The same person stays under dlib's threshold; the driver is someone else, and the
        # avatar looks more like the portrait than like the driver.
        assert static["aed"] < 0.6
        assert cross["driver_identity_distance"] > 0.6
        assert cross["identity_distance"] < cross["driver_identity_distance"]

    assert (out / "report.json").is_file() and json.loads((out / "report.json").read_text())["summary"] == summary
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 2 * quality.THUMB  # one row for the clip, one for the pair
