"""Retargeting and smoothing details that decide how faithfully the avatar follows:
landmark arrays of real faces (the astronaut driving Grace Hopper's portrait; shared clips
where marked), no rendering."""
import numpy as np
import pytest
from conftest import prepare, shut_lips

from avatarcam import landmarks as lm
from avatarcam.retarget import Retargeter
from avatarcam.tracking import LandmarkFilter


def _part_lips(points, amount):
    """The lower lip and chin dropped by ``amount`` mouth widths (a mouth caught mid-word)."""
    p = points.copy()
    lower = list(lm.INNER_LIP_LOWER + lm.OUTER_LIP_LOWER + (17, lm.CHIN))
    p[lower, 1] += amount * lm.mouth_width(points)
    return p


def _lip_gaps(points, down):
    upper, lower = list(lm.INNER_LIP_UPPER[1:-1]), list(lm.INNER_LIP_LOWER)
    return (points[lower] - points[upper]) @ down


def test_a_small_mouth_opens_a_wide_one_by_its_jaw_and_widens_it_by_its_width(grace_avatar, astronaut_avatar):
    """Lips part as the jaw drops, and a jaw is as long as the face: a driver whose mouth
    is 0.7 times as wide (a child's), dropping its jaw by a tenth of its face's height,
    parts the portrait's lips by as much of its face as a wide-mouthed driver's same drop.
    Scaled by mouth width, the small mouth's gap came out 1.4 times as tall (a child's
    wide-open mouth dropped Obama's jaw to his collar). A smile still widens the mouth by
    the same share of its own width, whatever the driver's mouth."""
    wide = shut_lips(astronaut_avatar.landmarks)
    small = wide.copy()
    mouth = list(lm.MOUTH)
    middle = small[mouth, 0].mean()
    small[mouth, 0] = middle + 0.7 * (small[mouth, 0] - middle)
    gaps, widths = [], []
    for driver in (wide, small):
        retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
        retarget.set_neutral(driver)
        opened = driver.copy()
        opened[list(lm.INNER_LIP_LOWER + lm.OUTER_LIP_LOWER + (17, lm.CHIN)), 1] += 0.1 * lm.face_height(driver)
        target = retarget.target(opened)
        gaps.append(lm.mouth_opening(target) * lm.mouth_width(target) / lm.face_height(target))
        smiling = driver.copy()
        for corner, side in zip(lm.MOUTH_CORNERS, (-1, 1)):
            smiling[corner, 0] += side * 0.05 * lm.mouth_width(driver)
        widths.append(lm.mouth_width(retarget.target(smiling)) / lm.mouth_width(grace_avatar.landmarks))
    assert gaps[0] > 0.07
    assert gaps[1] == pytest.approx(gaps[0], rel=0.08)
    assert widths[0] > 1.05
    assert widths[1] == pytest.approx(widths[0], rel=0.02)


def test_neutral_taken_mid_word_closes_the_mouth_without_crossing_the_lips(grace_avatar, astronaut_avatar):
    closed = shut_lips(astronaut_avatar.landmarks)
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    retarget.set_neutral(_part_lips(closed, 0.2))  # the first frame caught the driver talking
    shut = retarget.target(closed)
    assert _lip_gaps(shut, lm.head_axes(grace_avatar.landmarks)[:, 1]).min() >= -1e-6, "the avatar's lips must not pass through each other"
    own = lm.mouth_opening(grace_avatar.landmarks)
    assert abs(lm.mouth_opening(shut) - own) < 0.03  # closed driver: the portrait's own mouth
    # From then on, opening is measured from the closed mouth: parting the lips as far as
    # in the neutral now opens the avatar's mouth by about as much.
    talking = retarget.target(_part_lips(closed, 0.2))
    assert lm.mouth_opening(talking) > own + 0.12


