"""The depth of the pointed surface on rendered scenes: thin parts, step edges, box corners, flying pixels
and holes. Each scene is drawn as pixel-aligned rectangles at known depths, so the expected depth of a
point is the depth drawn under it, and its expected support is counted here from the drawing: the window
pixels (5x5, clipped to the image) drawn at that depth. The values are exact: depths stored in float32
are compared with the same float32 values.

The camera: 640x480, f = 600 px, principal point at the centre. The default noise model puts the same
surface within 4 (1 mm + 3.8 mm/m^2 Z^2): 13.7 mm at 0.8 m, 64.8 mm at 2 m; every step drawn here between
different surfaces is far larger, every depth on one surface identical. A step is signed: positive where
the samples off the surface lie behind it (the point is on the nearer side), negative in front.
"""

import math

import numpy as np
import pytest

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.images import read_depth
from molmo_ros.depth.lifting import LiftedPoint, lift_points
from molmo_ros.depth.settings import DepthSettings

WIDTH, HEIGHT = 640, 480
CAMERA = CameraModel.pinhole(WIDTH, HEIGHT, 600.0, 600.0, 319.5, 239.5)
SETTINGS = DepthSettings()
PART, WALL = np.float32(0.8), np.float32(2.0)
HALF = 2  # half the 5x5 depth window


def scene(*rectangles: tuple[int, int, int, int, float], background: float = WALL) -> np.ndarray:
    """Depth image: the background, with each (top, bottom, left, right, depth) rectangle drawn over it."""
    depth = np.full((HEIGHT, WIDTH), background, dtype=np.float32)
    for top, bottom, left, right, z in rectangles:
        depth[top:bottom, left:right] = z
    return depth


def lift(depth: np.ndarray, row: int, column: int, settings: DepthSettings = SETTINGS) -> LiftedPoint:
    """The point at the centre of pixel (row, column)."""
    (point,) = lift_points([(column + 0.5, row + 0.5)], (WIDTH, HEIGHT), depth, CAMERA, settings)
    return point


def drawn_support(depth: np.ndarray, row: int, column: int, z: float) -> int:
    """How many pixels of the window around (row, column) are drawn at depth z."""
    window = depth[max(0, row - HALF) : row + HALF + 1, max(0, column - HALF) : column + HALF + 1]
    return int(np.count_nonzero(window == np.float32(z)))


def assert_surface(
    point: LiftedPoint, depth: np.ndarray, row: int, column: int, z: float, step: float
) -> None:
    assert point.valid and not point.fallback and point.depth == np.float32(z)
    assert point.support == drawn_support(depth, row, column, z)
    assert point.depth_step == pytest.approx(step, rel=1e-6) and point.edge is (step != 0)
    ray = ((column + 0.5 - 0.5 - 319.5) / 600.0, (row + 0.5 - 0.5 - 239.5) / 600.0, 1.0)
    assert point.xyz == pytest.approx(tuple(np.float32(z) * np.array(ray)), rel=1e-6)


# --- thin parts: a pole 1, 2 or 3 pixels wide at 0.8 m in front of a wall at 2 m ---


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("orientation", ["vertical", "horizontal"])
def test_a_point_on_a_thin_part_gets_the_parts_depth_and_one_beside_it_the_walls(width, orientation):
    first = 300
    if orientation == "vertical":
        depth = scene((0, HEIGHT, first, first + width, PART))
        at = [(240, first + offset) for offset in range(width)]
        beside = [(240, first - 1), (240, first + width)]
    else:
        depth = scene((first - 100, first - 100 + width, 0, WIDTH, PART))
        at = [(first - 100 + offset, 320) for offset in range(width)]
        beside = [(first - 101, 320), (first - 100 + width, 320)]
    for row, column in at:
        # the window median picked the wall here for widths 1 and 2 (the part holds 5 or 10 of 25 samples)
        assert_surface(lift(depth, row, column), depth, row, column, PART, float(WALL - PART))
    for row, column in beside:
        assert_surface(lift(depth, row, column), depth, row, column, WALL, -float(WALL - PART))


def test_a_thin_part_in_millimetres_from_a_depth_message_gets_its_own_depth():
    millimetres = np.full((HEIGHT, WIDTH), 2000, dtype=np.uint16)
    millimetres[:, 300:302] = 800
    image = read_depth(millimetres.tobytes(), "16UC1", HEIGHT, WIDTH, WIDTH * 2, False)
    (on, beside) = lift_points([(300.5, 240.5), (302.5, 240.5)], (WIDTH, HEIGHT), image, CAMERA, SETTINGS)
    assert on.depth == pytest.approx(0.8, rel=1e-6) and on.support == 10
    assert beside.depth == pytest.approx(2.0, rel=1e-6) and beside.support == 15


