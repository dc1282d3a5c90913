"""Test double: the real pointer node program (`molmo_ros.nodes.pointer` with its runner, parameters and
signal handling) with the scripted engine instead of a model, for tests that need the node in its own
process without weights.

    python test/doubles/scripted_pointer.py DELAY_S --ros-args -p ...

Each call "runs the model" for DELAY_S seconds and points at the middle of the frame. It prints
FIRST_FRAME once it holds a camera frame, so a test sends requests only when they can find one, and at
exit how many Point requests the node took and how many it answered, so a test can tell requests the
node never received or never answered from answers lost on their way to a client.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doubles.scripted_engine import ScriptedEngine, fixed_points_answer  # noqa: E402
from molmo_ros.backends.errors import BackendError  # noqa: E402
from molmo_ros.nodes.pointer import PointerNode  # noqa: E402
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node  # noqa: E402
from molmo_ros.pointing.frames import Frame  # noqa: E402
from molmo_ros.srv import Point  # noqa: E402

FIRST_FRAME = "holding a camera frame"
# As many tracked Python objects as the real node holds once its model is loaded (417k with the tiny MolmoE,
# counted by gc.get_objects() after activate), so the garbage collector has as much to walk here.
MODEL_OBJECTS = 417_000


class CountingPointerNode(PointerNode):
    """The pointer node, counting the Point requests it takes and answers, and saying when it first holds
    a camera frame."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.taken = self.answered = 0

    def on_configure(self, state):
        result = super().on_configure(state)
        pointing = self.pointing
        if pointing is not None:
            put_frame = pointing.put_frame

            def put_and_tell(frame: Frame) -> None:
                put_frame(frame)
                if pointing.frames.sequence(frame.camera) == 1:  # kept only while active
                    print(FIRST_FRAME, flush=True)

            pointing.put_frame = put_and_tell
        return result

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

    def load_model(settings: object) -> ScriptedEngine:
        engine.weights = [[index] for index in range(MODEL_OBJECTS)]  # built at activate, as a model loads
        return engine

    return run_node(
        "scripted_pointer",
        lambda: CountingPointerNode(backend_factory=load_model),
        (BackendError, *CONFIGURATION_ERRORS),
        sys.argv[2:],
    )


if __name__ == "__main__":
    sys.exit(main())
