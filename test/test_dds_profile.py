"""The shipped Fast DDS profile is used by a process that publishes raw images, unless the user chose one."""

import os
from pathlib import Path

from molmo_ros.nodes.dds_profile import PROFILE_VARIABLE, large_image_profile


def test_the_shipped_profile_is_used_while_the_block_runs_and_forgotten_after(monkeypatch):
    monkeypatch.delenv(PROFILE_VARIABLE, raising=False)
    with large_image_profile():
        path = Path(os.environ[PROFILE_VARIABLE])
        assert path.name == "fastdds_large_images.xml" and "<segment_size>" in path.read_text()
    assert PROFILE_VARIABLE not in os.environ


def test_a_profile_the_user_chose_is_kept(monkeypatch, tmp_path):
    chosen = str(tmp_path / "mine.xml")
    monkeypatch.setenv(PROFILE_VARIABLE, chosen)
    with large_image_profile():
        assert os.environ[PROFILE_VARIABLE] == chosen
    assert os.environ[PROFILE_VARIABLE] == chosen
