"""Surface normals on rendered planes: accuracy under noise, through a lens, and every refusal.

Planes are rendered by intersecting each pixel's ray with the plane (rays from the pinhole model, or
from cv2.undistortPoints for the distorted lens), so the true normal is known. Tolerances:
- Noise: 1 mm Gaussian depth noise, as the issue states. A least-squares slope's standard error is the
  noise over the points' spread times the square root of their count. The default 21x21 neighbourhood at
  f = 600 px spreads 21 / sqrt(12) = 6.1 pixels, 10.1 mm at 1 m (15.2 mm at 1.5 m), over 441 points:
  1 mm / (10.1 mm * 21) = 0.27 degrees per slope at 1 m (0.18 at 1.5 m). The angle to the true normal then
  follows a Rayleigh law of that scale: its mean is 1.25 x 0.27 = 0.34 degrees, and exceeding the issue's
  2 degrees has a probability of exp(-(2 / 0.27)^2 / 2) = 1e-12 per point (where the plane comes nearer,
  0.8 m, the scale is about 0.35 degrees and the probability still 1e-7). Measured by this test: mean 0.26,
  at most 0.94 degrees at 1 m; mean 0.18, at most 0.66 at 1.5 m.
- No noise: depths stored as float32 are rounded by at most 6e-8 m at 1 m; a slope fitted across the
  35 mm patch moves by at most 6e-8 * 3 / 0.035 = 5e-6 rad (3e-4 degrees): NOISELESS_DEG = 1e-3.
"""

import math

import cv2
import numpy as np
import pytest

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.lifting import lift_points
from molmo_ros.depth.settings import DepthSettings

WIDTH, HEIGHT, FOCAL, CX, CY = 640, 480, 600.0, 319.5, 239.5
PINHOLE = CameraModel.pinhole(WIDTH, HEIGHT, FOCAL, FOCAL, CX, CY)
SETTINGS = DepthSettings()
ISSUE_BOUND_DEG = 2.0  # the issue: a plane tilted 30 degrees, 1 mm noise, normal within 2 degrees
PREDICTED_SLOPE_ERROR_DEG = {1.0: 0.27, 1.5: 0.18}
NOISELESS_DEG = 1e-3


def tilted_normal(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """(0, 0, -1), the normal of a wall facing the camera, turned by `degrees` about `axis` (Rodrigues)."""
    rotation, _ = cv2.Rodrigues(
        np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis) * math.radians(degrees)
    )
    return rotation @ np.array([0.0, 0.0, -1.0])


def render_plane(
    normal: np.ndarray, distance: float, rays: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Z of the plane through (0, 0, distance) with `normal`, along each pixel's ray (x, y, 1)."""
    if rays is None:
        ray_x = np.broadcast_to(((np.arange(WIDTH) - CX) / FOCAL)[np.newaxis, :], (HEIGHT, WIDTH))
        ray_y = np.broadcast_to(((np.arange(HEIGHT) - CY) / FOCAL)[:, np.newaxis], (HEIGHT, WIDTH))
    else:
        ray_x, ray_y = rays
    return normal[2] * distance / (normal[0] * ray_x + normal[1] * ray_y + normal[2])


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(a, b))) / np.linalg.norm(a) / np.linalg.norm(b))))


def lift(
    depth: np.ndarray, points: np.ndarray, camera: CameraModel = PINHOLE, settings: DepthSettings = SETTINGS
):
    return lift_points(points, (WIDTH, HEIGHT), depth.astype(np.float32), camera, settings)


