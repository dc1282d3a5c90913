"""The pip install (tools/ensure_venv.sh) puts interfaces, libraries and share/ where ROS expects them.

Each check runs in a fresh interpreter so it sees the installed package, as a user's process would.
"""

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARE = Path(sys.prefix) / "share" / "molmo_ros"
NOT_INSTALLED = "molmo_ros is not installed in this venv: run tools/ensure_venv.sh"


def run_python(code: str, cwd: Path) -> dict:
    """Runs code in a new interpreter without the source tree on sys.path; returns what it prints as JSON."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{NOT_INSTALLED}?\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_installed_interfaces_import_from_the_venv(tmp_path: Path) -> None:
    found = run_python(
        """
        import json, importlib.metadata
        import molmo_ros.msg, molmo_ros.srv
        from molmo_ros.msg import PointingResult
        from molmo_ros.srv import Point
        print(json.dumps({"msg": molmo_ros.msg.__file__, "srv": molmo_ros.srv.__file__,
                          "version": importlib.metadata.version("molmo_ros"),
                          "constants": [Point.Response.OK, Point.Response.BUSY],
                          "fields": sorted(PointingResult.get_fields_and_field_types())}))
    """,
        cwd=tmp_path,
    )
    site_packages = Path(sys.prefix).resolve()
    assert Path(found["msg"]).resolve().is_relative_to(site_packages)
    assert Path(found["srv"]).resolve().is_relative_to(site_packages)
    assert found["version"] == ElementTree.parse(REPO_ROOT / "package.xml").getroot().findtext("version")
    assert found["constants"] == [0, 7]  # values written in srv/Point.srv
    msg_lines = (REPO_ROOT / "msg" / "PointingResult.msg").read_text().splitlines()
    msg_fields = [line.split()[1] for line in msg_lines if line.strip() and not line.startswith("#")]
    assert found["fields"] == sorted(msg_fields)


def test_source_tree_first_still_finds_the_generated_modules() -> None:
    # Development case: the checkout shadows the installed package; extend_path joins the two.
    found = run_python(
        """
        import json
        import molmo_ros
        from molmo_ros.srv import Point
        print(json.dumps({"path": list(molmo_ros.__path__), "query": Point.Request(query="red mug").query}))
    """,
        cwd=REPO_ROOT,
    )
    assert Path(found["path"][0]).resolve() == REPO_ROOT / "molmo_ros"
    assert found["query"] == "red mug"


def test_service_and_topic_round_trip_with_the_generated_types(tmp_path: Path) -> None:
    found = run_python(
        """
        import json
        import rclpy
        from geometry_msgs.msg import Point as PixelPoint
        from molmo_ros.msg import PointingResult
        from molmo_ros.srv import Point

        rclpy.init()
        server_node = rclpy.create_node("build_test_server")
        client_node = rclpy.create_node("build_test_client")
        published = []

        def answer(request, response):
            response.success = True
            response.result.query = request.query
            response.result.points = [PixelPoint(x=12.5, y=40.0)]
            response.result.labels = [request.query.upper()]
            return response

        server_node.create_service(Point, "point", answer)
        results_out = server_node.create_publisher(PointingResult, "points", 10)
        client_node.create_subscription(PointingResult, "points", published.append, 10)
        client = client_node.create_client(Point, "point")
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(server_node)
        executor.add_node(client_node)
        assert client.wait_for_service(timeout_sec=20)
        future = client.call_async(Point.Request(query="red mug"))
        executor.spin_until_future_complete(future, timeout_sec=20)
        response = future.result()
        for _ in range(200):
            results_out.publish(response.result)
            executor.spin_once(timeout_sec=0.05)
            if published:
                break
        print(json.dumps({"success": response.success, "labels": list(response.result.labels),
                          "x": response.result.points[0].x,
                          "published_labels": [list(m.labels) for m in published[:1]]}))
        rclpy.shutdown()
    """,
        cwd=tmp_path,
    )
    assert found == {"success": True, "labels": ["RED MUG"], "x": 12.5, "published_labels": [["RED MUG"]]}


def test_share_files_are_installed_in_the_venv_prefix() -> None:
    index = Path(sys.prefix) / "share" / "ament_index" / "resource_index"
    assert (index / "packages" / "molmo_ros").is_file(), NOT_INSTALLED
    interfaces = [
        path.relative_to(REPO_ROOT).as_posix()
        for folder in ("msg", "srv", "action")
        for path in (REPO_ROOT / folder).iterdir()
    ]
    expected = interfaces + [name.rsplit(".", 1)[0] + ".idl" for name in interfaces]
    assert (index / "rosidl_interfaces" / "molmo_ros").read_text().split() == sorted(expected)
    for folder in ("launch", "config", "samples"):
        source_files = sorted(path.name for path in (REPO_ROOT / folder).iterdir() if path.is_file())
        installed = sorted(path.name for path in (SHARE / folder).glob("*") if path.is_file())
        assert installed == source_files, f"share/molmo_ros/{folder} is stale: run tools/ensure_venv.sh"
    assert (SHARE / "package.xml").read_bytes() == (REPO_ROOT / "package.xml").read_bytes()
    assert (SHARE / "config" / "fastdds_large_images.xml").is_file()


@pytest.mark.parametrize(
    "library", ["rosidl_typesupport_c", "rosidl_typesupport_fastrtps_c", "rosidl_generator_py"]
)
def test_interface_libraries_are_in_the_venv_lib(library: str) -> None:
    assert (Path(sys.prefix) / "lib" / f"libmolmo_ros__{library}.so").is_file(), NOT_INSTALLED
