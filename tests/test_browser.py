"""A real video-call client receives the avatar.

avatarcam renders a talking-head clip into a ``.y4m`` camera stream; headless Chromium plays
it as its webcam (its fake capture device), a page served on 127.0.0.1 opens it with
getUserMedia and sends it through a pair of RTCPeerConnections (encoded and decoded by the
browser, as in a call), and the test grabs the received picture at many moments. Each grab
is matched to the avatarcam frame it shows; MediaPipe then re-measures the face in the grabs.
"""
from __future__ import annotations

import base64
import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED, detect

from avatarcam import landmarks as lm

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
PAGE_DIR = Path(__file__).resolve().parent / "webrtc"
SIZE = (640, 480)
FPS = 30
# Chromium flags: fake camera and permission prompt, and nothing that reaches the network.
BROWSER_ARGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--no-sandbox", "--disable-gpu",
    "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps",
]


def read_y4m(path: Path) -> list[np.ndarray]:
    """RGB frames of a 4:2:0 ``.y4m`` file (the format Chromium's fake camera reads)."""
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    w, h = int(fields[b"W"]), int(fields[b"H"])
    frame_bytes = w * h * 3 // 2
    frames, pos = [], 0
    while pos < len(rest):
        pos = rest.index(b"\n", pos) + 1  # "FRAME[ params]\n"
        yuv = np.frombuffer(rest, np.uint8, frame_bytes, pos).reshape(h * 3 // 2, w)
        frames.append(cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420))
        pos += frame_bytes
    return frames