def test_normals_of_planes_tilted_30_degrees_with_1_mm_noise_are_within_2_degrees():
    rng = np.random.default_rng(14)
    errors = {1.0: [], 1.5: []}
    for distance in errors:
        for axis in [(0, 1, 0), (1, 0, 0), (1, 1, 0)]:
            normal = tilted_normal(axis, 30.0)
            depth = render_plane(normal, distance) + rng.normal(0.0, 0.001, (HEIGHT, WIDTH))
            points = rng.uniform([20, 20], [WIDTH - 20, HEIGHT - 20], (40, 2))
            for point in lift(depth, points):
                assert point.normal is not None, point.normal_reason
                assert np.dot(point.normal, point.xyz) < 0, "towards the camera"
                errors[distance].append(angle_deg(np.array(point.normal), normal))
    for distance, measured in errors.items():
        assert max(measured) <= ISSUE_BOUND_DEG
        rayleigh_mean = PREDICTED_SLOPE_ERROR_DEG[distance] * math.sqrt(math.pi / 2)
        # 120 errors: their mean's own spread is 0.52 x scale / sqrt(120) = 5 % of the scale, so twice the
        # predicted mean holds unless the fit is far worse than least squares allows
        assert np.mean(measured) <= 2 * rayleigh_mean, (distance, np.mean(measured), max(measured))


@pytest.mark.parametrize("tilt", [0.0, 30.0, 60.0, 75.0])
def test_a_noiseless_plane_gives_its_exact_normal_at_any_tilt_up_to_steep(tilt):
    normal = tilted_normal((1, 1, 0), tilt)
    depth = render_plane(normal, 1.0)
    # near the centre: a plane this steep falls behind the camera towards one side of the image
    for point in lift(depth, np.array([[320.0, 240.0], [300.5, 255.5], [345.0, 225.0]])):
        assert point.normal is not None, point.normal_reason
        assert angle_deg(np.array(point.normal), normal) <= NOISELESS_DEG
        assert np.dot(point.normal, point.xyz) < 0


