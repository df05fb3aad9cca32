"""Avatar preparation on real faces: detection, few-shot combination, the disk cache."""
import logging
import os

import cv2
import numpy as np
import pytest

from avatarcam import landmarks as lm
from avatarcam.avatar import AvatarCache, avatar_key
from avatarcam.errors import AvatarcamError
from conftest import prepare


def test_prepared_avatar_has_face_and_engine_data(astronaut_avatar):
    a = astronaut_avatar
    assert a.image.shape == (512, 512, 3) and a.landmarks.shape == (478, 3)
    # The astronaut's face is in the upper middle of the photo.
    cx, cy = a.landmarks[:, :2].mean(axis=0)
    assert 150 < cx < 300 and 60 < cy < 200
    assert {"points", "weights", "outer_triangles", "hole_triangles"} <= set(a.engine_data)
    assert a.proportions["face_width"] == pytest.approx(lm.face_width(a.landmarks))


def test_second_start_is_a_cache_hit_without_detection(tmp_path, grace_path, monkeypatch):
    first, cache = prepare([grace_path], tmp_path)
    assert (cache.hits, cache.misses) == (0, 1)
    stamp = cache.path(first.key).stat().st_mtime_ns

    def no_detection(*a, **k):
        raise AssertionError("a cached avatar must not run face detection again")

    monkeypatch.setattr("avatarcam.tracking.detect_faces", no_detection)
    second, cache2 = prepare([grace_path], tmp_path)
    assert (cache2.hits, cache2.misses) == (1, 0)
    assert cache.path(first.key).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.image, first.image)
    np.testing.assert_allclose(second.landmarks, first.landmarks)
    for k, v in first.engine_data.items():
        np.testing.assert_array_equal(second.engine_data[k], v)


def test_cache_key_follows_contents_and_engine_version(tmp_path, grace_path):
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(grace_path.read_bytes())
    assert avatar_key([grace_path], "warp-1") == avatar_key([copy], "warp-1")
    assert avatar_key([grace_path], "warp-1") != avatar_key([grace_path], "warp-2")
    copy.write_bytes(grace_path.read_bytes() + b"\0")
    assert avatar_key([grace_path], "warp-1") != avatar_key([copy], "warp-1")


def test_truncated_cache_entry_is_rebuilt(tmp_path, grace_path):
    first, cache = prepare([grace_path], tmp_path)
    path = cache.path(first.key)
    path.write_bytes(path.read_bytes()[:1000])
    again, cache2 = prepare([grace_path], tmp_path)
    assert cache2.misses == 1
    np.testing.assert_allclose(again.landmarks, first.landmarks)
    assert AvatarCache(tmp_path).load(first.key) is not None


def test_several_photos_are_combined(tmp_path, grace_path, grace_avatar):
    """Few-shot: a second photo with closed eyes is not picked as the texture, yet its
    measurements count in the avatar's proportions (median over the photos)."""
    from avatarcam.engines import WarpEngine
    from avatarcam.retarget import Retargeter

    points = grace_avatar.landmarks.copy()
    for upper, lower in ((lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER), (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER)):
        points[list(upper)] = 0.2 * points[list(upper)] + 0.8 * points[list(lower)]
    retarget = Retargeter(grace_avatar.landmarks, grace_avatar.proportions)
    squint = WarpEngine(grace_avatar).render(retarget.pose(points))
    squint_path = tmp_path / "grace_squint.png"
    cv2.imwrite(str(squint_path), cv2.cvtColor(squint, cv2.COLOR_RGB2BGR))

    for order in ([squint_path, grace_path], [grace_path, squint_path]):
        combined, _ = prepare(order, tmp_path)
        assert combined.sources == [str(p) for p in order]
        np.testing.assert_array_equal(combined.image, grace_avatar.image)  # the open-eyed photo
        single = grace_avatar.proportions["right_eye_height"]
        assert combined.proportions["right_eye_height"] < 0.9 * single  # the squint was counted
    assert avatar_key([grace_path, squint_path], "v") != avatar_key([grace_path], "v")


def test_largest_of_several_faces_with_a_warning(tmp_path, grace_path, caplog):
    from skimage import data

    grace = cv2.imread(str(grace_path))
    canvas = np.full((600, 1024, 3), 255, np.uint8)
    canvas[:, :512] = grace[:600, :512]
    canvas[44:556, 512:] = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), canvas)
    with caplog.at_level(logging.WARNING):
        avatar, _ = prepare([path], tmp_path)
    assert "2 faces" in caplog.text
    assert avatar.landmarks[:, 0].mean() < 512  # Grace, the larger face


def test_photo_without_face_is_a_clear_error(tmp_path):
    from skimage import data

    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), data.coffee())
    with pytest.raises(AvatarcamError, match="no face found"):
        prepare([path], tmp_path)


def test_unwritable_cache_does_not_stop_the_avatar(tmp_path, grace_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    avatar, cache = prepare([grace_path], blocker / "cache")
    assert avatar.landmarks.shape == (478, 3)
    assert not os.path.exists(blocker / "cache")


@pytest.mark.parametrize("hole", ["disc", "eye", "corner"])
def test_membrane_fill_meets_its_surroundings_without_an_edge(hole):
    """The fill under an iris is the smoothest surface through the pixels around the hole:
    shading that changes evenly across it (a plane) is carried through to within a grey
    level on holes of an iris's size and shape; at the image's edge, where only part of the
    hole's rim is known, it stays within the values it meets. No known pixel changes."""
    from avatarcam.segmentation import membrane_fill

    ys, xs = np.mgrid[0:120, 0:200].astype(np.float32)
    shading = np.dstack([0.5 * xs + 0.2 * ys, np.full_like(xs, 100.0), 200.0 - ys])
    unknown = {"disc": (xs - 100) ** 2 + (ys - 60) ** 2 < 45 ** 2,
               "eye": (xs - 100) ** 2 / 4 + (ys - 60) ** 2 < 14 ** 2,
               "corner": (xs < 30) & (ys < 40)}[hole]
    damaged = shading.copy()
    damaged[unknown] = 0.0
    filled = membrane_fill(damaged, unknown)
    assert np.array_equal(filled[~unknown], shading[~unknown])
    if hole == "corner":
        rim = cv2.dilate(unknown.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~unknown
        assert (filled[unknown] >= shading[rim].min(axis=0) - 0.5).all()
        assert (filled[unknown] <= shading[rim].max(axis=0) + 0.5).all()
    else:
        assert np.abs(filled - shading)[unknown].max() < 1.0
