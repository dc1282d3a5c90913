"""The demo camera: its synthetic depth scene lifts back to the scene's known planes, and over DDS it
publishes colour, depth and CameraInfo with one stamp and frame_id."""

import math

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import Spinner, wait_until
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.images import MILLIMETRES, read_depth
from molmo_ros.depth.lifting import lift_points
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.nodes.image_folder_publisher import (
    DEFAULT_DEPTH_TOPIC,
    HORIZONTAL_FOV_DEG,
    SCENE,
    ImageFolderPublisher,
    camera_info,
    demo_intrinsics,
    synthetic_depth_mm,
)

WIDTH, HEIGHT = 320, 240
# depth is stored in whole millimetres: rounding moves Z by at most half a millimetre
QUANTUM = MILLIMETRES / 2
ONE_PIXEL = DepthSettings(depth_window=1, depth_min_support=1, depth_search_radius=0)


def demo_camera(width: int = WIDTH, height: int = HEIGHT) -> CameraModel:
    info = camera_info(width, height, Header())
    return CameraModel.from_camera_info(
        info.width, info.height, info.distortion_model, info.d, info.k, info.p
    )


def lift(points: list[tuple[float, float]]) -> list:
    depth = synthetic_depth_mm(WIDTH, HEIGHT).astype(np.float32) * np.float32(MILLIMETRES)
    depth[depth == 0] = np.nan
    return lift_points(points, (WIDTH, HEIGHT), depth, demo_camera(), ONE_PIXEL)


def test_intrinsics_have_the_stated_field_of_view_and_centre():
    camera = demo_intrinsics(WIDTH, HEIGHT)
    assert math.degrees(2 * math.atan((WIDTH / 2) / camera.fx)) == pytest.approx(HORIZONTAL_FOV_DEG)
    assert (camera.cx, camera.cy) == ((WIDTH - 1) / 2, (HEIGHT - 1) / 2) and camera.fx == camera.fy


def test_box_faces_and_the_wall_lift_to_their_known_distances():
    camera = demo_intrinsics(WIDTH, HEIGHT)
    box = SCENE.boxes[0]
    # the middle of the first box's face, projected, as a continuous molmo_ros point (OpenCV + 0.5)
    centre_x, centre_y = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    face = (camera.cx + camera.fx * centre_x / box.z + 0.5, camera.cy + camera.fy * centre_y / box.z + 0.5)
    on_face, on_wall = lift([face, (5.0, 5.0)])
    # 1.2 m is a whole number of millimetres; the float32 depth rounds it by 2**-24 relative (6e-8)
    assert on_face.xyz == pytest.approx((centre_x, centre_y, box.z), rel=1e-6)
    assert on_wall.depth == pytest.approx(SCENE.wall_z, abs=1e-6)


def test_floor_points_lie_on_the_floor_plane():
    rows = np.arange(HEIGHT - 40, HEIGHT, 7) + 0.5  # the bottom rows, in front of the boxes' bases
    lifted = lift([(WIDTH - 10.5, row) for row in rows])
    for point in lifted:
        # Y = y_ray * Z, with |y_ray| < 1 here: off the plane by at most the depth rounding
        assert point.xyz[1] == pytest.approx(SCENE.floor_y, abs=QUANTUM)
        assert point.xyz[2] < SCENE.wall_z


def pixel_of(x: float, y: float, z: float) -> tuple[float, float]:
    """The continuous molmo_ros point (OpenCV + 0.5) where the demo camera sees (x, y, z)."""
    camera = demo_intrinsics(WIDTH, HEIGHT)
    return camera.cx + camera.fx * x / z + 0.5, camera.cy + camera.fy * y / z + 0.5


def test_the_thin_pole_gets_its_own_depth_and_the_wall_beside_it_the_walls():
    pole = SCENE.pole
    x, y = pixel_of((pole.left + pole.right) / 2, 0.0, pole.z)
    column = math.floor(x)
    depth = synthetic_depth_mm(WIDTH, HEIGHT)
    covered = [c for c in range(column - 3, column + 4) if depth[math.floor(y), c] == round(pole.z * 1000)]
    assert 1 <= len(covered) <= 3, "a thin part: 1 to 3 pixels wide at this size"
    on, beside = lift_points(
        [(column + 0.5, y), (max(covered) + 1.5, y)],
        (WIDTH, HEIGHT),
        depth * np.float32(MILLIMETRES),
        demo_camera(),
        DepthSettings(),
    )
    assert on.depth == pytest.approx(pole.z, abs=QUANTUM) and on.edge
    assert beside.depth == pytest.approx(SCENE.wall_z, abs=QUANTUM)


