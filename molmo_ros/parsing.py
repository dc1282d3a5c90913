"""Molmo answer text to normalized points.

Two answer formats are understood:

* Molmo (0924 checkpoints, MolmoE-1B): ``<point x="61.5" y="40.2" alt="mug">mug</point>`` and
  ``<points x1=".." y1=".." x2=".." y2=".." alt="mugs">mugs</points>``; coordinates are percent (0-100)
  of the original image's width and height.
* Molmo2: ``<points alt="mugs" coords="1 1 500 300 2 600 400">mugs</points>``; ``coords`` holds frame
  groups separated by a tab (``html-v1``) or ``;`` (``html-v2``). Each group is a frame index (``1`` for a
  single image; a timestamp such as ``2.5`` for video) followed by (point index, x, y) triples with x, y in
  per-mille (0-1000, written ``%03d``). Source: ``UnifiedPointFormatter`` in the Molmo2 training code,
  ``olmo/preprocessing/point_formatter.py`` (read in a public fork, tidalove/molmo2). The frame index
  is not kept: the service points into one image, so the points of every group are returned. Video
  ``<tracks>`` tags are not supported.

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
    """x, y as fractions of the image width and height; outside [0, 1] when the model pointed outside."""

    x: float
    y: float
    label: str


@dataclass(frozen=True)
class ParsedAnswer:
    points: tuple[ParsedPoint, ...]
    malformed: bool
    problems: tuple[str, ...]


_TAG_START = re.compile(r"<(?P<name>points?)(?![\w-])")
# Quoted values may hold '>' but never '<', and must be closed, so that a cut-off attribute never swallows
# the next tag and never looks like a whole tag.
_OPENING_TAG = re.compile(
    r"""<(?P<name>points?)(?P<attrs>(?:[^<>"']|"[^"<]*"|'[^'<]*')*?)\s*(?P<self_closing>/?)>"""
)
_ATTRIBUTE = re.compile(r"""(?P<key>[\w:-]+)\s*=\s*(?:"(?P<double>[^"]*)"|'(?P<single>[^']*)')""")
_INDEXED_COORDINATE = re.compile(r"(?P<axis>[xy])(?P<index>\d*)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FRAME_SEPARATOR = re.compile(r"[\t;]")

_PERCENT = 100.0
_PER_MILLE = 1000.0
_SNIPPET_CHARS = 40


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
    attributes = _attributes(opening["attrs"])
    end = opening.end()
    inner = ""
    if not opening["self_closing"]:
        closing = re.compile(rf"(?P<inner>[^<]*)</{name}\s*>").match(text, end)
        if closing is None:
            raise _TagError(f"<{name}> has no closing </{name}>")
        inner, end = closing["inner"], closing.end()
    label = html.unescape(attributes.get("alt", inner)).strip()
    if "coords" in attributes:
        coordinates = _per_mille_coordinates(attributes["coords"])
    else:
        coordinates = _percent_coordinates(attributes)
    return [ParsedPoint(x=x, y=y, label=label) for x, y in coordinates], end


def _attributes(source: str) -> dict[str, str]:
    attributes = {}
    for match in _ATTRIBUTE.finditer(source):
        value = match["double"] if match["double"] is not None else match["single"]
        attributes[match["key"]] = value
    leftover = _ATTRIBUTE.sub("", source).strip()
    if leftover:
        raise _TagError(f"unreadable attribute text {leftover[:_SNIPPET_CHARS]!r}")
    return attributes


def _percent_coordinates(attributes: dict[str, str]) -> list[tuple[float, float]]:
    """Pairs (x, y) / (x1, y1), (x2, y2), ... in index order, as fractions."""
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
    return [(_number(axes["x"][index]) / _PERCENT, _number(axes["y"][index]) / _PERCENT) for index in indices]


def _per_mille_coordinates(coords: str) -> list[tuple[float, float]]:
    """Points of every frame group of a Molmo2 ``coords`` value, as fractions."""
    groups = [group.split() for group in _FRAME_SEPARATOR.split(coords) if group.strip()]
    if not groups:
        raise _TagError("empty coords")
    coordinates = []
    for frame, *triples in groups:
        _number(frame)
        if not triples or len(triples) % 3:
            raise _TagError(f"frame {frame} does not hold whole (index, x, y) triples")
        for offset in range(0, len(triples), 3):
            _number(triples[offset])
            x, y = triples[offset + 1 : offset + 3]
            coordinates.append((_number(x) / _PER_MILLE, _number(y) / _PER_MILLE))
    return coordinates


def _number(value: str) -> float:
    if _NUMBER.fullmatch(value.strip()) is None:
        raise _TagError(f"{value!r} is not a number")
    return float(value)


def _snippet(text: str, start: int) -> str:
    piece = text[start : start + _SNIPPET_CHARS]
    return repr(piece + "..." if len(text) - start > _SNIPPET_CHARS else piece)
