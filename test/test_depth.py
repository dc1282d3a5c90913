"""Lifting pointed pixels to 3D: exact planes, holes, sampling, units, resolutions, lens models, bad input.

Expected 3D points come from the scene that rendered the depth (or from cv2.projectPoints), never from
the code under test. Tolerances:
- Depth stored as float32 rounds Z by at most 2**-24 (6e-8) relative, and every coordinate is Z times a
  float64 ray, so lifted points carry at most 6e-8 relative error: REL = 1e-6 leaves a margin of 16.
- Undistortion iterates until the step is below 1e-12 px; the projectPoints round trip measured 1.5e-12 px
  for the lenses below (see UNDISTORT_CRITERIA), so PIXEL_TOL = 1e-9 px, which at f = 600 px and 5 m is
  under 1e-11 m.
"""

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import MILLIMETRES, read_depth
from molmo_ros.depth.lifting import LiftedPoint, lift_points
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.pointing.settings import camera_info_topic_beside

# float32 depth holds about 7 significant digits (2**-24 relative per rounding, a few roundings per
# point): 1e-6 relative is that rounding with room, never a geometric error.
REL = 1e-6
# Undistortion is iterated to a step below 1e-12 px (depth.camera.UNDISTORT_CRITERIA); round trips through
# cv2.projectPoints measured 1.1-1.5e-12 px on 3000 random lenses, so 1e-9 px leaves a wide margin.
PIXEL_TOL = 1e-9
WIDTH, HEIGHT = 640, 480
FX, FY, CX, CY = 600.0, 610.0, 319.5, 239.5  # CameraInfo convention: centre of pixel 0 at 0
DEFAULTS = DepthSettings()


def pinhole() -> CameraModel:
    return CameraModel.pinhole(WIDTH, HEIGHT, FX, FY, CX, CY)


