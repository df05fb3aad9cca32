"""Warp engine quality on real faces: layers, blinks, mouth interior, 3D head turns.

Each test renders a real portrait and measures the result from its pixels (MediaPipe's
re-detected landmarks, or colours of named regions), never from the engine's own state.
"""
import dataclasses

import cv2
import numpy as np
import pytest
from conftest import detect, prepare, shut_lips, warp_rig
from test_render import close_eyes, open_mouth, turn

from avatarcam import landmarks as lm
from avatarcam.engines import WarpEngine
from avatarcam.geometry import euler_rotation
from avatarcam.retarget import Retargeter


def _person_alpha(avatar):
    return avatar.engine_data["person_alpha"].astype(np.float32) / 255.0


def _face_mask(shape, points):
    """True inside the convex hull of a face's landmarks, in an image of ``shape``."""
    face = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(points[:, :2]).astype(np.int32)), 1)
    return face > 0


# -- layers --------------------------------------------------------------------------------
def test_person_layer_covers_the_person_not_the_background(grace_avatar):
    alpha = _person_alpha(grace_avatar)
    h, w = alpha.shape
    xy = grace_avatar.landmarks[:, :2]
    face = xy.mean(axis=0).astype(int)
    assert alpha[face[1], face[0]] > 0.95
    # Grace Hopper's photo: flag and wall in both top corners, her uniform at the bottom middle.
    assert alpha[: h // 6, : w // 8].mean() < 0.05 and alpha[: h // 6, -w // 8:].mean() < 0.05
    assert alpha[-h // 10:, w // 3: 2 * w // 3].mean() > 0.9
    # The plate keeps the real background far from the person, and has no person in it.
    plate = grace_avatar.engine_data["background"].astype(int)
    far = alpha < 0.01
    assert np.abs(plate[far] - grace_avatar.image[far]).mean() < 3
    skin = grace_avatar.image[face[1] - 5: face[1] + 5, face[0] - 5: face[0] + 5].reshape(-1, 3).mean(axis=0)
    assert np.abs(plate[face[1], face[0]] - skin).sum() > 60


def _plate_at_the_outline(avatar):
    """The background plate just inside the person's outline (1-4% of the photo's size in,
    where a moving head uncovers it) against the photo's background just outside it (2-6%
    out): RMS of the fine detail (finer than a couple of pixels) inside over outside, and
    the difference of their median grey levels."""
    plate = cv2.cvtColor(avatar.engine_data["background"], cv2.COLOR_RGB2GRAY).astype(np.float32)
    photo = cv2.cvtColor(avatar.image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    person = (_person_alpha(avatar) > 0.5).astype(np.uint8)
    size = max(person.shape)
    into = cv2.distanceTransform(person, cv2.DIST_L2, 5)
    out_of = cv2.distanceTransform(1 - person, cv2.DIST_L2, 5)
    inner = (person > 0) & (into > 0.01 * size) & (into < 0.04 * size)
    outer = (person == 0) & (out_of > 0.02 * size) & (out_of < 0.06 * size)

    def fine(image):
        return image - cv2.GaussianBlur(image, (0, 0), 2.0)

    grain = float(np.sqrt(np.mean(fine(plate)[inner] ** 2) / np.mean(fine(photo)[outer] ** 2)))
    return grain, float(np.median(plate[inner]) - np.median(photo[outer]))


def test_background_uncovered_by_the_head_continues_the_real_one(grace_avatar):
    """Behind the head the plate was one smooth fill of the background's average colour,
    and a moving head uncovered it as a flat band round the head, a glow on a dark
    background. Near the outline it now continues the background's own colours and grain
    (Grace Hopper: grain 0.03 -> 0.62 of the background's, tone -23 -> -4 grey levels)."""
    grain, tone = _plate_at_the_outline(grace_avatar)
    assert grain > 0.3 and abs(tone) < 10


@pytest.mark.shared
def test_no_glow_round_a_paintings_moving_head(shared_data):
    """Mona Lisa's dark landscape: the fill behind her was 14 grey levels lighter than the
    background beside her hair, with 0.06 of its grain (now -2 and 0.51)."""
    avatar, _ = prepare([shared_data / "portraits" / "mona_lisa__avatarify_mona.jpg"])
    grain, tone = _plate_at_the_outline(avatar)
    assert grain > 0.3 and abs(tone) < 6


def test_moving_head_reveals_background_and_leaves_it_still(grace_rig, grace_avatar):
    driver, retarget, engine = grace_rig
    width = lm.face_width(driver)
    moved = turn(driver, yaw=20, roll=8) + np.array([0.25 * width, 0.0, 0.0])
    out = engine.render(retarget.pose(retarget.target(moved))).astype(int)
    photo = grace_avatar.image.astype(int)
    alpha = _person_alpha(grace_avatar)
    xy = grace_avatar.landmarks[:, :2]
    center = xy.mean(axis=0)
    h, w = alpha.shape
    ys, xs = np.mgrid[0:h, 0:w]
    dist = np.hypot(xs - center[0], ys - center[1])
    # Background far from the head (and from anything segmented as person) is exactly
    # the photo's, while the head moved.
    clear = cv2.distanceTransform((alpha < 0.05).astype(np.uint8), cv2.DIST_L2, 5) > 0.03 * max(h, w)
    far_background = clear & (dist > 1.2 * lm.face_height(grace_avatar.landmarks))
    assert far_background.sum() > 0.1 * h * w
    # (Sub-pixel motions are shown, and OpenCV's remap tables are exact to 1/32 px: a
    # sharp edge may change a few levels. Version one moved this area: mean 13.5, p99 190.)
    diff = np.abs(out[far_background] - photo[far_background])
    assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 10
    # Where the head was (left of it now), the frame shows background colours, not skin or
    # hair dragged across: closer to the wall/flag around the head than to the face.
    found = detect(out.astype(np.uint8))
    assert found is not None and found[:, 0].mean() > center[0] + 0.15 * width
    left_edge = xy[:, 0].min()
    band = (xs > left_edge) & (xs < left_edge + 0.12 * width) & (np.abs(ys - center[1]) < 0.3 * width)
    face_color = photo[int(center[1]) - 10: int(center[1]) + 10, int(center[0]) - 10: int(center[0]) + 10].reshape(-1, 3).mean(axis=0)
    near_bg = (alpha < 0.05) & (dist < 1.0 * lm.face_height(grace_avatar.landmarks)) & (ys < center[1])
    bg_color = photo[near_bg].mean(axis=0)
    revealed = out[band].mean(axis=0)
    assert np.abs(revealed - bg_color).sum() < np.abs(revealed - face_color).sum()


def test_hair_follows_the_head_and_shoulders_barely_move(grace_rig, grace_avatar):
    driver, retarget, engine = grace_rig
    width = lm.face_width(driver)
    pose = retarget.pose(retarget.target(driver + np.array([0.2 * width, 0.0, 0.0])))
    shows = engine.source_map(pose)
    h, w = shows.shape[:2]
    xs = np.arange(w)[None, :]
    shift = xs - shows[..., 0]  # how far right each pixel's content moved
    xy = grace_avatar.landmarks[:, :2]
    fw, fh = grace_avatar.proportions["face_width"], grace_avatar.proportions["face_height"]
    top = xy[lm.FOREHEAD_TOP]
    head = shift[int(xy[lm.NOSE_TIP, 1]), int(xy[lm.NOSE_TIP, 0])]
    assert head > 0.15 * fw
    # Hair/cap above the forehead moves (almost) as the head does.
    hair = shift[int(top[1] - 0.15 * fh), int(top[0])]
    assert hair > 0.8 * head
    # Shoulders, well below and beside the chin, stay nearly where they were.
    chin = xy[lm.CHIN]
    y = int(min(chin[1] + 0.6 * fh, h - 5))
    for x in (chin[0] - 1.0 * fw, chin[0] + 1.0 * fw):
        assert abs(shift[y, int(np.clip(x, 0, w - 1))]) < 0.25 * head


# -- eyes ----------------------------------------------------------------------------------
def _driver_frames(path, frames):
    from avatarcam.sources import VideoFileSource
    from avatarcam.tracking import FaceTracker

    faces = []
    with FaceTracker(smoothing=False) as tracker:
        source = VideoFileSource(str(path))
        try:
            for i, frame in enumerate(source):
                if i >= frames:
                    break
                face = tracker.process(frame.image, frame.timestamp)
                if face is not None:
                    faces.append((frame.image, face.landmarks))
        finally:
            source.close()
    assert len(faces) > 0.9 * frames
    return faces


def _first_frame_rig(faces, folder):
    """An avatar made from the first of ``faces`` (``(image, landmarks)`` of a clip, saved in
    ``folder``), its retargeter with that frame as the neutral, and its warp engine:
    ``(retarget, engine)``."""
    photo = folder / "first_frame.png"
    cv2.imwrite(str(photo), cv2.cvtColor(faces[0][0], cv2.COLOR_RGB2BGR))
    avatar, _ = prepare([photo])
    _, retarget, engine = warp_rig(avatar, faces[0][1])
    return retarget, engine


@pytest.fixture(scope="module")
def blinking_driver(shared_data):
    """A real blink: a man in glasses talking to his webcam closes his eyes in frame ~11."""
    faces = _driver_frames(shared_data / "driving" / "lp_d9_man_glasses_talking.mp4", 30)
    openings = [lm.eye_opening(p) for _, p in faces]
    closed = int(np.argmin(openings))
    assert openings[closed] < 0.4 * openings[0]  # the clip really blinks
    reopened = closed + int(np.argmax(openings[closed:]))
    return faces[0][1], faces[closed][1], faces[reopened][1]


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["mona_lisa__avatarify_mona.jpg", "woman_photo__sadtalker_people_0.png"])
def test_real_blink_closes_the_lids_and_reopens(shared_data, blinking_driver, portrait):
    neutral, closed, reopened = blinking_driver
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    retarget = Retargeter(avatar.landmarks, avatar.proportions)
    retarget.set_neutral(neutral)
    engine = WarpEngine(avatar)
    base = detect(engine.render(retarget.neutral_pose()))
    shut = detect(engine.render(retarget.pose(retarget.target(closed))))
    again = detect(engine.render(retarget.pose(retarget.target(reopened))))
    assert base is not None and shut is not None and again is not None
    # Re-detected from the pixels: the avatar's eyes are seen (nearly) shut, as the
    # driver's are (version one only narrowed them by 15-30%) ...
    assert lm.eye_opening(shut) < 0.45 * lm.eye_opening(base)
    assert lm.eye_opening(shut) < lm.eye_opening(closed) + 0.08
    # ... and open again as wide as before.
    assert lm.eye_opening(again) > 0.85 * lm.eye_opening(base)


def _lid_band(engine, pose, side):
    """The photo's lid band of one eye (the skin above the upper lid, which a shut eye
    stretches down over the eye), and the output pixels of ``pose`` that show it."""
    upper = np.array(lm.LID_IDS[side][0])
    face = lm.face_triangles()
    band = np.zeros(engine.avatar.image.shape[:2], np.float32)
    for tri in face[np.isin(face, upper).any(axis=1)]:
        cv2.fillConvexPoly(band, np.round(engine.avatar.landmarks[tri, :2] * 16).astype(np.int32), 1.0, cv2.LINE_8, shift=4)
    shown = cv2.remap(band, engine.source_map(pose), None, cv2.INTER_NEAREST) > 0.5
    return band > 0.5, cv2.erode(shown.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _shut_by_a_real_blink(portrait, blinking_driver):
    """``portrait`` driven from the blinking driver's first frame to its shut eyes: the
    retargeter, the engine, the shut pose and its render."""
    neutral, closed, _ = blinking_driver
    avatar, _ = prepare([portrait])
    _, retarget, engine = warp_rig(avatar, neutral)
    pose = retarget.pose(retarget.target(closed))
    return retarget, engine, pose, engine.render(pose)


def _lid_grain_shape(engine, pose, image, side):
    """How round the fine grain of one shut eye's lid is in a render: RMS of its vertical
    over its horizontal gradients, taken on the detail finer than a pixel or two, over the
    output pixels showing the photo's lid band. Isotropic grain (skin, craquelure) gives
    about 1; grain stretched down the lid, in vertical streaks, well under 1."""
    _, shown = _lid_band(engine, pose, side)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    fine = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    gx, gy = cv2.Sobel(fine, cv2.CV_32F, 1, 0), cv2.Sobel(fine, cv2.CV_32F, 0, 1)
    assert shown.sum() > 100
    return float(np.sqrt((gy[shown] ** 2).sum() / (gx[shown] ** 2).sum()))


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["vermeer_girl_pearl_earring__liveportrait_s10.jpg", "mona_lisa__avatarify_mona.jpg"])
def test_a_shut_lid_is_not_streaked(shared_data, blinking_driver, portrait):
    """A shut eye's lid is the band of skin above the lashes stretched three times its
    height. It showed that band's texture squeezed into it and stretched back, and the
    open lid's own crease stretched with it: craquelure and grain ran down the lid in
    vertical streaks (Vermeer 0.76 and 0.59, Mona Lisa 1.19 and 0.84; now 1.02 and 0.85,
    1.19 and 1.08)."""
    retarget, engine, pose, image = _shut_by_a_real_blink(shared_data / "portraits" / portrait, blinking_driver)
    shut = detect(image)
    assert shut is not None and lm.eye_opening(shut) < 0.45 * lm.eye_opening(detect(engine.render(retarget.neutral_pose())))
    for side in ("right", "left"):
        assert _lid_grain_shape(engine, pose, image, side) > 0.8, side


def _shut_lid_lightness(engine, pose, image, side):
    """A shut eye's lid in a render against the photo's open lid: median grey level of the
    output pixels showing the lid band over that of the band in the photo, leaving out its
    darkest 30% (lashes, the crease). The shared portraits' shut lids score 0.9-1.36."""
    band, shown = _lid_band(engine, pose, side)
    photo = cv2.cvtColor(engine.avatar.image, cv2.COLOR_RGB2GRAY)[band].astype(np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(np.median(grey[shown]) / np.median(photo[photo >= np.percentile(photo, 30)]))


@pytest.mark.shared
def test_a_shut_lid_in_a_paintings_shadow_is_not_a_pale_patch(shared_data, blinking_driver):
    """Raphael's La Velata: her right eye lies in the shadow beside the nose; shut, its lid
    was a pale patch (1.70 of the open lid's lightness, the other eye 1.13; now 1.16 and
    1.18)."""
    _, engine, pose, image = _shut_by_a_real_blink(shared_data / "portraits" / "raphael_la_velata__liveportrait_s8.jpg",
                                                   blinking_driver)
    for side in ("right", "left"):
        assert _shut_lid_lightness(engine, pose, image, side) < 1.3, side


def _pale_dash_above_lashes(engine, pose, image) -> int:
    """Pixels of both shut lids, from the lash line to 3 pixels above it, more than 20 grey
    levels brighter than the pixel two above and the one below: a thin pale line along
    the lashes."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    count = 0
    for side in ("right", "left"):
        edge = engine._upper_lid_edge(pose, side)
        order = np.argsort(edge[:, 0])
        for x in range(int(np.ceil(edge[:, 0].min())), int(edge[:, 0].max())):
            y = int(np.floor(np.interp(x, edge[order, 0], edge[order, 1])))
            line = grey[y - 5:y + 2, x]
            count += int(((line[2:-1] > line[:-3] + 20) & (line[2:-1] > line[3:] + 20)).sum())
    return count


@pytest.mark.shared
def test_a_shut_lid_shows_no_pale_dash_along_its_lashes(shared_data, blinking_driver):
    """Sargent's Lady Agnew has eyes 20 pixels wide with a pale rim under them. The shut
    lid's picture was sampled between pixels at the line where the lids meet, beyond
    which lay that rim: a bright dash ran along the lashes of her shut eye (5 pixels;
    none now)."""
    _, engine, pose, image = _shut_by_a_real_blink(shared_data / "portraits" / "sargent_lady_agnew__liveportrait_s0.jpg",
                                                   blinking_driver)
    assert _pale_dash_above_lashes(engine, pose, image) <= 1


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["mona_lisa__avatarify_mona.jpg", "obama_official__avatarify_obama.jpg"])
def test_narrow_eyed_drivers_blink_shuts_the_avatars_eyes(shared_data, portrait):
    """Face Mesh sees a shut eye with a lid gap of a few percent of its width: for a driver
    whose open eyes are narrow, a third of their opening. Jackie Chan's blink (0.18 open,
    0.05 shut) left the avatar's eyes half open under a half-shown lid (re-detected at
    0.47 and 0.55 of open)."""
    faces = _driver_frames(shared_data / "driving" / "tpsmm_jackiechan_talking.mp4", 100)
    openings = [lm.eye_opening(p) for _, p in faces]
    closed = 80 + int(np.argmin(openings[80:]))
    assert openings[0] < 0.2 and openings[closed] > 0.2 * openings[0]  # narrow eyes, never seen meeting
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    retarget = Retargeter(avatar.landmarks, avatar.proportions)
    retarget.set_neutral(faces[0][1])
    engine = WarpEngine(avatar)
    base = detect(engine.render(retarget.neutral_pose()))
    shut = detect(engine.render(retarget.pose(retarget.target(faces[closed][1]))))
    assert base is not None and shut is not None
    assert lm.eye_opening(shut) < 0.45 * lm.eye_opening(base)


def _narrowed(points, share):
    """``points`` with each eye's lids moved towards each other by ``share`` of their gap."""
    p = points.copy()
    for upper, lower in lm.LID_IDS.values():
        middle = 0.5 * (p[upper] + p[lower])
        p[upper] += share * (middle - p[upper])
        p[lower] += share * (middle - p[lower])
    return p


def _narrowing_response(avatar, driver):
    """Re-detected eye opening of ``avatar`` driven by ``driver`` with its lids 40% shut,
    over that with them open."""
    driver, retarget, engine = warp_rig(avatar, driver)
    found = [detect(engine.render(retarget.pose(retarget.target(_narrowed(driver, share))))) for share in (0.0, 0.4)]
    assert found[0] is not None and found[1] is not None
    return lm.eye_opening(found[1]) / lm.eye_opening(found[0])


def test_narrowed_eyes_read_as_narrowed(astronaut_avatar):
    """Lids 40% shut narrow the eye that Face Mesh finds on the render: with the iris cut
    flat under an unshaded lid it found them only 7% shut (the lid's shadow: 23%)."""
    assert _narrowing_response(astronaut_avatar, astronaut_avatar.landmarks) < 0.85


@pytest.mark.shared
def test_portraits_narrowed_eyes_read_as_narrowed(shared_data):
    avatar, _ = prepare([shared_data / "portraits" / "woman_photo__sadtalker_people_0.png"])
    assert _narrowing_response(avatar, avatar.landmarks) < 0.84


def test_a_narrowing_eyes_shadow_fades_down_from_the_lid(grace_rig, monkeypatch):
    """The shade under a narrowing eye's upper lid fades away from the lid. Of even
    darkness down to a line parallel to the lid, it read as a grey slab laid across the eye
    white. Measured as the 95th percentile of the shade's change from one row to the next,
    over its darkest, times the lid gap in pixels: with the slab 2.4 and 2.9 for Grace
    Hopper's eyes 30% shut (1.2 and 1.3 now)."""
    from avatarcam.engines.warp import _EYE_RING_IDS, _image_down, _lid_gap

    driver, retarget, engine = grace_rig
    pose = retarget.pose(retarget.target(_narrowed(driver, 0.3)))
    shaded = engine.render(pose).astype(np.float32).mean(axis=2)
    monkeypatch.setattr(engine, "_shade_lids", lambda *args: None)
    plain = engine.render(pose).astype(np.float32).mean(axis=2)
    darkening = 1.0 - shaded / np.maximum(plain, 1.0)
    for side, ring in _EYE_RING_IDS.items():
        opening = np.zeros(plain.shape, np.uint8)
        cv2.fillPoly(opening, [np.round(engine.framing.to_output(pose.xy[ring])).astype(np.int32)], 1)
        inside = (cv2.erode(opening, np.ones((3, 3), np.uint8)) > 0) & (plain > 30)
        steps = np.abs(np.diff(darkening, axis=0))[inside[1:] & inside[:-1]]
        gap = _lid_gap(pose.landmarks, side, _image_down(pose.landmarks)) / engine.framing.scale
        darkest = np.percentile(darkening[inside], 99)
        assert darkest > 0.15, side  # the eye is shaded at all
        assert np.percentile(steps, 95) / darkest * gap < 1.8, side


def test_lids_that_meet_slid_along_the_eye_are_shut(grace_rig):
    """Face Mesh's lid points slide along the eye as it shuts. Lids that met with the upper
    one an eighth of the eye's width along are as shut as lids met point to point (taken
    point to point, their gap was 0.59 of the open eye's, and the eye looked 0.78 open)."""
    driver, retarget, engine = grace_rig
    base = detect(engine.render(retarget.pose(retarget.target(driver))))
    met = retarget.pose(retarget.target(close_eyes(driver)))
    slid = met.landmarks.copy()
    for side, (upper, lower) in lm.LID_IDS.items():
        a, b = slid[list(lm.EYE_CORNER_IDS[side]), :2]
        slid[upper, :2] = slid[lower, :2] + 0.12 * lm.eye_width(slid, side) * (b - a) / np.linalg.norm(b - a)
    shut = detect(engine.render(dataclasses.replace(met, landmarks=slid)))
    assert base is not None and shut is not None
    assert lm.eye_opening(shut) < 0.5 * lm.eye_opening(base)


def _lash_line_colour(image, points):
    """The colour of a shut eye's lash line: the darkest pixel across the lids' meeting
    line at each upper lid point off the corners, median over both eyes."""
    down = lm.head_axes(points)[:2, 1]
    down = down / np.linalg.norm(down)
    darkest = []
    for side, (upper, _) in lm.LID_IDS.items():
        across = np.linspace(-0.06, 0.06, 13)[:, None] * lm.eye_width(points, side) * down
        for i in upper[2:-2]:
            q = (points[i, :2] + across).astype(np.float32)
            seen = cv2.remap(image, q[:, :1], q[:, 1:], cv2.INTER_LINEAR)[:, 0].astype(float)
            darkest.append(seen[np.argmin(seen.sum(axis=1))])
    return np.median(darkest, axis=0)


@pytest.mark.shared
def test_shut_eyes_lash_line_has_the_persons_lash_colour(shared_data, tmp_path):
    """The avatar of a woman in warm light and dark make-up, made from a clip's first frame,
    shuts its eyes as she does later in the clip: its lash line has the colour of her
    real one (taken from her open eye's lash line; taken from the darkest pixels round
    the eye, iris and pupil among them, it was 30 levels off)."""
    faces = _driver_frames(shared_data / "driving" / "lp_d3_woman_expressions.mp4", 70)
    openings = [lm.eye_opening(p) for _, p in faces]
    closed = int(np.argmin(openings))
    assert openings[closed] < 0.2 * openings[0]  # she really shuts her eyes
    retarget, engine = _first_frame_rig(faces, tmp_path)
    target = retarget.target(faces[closed][1])
    out = engine.render(retarget.pose(target))
    real = _lash_line_colour(faces[closed][0], faces[closed][1])
    assert np.abs(_lash_line_colour(out, target) - real).sum() < 15


def _lines_across_shut_lids(image: np.ndarray, points: np.ndarray) -> float:
    """The share of columns across the middle of both shut eyes whose lid, from just above
    where the lids meet to 0.4 eye widths up, shows a line brighter than the lid around it
    (more than 6 grey levels over the running median down the column)."""
    from scipy.ndimage import median_filter

    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lines = []
    for side in ("right", "left"):
        width = lm.eye_width(points, side)
        a, b = points[list(lm.EYE_CORNER_IDS[side]), :2]
        rim = points[list(lm.LID_IDS[side][1]), :2]
        order = np.argsort(rim[:, 0])
        for x in np.linspace(min(a[0], b[0]) + 0.2 * width, max(a[0], b[0]) - 0.2 * width, 15):
            meet = float(np.interp(x, rim[order, 0], rim[order, 1]))
            profile = luma[round(meet - 0.4 * width): round(meet - 0.08 * width), int(np.rint(x))]
            ridge = profile - median_filter(profile, size=max(5, int(0.12 * width) | 1), mode="nearest")
            lines.append(ridge.max() > 6.0)
    return float(np.mean(lines))


@pytest.mark.shared
def test_a_shut_lid_shows_no_line_from_a_glasses_frame(shared_data, tmp_path):
    """The shut lid takes its grain from the skin above the eye. On a man in glasses, that
    skin is crossed by the frame's light rim, and his avatar's shut lids showed it as a
    pale arc across them: in 29 of 30 columns across them, shut by his own real blink
    (1 now; his real shut eyes in that frame show none)."""
    faces = _driver_frames(shared_data / "driving" / "lp_d9_man_glasses_talking.mp4", 30)
    openings = [lm.eye_opening(p) for _, p in faces]
    closed = int(np.argmin(openings))
    assert openings[closed] < 0.4 * openings[0]  # he really blinks
    retarget, engine = _first_frame_rig(faces, tmp_path)
    target = retarget.target(faces[closed][1])
    out = engine.render(retarget.pose(target))
    assert _lines_across_shut_lids(out, target) < 0.1


def _lower_rim_grain(avatar) -> list[float]:
    """Per eye, the fine detail (grey levels off a blur of a twentieth of the eye's width)
    that the shut eye's picture has just under the middle of the lower lid, where the
    upper lid covers the lower one's rim, over the photo's own detail in the skin a fifth
    of the eye's width further down."""
    data = avatar.engine_data
    x0, y0, x1, y1 = data["lids_box"]
    pictures = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
                for image in (data["lids"], avatar.image[y0:y1, x0:x1])]
    ratios = []
    for side in ("right", "left"):
        width = lm.eye_width(avatar.landmarks, side)
        shut, photo = (p - cv2.GaussianBlur(p, (0, 0), max(1.0, 0.05 * width)) for p in pictures)
        rim = avatar.landmarks[lm.LID_IDS[side][1][2:-2], :2] - (x0, y0)

        def detail(image, depths):
            return [image[round(y + f * width), round(x)] for x, y in rim for f in depths]

        ratios.append(float(np.std(detail(shut, np.linspace(0.02, 0.07, 6)))
                            / max(np.std(detail(photo, np.linspace(0.16, 0.26, 6))), 1e-6)))
    return ratios