def test_neutral_taken_mid_word_shows_the_mouth_open_at_once(grace_avatar, astronaut_avatar):
    """Before the driver has been seen closing its mouth, parted lips in its neutral part
    the avatar's too (measured from them, the avatar kept its mouth shut while the driver
    talked, until the driver first closed its lips)."""
    closed = shut_lips(astronaut_avatar.landmarks)
    talking = _part_lips(closed, 0.2)
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    retarget.set_neutral(talking)
    own = lm.mouth_opening(grace_avatar.landmarks)
    assert lm.mouth_opening(retarget.target(talking)) > own + 0.12


def test_portrait_with_parted_lips_closes_and_opens_as_the_driver_does(astronaut_avatar):
    """A portrait caught mid-word, driven by the same face (self-reenactment): the driver
    closing its mouth closes the portrait's, and parting its lips again parts the
    portrait's as far as the driver's, not its own gap plus the driver's."""
    closed = shut_lips(astronaut_avatar.landmarks)
    parted = _part_lips(closed, 0.15)
    retarget = Retargeter(parted, astronaut_avatar.proportions)
    retarget.set_neutral(parted)
    own = lm.mouth_opening(parted)
    assert own > 0.12
    shut = retarget.target(closed)
    assert lm.mouth_opening(shut) < 0.03
    again = retarget.target(parted)
    assert abs(lm.mouth_opening(again) - own) < 0.03


def test_neutral_is_not_taken_mid_blink(grace_avatar, astronaut_avatar):
    """The first face seen becomes the neutral, but not while its eyes are shut: taken then,
    every open eye after it showed the portrait's eyes bulging (3.7 times as open as in the
    photo) and its blinks never shut them."""
    from test_render import close_eyes

    from avatarcam.tracking import TrackedFace

    open_eyes = astronaut_avatar.landmarks
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    blink = close_eyes(open_eyes)
    still = retarget.update(TrackedFace(blink, blink, 0.0), 0.0)
    assert retarget.neutral is None and np.allclose(still.landmarks, grace_avatar.landmarks)
    after = retarget.update(TrackedFace(open_eyes, open_eyes, 0.1), 0.1)
    own = lm.eye_opening(grace_avatar.landmarks)
    assert abs(lm.eye_opening(after.landmarks) - own) < 0.1 * own
    shut = retarget.update(TrackedFace(blink, blink, 0.2), 0.2)
    assert lm.eye_opening(shut.landmarks) < 0.3 * own
    # Eyes that stay narrow still get a neutral, after half a second.
    narrow = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    for t in (0.0, 0.3, 0.6):
        narrow.update(TrackedFace(blink, blink, t), t)
    assert narrow.neutral is not None