def plane(z: float, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    return np.full((height, width), z, dtype=np.float32)


def expected_xyz(x: float, y: float, z: float) -> tuple[float, float, float]:
    """depth_image_proc's projection of a molmo_ros continuous point (OpenCV pixel = point - 0.5)."""
    return ((x - 0.5 - CX) * z / FX, (y - 0.5 - CY) * z / FY, z)


# --- geometry on clean depth ---


def test_plane_at_known_distance_gives_exact_points():
    points = [(0.0, 0.0), (320.0, 240.0), (320.5, 240.5), (639.9, 479.9), (640.0, 480.0), (17.25, 401.75)]
    lifted = lift_points(points, (WIDTH, HEIGHT), plane(1.5), pinhole(), DEFAULTS)
    for (x, y), point in zip(points, lifted, strict=True):
        assert point.valid and point.reason == ""
        assert point.xyz == pytest.approx(expected_xyz(x, y, 1.5), rel=REL, abs=1e-12)
        assert point.depth_step == 0.0 and not point.edge and not point.fallback
        assert point.search_distance == 0.0
        # every sample of the 5x5 window, clipped to the image, is on the one surface
        row, column = min(math.floor(y), HEIGHT - 1), min(math.floor(x), WIDTH - 1)
        rows = min(row + 2, HEIGHT - 1) - max(row - 2, 0) + 1
        columns = min(column + 2, WIDTH - 1) - max(column - 2, 0) + 1
        assert point.support == rows * columns
        # a fronto-parallel plane: the normal is the optical axis, towards the camera, fitted exactly
        assert point.normal == pytest.approx((0.0, 0.0, -1.0), abs=1e-12) and point.normal_residual < 1e-12


def test_centre_of_the_principal_pixel_lies_on_the_optical_axis():
    # OpenCV's pixel (319.5, 239.5) is molmo_ros's continuous point (320.0, 240.0)
    (point,) = lift_points([(CX + 0.5, CY + 0.5)], (WIDTH, HEIGHT), plane(2.0), pinhole(), DEFAULTS)
    assert point.xyz == (0.0, 0.0, 2.0)


def test_no_points_give_no_lifted_points():
    assert lift_points([], (WIDTH, HEIGHT), plane(1.0), pinhole(), DEFAULTS) == []


# --- sampling: holes, range, window median, nearest-valid search ---


@pytest.mark.parametrize("hole", [np.nan, 0.0, np.inf, -np.inf], ids=["nan", "zero", "inf", "minus-inf"])
def test_holes_in_float_depth_are_no_depth(hole):
    encoded = plane(hole).tobytes()
    depth = read_depth(encoded, "32FC1", HEIGHT, WIDTH, WIDTH * 4, False).metres()
    assert np.isnan(depth).all()
    (point,) = lift_points([(100.0, 100.0)], (WIDTH, HEIGHT), depth, pinhole(), DEFAULTS)
    assert not point.valid and point.xyz is None
    assert math.isnan(point.depth) and math.isnan(point.depth_step) and point.support == 0
    assert point.normal is None
    assert "no valid depth within 10 depth-image pixels" in point.reason


def test_values_outside_the_depth_range_are_dropped():
    depth = plane(0.05)  # nearer than min_depth 0.1
    depth[100:103, 100:103] = 30.0  # farther than max_depth 20
    depth[98:100, 98:100] = 1.25
    # the pointed pixel (101, 101) holds 30 m: no depth of its own; the nearest surface is the 1.25 m
    # block, whose nearest pixel (99, 99) has its centre 2 rows and 2 columns away
    (point,) = lift_points([(101.5, 101.5)], (WIDTH, HEIGHT), depth, pinhole(), DEFAULTS)
    assert point.depth == 1.25 and point.fallback and point.search_distance == math.hypot(2, 2)
    narrow = DepthSettings(min_depth=0.01, max_depth=1.0)  # now 0.05 counts and 1.25 does not
    (point,) = lift_points([(101.5, 101.5)], (WIDTH, HEIGHT), depth, pinhole(), narrow)
    assert point.depth == pytest.approx(0.05, rel=REL) and point.search_distance == 2.0


def lift_window(window: np.ndarray, settings: DepthSettings = DEFAULTS) -> LiftedPoint:
    """Lifts the point at the centre of a 5x5 window of depths placed in an empty depth image."""
    depth = plane(np.nan)
    depth[48:53, 48:53] = window
    (point,) = lift_points([(50.5, 50.5)], (WIDTH, HEIGHT), depth, pinhole(), settings)
    return point


def tolerance(z: float, settings: DepthSettings = DEFAULTS) -> float:
    """4 sigma of the noise model the settings describe (written out here, not taken from the code): how
    far a window sample may lie from the surface and still be on it (see surface.EDGE_SIGMAS)."""
    return 4 * (settings.depth_noise + settings.depth_noise_quadratic * z * z)


def test_the_pointed_pixel_decides_the_surface_even_against_the_windows_majority():
    window = np.full((5, 5), 2.0, dtype=np.float32)
    window[2, 2] = 1.0  # the pointed pixel, alone in front...
    window[1:4, 2] = 1.0  # ...with the two pixels above and below it: 3 agree, depth_min_support
    point = lift_window(window)
    assert point.depth == 1.0 and point.support == 3 and not point.fallback
    assert point.depth_step == pytest.approx(1.0) and point.edge  # positive: the 2 m samples lie behind
    window[1, 2] = 2.0  # now only 2 agree: a lone value, treated as a hole; the nearest surface is 2 m
    point = lift_window(window)
    assert point.depth == 2.0 and point.fallback and point.search_distance == 1.0
    # the window of the pixel found, (49, 50), holds rows 48-51 of the placed 5x5 depths: 20 samples, all
    # at 2 m but the two 1 m ones, which lie in front of it: a negative step
    assert point.support == 18 and point.depth_step == -1.0


def test_window_samples_within_the_noise_tolerance_give_the_median_and_the_others_the_step():
    z = 1.0
    window = np.full((5, 5), np.nan, dtype=np.float32)
    inside = [z - 0.004, z + 0.002, z + 0.006, z + 0.010]
    outside = [z + 1.1 * tolerance(z) + 0.002, z + 0.5]  # beyond the tolerance of the centre (z + 0.002)
    window.flat[[3, 4, 5, 6]] = inside
    window.flat[[7, 8]] = outside
    window[2, 2] = z
    point = lift_window(window)
    supporting = np.sort(np.array([*inside, z], dtype=np.float32))
    assert point.support == 5 and point.depth == supporting[2]  # the median of the five on the surface
    assert point.depth_step == pytest.approx(0.5 + z - point.depth, rel=1e-6)  # to the farthest off it


def test_the_surface_is_centred_on_its_samples_not_on_the_pointed_pixels_own_noisy_depth():
    """The pointed pixel reads 17 mm nearer than the 23 samples around it (3.5 sigma at 1 m): measured
    from its depth, two samples 5 mm behind the others would be 22 mm off, beyond the 19.2 mm tolerance,
    an edge that is not there; measured from the centre of its surface they are on it."""
    z = 1.0
    window = np.full((5, 5), z + 0.017, dtype=np.float32)
    window[2, 2] = z
    window[0, 0:2] = z + 0.022
    assert 0.022 > tolerance(z) > 0.005
    point = lift_window(window)
    assert point.support == 25 and not point.edge and point.depth == np.float32(z + 0.017)


def test_one_sample_off_the_surface_is_no_edge():
    """A single sample off (noise: one of 24 beyond 4 sigma in 0.25 % of windows; or a lone flying
    pixel) is left out of the support but makes no edge; two are an edge."""
    window = np.full((5, 5), 1.0, dtype=np.float32)
    window[0, 0] = 1.5
    point = lift_window(window)
    assert point.support == 24 and point.depth_step == 0.0 and not point.edge
    window[0, 1] = 1.3
    point = lift_window(window)
    assert point.support == 23 and point.depth_step == pytest.approx(0.5) and point.edge


def test_the_tolerance_grows_with_the_square_of_the_depth():
    for z, off in [(1.0, 0.021), (3.0, 0.09)]:  # 4 sigma: 19.2 mm at 1 m, 141 mm at 3 m
        window = np.full((5, 5), z, dtype=np.float32)
        window[0, 0:2] = z + off
        point = lift_window(window)
        agrees = off <= tolerance(z)
        assert point.support == (25 if agrees else 23) and point.edge is not agrees
    assert tolerance(1.0) < 0.021 < 0.09 < tolerance(3.0)


def test_window_is_centred_on_the_pixel_under_the_point():
    depth = plane(1.0)
    depth[10:12, 12] = 3.0  # two columns right of pixel (10, 10): inside a 5-window, outside a 3-window
    (point,) = lift_points([(10.9, 10.1)], (WIDTH, HEIGHT), depth, pinhole(), DEFAULTS)
    assert point.depth == 1.0 and point.support == 23 and point.depth_step == pytest.approx(2.0, rel=1e-12)
    narrow = DepthSettings(depth_window=3)
    (point,) = lift_points([(10.9, 10.1)], (WIDTH, HEIGHT), depth, pinhole(), narrow)
    assert point.support == 9 and point.depth_step == 0.0


def test_nearest_surface_is_found_by_the_search_and_used_with_the_pointed_ray():
    depth = plane(np.nan)
    depth[199:202, 208:211] = 3.0  # a 3x3 patch whose nearest pixel is 8 columns right of the point's
    depth[192:195, 199:202] = 1.0  # a 3x3 patch whose nearest pixel is 6 rows above: nearer, so it wins
    x, y = 200.5, 200.5
    (point,) = lift_points([(x, y)], (WIDTH, HEIGHT), depth, pinhole(), DEFAULTS)
    assert point.valid and point.depth == 1.0 and point.fallback
    assert point.search_distance == 6.0
    assert point.xyz == pytest.approx(expected_xyz(x, y, 1.0), rel=REL)  # the ray of the point itself
    assert point.support == 9 and point.depth_step == 0.0  # the patch, alone in its window


def test_equally_near_surfaces_resolve_to_the_one_nearest_the_camera():
    depth = plane(np.nan)
    depth[95:106, 101:106] = 2.0  # right of the hole at column 100
    depth[95:106, 95:100] = 0.8  # left of it, equally near
    (point,) = lift_points([(100.5, 100.5)], (WIDTH, HEIGHT), depth, pinhole(), DEFAULTS)
    assert point.depth == pytest.approx(0.8) and point.fallback and point.search_distance == 1.0


def test_search_stops_at_its_radius():
    depth = plane(np.nan)
    depth[199:202, 211:214] = 3.0  # its nearest column is 11 columns away, beyond the default radius of 10
    (point,) = lift_points([(200.5, 200.5)], (WIDTH, HEIGHT), depth, pinhole(), DEFAULTS)
    assert not point.valid
    wider = DepthSettings(depth_search_radius=11)
    (point,) = lift_points([(200.5, 200.5)], (WIDTH, HEIGHT), depth, pinhole(), wider)
    assert point.depth == 3.0
    no_search = DepthSettings(depth_search_radius=0)
    depth[199:202, 201:204] = 2.0  # right beside the pointed pixel, which still has no depth itself
    (point,) = lift_points([(200.5, 200.5)], (WIDTH, HEIGHT), depth, pinhole(), no_search)
    assert not point.valid and "within 0 depth-image pixels" in point.reason


def test_points_on_the_image_border_sample_the_edge_pixels():
    depth = plane(np.nan)
    depth[HEIGHT - 1, WIDTH - 1] = 4.0
    depth[0, 0] = 0.5
    window_one = DepthSettings(depth_window=1, depth_min_support=1, depth_search_radius=0)
    corner, origin = lift_points([(WIDTH, HEIGHT), (0.0, 0.0)], (WIDTH, HEIGHT), depth, pinhole(), window_one)
    assert corner.depth == 4.0 and origin.depth == 0.5


# --- units and encodings ---


def pack(values: np.ndarray, dtype: str, padding: int = 0) -> tuple[bytes, int]:
    rows = [row.astype(dtype).tobytes() + b"\xab" * padding for row in values]
    return b"".join(rows), len(rows[0])


def test_millimetres_and_metres_give_the_same_points():
    millimetres = np.full((HEIGHT, WIDTH), 1234, dtype=np.uint16)
    data_mm, step_mm = pack(millimetres, "<u2", padding=6)
    data_m, step_m = pack(millimetres.astype(np.float32) * np.float32(MILLIMETRES), "<f4")
    from_mm = read_depth(data_mm, "16UC1", HEIGHT, WIDTH, step_mm, False).metres()
    from_m = read_depth(data_m, "32FC1", HEIGHT, WIDTH, step_m, False).metres()
    np.testing.assert_allclose(from_mm, 1.234, rtol=REL)
    np.testing.assert_array_equal(from_mm, from_m)
    lifted_mm = lift_points([(50.0, 60.0)], (WIDTH, HEIGHT), from_mm, pinhole(), DEFAULTS)
    lifted_m = lift_points([(50.0, 60.0)], (WIDTH, HEIGHT), from_m, pinhole(), DEFAULTS)
    assert lifted_mm == lifted_m


def test_integer_depth_zero_is_no_depth_and_scale_overrides_millimetres():
    values = np.array([[0, 1, 500], [65535, 2, 3]], dtype=np.uint16)
    data, step = pack(values, ">u2")
    depth = read_depth(data, "mono16", 2, 3, step, True, scale=0.0001).metres()
    expected = np.array([[np.nan, 0.0001, 0.05], [6.5535, 0.0002, 0.0003]], dtype=np.float32)
    np.testing.assert_allclose(depth, expected, rtol=REL)


def test_float_depth_ignores_the_integer_scale_and_keeps_big_endian_values():
    values = np.array([[1.5, np.nan]], dtype=np.float32)
    data, step = pack(values, ">f4")
    depth = read_depth(np.frombuffer(data, np.uint8), "32FC1", 1, 2, step, True, scale=0.5).metres()
    np.testing.assert_array_equal(depth, [[1.5, np.nan]])


def test_decoding_does_not_write_into_the_message_buffer():
    buffer = bytearray(np.array([[0.0, 2.0]], dtype="<f4").tobytes())
    read_depth(buffer, "32FC1", 1, 2, 8, False).metres()
    assert np.frombuffer(bytes(buffer), "<f4").tolist() == [0.0, 2.0]


@pytest.mark.parametrize(
    "encoding, height, width, step, size, fragment",
    [
        ("rgb8", 2, 2, 6, 12, "depth encoding 'rgb8' is not supported"),
        ("16UC1", 2, 3, 4, 12, "step 4 does not fit width 3"),
        ("16UC1", 2, 3, 7, 14, "multiple of 2"),
        ("32FC1", 2, 2, 8, 12, "has 12 bytes, but height 2 x step 8 needs 16"),
        ("32FC1", 0, 2, 8, 0, "has no pixels"),
    ],
    ids=["encoding", "short-step", "odd-step", "short-data", "empty"],
)
def test_bad_depth_images_raise_depth_errors_naming_the_problem(
    encoding, height, width, step, size, fragment
):
    with pytest.raises(DepthError, match=fragment):
        read_depth(bytes(size), encoding, height, width, step, False).metres()


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan])
def test_a_bad_depth_scale_is_refused(scale):
    with pytest.raises(DepthError, match="depth scale must be a positive number"):
        read_depth(bytes(4), "16UC1", 1, 2, 4, False, scale=scale).metres()