# --- step edges ---


@pytest.mark.parametrize("column", range(316, 325))
def test_each_side_of_a_step_keeps_its_depth_and_the_step_shows_within_the_window(column):
    depth = scene((0, HEIGHT, 0, 320, PART))  # 0.8 m left of column 320, the 2 m wall right of it
    z, sign = (PART, 1.0) if column < 320 else (WALL, -1.0)
    straddles = column - HALF < 320 <= column + HALF
    step = sign * float(WALL - PART) if straddles else 0.0
    assert_surface(lift(depth, 240, column), depth, 240, column, z, step)


def test_a_step_within_the_noise_is_one_surface_and_one_beyond_it_an_edge():
    tolerance = 4 * (SETTINGS.depth_noise + SETTINGS.depth_noise_quadratic * 1.0**2)  # 19.2 mm at 1 m
    for step, is_edge in [(0.9 * tolerance, False), (1.1 * tolerance, True)]:
        depth = scene((0, HEIGHT, 0, 320, 1.0), background=1.0 + step)
        point = lift(depth, 240, 319)
        assert point.depth == np.float32(1.0) and point.edge is is_edge
        assert point.support == (15 if is_edge else 25)
        assert point.depth_step == (pytest.approx(step, rel=1e-5) if is_edge else 0.0)


# --- noise and slope: neither is an edge ---


@pytest.mark.parametrize("distance", [0.6, 1.0, 2.0])
def test_a_noisy_flat_wall_rarely_reads_as_an_edge(distance):
    """A wall facing the camera with exactly the noise the settings' model describes. Measured from the
    centre of its band (the median of about 25 samples: sigma / 4 from the truth), each of the 24 other
    window samples lies beyond the 4-sigma tolerance with probability 2 (1 - Phi(4 / 1.03)) = 1.1e-4, so
    one of them in 0.25 % of windows and two, an edge, in C(24, 2) 1.1e-4^2 = 3e-6. Of 300 points, the
    chance that 2 or more read as edges is then below 1e-6. (Judged from the pointed pixel's own noisy
    depth at 3 sigma, a third of them did.)"""
    sigma = SETTINGS.depth_noise + SETTINGS.depth_noise_quadratic * distance**2
    rng = np.random.default_rng(1)
    depth = (distance + rng.normal(0.0, sigma, (HEIGHT, WIDTH))).astype(np.float32)
    points = rng.uniform([30, 30], [WIDTH - 30, HEIGHT - 30], (300, 2))
    lifted = lift_points(points, (WIDTH, HEIGHT), depth, CAMERA, SETTINGS)
    assert all(point.valid and not point.fallback for point in lifted)
    assert sum(point.edge for point in lifted) <= 1
    assert all(point.depth_step == 0.0 for point in lifted if not point.edge)
    # a sample of the 25 is left out in 0.25 % of windows: the support is 25 nearly everywhere
    assert np.mean([point.support for point in lifted]) >= 24.9


@pytest.mark.parametrize("tilt", [60.0, 70.0, 75.0, 80.0])
@pytest.mark.parametrize("distance", [0.4, 0.6, 1.0])
def test_a_steep_plane_is_one_surface_not_an_edge(distance, tilt):
    """A table or floor seen at a grazing angle: a plane turned `tilt` degrees about the image's x axis,
    without noise, through the optical axis at `distance`. The 5x5 window's samples lie up to about
    2 Z tan(tilt) / f from its middle's depth (11.3 mm at 0.6 m and 80 degrees), beyond the noise
    tolerance there (4 sigma, 9.5 mm), but every sample lies on the plane fitted around the point: one
    surface, the whole window its support, no step. (Judged by depth alone, 75 degrees at 0.4 and 0.6 m
    and 80 degrees at 1 m read as edges.)"""
    normal = np.array([0.0, -math.sin(math.radians(tilt)), -math.cos(math.radians(tilt))])
    ray_y = (np.arange(HEIGHT, dtype=np.float64)[:, np.newaxis] - 239.5) / 600.0
    depth = np.broadcast_to(normal[2] * distance / (normal[1] * ray_y + normal[2]), (HEIGHT, WIDTH))
    (point,) = lift_points([(320.5, 240.5)], (WIDTH, HEIGHT), depth.astype(np.float32), CAMERA, SETTINGS)
    assert point.valid and not point.edge and point.depth_step == 0.0 and point.support == 25
    assert point.normal is not None, point.normal_reason


# --- box corners ---