def test_neutral_caught_with_half_shut_eyes_takes_them_from_the_most_open_face_soon_after(grace_avatar, astronaut_avatar):
    """A neutral caught as a blink starts or the driver looks down (eyes half shut, not shut
    enough to wait for) takes its eyes from the most open face of the next three seconds,
    so open eyes after it do not bulge; until then the portrait's eyes are half shut while
    the driver's are. Eyes that never open wider are the driver's own open eyes; a portrait
    whose own eyes are that narrow keeps them matched to the neutral as it is."""
    from avatarcam.tracking import TrackedFace

    def lids_closed_by(share):
        p = open_eyes.copy()
        for upper, lower in ((lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER), (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER)):
            p[list(upper)] += share * (p[list(lower)] - p[list(upper)])
        return p

    open_eyes = astronaut_avatar.landmarks
    half, most = lids_closed_by(0.6), lids_closed_by(0.15)
    assert 0.07 < lm.eye_opening(half) < 0.15
    own = lm.eye_opening(grace_avatar.landmarks)
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    first = retarget.update(TrackedFace(half, half, 0.0), 0.0)
    assert retarget.neutral is not None  # not waited for: half shut is not shut
    assert lm.eye_opening(first.landmarks) < 0.7 * own
    # Eyes opening in steps: the widest of them is the neutral's, not the first step.
    retarget.update(TrackedFace(most, most, 0.1), 0.1)
    after = retarget.update(TrackedFace(open_eyes, open_eyes, 0.2), 0.2)
    assert abs(lm.eye_opening(after.landmarks) - own) < 0.1 * own
    down_again = retarget.update(TrackedFace(half, half, 0.3), 0.3)
    assert lm.eye_opening(down_again.landmarks) < 0.7 * own
    looked_up = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    looked_up.update(TrackedFace(half, half, 0.0), 0.0)
    after = looked_up.update(TrackedFace(open_eyes, open_eyes, 2.0), 2.0)
    assert abs(lm.eye_opening(after.landmarks) - own) < 0.1 * own
    # Eyes that stay half shut for three seconds are the portrait's own open eyes then.
    narrow = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    for t in (0.0, 1.0, 2.0, 3.5):
        settled = narrow.update(TrackedFace(half, half, t), t)
    assert abs(lm.eye_opening(settled.landmarks) - own) < 0.1 * own
    # Later than that the neutral's eyes stay as they are.
    late = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    late.update(TrackedFace(half, half, 0.0), 0.0)
    bulging = late.update(TrackedFace(open_eyes, open_eyes, 3.5), 3.5)
    assert lm.eye_opening(bulging.landmarks) > 1.5 * own
    # A portrait with half-shut eyes of its own: the half-shut neutral matches it.
    sleepy = Retargeter(half, grace_avatar.proportions)
    sleepy.update(TrackedFace(half, half, 0.0), 0.0)
    opened = sleepy.update(TrackedFace(open_eyes, open_eyes, 0.1), 0.1)
    assert lm.eye_opening(opened.landmarks) > 1.5 * lm.eye_opening(half)


def test_filter_lets_a_blink_through(astronaut_avatar):
    """A blink takes a tenth of a second: the smoothed lids must close most of the way,
    or the avatar only twitches its eyes."""
    base = astronaut_avatar.landmarks
    scale = lm.face_width(base)
    shut = base.copy()
    for upper, lower in ((lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER), (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER)):
        shut[list(upper)] = shut[list(lower)]
    rng = np.random.default_rng(1)
    f = LandmarkFilter()
    # closing over two frames, closed for two, opening over two (30 fps)
    weights = [0.0] * 30 + [0.5, 1.0, 1.0, 1.0, 0.5] + [0.0] * 10
    openings = []
    for k, w in enumerate(weights):
        x = (1 - w) * base + w * shut + rng.normal(0, 0.002 * scale, base.shape)
        openings.append(lm.eye_opening(f(x, k / 30, scale)) / lm.eye_opening(base))
    assert min(openings) < 0.2
    # ...and open again with the driver's: a frame after it, not a slow fade.
    assert openings[weights.index(0.5, 31) + 2] > 0.85


def test_a_nod_nods_a_three_quarter_portrait_without_tilting_it(astronaut_avatar):
    """The driver's head motion is applied about the avatar's own axes: on a portrait
    turned 30 degrees, a nod changes its pitch, not its roll."""
    from avatarcam.avatar import measure_proportions
    from avatarcam.geometry import euler_rotation

    def turn(points, **angles):
        c = points[list(lm.STABLE)].mean(axis=0)
        return (points - c) @ euler_rotation(**angles).T + c

    driver = astronaut_avatar.landmarks
    portrait = turn(driver, yaw=-30, pitch=-8)
    retarget = Retargeter(portrait, measure_proportions(portrait))
    retarget.set_neutral(driver)
    y0, p0, r0 = lm.head_angles(retarget.target(driver))
    y, p, r = lm.head_angles(retarget.target(turn(driver, pitch=10)))
    assert abs(p - p0 - 10) < 1.5
    assert abs(r - r0) < 2.0 and abs(y - y0) < 2.0


_IRISES = {"right": list(lm.RIGHT_IRIS), "left": list(lm.LEFT_IRIS)}


def _look(points, right=0.0, down=0.0):
    """Both irises moved by shares of their eye's width (image axes, head upright)."""
    p = points.copy()
    for side, iris in _IRISES.items():
        p[iris, :2] += np.array([right, down]) * lm.eye_width(points, side)
    return p


