"""Molmo answer text to normalized points, keeping the frame and the point or track id of each.

Every Molmo output format is understood:

* Molmo (0924 checkpoints, MolmoE-1B): ``<point x="61.5" y="40.2" alt="mug">mug</point>`` and
  ``<points x1=".." y1=".." x2=".." y2=".." alt="mugs">mugs</points>``; coordinates are percent (0-100)
  of the original image's width and height. The point id is the attribute's index (``x2`` -> 2), none
  for a bare ``x``.
* Molmo2 points: ``<points alt="mugs" coords="1 1 500 300 2 600 400">mugs</points>``; ``coords`` holds
  frame groups separated by a tab (``html-v1``) or ``;`` (``html-v2``). Each group is a frame (``1`` for a
  single image, the 1-based image index when the prompt carried several images, a timestamp such as
  ``2.5`` in video) followed by (point index, x, y) triples with x, y in per-mille (0-1000, written
  ``%03d``). Point indices continue across frames. Source: ``UnifiedPointFormatter`` in the Molmo2
  training code, ``olmo/preprocessing/point_formatter.py`` (read in a public fork, tidalove/molmo2).
* Molmo2 video tracks: ``<tracks coords="0.0 1 500 300 2 100 100;0.5 2 120 110 1 510 300">ball</tracks>``,
  the same groups, where the index is a track id: it repeats across frames and may come in any order.
* Self-closing tags, the label in a ``label=`` (or ``alt=``) attribute:
  ``<points label="mug" coords="1 1 500 300"/>``.
* The legacy compact video form, one self-closing tag per timestamp, coordinates in percent:
  ``<points 2.5\t1 45.2 30.1 2 50.0 60.0/>``.

Every `ParsedPoint` keeps its ``frame`` (the frame index or timestamp as written, None for the 0924
formats, which point into one image) and its ``point_id`` (point index or track id). For a prompt with
several images, `ParsedPoint.image_index` turns the frame into the 0-based index of the image; the
pointing service maps that to the camera whose frame was that image.

Either may sit in prose ("Counting the <points ..>cups</points> shows a total of 2."), several tags per
answer. Text without tags ("There are none.") is zero points and not malformed. A tag counts only when it
is complete (opening tag closed, closing tag present) and all its coordinates are numbers that pair up;
otherwise it gives no points and the answer is flagged malformed, because a cut-off list cannot be told
apart from a complete one. Coordinates outside the nominal range are kept as they are (never clamped):
geometry decides in pixels what is outside the image.
"""

import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedPoint:
    """x, y as fractions of the image width and height; outside [0, 1] when the model pointed outside.

    `frame`: the frame index or timestamp the point was given in (None for the one-image 0924 formats).
    `point_id`: the point's index, or for `track` points the track id (None when the markup has none).
    """

    x: float
    y: float
    label: str
    frame: float | None = None
    point_id: int | None = None
    track: bool = False

    @property
    def image_index(self) -> int | None:
        """0-based index of the prompt image this point lies in (Molmo2 numbers images from 1).

        None for the 0924 formats, whose points always lie in the only image, and for a frame that is
        not a whole number of at least 1 (a video timestamp).
        """
        if self.frame is None or self.frame < 1 or not float(self.frame).is_integer():
            return None
        return int(self.frame) - 1


@dataclass(frozen=True)
class ParsedAnswer:
    points: tuple[ParsedPoint, ...]
    malformed: bool
    problems: tuple[str, ...]


