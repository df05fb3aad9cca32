"""Small rigid-geometry helpers: similarity fits and rotation utilities."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """``y = scale * rotation @ (x - src_center) + dst_center``, for 2D or 3D points."""

    scale: float
    rotation: np.ndarray
    src_center: np.ndarray
    dst_center: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * (points - self.src_center) @ self.rotation.T + self.dst_center

    def inverse_apply(self, points: np.ndarray) -> np.ndarray:
        return (points - self.dst_center) @ self.rotation / self.scale + self.src_center

    def as_affine_2d(self) -> np.ndarray:
        """The 2x3 affine matrix of the xy part (only meaningful for 2D similarities)."""
        a = self.scale * self.rotation[:2, :2]
        return np.hstack([a, (self.dst_center[:2] - a @ self.src_center[:2])[:, None]])


def fit_similarity(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Similarity:
    """Least-squares similarity (Umeyama) taking ``src`` points onto ``dst`` points."""
    n = len(src)
    mu_s, mu_d = src.sum(axis=0) / n, dst.sum(axis=0) / n  # (np.mean costs more per call)
    xs, xd = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(xd.T @ xs)
    d = np.ones(len(sigma))
    if np.linalg.det(u @ vt) < 0:
        d[-1] = -1.0  # a reflection is never a head movement
    rotation = (u * d) @ vt
    var_s = float((xs * xs).sum())
    scale = float((sigma * d).sum() / var_s) if with_scale and var_s > 0 else 1.0
    return Similarity(scale, rotation, mu_s, mu_d)


def fit_similarity_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares 2D similarity taking ``src`` onto ``dst`` (N, 2), as a 2x3 affine
    matrix: the closed form of :func:`fit_similarity` in the plane (no SVD, a tenth of
    the cost)."""
    n = len(src)
    mu_s, mu_d = src.sum(axis=0) / n, dst.sum(axis=0) / n
    xs, xd = src - mu_s, dst - mu_d
    var = float((xs * xs).sum())
    if var <= 0:
        return np.hstack([np.eye(2), (mu_d - mu_s)[:, None]])
    a = float((xs * xd).sum()) / var  # scale * cos
    b = float((xs[:, 0] * xd[:, 1] - xs[:, 1] * xd[:, 0]).sum()) / var  # scale * sin
    m = np.array([[a, -b], [b, a]])
    return np.hstack([m, (mu_d - m @ mu_s)[:, None]])


def rotation_angle(rotation: np.ndarray) -> float:
    """Angle of a 3x3 rotation, radians."""
    return float(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))


def clamp_rotation(rotation: np.ndarray, max_angle: float) -> np.ndarray:
    """The same rotation axis with the angle limited to ``max_angle`` radians."""
    angle = rotation_angle(rotation)
    if angle <= max_angle:
        return rotation
    return scale_rotation(rotation, max_angle / angle)


def scale_rotation(rotation: np.ndarray, t: float) -> np.ndarray:
    """``rotation`` raised to the power ``t`` (0 = identity, 1 = itself), via axis-angle."""
    angle = rotation_angle(rotation)
    if angle < 1e-9:
        return np.eye(3)
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0],
                     rotation[1, 0] - rotation[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi: leave it; callers clamp well below that
        return rotation
    return axis_angle(axis / norm, angle * t)


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def euler_rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation in camera space (x right, y down, z away), angles in degrees, with the sign
    conventions of :func:`avatarcam.landmarks.head_angles`."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = axis_angle(np.array([0.0, 1.0, 0.0]), -y)
    rx = axis_angle(np.array([1.0, 0.0, 0.0]), -p)
    rz = axis_angle(np.array([0.0, 0.0, 1.0]), r)
    return rz @ rx @ ry
