"""Test double: the bundled camera program (image_folder_publisher, run as its main runs it) that prints at
exit the longest interval between two of its publishes, so a test can tell frames that were never sent
(the camera process itself stalled) from frames lost on their way.

    python test/doubles/timed_camera.py --ros-args -p rate:=30.0
"""

import sys
import time

from molmo_ros.nodes.dds_profile import large_image_profile
from molmo_ros.nodes.image_folder_publisher import ImageFolderPublisher
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node

LONGEST_INTERVAL = "longest interval between publishes (s):"


class TimedCamera(ImageFolderPublisher):
    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._last: float | None = None
        self.longest_s = 0.0

    def _publish(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.longest_s = max(self.longest_s, now - self._last)
        self._last = now
        super()._publish()

    def destroy_node(self) -> None:
        print(f"{LONGEST_INTERVAL} {self.longest_s:.3f}", flush=True)
        super().destroy_node()


def main() -> int:
    with large_image_profile():
        return run_node("timed_camera", TimedCamera, (OSError, *CONFIGURATION_ERRORS), sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
