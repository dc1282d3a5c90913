"""Surface normals on rendered planes: accuracy under noise, through a lens, and every refusal.

Planes are rendered by intersecting each pixel's ray with the plane (rays from the pinhole model, or
from cv2.undistortPoints for the distorted lens), so the true normal is known. Tolerances:
- Noise: 1 mm Gaussian depth noise, as the issue states. A least-squares slope's standard error over a
  G x G grid of samples spaced d metres apart is sigma / (G d sqrt((G^2 - 1) / 12)) (the noise over the
  samples' spread across, over the square root of their count). The default grid is 21 x 21 samples
  spaced to span normal_size = 25 mm (adjacent pixels where those span more), so at any range and focal
  length the standard error is at most 1 mm / (21 x 1.2 mm x 6.06) = 0.38 degrees (`predicted_error_deg`
  computes it for each point from its depth and the focal length). The angle to the true normal then
  follows a Rayleigh law of that scale (a little less: the tilt shrinks one slope's effect by cos^2 30):
  mean 1.25 scales, and it exceeds 5.5 scales with probability exp(-5.5^2 / 2) = 3e-7 per point, so with
  the 1120 points below a bound of 5.5 predicted scales fails by chance once in 3000 runs. At 0.45 m
  with 1080p's f = 1380 px the scale is 0.37 degrees, so that bound is the issue's 2 degrees.
  Measured by bench/normal_accuracy.py (README, "Surface normal and approach pose").
- No noise: depths stored as float32 are rounded by at most 6e-8 m at 1 m; a slope fitted across the
  25 mm patch moves by at most 6e-8 * 3 / 0.025 = 7e-6 rad (4e-4 degrees): NOISELESS_DEG = 1e-3.
"""

import math

import cv2
import numpy as np
import pytest

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.lifting import lift_points
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.settings_fields import SettingRef

WIDTH, HEIGHT, FOCAL, CX, CY = 640, 480, 600.0, 319.5, 239.5
PINHOLE = CameraModel.pinhole(WIDTH, HEIGHT, FOCAL, FOCAL, CX, CY)
SETTINGS = DepthSettings()
ISSUE_BOUND_DEG = 2.0  # the issue: a plane tilted 30 degrees, 1 mm noise, normal within 2 degrees
RAYLEIGH_BOUND = 5.5  # predicted standard errors no error exceeds but with probability 3e-7 (see above)
NOISELESS_DEG = 1e-3
# (width, height, focal length in pixels): VGA at 90 degrees across (f = 600, as a D435's depth stream),
# and the colour streams of a RealSense D435 at 720p and 1080p (69 degrees across: f = 920 and 1380)
CAMERAS = {"640x480": (640, 480, 600.0), "720p": (1280, 720, 920.0), "1080p": (1920, 1080, 1380.0)}


