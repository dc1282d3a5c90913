"""parse_answer against hand-written Molmo and Molmo2 answers and against a formatter written here."""

import html

import pytest
from hypothesis import given
from hypothesis import strategies as st

from molmo_ros.parsing import ParsedPoint, parse_answer


def flat(pairs) -> list[float]:
    """pytest.approx compares flat sequences only."""
    return [value for pair in pairs for value in pair]


def coordinates(points) -> list[float]:
    return flat((point.x, point.y) for point in points)


def assert_points(text: str, expected: list[tuple[float, float]], label: str | None = None) -> None:
    answer = parse_answer(text)
    assert not answer.malformed, answer.problems
    assert coordinates(answer.points) == pytest.approx(flat(expected))
    if label is not None:
        assert all(point.label == label for point in answer.points)


@pytest.mark.parametrize(
    ("text", "expected", "label"),
    [
        ('<point x="61.5" y="40.2" alt="mug">mug</point>', [(0.615, 0.402)], "mug"),
        ('<point y="40.2" alt="mug" x="61.5">mug</point>', [(0.615, 0.402)], "mug"),
        ('<point   x="5"   y=".5"  alt="a">a</point>', [(0.05, 0.005)], "a"),
        ('<point x="5.0" y="100" alt="a">a</point>', [(0.05, 1.0)], "a"),
        ("<point x = \"5\" y='7'>cup</point>", [(0.05, 0.07)], "cup"),
        ('<points x1="10" y1="20" alt="mugs">mugs</points>', [(0.1, 0.2)], "mugs"),
        (
            '<points x1="10" y1="20" x2="30.5" y2="40" alt="mugs">mugs</points>',
            [(0.1, 0.2), (0.305, 0.4)],
            "mugs",
        ),
        (
            '<points y2="40" alt="mugs" x2="30.5" y1="20" x1="10">mugs</points>',
            [(0.1, 0.2), (0.305, 0.4)],
            "mugs",
        ),
        (
            "<points "
            + " ".join(f'x{i}="{i}" y{i}="{2 * i}"' for i in range(1, 13))
            + ' alt="dots">dots</points>',
            [(i / 100, 2 * i / 100) for i in range(1, 13)],
            "dots",
        ),
        (
            'Counting the <points x1="10" y1="20" x2="30" y2="40" alt="cups">cups</points> '
            "shows a total of 2.",
            [(0.1, 0.2), (0.3, 0.4)],
            "cups",
        ),
        (
            'Sure! The mug is here: <point x="1" y="2" alt="mug">mug</point>. Anything else?',
            [(0.01, 0.02)],
            "mug",
        ),
    ],
)
def test_molmo_percent_tags(text, expected, label):
    assert_points(text, expected, label)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<points coords="1 1 500 300">mugs</points>', [(0.5, 0.3)]),
        ('<points coords="0 1 500 300 2 600 040">mugs</points>', [(0.5, 0.3), (0.6, 0.04)]),
        (
            '<points alt="mugs" coords="1 1 500 300 2 600 400;2 3 100 100">mugs</points>',
            [(0.5, 0.3), (0.6, 0.4), (0.1, 0.1)],
        ),
        (
            '<points coords="1 1 500 300 2 600 400\t2 3 100 100">mugs</points>',
            [(0.5, 0.3), (0.6, 0.4), (0.1, 0.1)],
        ),
        ('<points coords="1.5 1 000 1000; 3.0 2 999 001">mugs</points>', [(0.0, 1.0), (0.999, 0.001)]),
        ('Counting the <points coords="1 1 250 750">cups</points> shows a total of 1.', [(0.25, 0.75)]),
        ('There are 1 <points coords="1 1 250 750"/>.', [(0.25, 0.75)]),
    ],
)
def test_molmo2_per_mille_coords(text, expected):
    assert_points(text, expected)