@pytest.mark.shared
def test_a_shut_eyes_lower_rim_has_the_skins_grain(shared_data):
    """Where the upper lid closes over the lower one's rim (waterline, lower lashes), the
    shut eye shows the skin below the eye. That skin was filled in smooth, and large eyes
    (Einstein's, 141 pixels wide at his photo's own size, and Obama's) showed a smooth pale
    band under their lashes; it now has the grain of the skin just below. Over both eyes of the eight
    portraits, its detail was 0.23 of the skin's further down (0.44 now)."""
    ratios = [r for path in sorted((shared_data / "portraits").iterdir()) for r in _lower_rim_grain(prepare([path])[0])]
    assert np.mean(ratios) > 0.35


def test_closed_lids_are_skin_not_eye(grace_rig, grace_avatar):
    """Over a shut eye the avatar shows lid skin: no dark iris or white sclera is left."""
    driver, retarget, engine = grace_rig
    pose = retarget.pose(retarget.target(close_eyes(driver)))
    out = engine.render(pose).astype(float)
    for iris in (lm.RIGHT_IRIS, lm.LEFT_IRIS):
        # Where the iris was in the photo and the lids now meet.
        c = grace_avatar.landmarks[iris[0], :2].round().astype(int)
        r = max(2, int(0.3 * np.linalg.norm(grace_avatar.landmarks[iris[1], :2] - grace_avatar.landmarks[iris[3], :2])))
        lid = out[c[1] - r: c[1] + r + 1, c[0] - r: c[0] + r + 1].reshape(-1, 3)
        photo_iris = grace_avatar.image[c[1] - r: c[1] + r + 1, c[0] - r: c[0] + r + 1].reshape(-1, 3).astype(float)
        cheek = grace_avatar.landmarks[[50, 280][iris == lm.LEFT_IRIS], :2].round().astype(int)
        skin = grace_avatar.image[cheek[1] - 3: cheek[1] + 4, cheek[0] - 3: cheek[0] + 4].reshape(-1, 3).mean(axis=0)
        assert np.abs(lid.mean(axis=0) - skin).sum() < 0.6 * np.abs(photo_iris.mean(axis=0) - skin).sum()