def test_points_just_inside_a_box_corner_get_the_box_and_just_outside_the_background():
    depth = scene((200, HEIGHT, 300, WIDTH, PART))  # a box whose top-left corner is pixel (200, 300)
    for row, column, z, sign in [
        (200, 300, PART, 1),
        (201, 301, PART, 1),
        (199, 299, WALL, -1),
        (199, 300, WALL, -1),
    ]:
        point = lift(depth, row, column)
        assert_surface(point, depth, row, column, z, sign * float(WALL - PART))
    # the corner pixel's window holds 9 box and 16 wall samples: the median was the wall's 2 m
    assert drawn_support(depth, 200, 300, PART) == 9


def test_the_box_face_at_its_corner_has_the_faces_normal():
    depth = scene((200, HEIGHT, 300, WIDTH, PART))
    corner = lift(depth, 200, 300)
    # an 11x11 quarter of the 21x21 neighbourhood is on the face, fronto-parallel: exactly towards the camera
    assert corner.normal == pytest.approx((0.0, 0.0, -1.0), abs=1e-12) and corner.normal_inliers == 121


# --- flying pixels: values between an edge's two sides ---


def flying_scene() -> np.ndarray:
    """0.8 m left of column 320, 2 m right of it, and column 320 of mixed values, as a sensor's mixed
    pixels are: 20 %, 50 %, 80 %, 35 % and 65 % of the way back, repeating down the rows, so no two
    within a window agree."""
    depth = scene((0, HEIGHT, 0, 320, PART))
    fractions = np.resize(np.array([0.2, 0.5, 0.8, 0.35, 0.65], dtype=np.float32), HEIGHT)
    depth[:, 320] = PART + fractions * (WALL - PART)
    return depth


def test_a_flying_pixel_is_not_a_surface_the_nearest_one_nearest_the_camera_is_used():
    depth = flying_scene()
    point = lift(depth, 240, 320)
    # its neighbours left (0.8 m) and right (2 m) are both 1 pixel away: the nearer to the camera wins
    assert point.fallback and point.search_distance == 1.0 and point.depth == PART
    assert point.support == drawn_support(depth, 240, 319, PART) == 15
    assert point.xyz == pytest.approx((0.5 / 600 * 0.8, 0.5 / 600 * 0.8, 0.8), rel=1e-6)  # the pointed ray


def test_beside_flying_pixels_each_side_keeps_its_depth_and_the_edge_shows():
    depth = flying_scene()
    left, right = lift(depth, 240, 319), lift(depth, 240, 321)
    assert_surface(left, depth, 240, 319, PART, float(WALL - PART))
    assert_surface(right, depth, 240, 321, WALL, -float(WALL - PART))
    # the normals are fitted to each side's own points: the mixed column is off both planes
    assert left.normal == pytest.approx((0.0, 0.0, -1.0), abs=1e-12)
    assert right.normal == pytest.approx((0.0, 0.0, -1.0), abs=1e-12)


# --- holes ---


@pytest.mark.parametrize("hole", [np.nan, 0.0], ids=["nan", "zero"])
def test_a_hole_under_the_point_takes_the_nearest_surface_and_says_so(hole):
    depth = scene((238, 243, 318, 323, hole), background=1.5)  # a 5x5 hole around pixel (240, 320)
    point = lift(depth, 240, 320)
    assert point.valid and point.fallback and point.depth == np.float32(1.5)
    assert (
        point.search_distance == 3.0
    )  # from the pixel's centre to the centre of (237, 320), (240, 317), ...
    assert point.normal == pytest.approx((0.0, 0.0, -1.0), abs=1e-12)


def test_a_hole_in_a_thin_part_is_filled_from_the_part_not_the_wall():
    depth = scene((0, HEIGHT, 300, 303, PART))
    depth[240, 301] = np.nan  # the middle of a 3-pixel pole has no depth at the pointed pixel
    point = lift(depth, 240, 301)
    assert point.fallback and point.search_distance == 1.0 and point.depth == PART


def test_a_hole_wider_than_the_search_has_no_depth_and_says_why():
    depth = scene((200, 281, 280, 361, np.nan), background=1.5)  # 81x81: 40 pixels to its edge
    point = lift(depth, 240, 320)
    assert not point.valid and point.support == 0 and math.isnan(point.depth_step)
    assert "no valid depth within 10 depth-image pixels" in point.reason
    assert point.normal is None


def test_holes_in_the_window_do_not_count_as_support():
    depth = scene(background=1.5)
    depth[238:243, 318] = np.nan  # one column of the pointed pixel's window
    point = lift(depth, 240, 320)
    assert point.support == 20 and not point.edge and not point.fallback