def test_label_is_alt_if_present_else_inner_text_unescaped():
    assert (
        parse_answer('<point x="1" y="2" alt="R&amp;D &quot;mug&quot;">other</point>').points[0].label
        == 'R&D "mug"'
    )
    assert parse_answer('<point x="1" y="2">  red &lt;mug&gt; </point>').points[0].label == "red <mug>"
    assert parse_answer('<points coords="1 1 100 200">  cups </points>').points[0].label == "cups"
    assert parse_answer('<point x="1" y="2" alt="a > b">x</point>').points[0].label == "a > b"


def test_several_tags_in_order_with_their_own_labels():
    text = 'A <point x="10" y="20" alt="cup">cup</point> and <points coords="1 1 500 500">plate</points>.'
    answer = parse_answer(text)
    assert answer.points == (
        ParsedPoint(0.1, 0.2, "cup"),
        ParsedPoint(0.5, 0.5, "plate", frame=1.0, point_id=1),
    )
    assert not answer.malformed


@pytest.mark.parametrize(
    "text",
    [
        "There are none.",
        "This isn't in the image.",
        "I don't see any red mug in this image.",
        "",
        "0",
        'The pointer <pointer> and </point> are not tags; x="5" y="6" alone is prose.',
    ],
)
def test_answers_without_tags_are_zero_points_and_not_malformed(text):
    answer = parse_answer(text)
    assert answer.points == () and not answer.malformed and answer.problems == ()


def test_points_outside_the_range_are_kept_unclamped():
    assert_points(
        '<points x1="-5" y1="120" x2="100.5" y2="0" alt="a">a</points>', [(-0.05, 1.2), (1.005, 0.0)]
    )
    assert_points('<points coords="1 1 1200 -10">a</points>', [(1.2, -0.01)])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<point x="5', "not closed"),
        ('<point x="5" y="6" alt="mug"', "not closed"),
        ('<point x="5" y="6" alt="mug">mu', "no closing"),
        ('<points x1="10" y1="20" x2="30">a</points>', "x2"),
        ('<points x1="10" y2="20">a</points>', "without its partner"),
        ('<point x="five" y="6">a</point>', "'five' is not a number"),
        ('<point x="" y="6">a</point>', "is not a number"),
        ('<point x="nan" y="6">a</point>', "is not a number"),
        ('<point x="1e" y="6">a</point>', "is not a number"),
        ('<point alt="mug">mug</point>', "no coordinates"),
        ('<point x="5" y="6" alt=mug>mug</point>', "unreadable attribute"),
        ('<point x="1" y="2">a</points>', "no closing"),
        ('<points coords="">a</points>', "empty coords"),
        ('<points coords="1 1 500">a</points>', "triples"),
        ('<points coords="1 1 500 300 2 600">a</points>', "triples"),
        ('<points coords="1">a</points>', "triples"),
        ('<points coords="1 1 500 300;2 1 abc 100">a</points>', "'abc' is not a number"),
        ('Counting the <points x1="10" y1="20" x2="30" y2="4', "not closed"),
    ],
)
def test_malformed_tags_give_no_points_and_say_why(text, reason):
    answer = parse_answer(text)
    assert answer.points == ()
    assert answer.malformed
    assert len(answer.problems) == 1 and reason in answer.problems[0]


def test_a_malformed_tag_does_not_stop_the_others():
    text = (
        '<point x="bad" y="1">a</point> then <point x="10" y="20" alt="b">b</point> '
        'then <points x1="1">c</points> then <points coords="1 1 500 500">d</points> and <point x="3'
    )
    answer = parse_answer(text)
    assert answer.points == (ParsedPoint(0.1, 0.2, "b"), ParsedPoint(0.5, 0.5, "d", frame=1.0, point_id=1))
    assert answer.malformed and len(answer.problems) == 3


def test_a_cut_off_attribute_does_not_swallow_the_next_tag():
    answer = parse_answer('<point x="5" y="6 <point x="7" y="8" alt="z">z</point>')
    assert answer.points == (ParsedPoint(0.07, 0.08, "z"),)
    assert answer.malformed


# --- property tests: a formatter written here, the parser must give its points back ---------------------

