"""The standing query's schedule: which camera's new frame it answers next.

Each new frame is answered at most once, and the cameras take turns, so a fast camera cannot starve a slow
one. Not thread-safe by itself: the pointing service calls it with its lock held.
"""

from dataclasses import dataclass, field

from molmo_ros.backends.interface import GenerationControl
from molmo_ros.pointing.frames import LatestFrames


@dataclass(frozen=True)
class StandingRun:
    """One answer of the standing query: the camera whose new frame it answers, the query as given (taken
    with the lock held, so a query cleared meanwhile cannot empty it), and its cancel control."""

    camera: str
    query: str
    control: GenerationControl = field(default_factory=GenerationControl)


class StandingQuery:
    def __init__(self) -> None:
        self.query: str | None = None  # checked and stripped; None when no standing query is set
        self.as_given = ""  # what its outcomes carry as their query
        self._running: StandingRun | None = None  # so it can be stopped
        self._seen: dict[str, int] = {}  # frame sequence number answered last, per camera
        self._next_camera = 0

    @property
    def running(self) -> bool:
        return self._running is not None

    def stop_running(self) -> None:
        """Stops the running answer at the model's next step; it reports nothing."""
        if self._running is not None:
            self._running.control.cancel()

    def set(self, query: str | None, as_given: str, frames: LatestFrames, cameras: tuple[str, ...]) -> bool:
        """Sets (or, with None, clears) the query; False when it is the one already set: a planner
        re-publishing its query must not get the same frame answered again."""
        if query == self.query:
            return False
        self.stop_running()  # an answer to the old query is of no use to whoever changed it
        self.query, self.as_given = query, as_given
        # The frame already there counts as new, so a standing query answers without waiting.
        self._seen = {camera: max(frames.sequence(camera) - 1, 0) for camera in cameras}
        return True

    def start_next(self, frames: LatestFrames, cameras: tuple[str, ...]) -> StandingRun | None:
        """A run for the camera with a frame not yet answered, taking turns, marked running; None if there
        is none (or the query is unset, or an answer is already running)."""
        if self.query is None or self.running:
            return None
        for offset in range(len(cameras)):
            camera = cameras[(self._next_camera + offset) % len(cameras)]
            sequence = frames.sequence(camera)
            if sequence > self._seen.get(camera, 0):
                self._seen[camera] = sequence
                self._next_camera = (cameras.index(camera) + 1) % len(cameras)
                self._running = StandingRun(camera, self.as_given)
                return self._running
        return None

    def finished(self) -> None:
        self._running = None

    def forget_frames(self) -> None:
        """The frames were cleared and their counts restart: the first new frame must count as new."""
        self._seen = {}
