"""A test double for a model backend: answers from a script, records what it was asked.

It can hold each call until released, so tests can fill queues, flood frames, cancel or deactivate
while "the model runs". While held it watches the call's GenerationControl, as a real backend checks it
between decode steps, and it reports progress (vision, then one decoding step per answer character).
"""

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from molmo_ros.backends.interface import BackendAnswer, GenerationControl, Stage

HOLD_POLL_S = 0.01


@dataclass
class ScriptedCall:
    images: list[np.ndarray]
    prompts: list[str]

    @property
    def image(self) -> np.ndarray:
        return self.images[0]


@dataclass
class ScriptedEngine:
    """`answer(prompt, image)` gives the text; raising from it simulates a model failure."""

    answer: Callable[[str, np.ndarray], str] = lambda prompt, image: "There are none."
    hold: bool = False
    delay_s: float = 0.0  # how long each call "runs the model" (cancellable, like a real decode loop)
    name: str = "scripted"
    max_images: int = 1
    max_concurrent_calls: int = 1
    calls: list[ScriptedCall] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self._release = threading.Semaphore(0)
        self._started = threading.Semaphore(0)
        self._lock = threading.Lock()

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], control: GenerationControl | None = None
    ) -> BackendAnswer:
        control = control or GenerationControl()
        with self._lock:
            self.calls.append(ScriptedCall(images=[image.copy() for image in images], prompts=list(prompts)))
        control.report(Stage.VISION)
        self._started.release()
        if self.hold:
            waited = 0.0
            while not self._release.acquire(timeout=HOLD_POLL_S):
                control.raise_if_cancelled()
                waited += HOLD_POLL_S
                if waited > 30:
                    raise TimeoutError("ScriptedEngine was never released")
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            control.raise_if_cancelled()
            time.sleep(min(HOLD_POLL_S, max(0.0, deadline - time.monotonic())))
        texts = [self.answer(prompt, images[0]) for prompt in prompts]
        for step in range(1, max(len(text) for text in texts) + 1):
            control.raise_if_cancelled()
            control.report(Stage.DECODING, step)
        return BackendAnswer(texts=texts)

    def close(self) -> None:
        self.closed = True

    def wait_started(self, timeout: float = 10.0) -> bool:
        """Blocks until a call has entered generate()."""
        return self._started.acquire(timeout=timeout)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._release.release()


def fixed_points_answer(points: Sequence[tuple[float, float]], label: str = "thing") -> str:
    """A Molmo 0924 answer pointing at the given percent coordinates."""
    if len(points) == 1:
        x, y = points[0]
        return f'<point x="{x:.1f}" y="{y:.1f}" alt="{label}">{label}</point>'
    coordinates = " ".join(f'x{i}="{x:.1f}" y{i}="{y:.1f}"' for i, (x, y) in enumerate(points, start=1))
    return f'<points {coordinates} alt="{label}">{label}</points>'