def _lid_profiles(image: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """Luma down through each shut eye, at columns across its middle: from well up the lid
    to just below where the lids meet."""
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
    profiles = []
    for corners, lower in ((lm.RIGHT_EYE_CORNERS, lm.RIGHT_EYE_LOWER), (lm.LEFT_EYE_CORNERS, lm.LEFT_EYE_LOWER)):
        a, b = points[list(corners), :2]
        width = float(np.linalg.norm(b - a))
        rim = points[list(lower), :2]
        for x in np.linspace(min(a[0], b[0]) + 0.3 * width, max(a[0], b[0]) - 0.3 * width, 7):
            meet = float(np.interp(x, *zip(*sorted(rim.tolist()))))
            ys = np.arange(round(meet - 0.35 * width), round(meet + 0.12 * width) + 1)
            profiles.append(luma[ys, int(np.rint(x))])
    return profiles


@pytest.mark.parametrize("portrait", ["grace", "mona"])
def test_shut_lids_are_skin_above_one_thin_lash_line(portrait, grace_rig, astronaut_avatar, request):
    """A shut eye is lid skin down to a single thin lash line, as a real one is: no dark
    patch where the eye was, no smeared lashes, no second line along its rim."""
    if portrait == "grace":
        driver, retarget, engine = grace_rig
    else:
        avatar, _ = prepare([request.getfixturevalue("shared_data") / "portraits" / "mona_lisa__avatarify_mona.jpg"])
        driver, retarget, engine = warp_rig(avatar, astronaut_avatar.landmarks)
    target = retarget.target(close_eyes(driver))
    out = engine.render(retarget.pose(target))
    width = lm.eye_width(target, "right")
    single = 0
    profiles = _lid_profiles(out, target)
    for profile in profiles:
        dark = profile < 0.7 * np.median(profile)
        runs = np.flatnonzero(np.diff(np.concatenate([[0], dark.astype(int), [0]])) == 1)
        single += len(runs) == 1 and dark.sum() <= 0.12 * width
    assert single >= 0.8 * len(profiles)


def _eye_difference(avatar, image):
    """The 99th percentile, over both eyes' boxes, of the largest channel difference between
    ``image`` and the avatar's photo (grey levels)."""
    points = avatar.landmarks
    diffs = []
    for side, ring in (("right", lm.RIGHT_EYE), ("left", lm.LEFT_EYE)):
        margin = 0.2 * lm.eye_width(points, side)
        x0, y0 = np.floor(points[list(ring), :2].min(axis=0) - margin).astype(int)
        x1, y1 = np.ceil(points[list(ring), :2].max(axis=0) + margin).astype(int)
        diffs.append(np.abs(image[y0:y1, x0:x1].astype(int) - avatar.image[y0:y1, x0:x1]).max(axis=2).ravel())
    return float(np.percentile(np.concatenate(diffs), 99))


def test_eyes_at_rest_look_as_in_the_photo(astronaut_avatar):
    """Driven by its own landmarks, the avatar's eyes are the photo's: no seam round an iris
    that has not moved (it showed as a pale ring, 56-70 grey levels off)."""
    driver, retarget, engine = warp_rig(astronaut_avatar, astronaut_avatar.landmarks)
    assert _eye_difference(astronaut_avatar, engine.render(retarget.pose(retarget.target(driver)))) <= 12


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["sargent_lady_agnew__liveportrait_s0.jpg", "woman_photo__sadtalker_people_0.png",
                                      "einstein_bw_photo__avatarify_einstein.jpg", "obama_official__avatarify_obama.jpg"])
def test_portraits_eyes_at_rest_look_as_in_the_photo(shared_data, portrait):
    """Also through the retargeter: Einstein's and Obama's irises run under their lids, and
    clipped between the lids point by point they were drawn smaller."""
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    driver, retarget, engine = warp_rig(avatar, avatar.landmarks)
    assert _eye_difference(avatar, engine.render(retarget.pose(retarget.target(driver)))) <= 8


def test_gaze_moves_the_iris_within_the_eye(grace_rig):
    driver, retarget, engine = grace_rig
    base = detect(engine.render(retarget.pose(retarget.target(driver))))
    looks = driver.copy()
    for iris, corners in ((lm.RIGHT_IRIS, lm.RIGHT_EYE_CORNERS), (lm.LEFT_IRIS, lm.LEFT_EYE_CORNERS)):
        eye_w = np.linalg.norm(driver[corners[0], :2] - driver[corners[1], :2])
        looks[list(iris), 0] += 0.18 * eye_w  # both eyes look towards the image's right
    found = detect(engine.render(retarget.pose(retarget.target(looks))))
    assert found is not None
    for iris, corners in ((lm.RIGHT_IRIS, lm.RIGHT_EYE_CORNERS), (lm.LEFT_IRIS, lm.LEFT_EYE_CORNERS)):
        eye_w = np.linalg.norm(base[corners[0], :2] - base[corners[1], :2])
        moved = (found[iris[0], 0] - found[list(corners), 0].mean()) - (base[iris[0], 0] - base[list(corners), 0].mean())
        assert moved > 0.05 * eye_w


