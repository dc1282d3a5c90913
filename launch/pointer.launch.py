"""Starts the molmo_ros pointer node.

    ros2 launch molmo_ros pointer.launch.py image_topic:=/camera/color/image_raw model:=/data/MolmoE-1B-0924

Arguments left empty keep what the params file says. Raw images over 512 KB (640x480 rgb8 is 900 KB)
need the shipped Fast DDS profile in the environment of the camera driver, and of this node for its
debug images (see README, "Large images"):
    export FASTDDS_DEFAULT_PROFILES_FILE=\
        $(ros2 pkg prefix molmo_ros)/share/molmo_ros/config/fastdds_large_images.xml
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# Launch argument -> node parameter it overrides when not empty.
OVERRIDES = {
    "image_topic": "cameras.camera.topic",
    "compressed": "cameras.camera.compressed",
    "backend": "engine.backend",
    "model": "engine.model",
    "device": "engine.device",
    "autostart": "autostart",
}
BOOLEAN_ARGUMENTS = ("compressed", "autostart")


def _pointer_node(context: LaunchContext) -> list[Node]:
    overrides: dict[str, object] = {}
    for argument, parameter in OVERRIDES.items():
        value = LaunchConfiguration(argument).perform(context)
        if value:
            overrides[parameter] = value.lower() == "true" if argument in BOOLEAN_ARGUMENTS else value
    return [
        Node(
            package="molmo_ros",
            executable="pointer",
            name="pointer",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), overrides],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "namespace",
                default_value="molmo",
                description="Namespace of the node: service <namespace>/point, results "
                "<namespace>/points, standing query <namespace>/query.",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([FindPackageShare("molmo_ros"), "config", "pointer.yaml"]),
                description="Parameter file (see config/pointer.yaml).",
            ),
            DeclareLaunchArgument(
                "image_topic",
                default_value="",
                description="Image topic of the camera named 'camera' (default /camera/image_raw).",
            ),
            DeclareLaunchArgument(
                "compressed",
                default_value="",
                description="true if image_topic carries sensor_msgs/CompressedImage, else false.",
            ),
            DeclareLaunchArgument(
                "backend",
                default_value="",
                description="molmoe (default), molmo2 or openai (an OpenAI-compatible server such as vLLM).",
            ),
            DeclareLaunchArgument(
                "model",
                default_value="",
                description="Hugging Face model id or local checkpoint directory "
                "(default $MOLMO_MODEL, else allenai/MolmoE-1B-0924).",
            ),
            DeclareLaunchArgument(
                "device",
                default_value="",
                description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
            ),
            DeclareLaunchArgument(
                "autostart",
                default_value="",
                description="true (params file default): configure and activate by itself; false: leave "
                "the lifecycle to a lifecycle manager.",
            ),
            OpaqueFunction(function=_pointer_node),
        ]
    )