def read_video(path: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def synthetic_driver(grace_path: Path, out: Path) -> Path:
    """Without the shared clips: Grace Hopper dropping her jaw and closing her mouth again,
    rendered by the warp engine from her own landmarks (closed 20 frames, open 20, twice)."""
    from conftest import prepare

    from avatarcam.engines import WarpEngine
    from avatarcam.retarget import AvatarPose
    from avatarcam.sinks import VideoFileSink

    avatar = prepare([grace_path])[0]
    engine = WarpEngine(avatar)
    base = avatar.landmarks.astype(np.float64)
    top, bottom = base[lm.UPPER_LIP_MID, 1], base[lm.LOWER_LIP_MID, 1]
    cx = base[list(lm.MOUTH_CORNERS), 0].mean()
    width = lm.face_width(base)
    # Points below the upper lip move down, fully from the lower lip on, fading towards the cheeks.
    below = np.clip((base[:, 1] - top) / max(bottom - top, 2.0), 0, 1)
    centre = np.clip(1 - np.abs(base[:, 0] - cx) / (0.45 * width), 0, 1)
    weight = below * centre
    drop = 0.22 * width
    head = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    with VideoFileSink(out, avatar.size, FPS) as sink:
        for open_ in ([0.0] * 20 + [1.0] * 20) * 2:
            points = base.copy()
            points[:, 1] += open_ * drop * weight
            sink.write(engine.render(AvatarPose(points, head)))
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut_path, grace_path):
    """(avatarcam's .y4m, the driver frames it was rendered from)."""
    if not CHROMIUM.exists():
        # CI installs it (.ci/run): there, a missing browser is a failure, not a skip.
        assert os.environ.get("CI") != "true", f"{CHROMIUM} is missing although CI=true; .ci/run should install it"
        pytest.skip(f"{CHROMIUM} not found (Debian package 'chromium'; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("browser")
    shared_driver = SHARED / "driving" / "lp_d10_woman_expressive.mp4"
    shared_face = SHARED / "portraits" / "mona_lisa__avatarify_mona.jpg"
    if shared_driver.exists() and shared_face.exists():
        # The first 4 s: mouth shut (frames 0, 57, 90) and wide open (24, 96).
        face, driver, frames = shared_face, shared_driver, 120
    else:
        face, driver, frames = astronaut_path, synthetic_driver(grace_path, tmp / "driver.mp4"), 80
    out = tmp / "avatar.y4m"
    cmd = [sys.executable, "-m", "avatarcam", "--face", str(face), "--input", str(driver), "--output", str(out),
           "--size", f"{SIZE[0]}x{SIZE[1]}", "--fps", str(FPS), "--max-frames", str(frames)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rendered = read_y4m(out)
    assert len(rendered) == frames and rendered[0].shape == (SIZE[1], SIZE[0], 3)
    return out, rendered, read_video(driver, frames)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def page_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(PAGE_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/loopback.html"
    server.shutdown()
    server.server_close()


def receive(y4m: Path, url: str, user_data: Path, seconds: float, grabs_at_least: int = 15) -> tuple[dict, list[np.ndarray]]:
    """Play ``y4m`` as Chromium's webcam through the loopback call; the received track's
    properties and RGB grabs of the received picture, about ten a second for ``seconds``
    and on (the file loops) until there are ``grabs_at_least``: on a busy machine each
    grab's round trip to the page takes longer."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(user_data), executable_path=str(CHROMIUM), headless=True,
            args=[*BROWSER_ARGS, f"--use-file-for-fake-video-capture={y4m}"])
        try:
            page = context.new_page()
            page.goto(url)
            page.evaluate(f"startLoopback({SIZE[0]}, {SIZE[1]}, {FPS})")
            page.wait_for_function("avatarcam.error || avatarcam.frames > 5", timeout=30000)
            error = page.evaluate("avatarcam.error")
            assert error is None, f"the page failed: {error}"
            grabs = []
            end = time.monotonic() + seconds
            while time.monotonic() < end or (len(grabs) < grabs_at_least and time.monotonic() < end + 30.0):
                url_data = page.evaluate("grabReceived()")
                png = np.frombuffer(base64.b64decode(url_data.split(",", 1)[1]), np.uint8)
                grabs.append(cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
                page.wait_for_timeout(100)
            info = page.evaluate("""() => {
                const v = document.getElementById('received');
                return {local: avatarcam.local, remote: avatarcam.remoteTrack.getSettings(),
                        videoWidth: v.videoWidth, videoHeight: v.videoHeight, frames: avatarcam.frames,
                        rtp: avatarcam.rtp};
            }""")
        finally:
            context.close()
    return info, grabs


def _signature(image: np.ndarray) -> np.ndarray:
    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (80, 60), interpolation=cv2.INTER_AREA).astype(np.float64)
    grey -= grey.mean()
    return grey.ravel() / (np.linalg.norm(grey) + 1e-9)


def match(grab: np.ndarray, signatures: np.ndarray) -> tuple[int, float]:
    """The avatarcam frame a grab shows (the most correlated one) and the correlation."""
    scores = signatures @ _signature(grab)
    best = int(np.argmax(scores))
    return best, float(scores[best])


def box(points: np.ndarray) -> np.ndarray:
    xy = points[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def test_a_webrtc_call_receives_the_avatar(clip, page_url, tmp_path):
    y4m, rendered, driver = clip
    loop_seconds = len(rendered) / FPS
    info, grabs = receive(y4m, page_url, tmp_path / "chromium-profile", seconds=loop_seconds + 0.8)

    # The call carries exactly the format avatarcam was asked for.
    assert (info["local"]["width"], info["local"]["height"], info["local"]["frameRate"]) == (*SIZE, FPS)
    assert (info["remote"]["width"], info["remote"]["height"]) == SIZE
    assert (info["videoWidth"], info["videoHeight"]) == SIZE
    assert info["remote"]["frameRate"] == pytest.approx(FPS, rel=0.15)
    # RTP timestamps (90 kHz) of the received frames are spaced by the camera's frame interval.
    steps = np.diff(np.asarray(info["rtp"], dtype=np.int64))
    assert len(steps) > 10 and 90000 / np.median(steps[steps > 0]) == pytest.approx(FPS, rel=0.15)
    assert all(g.shape == (SIZE[1], SIZE[0], 3) for g in grabs) and len(grabs) >= 15

    signatures = np.stack([_signature(f) for f in rendered])
    own_faces: dict[int, np.ndarray] = {}
    matched = []
    for grab in grabs:
        index, score = match(grab, signatures)
        assert score > 0.95, f"a received picture matches no avatarcam frame (best correlation {score:.3f})"
        face = detect(grab)
        assert face is not None, f"MediaPipe finds no face in the received picture of frame {index}"
        if index not in own_faces:
            own_faces[index] = detect(rendered[index])
        # Same place as in avatarcam's own frame: the browser neither moved, cropped nor scaled it.
        diff = np.abs(box(face) - box(own_faces[index]))
        assert diff.max() < 0.03 * SIZE[0], f"face box moved by {diff.max():.1f} px in frame {index}"
        matched.append((index, face))
    assert len({i for i, _ in matched}) >= 5, "the received video did not move"

    # The driver's mouth at the moments grabbed: the most closed and the most open one.
    driver_mouth = {}
    for index, _ in matched:
        if index not in driver_mouth:
            found = detect(driver[index])
            driver_mouth[index] = lm.mouth_opening(found) if found is not None else np.nan
    closed = min(matched, key=lambda m: np.nan_to_num(driver_mouth[m[0]], nan=np.inf))
    opened = max(matched, key=lambda m: np.nan_to_num(driver_mouth[m[0]], nan=-np.inf))
    assert driver_mouth[opened[0]] - driver_mouth[closed[0]] > 0.3, "the grabs missed the driver opening its mouth"
    avatar_closed, avatar_open = lm.mouth_opening(closed[1]), lm.mouth_opening(opened[1])
    assert avatar_open > avatar_closed + 0.15, (
        f"received avatar mouth {avatar_closed:.2f} (driver {driver_mouth[closed[0]]:.2f}) vs "
        f"{avatar_open:.2f} (driver {driver_mouth[opened[0]]:.2f})")

