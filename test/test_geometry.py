"""to_pixels: scaling to the frame, inside/outside at the edges, nothing clamped."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from molmo_ros.geometry import PixelPoint, to_pixels
from molmo_ros.parsing import ParsedPoint, parse_answer


def test_percent_answer_scales_by_width_and_height_of_a_non_square_frame():
    answer = parse_answer(
        '<points x1="50" y1="50" x2="25" y2="75" x3="61.5" y3="40.2" alt="mug">mug</points>'
    )
    pixels = to_pixels(answer.points, width=640, height=480)
    assert pixels.outside == ()
    flat = [value for p in pixels.inside for value in (p.x, p.y)]
    assert flat == pytest.approx([320, 240, 160, 360, 61.5 * 640 / 100, 40.2 * 480 / 100])
    assert all(p.label == "mug" for p in pixels.inside)


def test_per_mille_answer_scales_the_same_way():
    pixels = to_pixels(
        parse_answer('<points coords="1 1 500 250">cup</points>').points, width=1920, height=1080
    )
    assert pixels.inside == (PixelPoint(960.0, 270.0, "cup"),)


@pytest.mark.parametrize(
    ("x", "y"),
    [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.0), (1.0, 0.5)],
)
def test_points_on_the_frame_edges_are_inside(x, y):
    pixels = to_pixels([ParsedPoint(x, y, "edge")], width=300, height=500)
    assert pixels.inside == (PixelPoint(x * 300, y * 500, "edge"),) and pixels.outside == ()


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (-0.001, 0.5, (-0.3, 250.0)),
        (1.001, 0.5, (300.3, 250.0)),
        (0.5, -0.5, (150.0, -250.0)),
        (0.5, 1.2, (150.0, 600.0)),
    ],
)
def test_points_beyond_an_edge_are_outside_and_not_clamped(x, y, expected):
    pixels = to_pixels([ParsedPoint(x, y, "far")], width=300, height=500)
    assert pixels.inside == ()
    (point,) = pixels.outside
    assert (point.x, point.y) == pytest.approx(expected) and point.label == "far"


def test_order_is_kept_within_inside_and_outside():
    points = [
        ParsedPoint(0.1, 0.1, "a"),
        ParsedPoint(2, 0, "b"),
        ParsedPoint(0.2, 0.2, "c"),
        ParsedPoint(0, -1, "d"),
    ]
    pixels = to_pixels(points, width=10, height=10)
    assert [p.label for p in pixels.inside] == ["a", "c"]
    assert [p.label for p in pixels.outside] == ["b", "d"]


def test_no_points_and_a_generator_of_points():
    assert to_pixels([], 10, 10).inside == () == to_pixels([], 10, 10).outside
    assert len(to_pixels((ParsedPoint(0.5, 0.5, str(i)) for i in range(3)), 10, 10).inside) == 3


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-1, 10)])
def test_a_frame_without_pixels_is_refused(width, height):
    with pytest.raises(ValueError, match="positive"):
        to_pixels([ParsedPoint(0.5, 0.5, "a")], width, height)


fractions_of_frame = st.floats(min_value=-2, max_value=3, allow_nan=False)
sizes = st.integers(min_value=1, max_value=8192)


@given(
    points=st.lists(st.tuples(fractions_of_frame, fractions_of_frame), max_size=20),
    width=sizes,
    height=sizes,
)
def test_split_is_exact_complete_and_unclamped(points, width, height):
    parsed = [ParsedPoint(x, y, f"p{i}") for i, (x, y) in enumerate(points)]
    pixels = to_pixels(parsed, width, height)
    assert len(pixels.inside) + len(pixels.outside) == len(parsed)
    by_label = {p.label: p for p in pixels.inside + pixels.outside}
    inside_labels = {p.label for p in pixels.inside}
    for point in parsed:
        pixel = by_label[point.label]
        assert (pixel.x, pixel.y) == (point.x * width, point.y * height)
        # decided exactly, independent of float scaling: inside iff the fraction lies in [0, 1]
        exact_inside = all(0 <= Fraction(value) <= 1 for value in (point.x, point.y))
        assert (point.label in inside_labels) == exact_inside
    for pixel in pixels.inside:
        assert 0 <= pixel.x <= width and 0 <= pixel.y <= height