def _uncovered_edge_step(avatar, image, moved):
    """Mean colour step (grey levels, over channels) across the edge of each photo iris's
    circle where gaze has taken the iris away: 2 px inside it against 2 px outside, on
    points well inside the eye opening and clear of the moved iris."""
    from avatarcam.engines.warp import _EYE_RINGS, _IRIS_IDS, _IRIS_REACH

    image = image.astype(float)
    steps = []
    for iris, ring in zip(_IRIS_IDS, _EYE_RINGS.values()):
        (c, r), (now, _) = lm.iris_circle(avatar.landmarks, iris), lm.iris_circle(moved, iris)
        opening = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(opening, [np.round(avatar.landmarks[list(ring), :2]).astype(np.int32)], 1)
        opening = cv2.erode(opening, np.ones((5, 5), np.uint8))
        edge = _IRIS_REACH * r
        for t in np.linspace(0.0, 2.0 * np.pi, 120, endpoint=False):
            u = np.array([np.cos(t), np.sin(t)])
            a, b = (np.round(c + (edge + d) * u).astype(int) for d in (-2.0, 2.0))
            if all(opening[y, x] and np.linalg.norm((x, y) - now) > 1.3 * edge for x, y in (a, b)):
                steps.append(np.abs(image[a[1], a[0]] - image[b[1], b[0]]).mean())
    assert len(steps) >= 10
    return float(np.mean(steps))


def _irises_looking_aside(avatar):
    """Renders of ``avatar`` with both irises looking 0.8 of their radius to one side, then
    the other, the rest of the face as in the photo: (moved landmarks, image) pairs."""
    from avatarcam.engines.warp import _IRIS_IDS
    from avatarcam.retarget import AvatarPose

    engine = WarpEngine(avatar)
    points = avatar.landmarks
    for sign in (-1.0, 1.0):
        moved = points.copy()
        for iris, side in zip(_IRIS_IDS, ("right", "left")):
            a, b = points[lm.EYE_CORNER_IDS[side], :2]
            moved[iris, :2] += sign * 0.8 * lm.iris_circle(points, iris)[1] * (b - a) / np.linalg.norm(b - a)
        yield moved, engine.render(AvatarPose(moved, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])))


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["einstein_bw_photo__avatarify_einstein.jpg", "obama_official__avatarify_obama.jpg",
                                      "vermeer_girl_pearl_earring__liveportrait_s10.jpg"])
def test_gaze_uncovers_eye_white_that_joins_the_white_around_it(shared_data, portrait):
    """Irises looking 0.8 of their radius to either side uncover eye white with no edge where
    they were: it was filled with one flat colour, a grey or bright patch with a hard rim
    (steps of 45-62 grey levels across it; now 13-25)."""
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    for moved, image in _irises_looking_aside(avatar):
        assert _uncovered_edge_step(avatar, image, moved) < 30


def _uncovered_greying(avatar) -> list[float]:
    """Irises looking 0.8 of their radius to either side: how much darker (grey levels) the
    eye white they uncover is than the median of the photo's eye white around them."""
    from avatarcam.engines.warp import _EYE_RINGS, _IRIS_IDS, _IRIS_REACH

    points, photo = avatar.landmarks, avatar.image.astype(float).mean(axis=2)
    ys, xs = np.mgrid[0:photo.shape[0], 0:photo.shape[1]]
    greying = []
    for moved, image in _irises_looking_aside(avatar):
        image = image.astype(float).mean(axis=2)
        for iris, ring in zip(_IRIS_IDS, _EYE_RINGS.values()):
            (was, r), (now, _) = lm.iris_circle(points, iris), lm.iris_circle(moved, iris)
            opening = np.zeros(photo.shape, np.uint8)
            cv2.fillPoly(opening, [np.round(points[list(ring), :2]).astype(np.int32)], 1)
            opening = cv2.erode(opening, np.ones((5, 5), np.uint8)) > 0
            from_now, from_was = np.hypot(xs - now[0], ys - now[1]), np.hypot(xs - was[0], ys - was[1])
            uncovered = opening & (from_was < r) & (from_now > _IRIS_REACH * r + 2)
            white = opening & (from_was > _IRIS_REACH * r + 2)
            if uncovered.sum() >= 5 and white.sum() >= 5:
                greying.append(float(np.median(photo[white]) - image[uncovered].mean()))
    return greying


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["vermeer_girl_pearl_earring__liveportrait_s10.jpg", "woman_photo__sadtalker_people_0.png",
                                      "mona_lisa__avatarify_mona.jpg"])
def test_eye_white_an_iris_uncovers_is_not_grey(shared_data, portrait):
    """What lay under the iris is filled from the eye white around it, not from the lids and
    lashes too: their dark greyed it, up to 120 grey levels darker than the eye white on
    Vermeer's girl, 97 on the woman photo, 71 on Mona Lisa."""
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    greying = _uncovered_greying(avatar)
    assert greying and max(greying) < 35


def _uncovered_white_error(faces, retarget, engine) -> list[float]:
    """Self-reenactment: in each frame where an iris has moved 0.6 of its radius or more
    from where the first frame has it (relative to the eye's corners), the render's grey
    level minus the real frame's on the eye white it uncovered (inside the first frame's
    iris, carried along with the eye, and clear of the real and the rendered iris)."""
    from avatarcam.engines.warp import _EYE_RINGS, _IRIS_IDS

    first = faces[0][1]
    errors = []
    for image, points in faces[1::2]:
        moved = []
        for (side, ring), iris in zip(_EYE_RINGS.items(), _IRIS_IDS):
            (a0, b0), (a, b) = first[lm.EYE_CORNER_IDS[side], :2], points[lm.EYE_CORNER_IDS[side], :2]
            (c0, r0), (c, r) = lm.iris_circle(first, iris), lm.iris_circle(points, iris)
            turn = complex(*(b - a)) / complex(*(b0 - a0))
            was = turn * complex(*(c0 - a0))
            was = a + (was.real, was.imag)
            if np.linalg.norm(c - was) >= 0.6 * r and lm.eye_opening(points) >= 0.15:
                moved.append((ring, iris, c, r, was, r0 * abs(turn)))
        if not moved:
            continue
        pose = retarget.pose(retarget.target(points))
        render = cv2.cvtColor(engine.render(pose), cv2.COLOR_RGB2GRAY).astype(float)
        real = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
        ys, xs = np.mgrid[0:real.shape[0], 0:real.shape[1]]
        for ring, iris, c, r, was, was_r in moved:
            opening = np.zeros(real.shape, np.uint8)
            cv2.fillPoly(opening, [np.round(points[list(ring), :2]).astype(np.int32)], 1)
            drawn = lm.iris_circle(pose.landmarks, iris)[0]
            region = ((cv2.erode(opening, np.ones((3, 3), np.uint8)) > 0) & (np.hypot(xs - was[0], ys - was[1]) < was_r)
                      & (np.hypot(xs - c[0], ys - c[1]) > 1.25 * r) & (np.hypot(xs - drawn[0], ys - drawn[1]) > 1.25 * r))
            if region.sum() >= 8:
                errors.append(float((render[region] - real[region]).mean()))
    return errors


@pytest.mark.shared
def test_eye_white_a_look_aside_uncovers_nears_the_real_ones_brightness(shared_data, tmp_path):
    """The front of an eyeball, which the iris covers in a photo, is its brightest white;
    the whites a photo shows beside the iris are in the shade of the corners and lids. Filled
    from those without that shading, the white a look aside uncovered was 43 grey levels
    darker than in the real frames (self-reenactment of two real clips, 102 eyes; now 28)."""
    errors = []
    for clip, frames in (("lp_d0_man_greenscreen_expressions.mp4", 75), ("lp_d6_woman_funny_faces_long.mp4", 150)):
        faces = _driver_frames(shared_data / "driving" / clip, frames)
        folder = tmp_path / clip
        folder.mkdir()
        errors += _uncovered_white_error(faces, *_first_frame_rig(faces, folder))
    assert len(errors) >= 40
    assert np.mean(errors) > -36


def _rim_brightening(avatar) -> list[float]:
    """Irises looking 0.8 of their radius to either side: how much brighter than the photo
    (grey levels) the ring just round each moved iris is, where the photo shows no iris
    there and the render only the iris layer's edge over the photo's own pixels."""
    from avatarcam.engines.warp import _EYE_RINGS, _IRIS_IDS, _IRIS_REACH

    points, photo = avatar.landmarks, avatar.image.astype(float)
    ys, xs = np.mgrid[0:photo.shape[0], 0:photo.shape[1]]
    rims = []
    for moved, image in _irises_looking_aside(avatar):
        image = image.astype(float)
        for iris, ring in zip(_IRIS_IDS, _EYE_RINGS.values()):
            (was, r), (now, _) = lm.iris_circle(points, iris), lm.iris_circle(moved, iris)
            opening = np.zeros(photo.shape[:2], np.uint8)
            cv2.fillPoly(opening, [np.round(points[list(ring), :2]).astype(np.int32)], 1)
            opening = cv2.erode(opening, np.ones((3, 3), np.uint8))
            from_now, from_was = np.hypot(xs - now[0], ys - now[1]), np.hypot(xs - was[0], ys - was[1])
            rim = (opening > 0) & (from_now > 1.05 * r) & (from_now < _IRIS_REACH * r + 2.5) & (from_was > _IRIS_REACH * r + 3)
            if rim.sum() >= 5:
                rims.append(float(np.clip(image[rim].mean(axis=1) - photo[rim].mean(axis=1), 0.0, None).mean()))
    return rims


def test_an_iris_looking_aside_takes_no_eye_white_with_it(grace_avatar):
    """The iris layer reaches past Face Mesh's circle for the dark limbus; the pale sclera
    in that reach stays behind (carried along, it was a pale crescent round the iris, 33
    grey levels brighter than the photo there)."""
    rims = _rim_brightening(grace_avatar)
    assert rims and max(rims) < 12


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["einstein_bw_photo__avatarify_einstein.jpg", "obama_official__avatarify_obama.jpg",
                                      "woman_photo__sadtalker_people_0.png"])
def test_portraits_irises_looking_aside_take_no_eye_white_with_them(shared_data, portrait):
    """Einstein's irises carried a ring up to 150 grey levels brighter than his lids, Obama's
    up to 64, the woman's 65."""
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    rims = _rim_brightening(avatar)
    assert rims and max(rims) < 12