# --- depth at another resolution ---


def test_depth_at_half_resolution_is_sampled_at_the_scaled_point():
    depth = np.full((HEIGHT // 2, WIDTH // 2), np.nan, dtype=np.float32)
    depth[100, 150] = 2.5  # covers colour pixels rows 200-201, columns 300-301
    one_pixel = DepthSettings(depth_window=1, depth_min_support=1, depth_search_radius=0)
    inside, outside = lift_points(
        [(301.9, 200.1), (302.1, 200.1)], (WIDTH, HEIGHT), depth, pinhole(), one_pixel
    )
    assert inside.depth == 2.5 and inside.xyz == pytest.approx(expected_xyz(301.9, 200.1, 2.5), rel=REL)
    assert not outside.valid


def test_depth_with_another_aspect_ratio_is_refused():
    with pytest.raises(DepthError, match="another aspect ratio"):
        lift_points([(1.0, 1.0)], (WIDTH, HEIGHT), plane(1.0, 640, 360), pinhole(), DEFAULTS)


def test_an_exact_downscale_that_rounds_a_row_is_accepted():
    camera = CameraModel.pinhole(1280, 720, 900.0, 900.0, 639.5, 359.5)
    # 1280 / 3 = 426.67 columns, rounded to 427
    (point,) = lift_points([(640.0, 360.0)], (1280, 720), plane(1.0, 427, 240), camera, DEFAULTS)
    assert point.valid


# --- lens distortion, against OpenCV's forward projection ---

LENSES = {
    # a RealSense-like colour lens, a strongly barrelled one, an OAK-like rational lens, a fisheye
    "plumb_bob": [0.1, -0.05, 0.001, 0.001, 0.0],
    "plumb_bob_strong": [-0.3, 0.1, 0.001, -0.002, -0.02],
    "rational_polynomial": [0.5, -0.2, 0.001, 0.001, 0.05, 0.8, -0.1, 0.1],
    "equidistant": [0.05, -0.01, 0.002, -0.001],
}
K = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
P = [FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]


def scene_points(count: int, seed: int) -> np.ndarray:
    """Points in front of the camera, spread over the field of view, 0.5 to 5 m deep."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.5, 5.0, count)
    return np.stack([rng.uniform(-0.45, 0.45, count) * z, rng.uniform(-0.35, 0.35, count) * z, z], axis=1)


@pytest.mark.parametrize("lens", LENSES)
def test_distorted_pixels_lift_back_to_the_points_opencv_projected(lens):
    coefficients = np.array(LENSES[lens])
    model = lens.removesuffix("_strong")
    camera = CameraModel.from_camera_info(WIDTH, HEIGHT, model, coefficients, K, P)
    points = scene_points(200, seed=len(lens))
    project = cv2.fisheye.projectPoints if model == "equidistant" else cv2.projectPoints
    pixels, _ = project(
        points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), np.reshape(K, (3, 3)), coefficients
    )
    molmo_points = pixels.reshape(-1, 2) + 0.5
    assert np.all((molmo_points >= 0) & (molmo_points <= [WIDTH, HEIGHT]))
    rays = camera.rays(molmo_points)
    lifted = rays * points[:, 2:]
    np.testing.assert_allclose(lifted, points, rtol=0, atol=PIXEL_TOL * 5.0 / FX)
    # and through lift_points with a depth image holding each point's Z at its pixel
    for point, molmo_point in zip(points[:5], molmo_points[:5], strict=True):
        (result,) = lift_points([molmo_point], (WIDTH, HEIGHT), plane(point[2]), camera, DEFAULTS)
        np.testing.assert_allclose(result.xyz, point, rtol=REL)


def test_distortion_changes_the_ray_away_from_the_centre():
    camera = CameraModel.from_camera_info(WIDTH, HEIGHT, "plumb_bob", LENSES["plumb_bob_strong"], K, P)
    corner_ray = camera.rays(np.array([[10.0, 10.0]]))[0]
    assert abs(corner_ray[0] - (10.0 - 0.5 - CX) / FX) > 0.01  # undistortion moved it by > 6 px


def test_all_zero_distortion_is_the_pinhole_model_whatever_its_name():
    for name in ("plumb_bob", "", "none"):
        camera = CameraModel.from_camera_info(WIDTH, HEIGHT, name, [0.0] * 5, K, P)
        np.testing.assert_array_equal(
            camera.rays(np.array([[100.0, 50.0]])), pinhole().rays(np.array([[100.0, 50.0]]))
        )


def test_projection_uses_the_rectified_p_intrinsics():
    p = [500.0, 0.0, 300.0, 0.0, 0.0, 520.0, 250.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    camera = CameraModel.from_camera_info(WIDTH, HEIGHT, "plumb_bob", [], K, p)
    ray = camera.rays(np.array([[400.5, 100.5]]))[0]
    assert ray.tolist() == [(400.0 - 300.0) / 500.0, (100.0 - 250.0) / 520.0, 1.0]


# --- bad CameraInfo ---


@pytest.mark.parametrize(
    "width, height, model, d, k, p, fragment",
    [
        (0, 0, "plumb_bob", [], K, P, "CameraInfo size is 0x0"),
        (WIDTH, HEIGHT, "plumb_bob", [], [0.0] * 9, P, "K is all zeros"),
        (WIDTH, HEIGHT, "plumb_bob", [], K, [0.0] * 12, "P is all zeros"),
        (WIDTH, HEIGHT, "plumb_bob", [], K, [0.0] * 11 + [1.0], "P has focal lengths fx=0"),
        (WIDTH, HEIGHT, "plumb_bob", [], K[:8], P, "K has 8 values; it needs 9"),
        (WIDTH, HEIGHT, "plumb_bob", [], [math.nan] + K[1:], P, "K holds non-finite"),
        (WIDTH, HEIGHT, "kannala_brandt", [0.1, 0, 0, 0], K, P, "distortion_model 'kannala_brandt' is not"),
        (
            WIDTH,
            HEIGHT,
            "equidistant",
            [0.1, 0, 0, 0, 0],
            K,
            P,
            "D has 5 coefficients, but equidistant takes 4",
        ),
        (WIDTH, HEIGHT, "plumb_bob", [0.1, 0, 0], K, P, "D has 3 coefficients"),
        (WIDTH, HEIGHT, "plumb_bob", [0.1, 0, 0, 0, 0], [0.0] * 8 + [1.0], P, "K has focal lengths fx=0"),
    ],
    ids=[
        "size-zero",
        "k-zero",
        "p-zero",
        "p-no-focal",
        "k-short",
        "k-nan",
        "unknown-model",
        "fisheye-count",
        "plumb-bob-count",
        "k-no-focal",
    ],
)
def test_bad_camera_info_raises_depth_errors_naming_the_problem(width, height, model, d, k, p, fragment):
    with pytest.raises(DepthError, match=fragment):
        CameraModel.from_camera_info(width, height, model, d, k, p)


def test_camera_info_of_another_size_than_the_image_is_refused():
    with pytest.raises(DepthError, match="CameraInfo is for 640x480 images but the colour image is 1280x720"):
        lift_points([(1.0, 1.0)], (1280, 720), plane(1.0, 1280, 720), pinhole(), DEFAULTS)


def test_depth_settings_check_their_bounds_and_order():
    """Each refusal names the settings it is about, which the node words as parameters."""
    with pytest.raises(ValueError, match="nearest depth .2 m. must be less than the farthest .1 m.") as order:
        DepthSettings(min_depth=2.0, max_depth=1.0)
    assert [ref.field_name for ref in order.value.settings] == ["min_depth", "max_depth"]
    with pytest.raises(ValueError, match="depth_window setting must be at least 1") as bound:
        DepthSettings(depth_window=0)
    assert [ref.field_name for ref in bound.value.settings] == ["depth_window"]
    with pytest.raises(ValueError, match="support a depth needs .3. cannot exceed the 1 depths") as support:
        DepthSettings(depth_window=1)
    assert [ref.field_name for ref in support.value.settings] == ["depth_min_support", "depth_window"]


def test_camera_info_topic_sits_beside_the_image_topic():
    assert camera_info_topic_beside("/camera/image_raw") == "/camera/camera_info"
    assert camera_info_topic_beside("/camera/color/image_raw/compressed") == "/camera/color/camera_info"
    assert camera_info_topic_beside("image") == "camera_info"


# --- properties: random cameras and scenes ---

# finite, positive focal lengths of real cameras; principal points anywhere in the image
cameras = st.builds(
    lambda f, aspect, cx, cy: CameraModel.pinhole(WIDTH, HEIGHT, f, f * aspect, cx * WIDTH, cy * HEIGHT),
    st.floats(100.0, 3000.0),
    st.floats(0.8, 1.25),
    st.floats(0.2, 0.8),
    st.floats(0.2, 0.8),
)


@settings(max_examples=60, deadline=None)
@given(
    camera=cameras,
    normalized=st.lists(
        st.tuples(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0), st.floats(0.2, 15.0)), max_size=8
    ),
)
def test_projected_points_with_rendered_depth_lift_back_to_themselves(camera, normalized):
    """Each point is projected with the camera, its depth rendered as a 7x7 patch (separate from the
    others: drawn in order, later points may cover earlier ones, so each is checked on its own image)."""
    for u_fraction, v_fraction, z in normalized:
        u = camera.cx + u_fraction * min(camera.cx, WIDTH - 1 - camera.cx)  # inside the image
        v = camera.cy + v_fraction * min(camera.cy, HEIGHT - 1 - camera.cy)
        point = np.array([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z])
        depth = plane(np.nan)
        row, column = round(v), round(u)
        depth[max(0, row - 3) : row + 4, max(0, column - 3) : column + 4] = z
        (lifted,) = lift_points([(u + 0.5, v + 0.5)], (WIDTH, HEIGHT), depth, camera, DEFAULTS)
        assert lifted.valid and lifted.depth_step == 0.0 and not lifted.fallback
        np.testing.assert_allclose(lifted.xyz, point, rtol=REL, atol=1e-12)


# mild lenses (most RGB-D colour cameras): OpenCV's fixed-point undistortion converges on them; over
# 3000 random lenses and points from these ranges the worst round trip measured 1.1e-12 px
lenses = st.tuples(
    st.floats(-0.2, 0.2), st.floats(-0.1, 0.1), st.floats(-0.002, 0.002), st.floats(-0.002, 0.002)
)


@settings(max_examples=60, deadline=None)
@given(
    f=st.floats(300.0, 1500.0),
    lens=lenses,
    point=st.tuples(st.floats(-0.5, 0.5), st.floats(-0.4, 0.4), st.floats(0.2, 15.0)),
)
def test_points_projected_through_a_random_lens_lift_back_to_themselves(f, lens, point):
    k = [f, 0.0, CX, 0.0, f, CY, 0.0, 0.0, 1.0]
    p = [f, 0.0, CX, 0.0, 0.0, f, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    camera = CameraModel.from_camera_info(WIDTH, HEIGHT, "plumb_bob", [*lens, 0.0], k, p)
    x_over_z, y_over_z, z = point
    xyz = np.array([x_over_z * z, y_over_z * z, z])
    pixels, _ = cv2.projectPoints(
        xyz.reshape(1, 1, 3), np.zeros(3), np.zeros(3), np.reshape(k, (3, 3)), camera.d
    )
    u, v = pixels.reshape(2)
    if not (0 <= u < WIDTH and 0 <= v < HEIGHT):
        return  # out of view at this focal length
    depth = plane(np.nan)
    depth[max(0, round(v) - 3) : round(v) + 4, max(0, round(u) - 3) : round(u) + 4] = z
    (lifted,) = lift_points([(u + 0.5, v + 0.5)], (WIDTH, HEIGHT), depth, camera, DEFAULTS)
    # float32 depth (REL) plus the undistortion residual (PIXEL_TOL px, i.e. PIXEL_TOL / f of the ray)
    np.testing.assert_allclose(lifted.xyz, xyz, rtol=REL, atol=PIXEL_TOL * z / f)


@pytest.mark.parametrize("encoding, big_endian", [("16UC1", False), ("16UC1", True), ("32FC1", False)])
def test_a_slice_of_a_depth_image_equals_the_same_slice_of_the_whole_conversion(encoding, big_endian):
    """The node reads a depth frame only where a point needs it; that must give the same metres."""
    rng = np.random.default_rng(7)
    if encoding == "16UC1":
        raw = rng.integers(0, 5000, (48, 64)).astype(">u2" if big_endian else "<u2")
        raw[5:9, 10:20] = 0
    else:
        raw = rng.uniform(0.2, 5.0, (48, 64)).astype("<f4")
        raw[5, 10], raw[6, 11], raw[7, 12] = np.nan, np.inf, 0.0
    data = raw.tobytes()
    args = (data, encoding, 48, 64, 64 * raw.itemsize, big_endian)
    whole = read_depth(*args).metres()
    image = read_depth(*args)
    assert image.shape == (48, 64)
    np.testing.assert_array_equal(image[3:12, 8:25], whole[3:12, 8:25])
    np.testing.assert_array_equal(image[:, :], whole)
    assert np.isnan(image[5:6, 10:11]).all(), "no depth stays NaN in a slice"