def _iris_offsets(points, base):
    """Each iris centre's move from ``base``, in its eye's widths: (2 eyes, x/y)."""
    return np.array([(points[iris[0], :2] - base[iris[0], :2]) / lm.eye_width(base, side)
                     for side, iris in _IRISES.items()])


def test_a_look_up_turns_the_iris_as_far_as_a_look_aside(grace_avatar, astronaut_avatar):
    """Gaze turns the eyeball, which is as big as the eye is wide, not as the lids are
    apart: a driver with eyes half again as open as the portrait's moved its irises up and
    down only 0.67 times as far as sideways (Obama, half as far)."""
    driver = astronaut_avatar.landmarks.copy()
    for upper, lower in lm.LID_IDS.values():  # the driver's lids half again as far apart
        mid = 0.5 * (driver[upper] + driver[lower])
        driver[upper] = mid + 1.5 * (driver[upper] - mid)
        driver[lower] = mid + 1.5 * (driver[lower] - mid)
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    retarget.set_neutral(driver)
    rest = retarget.target(driver)
    aside = _iris_offsets(retarget.target(_look(driver, right=0.08)), rest)
    down = _iris_offsets(retarget.target(_look(driver, down=0.05)), rest)
    assert (aside[:, 0] > 0.04).all()
    assert down[:, 1] / aside[:, 0] == pytest.approx(0.05 / 0.08, rel=0.15)


def test_a_hard_look_aside_keeps_the_iris_inside_the_eye(grace_avatar, astronaut_avatar):
    """An iris driven past the eye's corner (a driver looking hard aside into an eye shaped
    otherwise) stops with at most a fifth of its width tucked under the corner; a look
    well inside the eye is left as it is."""
    driver = astronaut_avatar.landmarks
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    retarget.set_neutral(driver)
    rest = retarget.target(driver)
    near = _iris_offsets(retarget.target(_look(driver, right=0.1)), rest)
    assert (near[:, 0] > 0.07).all()
    for side in (-1.0, 1.0):
        far = retarget.target(_look(driver, right=side * 0.5))
        for eye, iris in _IRISES.items():
            a, b = far[lm.EYE_CORNER_IDS[eye], :2]
            width = np.linalg.norm(b - a)
            center, radius = lm.iris_circle(far, iris)
            at = (center - a) @ (b - a) / width  # along the eye from corner a
            assert 0.75 * radius <= at <= width - 0.75 * radius
            # Pushed hard, it still went as far as it may.
            assert min(at, width - at) < 1.0 * radius


# From the inner lower lip down the middle of the lip and chin to the chin's tip.
_CHIN_LINE = [lm.LOWER_LIP_MID, 15, 16, 17, 18, 200, 199, 175, lm.CHIN]


def _chin_line_steps(points, down):
    """Each step down the chin line along ``down`` (< 0: the mesh folded over itself)."""
    return np.diff(points[_CHIN_LINE] @ down)


def test_a_lip_dropped_past_the_skin_below_it_does_not_fold_the_chin(grace_avatar, astronaut_avatar):
    """MediaPipe's own landmarks fold at extreme mouth shapes (a tongue stuck out drops the
    lower lip below the points under it); the avatar's lip pushes that skin down instead."""
    driver = astronaut_avatar.landmarks
    dropped = _part_lips(driver, 0.6)  # the lip and the chin's tip drop, the skin between stays
    assert (_chin_line_steps(dropped, lm.head_axes(driver)[:, 1]) < 0).any()
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    retarget.set_neutral(driver)
    target = retarget.target(dropped)
    down = lm.head_axes(grace_avatar.landmarks)[:, 1]  # no head motion: the photo's axes
    steps, photo = _chin_line_steps(target, down), _chin_line_steps(grace_avatar.landmarks, down)
    assert (steps > 0.2 * photo).all()
    # The lip keeps its thickness (14 -> 17) and the mouth opens wide.
    assert steps[:3].sum() > 0.8 * photo[:3].sum()
    assert lm.mouth_opening(target) > lm.mouth_opening(grace_avatar.landmarks) + 0.4