_TAG_START = re.compile(r"<(?P<name>points?|tracks)(?![\w-])")
# Quoted values may hold '>' but never '<', and must be closed, so that a cut-off attribute never swallows
# the next tag and never looks like a whole tag.
_OPENING_TAG = re.compile(
    r"""<(?P<name>points?|tracks)(?P<attrs>(?:[^<>"']|"[^"<]*"|'[^'<]*')*?)\s*(?P<self_closing>/?)>"""
)
_ATTRIBUTE = re.compile(r"""(?P<key>[\w:-]+)\s*=\s*(?:"(?P<double>[^"]*)"|'(?P<single>[^']*)')""")
_INDEXED_COORDINATE = re.compile(r"(?P<axis>[xy])(?P<index>\d*)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INDEX = re.compile(r"\d+")
_FRAME_SEPARATOR = re.compile(r"[\t;]")
# The legacy compact video tag: "<points TIMESTAMP\tIDX X Y IDX X Y/>", no attributes at all.
_COMPACT_VIDEO = re.compile(r"\s+(?P<timestamp>\S+)\t(?P<triples>[^=]*)")

_PERCENT = 100.0
_PER_MILLE = 1000.0
_SNIPPET_CHARS = 40
_LABEL_ATTRIBUTES = ("alt", "label")  # first one present wins over the inner text


class _TagError(ValueError):
    """A tag that cannot be trusted; its message becomes one of the answer's problems."""


def parse_answer(text: str) -> ParsedAnswer:
    points: list[ParsedPoint] = []
    problems: list[str] = []
    position = 0
    while (start := _TAG_START.search(text, position)) is not None:
        try:
            tag_points, position = _parse_tag(text, start)
        except _TagError as error:
            problems.append(f"{error} in {_snippet(text, start.start())}")
            position = start.end()
            continue
        points.extend(tag_points)
    return ParsedAnswer(points=tuple(points), malformed=bool(problems), problems=tuple(problems))


def _parse_tag(text: str, start: re.Match[str]) -> tuple[list[ParsedPoint], int]:
    """Points of the tag beginning at `start`, and where the text after the tag begins."""
    name = start["name"]
    opening = _OPENING_TAG.match(text, start.start())
    if opening is None:
        raise _TagError(f"<{name}> tag is not closed with '>' (answer cut off?)")
    compact = _COMPACT_VIDEO.fullmatch(opening["attrs"])
    if compact is not None and name == "points":
        if not opening["self_closing"]:
            raise _TagError("compact video <points TIMESTAMP\tIDX X Y/> tag is not self-closing")
        return _compact_video_points(compact["timestamp"], compact["triples"]), opening.end()
    attributes = _attributes(opening["attrs"])
    end = opening.end()
    inner = ""
    if not opening["self_closing"]:
        closing = re.compile(rf"(?P<inner>[^<]*)</{name}\s*>").match(text, end)
        if closing is None:
            raise _TagError(f"<{name}> has no closing </{name}>")
        inner, end = closing["inner"], closing.end()
    label_source = next((attributes[key] for key in _LABEL_ATTRIBUTES if key in attributes), inner)
    label = html.unescape(label_source).strip()
    if "coords" in attributes:
        located = _per_mille_coordinates(attributes["coords"])
    elif name == "tracks":
        raise _TagError("<tracks> without coords")
    else:
        located = _percent_coordinates(attributes)
    track = name == "tracks"
    return [
        ParsedPoint(x=x, y=y, label=label, frame=frame, point_id=point_id, track=track)
        for frame, point_id, x, y in located
    ], end


_Located = tuple[float | None, int | None, float, float]  # frame, point id, x, y (fractions)


def _attributes(source: str) -> dict[str, str]:
    attributes = {}
    for match in _ATTRIBUTE.finditer(source):
        value = match["double"] if match["double"] is not None else match["single"]
        attributes[match["key"]] = value
    leftover = _ATTRIBUTE.sub("", source).strip()
    if leftover:
        raise _TagError(f"unreadable attribute text {leftover[:_SNIPPET_CHARS]!r}")
    return attributes


def _percent_coordinates(attributes: dict[str, str]) -> list[_Located]:
    """Points (x, y) / (x1, y1), (x2, y2), ... in index order, as fractions."""
    axes: dict[str, dict[str, str]] = {"x": {}, "y": {}}
    for key, value in attributes.items():
        if (match := _INDEXED_COORDINATE.fullmatch(key)) is not None:
            axes[match["axis"]][match["index"]] = value
    if not axes["x"] and not axes["y"]:
        raise _TagError("no coordinates")
    unpaired = sorted(set(axes["x"]).symmetric_difference(axes["y"]))
    if unpaired:
        names = ", ".join(f"{'x' if index in axes['x'] else 'y'}{index}" for index in unpaired)
        raise _TagError(f"coordinate without its partner: {names}")
    indices = sorted(axes["x"], key=lambda index: int(index or 0))
    return [
        (
            None,
            int(index) if index else None,
            _number(axes["x"][index]) / _PERCENT,
            _number(axes["y"][index]) / _PERCENT,
        )
        for index in indices
    ]


def _per_mille_coordinates(coords: str) -> list[_Located]:
    """Points of every frame group of a Molmo2 ``coords`` value, as fractions."""
    groups = [group.split() for group in _FRAME_SEPARATOR.split(coords) if group.strip()]
    if not groups:
        raise _TagError("empty coords")
    located = []
    for frame, *triples in groups:
        located.extend(_triples(_number(frame), triples, _PER_MILLE))
    return located


def _compact_video_points(timestamp: str, triples: str) -> list[ParsedPoint]:
    """Points of one legacy compact video tag; percent coordinates, no label."""
    return [
        ParsedPoint(x=x, y=y, label="", frame=frame, point_id=point_id)
        for frame, point_id, x, y in _triples(_number(timestamp), triples.split(), _PERCENT)
    ]


def _triples(frame: float, values: list[str], scale: float) -> list[_Located]:
    """(index, x, y) triples of one frame, as fractions of the image size."""
    if not values or len(values) % 3:
        raise _TagError(f"frame {frame:g} does not hold whole (index, x, y) triples")
    located = []
    for offset in range(0, len(values), 3):
        index, x, y = values[offset : offset + 3]
        located.append((frame, _index(index), _number(x) / scale, _number(y) / scale))
    return located


def _number(value: str) -> float:
    if _NUMBER.fullmatch(value.strip()) is None:
        raise _TagError(f"{value!r} is not a number")
    return float(value)


def _index(value: str) -> int:
    if _INDEX.fullmatch(value) is None:
        raise _TagError(f"point index {value!r} is not a whole number")
    return int(value)


def _snippet(text: str, start: int) -> str:
    piece = text[start : start + _SNIPPET_CHARS]
    return repr(piece + "..." if len(text) - start > _SNIPPET_CHARS else piece)