def test_the_tilted_board_lifts_onto_its_plane_with_its_normal():
    """Whole millimetres (+-0.5 mm) across the 21-pixel fit, about 9.4 mm a pixel at 2.2 m here, so 200 mm
    wide: a least-squares slope moves by at most 0.5 mm x 3 / 200 mm (0.43 degrees) each way, the normal
    by at most sqrt(2) x 0.43 = 0.61 degrees."""
    board = SCENE.board
    x, y = pixel_of(board.x, board.y, board.z)
    column, row = math.floor(x), math.floor(y)
    depth = synthetic_depth_mm(WIDTH, HEIGHT) * np.float32(MILLIMETRES)
    (point,) = lift_points(
        [(column + 0.5, row + 0.5)], (WIDTH, HEIGHT), depth, demo_camera(), DepthSettings()
    )
    camera = demo_intrinsics(WIDTH, HEIGHT)
    ray = np.array([(column - camera.cx) / camera.fx, (row - camera.cy) / camera.fy, 1.0])
    normal = np.array(board.normal)
    true_depth = (normal @ np.array([board.x, board.y, board.z])) / (normal @ ray)
    assert point.depth == pytest.approx(true_depth, abs=QUANTUM) and not point.edge
    angle = math.degrees(math.acos(min(1.0, float(np.dot(point.normal, normal)))))
    assert angle <= 0.61


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def folder(tmp_path):
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "a.png"), rgb)
    return tmp_path


class Listener:
    def __init__(self, node, topics: dict[str, type]) -> None:
        self.received: dict[str, list] = {topic: [] for topic in topics}
        for topic, kind in topics.items():
            node.create_subscription(kind, topic, self.received[topic].append, qos_profile_sensor_data)


def test_colour_depth_and_camera_info_share_stamp_and_frame(ros, folder):
    camera = ImageFolderPublisher(
        parameter_overrides=[
            Parameter("folder", value=str(folder)),
            Parameter("rate", value=20.0),
            Parameter("frame_id", value="demo_optical"),
        ]
    )
    user = rclpy.create_node("publisher_test_user")
    topics = {"/camera/image_raw": Image, DEFAULT_DEPTH_TOPIC: Image, "/camera/camera_info": CameraInfo}
    listener = Listener(user, topics)
    spinner = Spinner(camera, user)
    try:
        assert wait_until(lambda: all(len(messages) >= 3 for messages in listener.received.values()))
    finally:
        spinner.close()
        camera.destroy_node()
        user.destroy_node()
    colour_stamps = {
        (m.header.stamp.sec, m.header.stamp.nanosec) for m in listener.received["/camera/image_raw"]
    }
    for topic in (DEFAULT_DEPTH_TOPIC, "/camera/camera_info"):
        for message in listener.received[topic]:
            assert message.header.frame_id == "demo_optical"
            assert (message.header.stamp.sec, message.header.stamp.nanosec) in colour_stamps
            assert (message.width, message.height) == (WIDTH, HEIGHT)
    depth = listener.received[DEFAULT_DEPTH_TOPIC][0]
    assert depth.encoding == "16UC1"
    metres = read_depth(
        bytes(depth.data), depth.encoding, depth.height, depth.width, depth.step, bool(depth.is_bigendian)
    ).metres()
    np.testing.assert_array_equal(metres, synthetic_depth_mm(WIDTH, HEIGHT) * np.float32(MILLIMETRES))
    info = listener.received["/camera/camera_info"][0]
    model = CameraModel.from_camera_info(
        info.width, info.height, info.distortion_model, info.d, info.k, info.p
    )
    assert model.fx == demo_intrinsics(WIDTH, HEIGHT).fx


def test_depth_can_be_turned_off(ros, folder):
    camera = ImageFolderPublisher(
        parameter_overrides=[Parameter("folder", value=str(folder)), Parameter("publish_depth", value=False)]
    )
    try:
        published = {name for name, _ in camera.get_publisher_names_and_types_by_node(camera.get_name(), "/")}
    finally:
        camera.destroy_node()
    assert "/camera/image_raw" in published
    assert DEFAULT_DEPTH_TOPIC not in published and "/camera/camera_info" not in published