def pinhole_rays(width: int, height: int, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's ray (x, y, 1) through its centre, principal point at the image centre."""
    ray_x = np.broadcast_to(((np.arange(width) - (width - 1) / 2) / focal)[np.newaxis, :], (height, width))
    ray_y = np.broadcast_to(((np.arange(height) - (height - 1) / 2) / focal)[:, np.newaxis], (height, width))
    return ray_x, ray_y


def predicted_error_deg(
    focal: float, depth: float, noise: float, settings: DepthSettings = SETTINGS
) -> float:
    """The standard error of a least-squares slope over the settings' grid at `depth` (see above)."""
    side = 2 * settings.normal_radius + 1
    spacing_px = max(1.0, (settings.normal_size * focal / depth - 1.0) / (2 * settings.normal_radius))
    spacing_m = spacing_px * depth / focal
    return math.degrees(noise / (side * spacing_m * math.sqrt((side * side - 1) / 12)))


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


@pytest.mark.parametrize(
    ("camera", "distance"),
    [("640x480", 0.45), ("640x480", 1.0), ("640x480", 1.5), ("720p", 0.45), ("720p", 0.6)]
    + [("1080p", 0.45), ("1080p", 0.6)],
)
def test_normals_of_planes_tilted_30_degrees_with_1_mm_noise_are_within_2_degrees(camera, distance):
    width, height, focal = CAMERAS[camera]
    model = CameraModel.pinhole(width, height, focal, focal, (width - 1) / 2, (height - 1) / 2)
    rng = np.random.default_rng(14)
    errors, scales = [], []
    for axis in [(0, 1, 0), (1, 0, 0), (1, 1, 0)]:
        normal = tilted_normal(axis, 30.0)
        depth = render_plane(normal, distance, pinhole_rays(width, height, focal))
        depth = (depth + rng.normal(0.0, 0.001, (height, width))).astype(np.float32)
        # the middle half of the image: nearer its rim the tilted plane is up to 40 % nearer or farther
        points = rng.uniform([width / 4, height / 4], [3 * width / 4, 3 * height / 4], (50, 2))
        for point in lift_points(points, (width, height), depth, model, SETTINGS):
            assert point.normal is not None, point.normal_reason
            assert np.dot(point.normal, point.xyz) < 0, "towards the camera"
            errors.append(angle_deg(np.array(point.normal), normal))
            scales.append(predicted_error_deg(focal, point.depth, 0.001))
    errors, scales = np.array(errors), np.array(scales)
    assert errors.max() <= ISSUE_BOUND_DEG
    assert np.all(errors <= RAYLEIGH_BOUND * scales), (errors / scales).max()
    # 150 errors: the mean of their ratios to the scale (1.25 for a Rayleigh law) spreads by 0.52 /
    # sqrt(150) = 0.04, so 1.5 holds unless the fit is worse than least squares allows
    assert np.mean(errors / scales) <= 1.5, np.mean(errors / scales)


def test_the_published_normal_error_is_the_spread_of_the_normals():
    """On a plane 30 degrees tilted with the noise the settings' model describes (2.4 mm at 0.6 m), the
    published error (1 sigma of the worse of the two slopes) matches the measured spread: the RMS angle of
    a Rayleigh law is sqrt(2) scales. A slope b turns the normal by db / (1 + b^2), so the 30 degree tilt
    shrinks the measured spread below the published one, to between cos^2 30 = 0.75 of it (both slopes
    tilted: a plane turned about a diagonal) and sqrt((0.75^2 + 1) / 2) = 0.88 (one slope); over 300
    errors the RMS itself spreads by 1 / sqrt(2 x 300) = 4 %, so the ratio lies within 0.75 - 12 % and
    0.88 + 12 %."""
    distance = 0.6
    sigma = SETTINGS.depth_noise + SETTINGS.depth_noise_quadratic * distance**2
    rng = np.random.default_rng(6)
    errors, published = [], []
    for axis in [(0, 1, 0), (1, 0, 0), (1, 1, 0)]:
        normal = tilted_normal(axis, 30.0)
        clean = render_plane(normal, distance)
        depth = clean + rng.normal(0.0, 1.0, clean.shape) * (
            SETTINGS.depth_noise + SETTINGS.depth_noise_quadratic * clean**2
        )
        for point in lift(depth, rng.uniform([160, 120], [480, 360], (100, 2))):
            errors.append(angle_deg(np.array(point.normal), normal))
            published.append(point.normal_error)
    measured_scale = math.sqrt(np.mean(np.square(errors)) / 2)
    assert 0.75 - 3 * 0.04 <= measured_scale / np.mean(published) <= 0.88 + 3 * 0.04
    assert math.isclose(np.mean(published), predicted_error_deg(FOCAL, distance, sigma), rel_tol=0.25)


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


@pytest.mark.parametrize("face_deg", [30.0, 45.0, 60.0])
def test_a_ridge_between_two_faces_has_no_normal_but_each_face_away_from_it_has(face_deg):
    """Two planes turned by -+face_deg about the vertical (the left one nearer to the left, the right one
    farther to the right) meet in a ridge at column 320, nearest the camera; a single plane over both
    would give their average, a normal neither face has. The bend, 2 face_deg, exceeds normal_max_bend
    (30 degrees) plus three times what the noise model leaves between the two sides' planes at 1 m
    (3 x 5 degrees: 4.8 mm of noise over sides 12 mm wide)."""
    left, right = tilted_normal((0, 1, 0), face_deg), tilted_normal((0, 1, 0), -face_deg)
    depth = np.maximum(render_plane(left, 1.0), render_plane(right, 1.0))
    on_ridge, on_face = lift(depth, np.array([[320.5, 240.5], [340.5, 240.5]]))
    assert on_ridge.normal is None and "the surface bends at the point" in on_ridge.normal_reason
    assert on_ridge.valid and not on_ridge.edge, "no step: the depth is fine, only the orientation is not"
    assert angle_deg(np.array(on_face.normal), right) <= NOISELESS_DEG


def test_a_gently_curved_surface_keeps_its_normal():
    """A 10-degree bend (faces at +-5 degrees) is within normal_max_bend: the average is a fair normal. The
    ridge lies half a pixel left of the pointed pixel's centre, so of the 21 columns fitted (offsets -10 to
    10 from it, 1.7 mm apart at 1 m) 10 lie on the left face and 11 on the right: the least-squares slope of
    a |x + 0.5| over them is a sum(x |x + 0.5|) / sum(x^2) = a / 14, with a = tan 5 degrees: 0.358 degrees
    towards the right face. The line of sight to that pixel is 0.05 degrees off the optical axis, which
    the faces' slopes are measured from here: the tolerance."""
    left, right = tilted_normal((0, 1, 0), -5.0), tilted_normal((0, 1, 0), 5.0)
    depth = np.maximum(render_plane(left, 1.0), render_plane(right, 1.0))
    (point,) = lift(depth, np.array([[320.5, 240.5]]))
    offsets = np.arange(-10, 11)
    slope = math.tan(math.radians(5.0)) * np.sum(offsets * np.abs(offsets + 0.5)) / np.sum(offsets**2)
    expected = math.degrees(math.atan(slope))
    assert point.normal is not None
    assert angle_deg(np.array(point.normal), np.array([0.0, 0.0, -1.0])) == pytest.approx(
        expected, abs=math.degrees(0.5 / FOCAL)
    )


@pytest.mark.parametrize("across", [0.0, 0.3, 0.6])
def test_a_mug_sized_cylinder_has_normals_within_the_arc_its_neighbourhood_covers(across):
    """A vertical cylinder 8 cm across, its axis 0.6 m away, pointed at `across` of its radius from the
    middle. It bends by about 18 degrees over the 25 mm neighbourhood, within normal_max_bend, so it has a
    normal: the least-squares plane's slope is a positively weighted average of the surface's slopes over
    the points fitted, so its normal lies within the normals the neighbourhood covers, at most the arc
    from the point to the neighbourhood's rim (x +- 12.5 mm across) away from the point's own."""
    radius, axis_z = 0.04, 0.6
    ray_x, _ = pinhole_rays(WIDTH, HEIGHT, FOCAL)
    # the nearer root of (Z ray_x)^2 + (Z - axis_z)^2 = radius^2; the background 1.5 m away elsewhere
    a, b, c = ray_x**2 + 1.0, -2.0 * axis_z, axis_z**2 - radius**2
    discriminant = b * b - 4.0 * a * c
    depth = np.where(discriminant >= 0, (-b - np.sqrt(np.maximum(discriminant, 0.0))) / (2.0 * a), 1.5)
    x = across * radius
    z = axis_z - math.sqrt(radius**2 - x**2)
    (point,) = lift(depth, np.array([[x / z * FOCAL + CX + 0.5, 240.5]]))
    assert point.normal is not None, point.normal_reason
    true = np.array([x, 0.0, z - axis_z]) / radius
    half = SETTINGS.normal_size / 2
    arc = max(abs(math.asin(min(1.0, (x + side) / radius)) - math.asin(across)) for side in (-half, half))
    assert angle_deg(np.array(point.normal), true) <= math.degrees(arc)


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
    assert point.valid and point.normal is None and point.normal_reason == "normals are off"
    assert point.normal_settings == (SettingRef(DepthSettings, "normal_radius"),)


def test_a_noisier_surface_than_the_model_widens_the_expected_error_by_its_own_residual():
    """The noise model says 4.8 mm at 1 m. A 9x9 neighbourhood (normal_radius 4) spreads 9 / sqrt(12) =
    2.6 pixels, 4.3 mm across: with the model's noise its 81 points give atan(4.8 / (4.3 x 9)) = 7.1
    degrees, within normal_max_error. With 12 mm of real noise the fit's own residual (about 7.5 mm, the
    noise clipped at the 14.4 mm tolerance) is the noise, and the expected error exceeds 10 degrees."""
    sigma = SETTINGS.depth_noise + SETTINGS.depth_noise_quadratic
    spread = 9 / math.sqrt(12) / FOCAL
    assert math.degrees(math.atan2(sigma, spread * 9)) < SETTINGS.normal_max_error
    small = DepthSettings(normal_radius=4, normal_size=0.0)  # adjacent pixels
    clean, noisy = (
        np.full((HEIGHT, WIDTH), 1.0),
        1.0 + np.random.default_rng(3).normal(0.0, 0.012, (HEIGHT, WIDTH)),
    )
    (point,) = lift(clean, np.array([[320.5, 240.5]]), settings=small)
    assert point.normal is not None
    (point,) = lift(noisy, np.array([[320.5, 240.5]]), settings=small)
    assert point.valid and point.normal is None
    assert "too thin or too noisy here to orient" in point.normal_reason and point.normal_residual > sigma