@pytest.mark.shared
@pytest.mark.parametrize("portrait", ["einstein_bw_photo__avatarify_einstein.jpg", "obama_official__avatarify_obama.jpg"])
def test_real_funny_faces_never_fold_the_chin(shared_data, portrait):
    """A woman pulling faces (mouth wide open, tongue out) drives two portraits whose lower
    faces are proportioned unlike hers: their chin lines stay in order in every frame."""
    from test_warp_quality import _driver_frames

    faces = [p for _, p in _driver_frames(shared_data / "driving" / "lp_d6_woman_funny_faces_long.mp4", 150)]
    avatar, _ = prepare([shared_data / "portraits" / portrait])
    retarget = Retargeter(avatar.landmarks, avatar.proportions)
    retarget.set_neutral(faces[0])
    assert max(lm.mouth_opening(p) for p in faces) > 0.6  # the clip opens wide
    for p in faces:
        target = retarget.target(p)
        assert (_chin_line_steps(target, lm.head_axes(target)[:, 1]) > 0).all()


@pytest.mark.shared
def test_driver_who_starts_looking_down_does_not_make_the_portrait_stare(shared_data):
    """The VoxCeleb driver's first frames look down (eyes 0.09 open); 0.6 s later he looks
    up (0.2-0.25 open). Measured from the downcast neutral, the portrait's eyes opened 2.3
    times as wide as in its photo, lids stretched into the brows, for the rest of the clip;
    now the neutral's eyes come from the first look up, and the portrait's stay its own."""
    from avatarcam.sources import VideoFileSource
    from avatarcam.tracking import FaceTracker

    avatar, _ = prepare([shared_data / "portraits" / "woman_photo__sadtalker_people_0.png"])
    retarget = Retargeter(avatar.landmarks, avatar.proportions)
    own = lm.eye_opening(avatar.landmarks)
    driver, portrait = [], []
    source = VideoFileSource(str(shared_data / "driving" / "rnth_voxceleb2_test_video.mp4"))
    with FaceTracker() as tracker:
        try:
            for frame in source:
                if frame.timestamp > 1.6:
                    break
                face = tracker.process(frame.image, frame.timestamp)
                pose = retarget.update(face, frame.timestamp)
                if face is not None:
                    driver.append(lm.eye_opening(face.landmarks))
                    portrait.append(lm.eye_opening(pose.landmarks))
        finally:
            source.close()
    assert driver[0] < 0.1 and max(driver) > 0.2  # looks down, then up
    looked_up = [a for d, a in zip(driver, portrait) if d > 0.2]
    assert looked_up and max(looked_up) < 1.35 * own


def test_teeth_follow_the_driver_without_flickering(grace_avatar, astronaut_avatar):
    """How much teeth show is scored from each frame's pixels, which jump from frame to
    frame: one frame's flash of teeth shows less than half, teeth that stay are shown in
    full within a few frames, and go again as quickly."""
    from skimage import data

    from avatarcam.tracking import TrackedFace

    smile = data.astronaut()  # she smiles, showing her upper teeth
    driver = astronaut_avatar.landmarks
    full = lm.teeth_showing(smile, driver)[0]
    assert full > 0.4
    hidden = np.zeros_like(smile)  # the same face with no teeth to be seen

    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    t = 0.0

    def show(image):
        nonlocal t
        t += 1 / 30
        return retarget.update(TrackedFace(driver, driver, t), t, image).teeth[0]

    for _ in range(3):
        show(hidden)
    assert show(smile) < 0.5 * full  # a single frame
    assert show(hidden) < 0.3 * full
    shown = [show(smile) for _ in range(5)]
    assert shown[-1] > 0.9 * full and all(np.diff(shown) > 0)
    assert [show(hidden) for _ in range(5)][-1] < 0.1 * full
