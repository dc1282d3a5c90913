"""Test double: the real pointer node program (`molmo_ros.nodes.pointer` with its runner, parameters and
signal handling) with the scripted engine instead of a model, for tests that need the node in its own
process without weights.

    python test/doubles/scripted_pointer.py DELAY_S --ros-args -p ...

Each call "runs the model" for DELAY_S seconds and points at the middle of the frame. At exit it prints
how many Point requests the node took and how many it answered, so a test can tell requests the node
never received or never answered from answers lost on their way to a client.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doubles.scripted_engine import ScriptedEngine, fixed_points_answer  # noqa: E402
from molmo_ros.backends.errors import BackendError  # noqa: E402
from molmo_ros.nodes.pointer import PointerNode  # noqa: E402
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node  # noqa: E402
from molmo_ros.srv import Point  # noqa: E402


class CountingPointerNode(PointerNode):
    """The pointer node, counting the Point requests it takes and answers."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.taken = self.answered = 0

    async def _on_point(self, request: Point.Request, response: Point.Response) -> Point.Response:
        self.taken += 1
        answer = await super()._on_point(request, response)
        self.answered += 1
        return answer

    def destroy_node(self) -> None:
        print(f"point requests taken: {self.taken}, answered: {self.answered}", flush=True)
        super().destroy_node()


def main() -> int:
    delay_s = float(sys.argv[1])
    engine = ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(50.0, 50.0)]), delay_s=delay_s)
    return run_node(
        "scripted_pointer",
        lambda: CountingPointerNode(backend_factory=lambda settings: engine),
        (BackendError, *CONFIGURATION_ERRORS),
        sys.argv[2:],
    )


if __name__ == "__main__":
    sys.exit(main())