# -- mouth ---------------------------------------------------------------------------------
def _mouth_regions(found):
    """Pixel positions just below the upper inner lip, just above the lower inner lip, and
    on the lower lip, from landmarks re-detected in a render."""
    upper = found[list(lm.INNER_LIP_UPPER[4:7]), :2].mean(axis=0)
    lower = found[list(lm.INNER_LIP_LOWER[3:6]), :2].mean(axis=0)
    lip = found[list(lm.OUTER_LIP_LOWER[3:6]), :2].mean(axis=0)
    return upper + 0.2 * (lower - upper), lower + 0.35 * (upper - lower), lip


def _patch(image, point, r=2):
    x, y = np.round(point).astype(int)
    return image[y - r: y + r + 1, x - r: x + r + 1].reshape(-1, 3).astype(float).mean(axis=0)


def _lower_edge_roughness(image, pose):
    """How stepped the opened mouth's lower edge is: down each pixel column across the
    middle half of the mouth, the sub-pixel row where the grey level crosses halfway from
    the cavity to the lower lip; the mean size of that row's second difference along the
    mouth. A straight or gently curved edge gives near 0, one drawn in whole-pixel steps
    a few tenths."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    a, b = sorted(pose.xy[list(lm.MOUTH_CORNERS), 0])
    lip = np.array(sorted(pose.xy[list(lm.INNER_LIP_LOWER)].tolist()))
    rows = []
    for x in range(int(np.ceil(a + 0.3 * (b - a))), int(b - 0.3 * (b - a))):
        y0 = int(np.interp(x, lip[:, 0], lip[:, 1])) - 6
        column = grey[y0:y0 + 12, x]
        level = 0.5 * (column[:3].mean() + column[-3:].mean())
        k = int(np.argmax(column > level))
        rows.append(y0 + k - 1 + (level - column[k - 1]) / max(column[k] - column[k - 1], 1e-3))
    return float(np.abs(np.diff(rows, 2)).mean())


@pytest.mark.parametrize("amount", [0.25, 0.4])
def test_an_open_mouth_shows_none_of_the_lips_stretched_across_it(astronaut_avatar, amount):
    """The cavity was painted 92% over the warped photo, whose lips, stretched from top to
    bottom across the opening, showed through as vertical streaks. Along each row of the
    opening's middle (two pixels in from the lips), the grey level's second difference from
    one column to the next was 1.9 on the astronaut; now 0.5 (the cavity's own shading is
    smooth)."""
    driver, retarget, engine = warp_rig(astronaut_avatar, astronaut_avatar.landmarks)
    pose = retarget.pose(retarget.target(open_mouth(driver, amount)))
    grey = cv2.cvtColor(engine.render(pose), cv2.COLOR_RGB2GRAY).astype(float)
    inside = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(inside, [np.round(pose.xy[lm.INNER_LIPS_IDS]).astype(np.int32)], 1)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
    a, b = sorted(pose.xy[list(lm.MOUTH_CORNERS), 0])
    inside[:, :int(a + 0.3 * (b - a))] = inside[:, int(b - 0.3 * (b - a)):] = False
    across = np.abs(grey[:, :-2] - 2 * grey[:, 1:-1] + grey[:, 2:])
    middle = inside[:, :-2] & inside[:, 1:-1] & inside[:, 2:]
    assert middle.sum() > 100
    assert across[middle].mean() < 1.0


@pytest.mark.parametrize("amount", [0.25, 0.4])
def test_an_open_mouths_edge_is_smooth(astronaut_avatar, amount):
    """The cavity's outline was filled into a float mask with LINE_AA, which OpenCV draws
    without anti-aliasing there: its edge ran in whole-pixel steps along the lower lip
    (roughness 0.22 and 0.21 on the astronaut; now 0.13 and 0.12)."""
    driver, retarget, engine = warp_rig(astronaut_avatar, astronaut_avatar.landmarks)
    pose = retarget.pose(retarget.target(open_mouth(driver, amount)))
    assert _lower_edge_roughness(engine.render(pose), pose) < 0.17


def test_open_mouth_shows_teeth_only_when_the_driver_does(grace_rig):
    driver, retarget, engine = grace_rig
    target = retarget.target(open_mouth(driver, 0.5))
    dark = engine.render(retarget.pose(target))
    teeth = engine.render(retarget.pose(target, teeth=(1.0, 0.0)))
    found = detect(teeth)
    assert found is not None and lm.mouth_opening(found) > 0.15
    below_upper_lip, above_lower_lip, lip = _mouth_regions(found)
    # Without teeth: a dark cavity, darker than the lips.
    assert _patch(dark, below_upper_lip).mean() < 0.7 * _patch(dark, lip).mean()
    # With upper teeth: bright and nearly grey (not lip-red) under the upper lip; the
    # lower part of the cavity stays dark.
    t = _patch(teeth, below_upper_lip)
    assert t.mean() > 1.4 * _patch(dark, below_upper_lip).mean() and t.mean() > _patch(teeth, lip).mean()
    assert t.max() - t.min() < 0.45 * t.mean()
    assert _patch(teeth, above_lower_lip).mean() < 0.7 * t.mean()


def test_slightly_parted_lips_of_a_closed_mouth_photo_show_a_gap(grace_avatar, astronaut_avatar):
    """Lips parted by a twentieth of the mouth's width, as in speech, are seen parted:
    Grace's photo has closed lips, so nothing of her own lies between them to keep, and
    the dark cavity shows as soon as they part (before: faded in over 8% of the mouth's
    width, such a gap showed stretched lip and re-detected as closed, 0.002)."""
    driver, retarget, engine = warp_rig(grace_avatar, shut_lips(astronaut_avatar.landmarks))
    target = retarget.target(open_mouth(driver, 0.08))
    assert 0.04 < lm.mouth_opening(target) < 0.06
    found = detect(engine.render(retarget.pose(target)))
    assert found is not None and lm.mouth_opening(found) > 0.5 * lm.mouth_opening(target)


def test_teeth_show_as_an_arch_not_a_band_round_the_mouth(grace_rig):
    """The side teeth turn away into the cheeks: near the mouth corners the upper row shows
    about a fifth as tall as the front teeth (an even band all round reads as dentures)."""
    driver, retarget, engine = grace_rig
    target = retarget.target(open_mouth(driver, 0.5))
    dark = engine.render(retarget.pose(target)).astype(float).mean(axis=2)
    image = engine.render(retarget.pose(target, teeth=(1.0, 0.0)))
    found = detect(image)
    assert found is not None
    shown = (image.astype(float).mean(axis=2) - dark) > 25  # the teeth's pixels
    (left, _), (right, _) = found[[lm.INNER_LIP_UPPER[0], lm.INNER_LIP_UPPER[-1]], :2]
    middle, half = 0.5 * (left + right), 0.5 * (right - left)
    columns = shown[:, int(left):int(right) + 1].sum(axis=0)
    u = (np.arange(int(left), int(right) + 1) - middle) / half
    front, sides = columns[np.abs(u) < 0.15].mean(), columns[(np.abs(u) > 0.75) & (np.abs(u) < 0.9)].mean()
    assert front >= 6
    assert sides < 0.35 * front  # 0.5 when the band was even all round


def _along_the_mouth(xs, ys, a, b):
    """How far pixels ``(xs, ys)`` lie along the mouth from its middle towards either corner
    ``a``/``b`` (the inner lips' corners): 0 at the middle, 1 level with a corner."""
    return np.abs((np.stack([xs, ys], axis=1) - 0.5 * (a + b)) @ (b - a)) / (0.5 * np.dot(b - a, b - a))


def _teeth_beyond_their_rows_end(engine, pose) -> tuple[int, int]:
    """The pixels the teeth brighten in a render of ``pose``, and how many of them lie
    beyond where the rows end (warp's _TEETH_END, plus 3% of the way to the corners for
    the blur): ``(teeth, beyond)``."""
    from avatarcam.engines.warp import _TEETH_END, _TEETH_END_GAPS

    dark = engine.render(dataclasses.replace(pose, teeth=(0.0, 0.0))).astype(float).mean(axis=2)
    ys, xs = np.nonzero(engine.render(pose).astype(float).mean(axis=2) - dark > 25)
    a, b = engine.framing.to_output(pose.xy[[lm.INNER_LIP_UPPER[0], lm.INNER_LIP_UPPER[-1]]])
    u = _along_the_mouth(xs, ys, a, b)
    gap = np.linalg.norm(pose.xy[lm.LOWER_LIP_MID] - pose.xy[lm.UPPER_LIP_MID]) / lm.mouth_width(pose.xy)
    return len(u), int((u > np.interp(gap, _TEETH_END_GAPS, _TEETH_END) + 0.03).sum())


@pytest.mark.parametrize("face", ["grace", "astronaut"])
def test_no_tooth_shows_beyond_its_rows_end(grace_avatar, astronaut_avatar, face):
    """Where a lip's edge bows further from the mouth's middle than the arch the teeth bite
    along, the teeth reached out to the lip even past the row's end: a thin white rim along
    the lower lip into the corner (3.4% of the teeth's pixels on Grace, 4.6% on the
    astronaut, mouth opened a quarter of its width, both rows; now none)."""
    avatar = grace_avatar if face == "grace" else astronaut_avatar
    driver, retarget, engine = warp_rig(avatar, astronaut_avatar.landmarks)
    target = retarget.target(open_mouth(driver, 0.25))
    teeth, beyond = _teeth_beyond_their_rows_end(engine, retarget.pose(target, teeth=(1.0, 1.0)))
    assert teeth > 200
    assert beyond <= 0.005 * teeth


@pytest.mark.shared
def test_no_tooth_shows_beyond_its_rows_end_on_a_wide_smile(shared_data):
    """Obama's wide smile driven by a child talking (lp_d11): a mouth opened wide is rounder
    than an arch, and 4.1% of the teeth's pixels lay past the rows' ends, a white crescent
    along the lower lip; now 1 pixel in 53,000."""
    obama, _ = prepare([shared_data / "portraits" / "obama_official__avatarify_obama.jpg"])
    faces = _driver_frames(shared_data / "driving" / "lp_d11_child_greenscreen.mp4", 150)
    _, retarget, engine = warp_rig(obama, faces[0][1])
    teeth = beyond = 0
    for image, points in faces[::3]:
        shown = lm.teeth_showing(image, points)
        if max(shown) > 0.05:
            t, b = _teeth_beyond_their_rows_end(engine, retarget.pose(retarget.target(points), teeth=shown))
            teeth, beyond = teeth + t, beyond + b
    assert teeth > 20000
    assert beyond < 0.01 * teeth


@pytest.mark.shared
def test_teeth_are_white_like_the_photos_eye_whites(shared_data, astronaut_avatar):
    """Obama's official portrait, warm-skinned in warm light: the teeth he shows when the
    driver grins have the hue of his eye whites, not of his skin (they were tinted by the
    skin and came out brownish grey, hardly brighter than his skin: blue 0.71 of red,
    where his eye whites have 0.91)."""
    avatar, _ = prepare([shared_data / "portraits" / "obama_official__avatarify_obama.jpg"])
    driver, retarget, engine = warp_rig(avatar, astronaut_avatar.landmarks)
    target = retarget.target(open_mouth(driver, 0.4))
    image = engine.render(retarget.pose(target, teeth=(1.0, 0.0)))
    found = detect(image)
    assert found is not None
    below_upper_lip, _, _ = _mouth_regions(found)
    # The median along a row across the front teeth: a single patch may fall on a gap.
    x, y = np.round(below_upper_lip).astype(int)
    half = round(0.15 * lm.mouth_width(found))
    teeth = np.median(image[y - 1: y + 2, x - half: x + half + 1].reshape(-1, 3).astype(float), axis=0)
    mask = np.zeros(avatar.image.shape[:2], np.uint8)
    for ring in (lm.RIGHT_EYE, lm.LEFT_EYE):
        cv2.fillPoly(mask, [np.round(avatar.landmarks[list(ring), :2]).astype(np.int32)], 1)
    eye = avatar.image[mask > 0].astype(float)
    whites = eye[eye.mean(axis=1) > np.percentile(eye.mean(axis=1), 85)].mean(axis=0)
    skin = avatar.image[_face_mask(avatar.image.shape, avatar.landmarks)].astype(float).mean(axis=0)
    assert teeth.mean() > 1.3 * skin.mean()  # 1.04 before
    assert np.abs(teeth / teeth.mean() - whites / whites.mean()).max() < 0.06  # 0.125 before


def _distance_to_polyline(points, line):
    """Distance of each point (N, 2) to the polyline ``line`` (M, 2)."""
    a, b = line[:-1][None], line[1:][None]
    p = points[:, None].astype(float)
    t = np.clip(((p - a) * (b - a)).sum(axis=2) / np.maximum(((b - a) ** 2).sum(axis=2), 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=2).min(axis=1)


@pytest.mark.shared
def test_teeth_of_a_mouth_seen_three_quarters_stay_along_its_lips(shared_data):
    """Vermeer's girl, turned three-quarters, opens her mouth wide (a woman pulling faces):
    seen from the side the opening is tall, and both teeth rows still run along the inner
    lips, none across the middle of the mouth."""
    faces = _driver_frames(shared_data / "driving" / "lp_d6_woman_funny_faces_long.mp4", 150)
    widest = max(faces, key=lambda f: lm.mouth_opening(f[1]))[1]
    avatar, _ = prepare([shared_data / "portraits" / "vermeer_girl_pearl_earring__liveportrait_s10.jpg"])
    retarget = Retargeter(avatar.landmarks, avatar.proportions)
    retarget.set_neutral(faces[0][1])
    engine = WarpEngine(avatar)
    target = retarget.target(widest)
    dark = engine.render(retarget.pose(target))
    assert detect(dark) is not None
    dark = dark.astype(float).mean(axis=2)
    corners = target[[lm.INNER_LIP_UPPER[0], lm.INNER_LIP_UPPER[-1]], :2]
    width = float(np.linalg.norm(corners[1] - corners[0]))
    mouth = lm.mouth_width(target)
    # A front tooth shows at most about a fifth of the mouth's width.
    for teeth, lip, reach in (((1.0, 0.0), lm.INNER_LIP_UPPER, 0.2), ((0.0, 1.0), lm.INNER_LIP_LOWER, 0.17)):
        image = engine.render(retarget.pose(target, teeth=teeth)).astype(float).mean(axis=2)
        ys, xs = np.nonzero(image - dark > 25)  # this row's pixels
        assert len(xs) > 0.01 * width ** 2
        edge = np.vstack([corners[:1], target[list(lip), :2], corners[1:]])
        far = _distance_to_polyline(np.stack([xs, ys], axis=1), edge)
        assert far.max() < reach * mouth + 3.0  # never further from its lip than a tooth is long


@pytest.mark.shared
def test_teeth_of_a_mouth_seen_three_quarters_bite_along_a_smooth_arch(shared_data):
    """Vermeer's girl's parted lips, seen three-quarters, kink where they curl into the far
    corner: teeth whose biting edge followed the lip's edge zig-zagged with it (the upper
    row's edge 0.031 and 0.052 mouth widths off its best-fitting arch at the two openings
    below); teeth are rigid, and now bite along the lips' arch."""
    avatar, _ = prepare([shared_data / "portraits" / "vermeer_girl_pearl_earring__liveportrait_s10.jpg"])
    driver, retarget, engine = warp_rig(avatar, shut_lips(avatar.landmarks))
    for amount in (0.2, 0.3):
        target = retarget.target(open_mouth(driver, amount))
        dark = engine.render(retarget.pose(target)).astype(float).mean(axis=2)
        image = engine.render(retarget.pose(target, teeth=(1.0, 0.0))).astype(float).mean(axis=2)
        shown = image - dark > 25  # the upper row's pixels
        left, right = np.sort(target[list(lm.MOUTH_CORNERS), 0])
        # The middle half of the mouth: the rows taper off towards its corners, as real ones do.
        columns = np.arange(int(left + 0.25 * (right - left)), int(right - 0.25 * (right - left)))
        edge = np.array([np.nonzero(shown[:, x])[0].max() if shown[:, x].any() else np.nan for x in columns])
        found = np.isfinite(edge)
        assert found.mean() > 0.9
        arch = np.polyval(np.polyfit(columns[found], edge[found], 2), columns[found])
        assert np.abs(edge[found] - arch).max() < 0.02 * lm.mouth_width(target)


def _teeth_reach(image, points):
    """How far teeth reach from the upper and from the lower inner lip along the middle of
    an open mouth (pixels brighter than the lips), in mouth widths."""
    top, bottom = points[lm.UPPER_LIP_MID, :2], points[lm.LOWER_LIP_MID, :2]
    n = max(int(np.linalg.norm(bottom - top)), 4)
    line = top + (bottom - top) * (np.arange(n + 1) / n)[:, None]
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    column = np.median([cv2.remap(luma, (line[:, 0] + dx).astype(np.float32)[None], line[:, 1].astype(np.float32)[None],
                                  cv2.INTER_LINEAR)[0] for dx in (-2.0, 0.0, 2.0)], axis=0)
    lips = points[list(lm.OUTER_LIP_UPPER + lm.OUTER_LIP_LOWER), :2].round().astype(int)
    teeth = column > 1.15 * float(np.median(luma[lips[:, 1], lips[:, 0]]))
    step = np.linalg.norm(bottom - top) / n / lm.mouth_width(points)
    return teeth[: len(teeth) // 2].sum() * step, teeth[len(teeth) // 2:].sum() * step


@pytest.mark.shared
def test_teeth_reach_as_far_as_real_teeth(shared_data, tmp_path):
    """A woman pulling faces, her avatar made from the clip's first frame (lips closed):
    where she opens her mouth wide and shows both rows of teeth, the avatar's teeth reach
    about as far from its lips as hers do, at the mouth's middle (0.89 and 0.78 of hers,
    upper and lower row; once the lower row reached half as far, 0.50)."""
    faces = _driver_frames(shared_data / "driving" / "lp_d6_woman_funny_faces_long.mp4", 150)
    retarget, engine = _first_frame_rig(faces, tmp_path)
    ratios = []
    for image, points in faces[::2]:
        teeth = lm.teeth_showing(image, points)
        if lm.mouth_opening(points) < 0.3 or min(teeth) < 0.5:
            continue
        target = retarget.target(points)
        out = engine.render(retarget.pose(target, teeth=teeth))
        ratios.append(np.array(_teeth_reach(out, target)) / np.maximum(_teeth_reach(image, points), 1e-3))
    assert len(ratios) >= 8
    upper, lower = np.median(ratios, axis=0)
    assert 0.6 < upper < 1.4 and 0.75 < lower < 1.4


def _teeth_across_the_mouth(image, points):
    """The share of the mouth opening's pixels that look like teeth, in its middle fifth
    (|u| < 0.2) and at 0.6-0.8 of the way to a corner (u: along the line between the inner
    lips' corners, -1..1)."""
    found = lm.teeth_pixels(image, points)
    assert found is not None
    (x0, y0), opening, teeth = found
    a, b = points[[lm.INNER_LIP_UPPER[0], lm.INNER_LIP_UPPER[-1]], :2]
    ys, xs = np.nonzero(opening)
    u = _along_the_mouth(xs + x0, ys + y0, a, b)
    shown = teeth[ys, xs]
    return shown[u < 0.2].mean(), shown[(u >= 0.6) & (u < 0.8)].mean()


@pytest.mark.shared
@pytest.mark.parametrize("clip", ["lia_vox_driving1_woman.mp4", "lp_d10_woman_expressive.mp4"])
def test_teeth_fill_a_smiles_middle_and_leave_its_corners_dark(shared_data, tmp_path, clip):
    """A real smile shows its front teeth across the middle of the opening and almost none
    near the corners (the side teeth turn away into the dark). An avatar made from the
    clip's first frame, driven by the clip: where she shows her upper teeth, the avatar's
    teeth fill the opening's middle about as fully as hers and leave its sides as dark.
    With even teeth along the whole row they covered 0.65 and 0.57 of her share in the
    middle, and the sides 0.56 and 1.1 times as much as the middle; now 0.75 and 0.93 of
    hers, the sides 0.14 and 0.09 times the middle."""
    faces = _driver_frames(shared_data / "driving" / clip, 150)
    retarget, engine = _first_frame_rig(faces, tmp_path)
    real, rendered = [], []
    for image, points in faces[::2]:
        teeth = lm.teeth_showing(image, points)
        if teeth[0] < 0.5:
            continue
        out = engine.render(retarget.pose(retarget.target(points), teeth=teeth))
        found = detect(out)
        if found is None or lm.mouth_opening(found) < 0.05:
            continue
        real.append(_teeth_across_the_mouth(image, points))
        rendered.append(_teeth_across_the_mouth(out, found))
    assert len(real) >= 8
    (middle, _), (shown, sides) = np.nanmean(real, axis=0), np.nanmean(rendered, axis=0)
    assert shown > 0.7 * middle
    assert sides < 0.4 * shown


@pytest.mark.shared
def test_teeth_are_detected_in_real_frames(shared_data):
    """A real grin shows upper teeth; a closed mouth shows none."""
    faces = _driver_frames(shared_data / "driving" / "lp_d0_man_greenscreen_expressions.mp4", 78)
    openings = [lm.mouth_opening(p) for _, p in faces]
    grin = faces[int(np.argmax(openings))]
    closed = faces[int(np.argmin(openings))]
    upper, _ = lm.teeth_showing(*grin)
    assert upper > 0.4
    assert lm.teeth_showing(*closed) == (0.0, 0.0)


@pytest.mark.shared
def test_a_tongue_is_not_taken_for_teeth(shared_data):
    """A child's pale tongue fills the bottom of her open mouth, and a woman pulling faces
    sticks hers out: pale, but as red as their lips, so no teeth (they scored 0.75 and 0.98
    as lower teeth, and a white row was drawn over the tongue). The same woman baring both
    rows of teeth still shows both."""
    child = _driver_frames(shared_data / "driving" / "lp_d11_child_greenscreen.mp4", 51)
    assert lm.teeth_showing(*child[50])[1] < 0.2
    woman = _driver_frames(shared_data / "driving" / "lp_d6_woman_funny_faces_long.mp4", 91)
    assert max(lm.teeth_showing(*woman[78])) < 0.2
    assert min(lm.teeth_showing(*woman[90])) > 0.8


@pytest.mark.shared
def test_teeth_are_detected_in_warm_dim_light(shared_data):
    """A woman grimaces with clenched teeth under warm indoor light: her teeth are dim (in
    HSV hardly brighter than her lips) and as saturated as her skin, yet they count as
    teeth, and her lips at rest, apart but showing no teeth, do not."""
    faces = _driver_frames(shared_data / "driving" / "lp_d3_woman_expressions.mp4", 40)
    grimace = [f for f in faces[10:21] if lm.mouth_opening(f[1]) > 0.19]
    assert len(grimace) >= 8
    assert all(max(lm.teeth_showing(*f)) > 0.1 for f in grimace)
    at_rest = [f for f in faces[24:34] if lm.mouth_opening(f[1]) > 0.08]
    assert at_rest and all(lm.teeth_showing(*f) == (0.0, 0.0) for f in at_rest)


# -- head pose -----------------------------------------------------------------------------
def _face_edge_off_exact(engine, pose):
    """Share of the pixels along the face's outline (a band 4% of the face's height wide)
    more than 40 grey levels off the same pose warped per pixel (no coarse grid)."""
    image = engine.render(pose).astype(np.int16)
    exact = WarpEngine(engine.avatar, grid_step=1).render(pose).astype(np.int16)
    band = np.zeros(image.shape[:2], np.uint8)
    width = max(3, int(0.04 * lm.face_height(pose.landmarks)))
    cv2.polylines(band, [np.round(pose.xy[list(lm.FACE_OVAL)]).astype(np.int32)], True, 1, width)
    return float(np.mean(np.abs(image - exact).max(axis=2)[band > 0] > 40))


def test_a_nodding_chins_edge_is_as_sharp_as_a_per_pixel_warp(grace_rig):
    """A chin moved over the collar cut across the mesh behind it, and the coarse map drew
    that edge in steps with a rim of whatever the photo has between chin and collar (0.63%
    of the face's edge off a per-pixel warp with Grace Hopper nodding; now 0.21%)."""
    driver, retarget, engine = grace_rig
    assert _face_edge_off_exact(engine, retarget.pose(retarget.target(turn(driver, pitch=-12)))) < 0.004


@pytest.mark.shared
def test_a_chin_over_the_collar_has_a_clean_edge(shared_data, tmp_path):
    """Jackie Chan's head lowered over his collar (self-reenactment, frame 50): his jaw's
    edge was drawn in 4-pixel steps with a gold rim (2.2% of the edge off a per-pixel
    warp; now 0.18%)."""
    faces = _driver_frames(shared_data / "driving" / "tpsmm_jackiechan_talking.mp4", 51)
    assert len(faces) == 51
    retarget, engine = _first_frame_rig(faces, tmp_path)
    assert _face_edge_off_exact(engine, retarget.pose(retarget.target(faces[50][1]))) < 0.005


@pytest.mark.parametrize("axis, degrees", [("yaw", -30), ("yaw", 30), ("pitch", -20), ("pitch", 20)])
def test_large_head_turns_follow_the_driver(grace_rig, axis, degrees):
    driver, retarget, engine = grace_rig
    base = detect(engine.render(retarget.pose(retarget.target(driver))))
    found = detect(engine.render(retarget.pose(retarget.target(turn(driver, **{axis: degrees})))))
    assert found is not None, "the turned avatar must still be a face"
    k = ("yaw", "pitch").index(axis)
    change = lm.head_angles(found)[k] - lm.head_angles(base)[k]
    assert np.sign(change) == np.sign(degrees) and abs(change) > 0.4 * abs(degrees)


@pytest.mark.parametrize("degrees", [22, 25, 28])
def test_a_cheek_turned_away_keeps_a_smooth_outline(grace_rig, degrees):
    # Where the cheek turns away its triangles are dropped, and the face's outline cuts
    # across the backdrop's mesh. Drawn from the 4 px grid alone, that outline came out in
    # steps and notches (bends of 0.87-1.23 px from one row to the next, against at most
    # 0.45 once it is drawn per pixel).
    driver, retarget, engine = grace_rig
    pose = retarget.pose(retarget.target(turn(driver, yaw=degrees)))
    out = engine.render(pose).astype(np.float32)
    p = pose.landmarks
    nose = int(round(p[lm.NOSE_TIP, 0]))
    outline = []
    for y in range(int(p[lm.LEFT_EYE_CORNERS[0], 1]), int(p[list(lm.MOUTH_CORNERS), 1].max())):
        warmth = out[y, nose:, 0] - out[y, nose:, 2]  # skin is redder than blue, her backdrop bluer
        j = int(np.argmax(warmth < 0))
        assert j > 0, "the backdrop must show beside the turned cheek"
        outline.append(nose + j - 1 + warmth[j - 1] / (warmth[j - 1] - warmth[j]))
    bends = np.abs(np.diff(outline, 2))
    assert bends.max() < 0.6, f"the outline bends by {bends.max():.2f} px between rows"


def _rig_of(face, grace_avatar, astronaut_avatar):
    """Grace driven from the astronaut's face, or the astronaut from Grace's: ``(avatar,
    driver, retarget, engine)``."""
    avatar, other = (grace_avatar, astronaut_avatar) if face == "grace" else (astronaut_avatar, grace_avatar)
    return (avatar, *warp_rig(avatar, other.landmarks))


def _portraits_driven_by(shared_data, driver):
    """Each shared portrait with a rig whose neutral is ``driver``: ``(name, avatar, driver,
    retarget, engine)``."""
    for path in sorted((shared_data / "portraits").iterdir()):
        avatar, _ = prepare([path])
        yield (path.stem, avatar, *warp_rig(avatar, driver))


def _hair_kept_above_the_forehead(engine, pose, avatar, share=0.12):
    """How much of the photo's band of hair (or cap) just above the forehead still shows
    above the face's top edge in a render: the output pixels straight above the forehead's
    top that show that band (``share`` of the face's height), over the band's height (1 as
    in the photo)."""
    top = avatar.landmarks[lm.FOREHEAD_TOP, :2]
    height = share * lm.face_height(avatar.landmarks)
    x, y = np.round(pose.xy[lm.FOREHEAD_TOP]).astype(int)
    shown = engine.source_map(pose)[:y + 1, x]
    inside = (shown[:, 1] >= top[1] - height) & (shown[:, 1] <= top[1]) & (np.abs(shown[:, 0] - top[0]) < height)
    return float(inside.sum() / height)


@pytest.mark.parametrize("face", ["grace", "astronaut"])
def test_a_head_tipped_back_keeps_the_hair_above_its_forehead(face, grace_avatar, astronaut_avatar):
    # Tipped back, the head's outline (at the ears' depth) slides down past the face's top
    # edge (in front of it): at 20 degrees only 0.12 / 0.16 of the band above Grace's and
    # the astronaut's foreheads still showed, the rest under the face, whose top edge cut
    # straight across the hair (plain on Obama and the sadtalker woman: 0.04 and 0.05).
    avatar, driver, retarget, engine = _rig_of(face, grace_avatar, astronaut_avatar)
    assert _hair_kept_above_the_forehead(engine, retarget.pose(retarget.target(driver)), avatar) > 0.9
    tipped = retarget.pose(retarget.target(turn(driver, pitch=20)))
    assert _hair_kept_above_the_forehead(engine, tipped, avatar) > 0.3


@pytest.mark.shared
def test_portraits_tipped_back_keep_the_hair_above_their_foreheads(shared_data, astronaut_avatar):
    kept = {name: _hair_kept_above_the_forehead(engine, retarget.pose(retarget.target(turn(driver, pitch=20))), avatar)
            for name, avatar, driver, retarget, engine in _portraits_driven_by(shared_data, astronaut_avatar.landmarks)}
    assert min(kept.values()) > 0.3, kept


def _hair_top_follows(engine, pose, avatar):
    """How far the top of the hair (or cap) straight above the forehead moved in a render,
    over how far the forehead moved: 1 when the hair went along with the head, less when
    it was left behind and stretched. None where the hair reaches the photo's top."""
    x = int(round(avatar.landmarks[lm.FOREHEAD_TOP, 0]))
    forehead = int(avatar.landmarks[lm.FOREHEAD_TOP, 1])
    backdrop = np.flatnonzero(avatar.engine_data["person_alpha"][:forehead, x] <= 127)
    if not len(backdrop):
        return None
    top = backdrop[-1] + 1  # the first row of hair above the forehead
    shows = engine.source_map(pose)[:, int(round(pose.xy[lm.FOREHEAD_TOP, 0])), 1]
    moved = int(np.argmin(np.abs(shows - top))) - top
    return moved / (pose.xy[lm.FOREHEAD_TOP, 1] - avatar.landmarks[lm.FOREHEAD_TOP, 1])


@pytest.mark.parametrize("face", ["grace", "astronaut"])
def test_a_sinking_head_takes_its_hair_along(face, grace_avatar, astronaut_avatar):
    # Near the photo's top the outer mesh points followed the head less, so that hair
    # between them and the fixed border would not bunch up as the head rose towards it;
    # sinking, the head left its hair behind, stretched up into a cone (Obama 0.38, Lady
    # Agnew 0.26 at 0.3 face widths). A ring just outside the hair now follows in full
    # unless it nears the border it moves towards: the stretch lies in the backdrop.
    avatar, driver, retarget, engine = _rig_of(face, grace_avatar, astronaut_avatar)
    sunk = retarget.pose(retarget.target(driver + np.array([0.0, 0.3 * lm.face_width(driver), 0.0])))
    assert _hair_top_follows(engine, sunk, avatar) > 0.8  # 0.39 (Grace) and 0.44 before


@pytest.mark.shared
def test_portraits_sinking_heads_take_their_hair_along(shared_data, astronaut_avatar):
    follows = {}
    for name, avatar, driver, retarget, engine in _portraits_driven_by(shared_data, astronaut_avatar.landmarks):
        sunk = retarget.pose(retarget.target(driver + np.array([0.0, 0.3 * lm.face_width(driver), 0.0])))
        follows[name] = _hair_top_follows(engine, sunk, avatar)
    measured = [v for v in follows.values() if v is not None]
    assert len(measured) >= 5 and min(measured) > 0.8, follows


@pytest.mark.parametrize("degrees", [24, 28])
def test_where_the_face_folds_away_no_patch_of_the_photo_stays_in_place(shared_data, degrees):
    # A head turning about the neck folds the sadtalker woman's cheek away beside her ear,
    # where neither a shown face triangle nor the mesh behind the face lies. Mapped as the
    # photo itself there, that gap showed her cheek as it was, a pale bar across the ear
    # (322 and 404 pixels at 24 and 28 degrees); it is now filled from around it.
    avatar, _ = prepare([shared_data / "portraits" / "woman_photo__sadtalker_people_0.png"])
    driver, retarget, _ = warp_rig(avatar, avatar.landmarks)
    engine = WarpEngine(avatar, grid_step=1)  # a sample a pixel: the map as it is at samples
    neck = driver[list(lm.STABLE)].mean(axis=0) + (0.0, 0.0, 0.7 * lm.face_width(driver))
    turned = (driver - neck) @ euler_rotation(degrees, 0.0, 0.0).T + neck
    pose = retarget.pose(retarget.target(turned))
    shows = engine.source_map(pose)
    h, w = shows.shape[:2]
    own = np.stack(np.mgrid[0:h, 0:w][::-1], axis=-1)
    in_place = (np.linalg.norm(shows - own, axis=-1) < 0.01) & _face_mask(shows.shape, pose.landmarks)
    assert in_place.sum() == 0, f"{in_place.sum()} pixels of the turned face show the photo where it was"


@pytest.mark.parametrize("degrees", [-25, 25])
def test_a_turned_face_on_the_grid_matches_the_per_pixel_warp(grace_rig, grace_avatar, degrees):
    # The map is computed on a 4 px grid; where the face turns away (the far cheek, the
    # nose's far side over the cheek) it jumps, and the grid smeared and stepped those
    # outlines: 219-249 of Grace's face pixels were over 48 grey levels off the warp
    # computed at every pixel, 112-115 with only the face's outer outline drawn per pixel,
    # 70-78 with every turned-away outline drawn so.
    driver, retarget, engine = grace_rig
    exact = WarpEngine(grace_avatar, grid_step=1)
    pose = retarget.pose(retarget.target(turn(driver, yaw=degrees)))
    off = np.abs(engine.render(pose).astype(np.int16) - exact.render(pose).astype(np.int16)).max(axis=2)
    assert (off[_face_mask(off.shape, pose.landmarks)] > 48).sum() < 100


def _turned_to_the_camera(shared_data, name, degrees):
    """The shared portrait ``name``, seen from the side, turned ``degrees`` towards the
    camera: its avatar, engine and pose."""
    avatar, _ = prepare([shared_data / "portraits" / name])
    driver, retarget, engine = warp_rig(avatar, avatar.landmarks)
    yaw = -np.sign(lm.head_angles(avatar.landmarks)[0]) * degrees
    return avatar, engine, retarget.pose(retarget.target(turn(driver, yaw=yaw)))


@pytest.mark.shared
@pytest.mark.parametrize("degrees", [15, 30])
def test_a_three_quarter_portraits_far_cheek_turned_to_the_camera_is_not_streaked(shared_data, degrees):
    # La Velata, seen three-quarters, turned towards the camera: her far cheek, which the
    # photo holds in a sliver, shows its mirror image blended over its own picture, which
    # still showed through in stripes (detail across the stretch 1.8 and 2.1 times that along
    # it); softened under the mirror image, 1.2 and 1.4.
    _, engine, pose = _turned_to_the_camera(shared_data, "raphael_la_velata__liveportrait_s8.jpg", degrees)
    assert _detail_across_stretch(engine, pose, engine.render(pose)) < 1.6


@pytest.mark.shared
@pytest.mark.parametrize("degrees", [15, 30])
def test_a_three_quarter_portraits_far_cheek_turned_to_the_camera_keeps_its_hue(shared_data, degrees):
    # The mirror image comes from La Velata's other cheek, in shade and greyish (its hue
    # 0.094 off her lit far cheek's); made as bright as the far cheek but not as warm, it
    # laid a grey band along her face (hue 0.018 and 0.037 off the far cheek's in the
    # photo). One colour gain over the patch makes it hers: 0.003 and 0.005.
    avatar, engine, pose = _turned_to_the_camera(shared_data, "raphael_la_velata__liveportrait_s8.jpg", degrees)
    _, far = _cheeks(avatar)
    shown = _median_hue(engine.render(pose), pose.xy, far)
    assert np.abs(shown - _median_hue(avatar.image, avatar.landmarks[:, :2], far)).max() < 0.012


def _median_hue(image, xy, tris):
    """The median colour inside the triangles ``tris`` at ``xy``, as shares of its sum."""
    mask = np.zeros(image.shape[:2], np.uint8)
    for t in tris:
        cv2.fillConvexPoly(mask, np.round(xy[t]).astype(np.int32), 1)
    colour = np.median(image[mask > 0].astype(float), axis=0)
    return colour / colour.sum()


def _cheeks(avatar):
    """The face mesh's triangles of each cheek (all corners 0.25 face widths or more to one
    side of the midline, off the outline): ``(near, far)``, the one the photo shows larger
    first."""
    across = lm.across_midline(avatar.landmarks)
    tris = lm.face_triangles()
    tris = tris[~np.isin(tris, lm.FACE_OVAL).any(axis=1)]
    sides = [tris[(across[tris] <= -0.25).all(axis=1)], tris[(across[tris] >= 0.25).all(axis=1)]]
    return sorted(sides, key=lambda t: -np.abs(WarpEngine._signed_area(avatar.landmarks[:, :2], t)).sum())


def _grain_across(image, xy, tris):
    """Fine detail (finer than a few pixels) across over along the image's rows, inside the
    triangles ``tris`` at ``xy``: about 1 for skin, paint or film grain, far less where a
    picture is stretched sideways into streaks."""
    mask = np.zeros(image.shape[:2], np.uint8)
    for t in tris:
        cv2.fillConvexPoly(mask, np.round(xy[t] * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey -= cv2.GaussianBlur(grey, (0, 0), 3)
    inside = mask[:-1, :-1] > 0
    return np.abs(np.diff(grey, axis=1))[:-1][inside].mean() / np.abs(np.diff(grey, axis=0))[:, :-1][inside].mean()


def _detail_across_stretch(engine, pose, image, least=2.5):
    """Fine detail across over along the way the pose spreads the photo, where it spreads it
    ``least`` times or more along one direction than across it (and enlarges it that much):
    about 1 for skin or hair, well over 1 where a photo pixel is drawn out into a streak."""
    shows = engine.source_map(pose).astype(np.float64)
    # The map's derivatives, photo pixels per output pixel: its smaller singular value's
    # direction is the stretch's, in the output.
    jac = np.stack([np.stack(np.gradient(shows[..., k])[::-1], axis=-1) for k in range(2)], axis=-2)
    _, sv, vt = np.linalg.svd(jac)
    spread = (1.0 / np.maximum(sv[..., 1], 1e-6) >= least) & (sv[..., 0] / np.maximum(sv[..., 1], 1e-6) >= least)
    spread = cv2.erode(spread.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert spread.sum() > 200, "the turn must spread some of the photo"
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = cv2.GaussianBlur(grey, (0, 0), 0.7) - cv2.GaussianBlur(grey, (0, 0), 2.0)
    gy, gx = np.gradient(detail)
    way = vt[..., 1, :]
    along = np.abs(gx * way[..., 0] + gy * way[..., 1])[spread].mean()
    across = np.abs(gy * way[..., 0] - gx * way[..., 1])[spread].mean()
    return across / along


@pytest.mark.parametrize("degrees", [-25, 25])
def test_a_cheek_turned_towards_the_camera_is_not_drawn_into_streaks(grace_rig, degrees):
    # The side of the head the photo shows nearly edge-on (the cheek's edge, the ear, the arm
    # of Grace's glasses) spreads 2-5 times sideways as it turns towards the camera, drawing
    # each photo pixel out into a streak: fine detail across the stretch was 3.6 and 2.6
    # times that along it. There the photo shows blurred, the blur drawn out along the
    # stretch: 1.7 and 1.4 (the turns still read as turns: see
    # test_large_head_turns_follow_the_driver).
    driver, retarget, engine = grace_rig
    pose = retarget.pose(retarget.target(turn(driver, yaw=degrees)))
    assert _detail_across_stretch(engine, pose, engine.render(pose)) < 2.2


@pytest.mark.shared
@pytest.mark.parametrize("degrees", [-25, 25])
def test_a_portraits_cheek_turned_towards_the_camera_is_not_drawn_into_streaks(shared_data, degrees):
    # Obama's official portrait: the skin between his cheek's edge and his ear came out as
    # stripes (detail across the stretch 2.6 and 2.2 times that along it); now 1.2 and 1.4.
    avatar, _ = prepare([shared_data / "portraits" / "obama_official__avatarify_obama.jpg"])
    driver, retarget, engine = warp_rig(avatar, avatar.landmarks)
    pose = retarget.pose(retarget.target(turn(driver, yaw=degrees)))
    assert _detail_across_stretch(engine, pose, engine.render(pose)) < 1.8


@pytest.mark.shared
@pytest.mark.parametrize("name, least", [("vermeer_girl_pearl_earring__liveportrait_s10", 0.85),
                                         ("mona_lisa__liveportrait_s9", 0.47)])
def test_a_portrait_turned_to_the_camera_shows_its_far_cheek_unstretched(shared_data, name, least):
    # A portrait seen from the side (Vermeer's girl: 35 degrees) shows its far cheek in a
    # sliver, which the head turning 30 degrees back towards the camera spread into streaks
    # and torn patches (grain across/along 0.63 of the near cheek's; Mona Lisa 0.38). There
    # the face now shows its other side mirrored, shaded like its own: 0.95 and 0.52.
    avatar, engine, pose = _turned_to_the_camera(shared_data, f"{name}.jpg", 30.0)
    near, far = _cheeks(avatar)
    out = engine.render(pose)
    grain = _grain_across(out, pose.xy, far) / _grain_across(avatar.image, avatar.landmarks[:, :2], near)
    assert grain > least
    found = detect(out)
    yaw = -np.sign(lm.head_angles(avatar.landmarks)[0])
    assert found is not None and np.sign(lm.head_angles(found)[0] - lm.head_angles(avatar.landmarks)[0]) == yaw


@pytest.mark.parametrize("side", [-30.0, 30.0])
@pytest.mark.parametrize("face", ["grace", "astronaut"])
def test_a_face_photographed_from_the_side_turns_back_to_the_camera(face, side, grace_avatar, astronaut_avatar, tmp_path):
    # The packaged faces turned 30 degrees by the engine, saved and prepared as photos of
    # a face seen from the side (MediaPipe reads 18-22 degrees), then turned back: their
    # far cheeks, which those photos hold in slivers, show the other side mirrored (the
    # shared portraits' test measures how much better that looks; this one runs in CI).
    # The render is still a face, turned back, and that cheek keeps the skin's hue, shaded
    # as it may be (chromaticity within 0.05 of the near cheek's in the photo; 0.003-0.036).
    photo = grace_avatar if face == "grace" else astronaut_avatar
    driver, retarget, engine = warp_rig(photo, photo.landmarks)
    path = tmp_path / "side.png"
    cv2.imwrite(str(path), cv2.cvtColor(engine.render(retarget.pose(retarget.target(turn(driver, yaw=side)))), cv2.COLOR_RGB2BGR))
    avatar, _ = prepare([path])
    driver, retarget, engine = warp_rig(avatar, avatar.landmarks)
    near, far = _cheeks(avatar)
    yaw = -np.sign(side) * 30.0
    pose = retarget.pose(retarget.target(turn(driver, yaw=yaw)))
    out = engine.render(pose)
    found = detect(out)
    assert found is not None and np.sign(lm.head_angles(found)[0] - lm.head_angles(avatar.landmarks)[0]) == np.sign(yaw)
    assert np.abs(_median_hue(out, pose.xy, far) - _median_hue(avatar.image, avatar.landmarks[:, :2], near)).max() < 0.05