labels = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20).map(
    str.strip
)
percents = st.floats(min_value=-50, max_value=150, allow_nan=False).map(lambda value: round(value, 1))
per_milles = st.integers(min_value=-200, max_value=1500)


def format_percent_tag(points: list[tuple[float, float]], label: str, reverse_attributes: bool) -> str:
    escaped = html.escape(label, quote=True)
    if len(points) == 1:
        attributes = [f'x="{points[0][0]:g}"', f'y="{points[0][1]:g}"', f'alt="{escaped}"']
        name = "point"
    else:
        attributes = [f'x{i}="{x:g}" y{i}="{y:g}"' for i, (x, y) in enumerate(points, start=1)]
        attributes.append(f'alt="{escaped}"')
        name = "points"
    if reverse_attributes:
        attributes.reverse()
    return f"<{name} {' '.join(attributes)}>{escaped}</{name}>"


def format_per_mille_tag(frames: list[list[tuple[int, int]]], label: str, separator: str) -> str:
    groups, index = [], 1
    for frame, points in enumerate(frames, start=1):
        triples = []
        for x, y in points:
            triples.append(f"{index} {x:03d} {y:03d}")
            index += 1
        groups.append(f"{frame} " + " ".join(triples))
    return (
        f'<points alt="{html.escape(label)}" coords="{separator.join(groups)}">{html.escape(label)}</points>'
    )


@given(
    points=st.lists(st.tuples(percents, percents), min_size=1, max_size=15),
    label=labels,
    reverse_attributes=st.booleans(),
    prose=st.sampled_from(["{}", "Counting the {} shows a total of many.", "Here: {}. Done"]),
)
def test_percent_tags_round_trip(points, label, reverse_attributes, prose):
    answer = parse_answer(prose.format(format_percent_tag(points, label, reverse_attributes)))
    assert not answer.malformed, answer.problems
    assert coordinates(answer.points) == pytest.approx(flat((x / 100, y / 100) for x, y in points), abs=1e-12)
    assert all(point.label == label for point in answer.points)


@given(
    frames=st.lists(
        st.lists(st.tuples(per_milles, per_milles), min_size=1, max_size=6), min_size=1, max_size=4
    ),
    label=labels,
    separator=st.sampled_from([";", "\t"]),
)
def test_per_mille_coords_round_trip(frames, label, separator):
    answer = parse_answer(f"Counting the {format_per_mille_tag(frames, label, separator)} shows a total.")
    assert not answer.malformed, answer.problems
    expected = [(x / 1000, y / 1000) for points in frames for x, y in points]
    assert coordinates(answer.points) == pytest.approx(flat(expected), abs=1e-12)
    assert all(point.label == label for point in answer.points)


CUT_OFF_TAG = format_percent_tag([(1.0, 2.0), (3.0, 4.0)], "x", False)


@given(
    tags=st.lists(
        st.tuples(st.lists(st.tuples(percents, percents), min_size=1, max_size=4), labels), max_size=4
    ),
    cut=st.integers(min_value=len("<point"), max_value=len(CUT_OFF_TAG) - 1),
)
def test_a_cut_off_answer_keeps_only_the_complete_tags(tags, cut):
    complete = " and ".join(format_percent_tag(points, label, False) for points, label in tags)
    answer = parse_answer(f"{complete} {CUT_OFF_TAG[:cut]}")
    assert answer.malformed
    expected = [(x / 100, y / 100) for points, _ in tags for x, y in points]
    assert coordinates(answer.points) == pytest.approx(flat(expected), abs=1e-12)


@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text):
    answer = parse_answer(text)
    assert answer.malformed == bool(answer.problems)


# --- frames, ids, tracks, self-closing and compact video tags ------------------------------------------


def located(points) -> list[tuple[float | None, int | None, bool]]:
    return [(point.frame, point.point_id, point.track) for point in points]


