"""The debug drawing: markers land on the pointed pixels, the input frame stays untouched."""

import numpy as np
import pytest

from molmo_ros.drawing import POINT_FILL, draw_points
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
