"""The shipped Fast DDS profile, for a program that publishes raw camera images.

Fast DDS's default shared-memory segment is 512 KB, smaller than one raw 640x480 rgb8 frame (900 KB).
Such frames then reach another process only while its receiving threads get a CPU at once: on a
2-core machine with other programs busy, subscribers got 15-30 % of a 30 Hz camera's frames, with
gaps of up to 6 s, so requests were answered STALE_FRAME. The publisher's segment decides (the profile
in the subscriber alone changed nothing); with `config/fastdds_large_images.xml` (64 MiB) in the
publisher, the same load left gaps of at most a quarter of a second (bench/frames_under_load.py).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from molmo_ros.resources import share_dir

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_FILE = "fastdds_large_images.xml"


def shipped_profile_path() -> str:
    return str(share_dir() / "config" / PROFILE_FILE)


@contextmanager
def large_image_profile() -> Iterator[None]:
    """Within the block, participants this process creates use the shipped profile, unless the user set
    FASTDDS_DEFAULT_PROFILES_FILE (an empty value keeps Fast DDS's defaults). Fast DDS reads the
    variable when the first participant is created, so the whole node's life goes inside the block."""
    if PROFILE_VARIABLE in os.environ:
        yield
        return
    os.environ[PROFILE_VARIABLE] = shipped_profile_path()
    try:
        yield
    finally:
        os.environ.pop(PROFILE_VARIABLE, None)