@pytest.mark.parametrize(
    ("text", "expected_xy", "expected_located", "label"),
    [
        ('<point x="61.5" y="40.2" alt="mug">mug</point>', [(0.615, 0.402)], [(None, None, False)], "mug"),
        (
            '<points x1="10" y1="20" x2="30" y2="40" alt="mugs">mugs</points>',
            [(0.1, 0.2), (0.3, 0.4)],
            [(None, 1, False), (None, 2, False)],
            "mugs",
        ),
        (
            '<points coords="1 1 500 300 2 600 400;2 3 100 100">mugs</points>',
            [(0.5, 0.3), (0.6, 0.4), (0.1, 0.1)],
            [(1.0, 1, False), (1.0, 2, False), (2.0, 3, False)],
            "mugs",
        ),
        (
            '<points alt="cups" coords="1 1 500 300\t3 2 100 900">cups</points>',
            [(0.5, 0.3), (0.1, 0.9)],
            [(1.0, 1, False), (3.0, 2, False)],
            "cups",
        ),
        (
            '<tracks coords="0.0 1 500 300 2 100 100;0.5 2 120 110 1 510 300;1.0 1 520 300">ball</tracks>',
            [(0.5, 0.3), (0.1, 0.1), (0.12, 0.11), (0.51, 0.3), (0.52, 0.3)],
            [(0.0, 1, True), (0.0, 2, True), (0.5, 2, True), (0.5, 1, True), (1.0, 1, True)],
            "ball",
        ),
        (
            '<tracks alt="cars" coords="2.5 3 100 200\t3.0 3 110 210">cars</tracks>',
            [(0.1, 0.2), (0.11, 0.21)],
            [(2.5, 3, True), (3.0, 3, True)],
            "cars",
        ),
        (
            '<points label="red mug" coords="1 1 500 300"/>',
            [(0.5, 0.3)],
            [(1.0, 1, False)],
            "red mug",
        ),
        ('<point x="5" y="6" label="cup"/>', [(0.05, 0.06)], [(None, None, False)], "cup"),
        (
            "<points 2.5\t1 45.2 30.1 2 50.0 60.0/>",
            [(0.452, 0.301), (0.5, 0.6)],
            [(2.5, 1, False), (2.5, 2, False)],
            "",
        ),
        (
            "seen at <points 0.5\t1 10.0 20.0/> and <points 1.0\t2 30.0 40.0 3 50.0 60.0/>.",
            [(0.1, 0.2), (0.3, 0.4), (0.5, 0.6)],
            [(0.5, 1, False), (1.0, 2, False), (1.0, 3, False)],
            "",
        ),
    ],
    ids=[
        "0924-point",
        "0924-points",
        "molmo2-semicolon-frames",
        "molmo2-tab-frames",
        "tracks-ids-repeat-out-of-order",
        "tracks-timestamps",
        "self-closing-label",
        "self-closing-0924-label",
        "compact-video",
        "compact-video-in-prose",
    ],
)
def test_every_format_keeps_frame_and_id(text, expected_xy, expected_located, label):
    answer = parse_answer(text)
    assert not answer.malformed, answer.problems
    assert coordinates(answer.points) == pytest.approx(flat(expected_xy))
    assert located(answer.points) == expected_located
    assert all(point.label == label for point in answer.points)


def test_label_attribute_gives_way_to_alt_and_wins_over_inner_text():
    assert parse_answer('<points alt="a" label="b" coords="1 1 1 1">c</points>').points[0].label == "a"
    assert parse_answer('<points label="b" coords="1 1 1 1">c</points>').points[0].label == "b"


@pytest.mark.parametrize(
    ("frame", "image_index"),
    [(None, None), (1.0, 0), (2.0, 1), (8.0, 7), (2.5, None), (0.0, None)],
)
def test_image_index_is_the_zero_based_prompt_image_for_whole_frames_only(frame, image_index):
    assert ParsedPoint(0.5, 0.5, "a", frame=frame).image_index == image_index


