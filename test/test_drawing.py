"""The debug drawing: markers land on the pointed pixels, the input frame stays untouched."""

import numpy as np
import pytest

from molmo_ros.drawing import NORMAL_FILL, POINT_FILL, draw_points, normal_in_image
from molmo_ros.geometry import PixelPoint


def black(width: int = 200, height: int = 160) -> np.ndarray:
    return np.zeros((height, width, 3), dtype=np.uint8)


def test_each_point_gets_a_red_marker_and_the_rest_stays_untouched():
    frame = black()
    points = [PixelPoint(x=40.0, y=50.0, label="mug"), PixelPoint(x=150.5, y=120.25, label="")]
    drawn = draw_points(frame, points)
    assert frame.max() == 0  # the input is not drawn on
    assert drawn.shape == frame.shape and drawn.dtype == np.uint8
    for point in points:
        # the pixel under a continuous point is floor(x), floor(y)
        assert tuple(drawn[int(point.y), int(point.x)]) == POINT_FILL
    assert drawn[5, 195].max() == 0 and drawn[150, 10].max() == 0  # far from every point and the title


@pytest.mark.parametrize("x, y", [(80.0, 80.0), (80.5, 80.99), (80.999, 80.001)])
def test_marker_is_centred_on_the_pixel_under_the_point(x, y):
    drawn = draw_points(black(160, 160), [PixelPoint(x=x, y=y, label=".")])
    rows, columns = np.nonzero(np.all(drawn == POINT_FILL, axis=2))
    assert (rows.min() + rows.max()) / 2 == 80 and (columns.min() + columns.max()) / 2 == 80


def test_title_and_labels_are_written():
    untitled = draw_points(black(), [PixelPoint(x=40.0, y=50.0, label="")])
    titled = draw_points(black(), [PixelPoint(x=40.0, y=50.0, label="")], title="red mug")
    labelled = draw_points(black(), [PixelPoint(x=40.0, y=50.0, label="a long label")])
    assert titled[:15].max() > 0 and untitled[:15].max() == 0  # the title sits in the top rows
    label_area = np.s_[40:60, 50:150]
    assert np.count_nonzero(labelled[label_area]) > np.count_nonzero(untitled[label_area])


def test_a_frame_that_is_not_rgb_is_refused():
    with pytest.raises(ValueError, match="HxWx3 uint8 RGB"):
        draw_points(np.zeros((10, 10), dtype=np.uint8), [])


class Surface:
    """A 3D point and its normal, as a LiftedPoint carries them."""

    def __init__(self, xyz, normal) -> None:
        self.xyz, self.normal = xyz, normal


def test_the_normal_is_seen_from_the_camera_long_when_tilted_and_a_dot_when_facing_it():
    facing = normal_in_image(Surface((0.0, 0.0, 1.0), (0.0, 0.0, -1.0)))
    tilted = normal_in_image(Surface((0.0, 0.0, 1.0), (0.5, 0.0, -0.866)))
    assert facing == (0.0, 0.0) and tilted == pytest.approx((0.5, 0.0))
    # off the axis a normal facing the camera's centre still points along the ray: seen as a dot
    along_ray = np.array([0.2, -0.1, 1.0])
    assert normal_in_image(
        Surface(tuple(along_ray), tuple(-along_ray / np.linalg.norm(along_ray)))
    ) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert normal_in_image(Surface((0.0, 0.0, 1.0), None)) is None and normal_in_image(None) is None


def test_a_normal_arrow_is_drawn_from_the_point_along_its_direction():
    point = PixelPoint(x=100.0, y=80.0, label="")
    plain = draw_points(black(), [point])
    with_arrow = draw_points(black(), [point], normals=[(0.0, -1.0)])  # seen pointing up the image
    arrow = np.all(with_arrow == NORMAL_FILL, axis=2)
    assert not np.all(plain == NORMAL_FILL, axis=2).any() and arrow.any()
    rows, columns = np.nonzero(arrow)
    assert rows.max() <= 80 and rows.min() < 80 - 10, "above the point"
    assert abs(np.median(columns) - 100) <= 1
