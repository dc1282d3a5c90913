"""Test double: the real pointer node program (`molmo_ros.nodes.pointer` with its runner, parameters and
signal handling) with the scripted engine instead of a model, for tests that need the node in its own
process without weights.

    python test/doubles/scripted_pointer.py DELAY_S --ros-args -p ...

Each call "runs the model" for DELAY_S seconds and points at the middle of the frame.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doubles.scripted_engine import ScriptedEngine, fixed_points_answer  # noqa: E402
from molmo_ros.engine.errors import EngineError  # noqa: E402
from molmo_ros.nodes.pointer import PointerNode  # noqa: E402
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node  # noqa: E402


def main() -> int:
    delay_s = float(sys.argv[1])
    engine = ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(50.0, 50.0)]), delay_s=delay_s)
    return run_node(
        "scripted_pointer",
        lambda: PointerNode(backend_factory=lambda settings: engine),
        (EngineError, *CONFIGURATION_ERRORS),
        sys.argv[2:],
    )


if __name__ == "__main__":
    sys.exit(main())