def test_existing_callers_still_build_points_with_three_fields():
    point = ParsedPoint(0.1, 0.2, "cup")
    assert (point.frame, point.point_id, point.track) == (None, None, False)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<tracks coords="0.0 1 500">ball</tracks>', "triples"),
        ('<tracks coords="0.0 1 500 300 2 100 100;0.5 2 1', "not closed"),
        ('<tracks coords="0.0 1 500 300">ball', "no closing"),
        ('<tracks alt="ball">ball</tracks>', "without coords"),
        ('<points coords="1 1.5 500 300">a</points>', "index '1.5' is not a whole number"),
        ('<tracks coords="0.0 x 500 300">a</tracks>', "index 'x' is not a whole number"),
        ("<points 2.5\t1 45.2 30.1 2 50.0/>", "triples"),
        ("<points 2.5\t1 45.2 30.1>", "not self-closing"),
        ("<points 2.5\t1 45.2 30", "not closed"),
        ("<points abc\t1 45.2 30.1/>", "'abc' is not a number"),
        ('<points label="mug" coords="1 1 500 300"', "not closed"),
    ],
)
def test_malformed_new_formats_are_flagged_not_guessed(text, reason):
    answer = parse_answer(text)
    assert answer.points == ()
    assert answer.malformed
    assert len(answer.problems) == 1 and reason in answer.problems[0]


# Round trips of the formats with frames and ids: what a formatter writes, the parser gives back.

frame_numbers = st.one_of(
    st.integers(min_value=1, max_value=8).map(float),
    st.floats(min_value=0, max_value=600, allow_nan=False).map(lambda value: round(value, 1)),
)
ids = st.integers(min_value=1, max_value=40)


def format_coords_tag(name: str, frames, label: str, separator: str, self_closing: bool) -> str:
    groups = [
        f"{frame:g} " + " ".join(f"{point_id} {x:03d} {y:03d}" for point_id, x, y in points)
        for frame, points in frames
    ]
    coords = separator.join(groups)
    if self_closing:
        return f'<{name} label="{html.escape(label)}" coords="{coords}"/>'
    return f'<{name} alt="{html.escape(label)}" coords="{coords}">{html.escape(label)}</{name}>'


@given(
    name=st.sampled_from(["points", "tracks"]),
    frames=st.lists(
        st.tuples(frame_numbers, st.lists(st.tuples(ids, per_milles, per_milles), min_size=1, max_size=5)),
        min_size=1,
        max_size=4,
    ),
    label=labels,
    separator=st.sampled_from([";", "\t"]),
    self_closing=st.booleans(),
)
def test_coords_tags_round_trip_frames_and_ids(name, frames, label, separator, self_closing):
    answer = parse_answer(f"Here: {format_coords_tag(name, frames, label, separator, self_closing)}.")
    assert not answer.malformed, answer.problems
    expected = [(frame, point_id, x, y) for frame, points in frames for point_id, x, y in points]
    assert [(p.frame, p.point_id) for p in answer.points] == [(f, i) for f, i, _, _ in expected]
    assert coordinates(answer.points) == pytest.approx(
        flat((x / 1000, y / 1000) for _, _, x, y in expected), abs=1e-12
    )
    assert all(point.track == (name == "tracks") and point.label == label for point in answer.points)


@given(
    frames=st.lists(
        st.tuples(frame_numbers, st.lists(st.tuples(percents, percents), min_size=1, max_size=5)),
        min_size=1,
        max_size=4,
    )
)
def test_compact_video_tags_round_trip_timestamps_and_continuing_indices(frames):
    tags, expected, index = [], [], 1
    for timestamp, points in frames:
        triples = []
        for x, y in points:
            triples.append(f"{index} {x:.1f} {y:.1f}")
            expected.append((timestamp, index, x / 100, y / 100))
            index += 1
        tags.append(f"<points {timestamp:g}\t{' '.join(triples)}/>")
    answer = parse_answer(" ".join(tags))
    assert not answer.malformed, answer.problems
    assert [(p.frame, p.point_id) for p in answer.points] == [(f, i) for f, i, _, _ in expected]
    assert coordinates(answer.points) == pytest.approx(flat((x, y) for _, _, x, y in expected), abs=1e-12)