def test_a_plane_seen_through_a_distorted_lens_gives_its_normal():
    k = [FOCAL, 0.0, CX, 0.0, FOCAL, CY, 0.0, 0.0, 1.0]
    p = [FOCAL, 0.0, CX, 0.0, 0.0, FOCAL, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    d = [-0.25, 0.08, 0.001, -0.001, 0.0]
    camera = CameraModel.from_camera_info(WIDTH, HEIGHT, "plumb_bob", d, k, p)
    columns, rows = np.meshgrid(np.arange(WIDTH, dtype=np.float64), np.arange(HEIGHT, dtype=np.float64))
    pixels = np.stack([columns.reshape(-1), rows.reshape(-1)], axis=1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    rays = cv2.undistortPoints(pixels, np.reshape(k, (3, 3)), np.array(d), None, None, None, criteria)
    rays = rays.reshape(HEIGHT, WIDTH, 2)
    normal = tilted_normal((0, 1, 0), 30.0)
    depth = render_plane(normal, 1.2, (rays[..., 0], rays[..., 1]))
    for point in lift(depth, np.array([[320.0, 240.0], [40.5, 40.5], [600.5, 430.5]]), camera):
        assert point.normal is not None and angle_deg(np.array(point.normal), normal) <= NOISELESS_DEG


@pytest.mark.parametrize("width", [1, 2, 3])
def test_a_thin_part_has_no_normal_and_says_it_is_too_thin(width):
    depth = np.full((HEIGHT, WIDTH), 2.0)
    depth[:, 300 : 300 + width] = 0.8
    (point,) = lift(depth, np.array([[300.5, 240.5]]))
    assert point.depth == pytest.approx(0.8) and point.normal is None
    assert "too thin or too noisy here to orient" in point.normal_reason
    assert f"spread {math.sqrt((width**2 - 1) / 12):.1f} pixels across" in point.normal_reason


def test_a_small_patch_has_too_few_points_for_a_plane():
    depth = np.full((HEIGHT, WIDTH), np.nan)
    depth[239:242, 319:322] = 1.0  # 9 points, normal_min_points is 10
    (point,) = lift(depth, np.array([[320.5, 240.5]]))
    assert point.valid and point.support == 9 and point.normal is None
    assert (
        point.normal_inliers == 9 and "too few points on the surface around the point" in point.normal_reason
    )


@pytest.mark.parametrize("face_deg", [20.0, 45.0, 60.0])
def test_a_ridge_between_two_faces_has_no_normal_but_each_face_away_from_it_has(face_deg):
    """Two planes turned by -+face_deg about the vertical (the left one nearer to the left, the right one
    farther to the right) meet in a ridge at column 320, nearest the camera; a single plane over both
    would give their average, a normal neither face has."""
    left, right = tilted_normal((0, 1, 0), face_deg), tilted_normal((0, 1, 0), -face_deg)
    depth = np.maximum(render_plane(left, 1.0), render_plane(right, 1.0))
    on_ridge, on_face = lift(depth, np.array([[320.5, 240.5], [340.5, 240.5]]))
    assert on_ridge.normal is None and "the surface bends at the point" in on_ridge.normal_reason
    assert on_ridge.valid and not on_ridge.edge, "no step: the depth is fine, only the orientation is not"
    assert angle_deg(np.array(on_face.normal), right) <= NOISELESS_DEG


def test_a_gently_curved_surface_keeps_its_normal():
    """A 10-degree bend (faces at +-5 degrees) is within normal_max_error: the average is a fair normal."""
    left, right = tilted_normal((0, 1, 0), -5.0), tilted_normal((0, 1, 0), 5.0)
    depth = np.maximum(render_plane(left, 1.0), render_plane(right, 1.0))
    (point,) = lift(depth, np.array([[320.5, 240.5]]))
    assert point.normal is not None and angle_deg(np.array(point.normal), np.array([0.0, 0.0, -1.0])) < 5.0


def test_a_ledge_in_front_of_a_slanted_wall_is_an_edge():
    """A 3x3 ledge at 1 m, the pointed pixel in its middle; 16 columns to its right a wall slanted by 45
    degrees passes through the same depth. The fit grows onto the wall, which at the ledge lies 26 mm
    behind it along the line of sight, more than the 14.4 mm tolerance at 1 m."""
    wall = tilted_normal((0, 1, 0), 45.0)
    crossing = np.array([16 / FOCAL, 0.0, 1.0])  # the wall meets depth 1 m 16 columns right of (320, 240)
    ray_x = np.broadcast_to(((np.arange(WIDTH) - CX) / FOCAL)[np.newaxis, :], (HEIGHT, WIDTH))
    ray_y = np.broadcast_to(((np.arange(HEIGHT) - CY) / FOCAL)[:, np.newaxis], (HEIGHT, WIDTH))
    depth = (wall @ crossing) / (wall[0] * ray_x + wall[1] * ray_y + wall[2])
    depth[239:242, 319:322] = 1.0
    (point,) = lift(depth, np.array([[320.5, 240.5]]))
    assert point.depth == 1.0 and point.support == 9 and point.edge
    assert point.normal is None and "the point is on an edge" in point.normal_reason


def test_normals_can_be_turned_off():
    (point,) = lift(
        np.full((HEIGHT, WIDTH), 1.0), np.array([[320.0, 240.0]]), settings=DepthSettings(normal_radius=0)
    )
    assert (
        point.valid and point.normal is None and point.normal_reason == "normals are off (normal_radius is 0)"
    )


def test_a_noisier_surface_than_the_model_widens_the_expected_error_by_its_own_residual():
    """The noise model says 4.8 mm at 1 m. A 9x9 neighbourhood (normal_radius 4) spreads 9 / sqrt(12) =
    2.6 pixels, 4.3 mm across: with the model's noise its 81 points give atan(4.8 / (4.3 x 9)) = 7.1
    degrees, within normal_max_error. With 12 mm of real noise the fit's own residual (about 7.5 mm, the
    noise clipped at the 14.4 mm tolerance) is the noise, and the expected error exceeds 10 degrees."""
    sigma = SETTINGS.depth_noise + SETTINGS.depth_noise_quadratic
    spread = 9 / math.sqrt(12) / FOCAL
    assert math.degrees(math.atan2(sigma, spread * 9)) < SETTINGS.normal_max_error
    small = DepthSettings(normal_radius=4)
    clean, noisy = (
        np.full((HEIGHT, WIDTH), 1.0),
        1.0 + np.random.default_rng(3).normal(0.0, 0.012, (HEIGHT, WIDTH)),
    )
    (point,) = lift(clean, np.array([[320.5, 240.5]]), settings=small)
    assert point.normal is not None
    (point,) = lift(noisy, np.array([[320.5, 240.5]]), settings=small)
    assert point.valid and point.normal is None
    assert "too thin or too noisy here to orient" in point.normal_reason and point.normal_residual > sigma
