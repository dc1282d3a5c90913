"""A test double for the pointing engine: answers from a script, records what it was asked.

It can hold each call until released, so tests can fill queues and flood frames while "the model runs".
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ScriptedAnswer:
    texts: list[str]


@dataclass
class ScriptedCall:
    image: np.ndarray
    prompts: list[str]


@dataclass
class ScriptedEngine:
    """`answer(prompt, image)` gives the text; raising from it simulates a model failure."""

    answer: Callable[[str, np.ndarray], str] = lambda prompt, image: "There are none."
    hold: bool = False
    calls: list[ScriptedCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._release = threading.Semaphore(0)
        self._started = threading.Semaphore(0)
        self._lock = threading.Lock()

    def generate(self, image: np.ndarray, prompts: Sequence[str]) -> ScriptedAnswer:
        with self._lock:
            self.calls.append(ScriptedCall(image=image.copy(), prompts=list(prompts)))
        self._started.release()
        if self.hold and not self._release.acquire(timeout=30):
            raise TimeoutError("ScriptedEngine was never released")
        return ScriptedAnswer(texts=[self.answer(prompt, image) for prompt in prompts])

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
