"""Static checks of launch/pointer.launch.py: `launch` and `launch_ros` cannot be installed here.

The file must parse, name a package and executable the build really installs, declare every
argument it reads, and set only parameters the node declares.
"""

import ast
import importlib
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import pytest
import rclpy
import yaml
from doubles.scripted_engine import ScriptedEngine

from molmo_ros.nodes.pointer import PointerNode

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO_ROOT / "launch" / "pointer.launch.py"
EXPECTED_ARGUMENTS = {
    "namespace",
    "params_file",
    "image_topic",
    "compressed",
    "backend",
    "model",
    "device",
    "autostart",
}


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


@pytest.fixture(scope="module")
def declared_node():
    rclpy.init()
    node = PointerNode(backend_factory=lambda settings: ScriptedEngine())
    node.trigger_configure()  # the cameras.<name>.* parameters are declared once camera_names is read
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def declared_parameters(declared_node):
    return set(declared_node._parameters)


def calls_named(tree: ast.Module, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
    ]


def first_string_argument(call: ast.Call) -> str:
    assert call.args and isinstance(call.args[0], ast.Constant), ast.dump(call)
    return call.args[0].value


def keyword(call: ast.Call, name: str) -> ast.expr:
    return next(k.value for k in call.keywords if k.arg == name)


def test_launch_arguments_are_declared_documented_and_used(tree):
    declared = {first_string_argument(call) for call in calls_named(tree, "DeclareLaunchArgument")}
    assert declared == EXPECTED_ARGUMENTS
    for call in calls_named(tree, "DeclareLaunchArgument"):
        assert isinstance(keyword(call, "description"), (ast.Constant, ast.BinOp, ast.JoinedStr)), (
            "documented"
        )
    used = {
        first_string_argument(call)
        for call in calls_named(tree, "LaunchConfiguration")
        if isinstance(call.args[0], ast.Constant)
    }
    overrides = ast.literal_eval(
        next(
            node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and node.targets[0].id == "OVERRIDES"
        )
    )
    assert used | set(overrides) == declared, "every declared argument is read, and only those"


def test_node_package_and_executable_exist_in_the_build(tree):
    (node_call,) = calls_named(tree, "Node")
    package = ast.literal_eval(keyword(node_call, "package"))
    executable = ast.literal_eval(keyword(node_call, "executable"))
    package_xml_name = ElementTree.parse(REPO_ROOT / "package.xml").getroot().findtext("name")
    assert package == package_xml_name == "molmo_ros"
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[executable].split(":")
    assert callable(getattr(importlib.import_module(module), function)), "the console script's target exists"
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "molmo_ros_install_ros2_run_executables" in cmake and "pyproject.toml" in cmake, (
        "colcon installs the same scripts into lib/molmo_ros for launch_ros"
    )
    params_default = [call for call in calls_named(tree, "PathJoinSubstitution")]
    assert params_default, "the params file defaults to the package's share directory"
    parts = [ast.literal_eval(e) for e in params_default[0].args[0].elts[1:]]
    assert (REPO_ROOT.joinpath(*parts)).is_file()


def test_every_parameter_the_launch_file_sets_is_declared_by_the_node(tree, declared_parameters):
    overrides = ast.literal_eval(
        next(
            node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and node.targets[0].id == "OVERRIDES"
        )
    )
    assert set(overrides.values()) <= declared_parameters, set(overrides.values()) - declared_parameters


def flatten(parameters: dict, prefix: str = "") -> set[str]:
    names = set()
    for key, value in parameters.items():
        name = f"{prefix}{key}"
        names |= flatten(value, f"{name}.") if isinstance(value, dict) else {name}
    return names


def test_every_parameter_in_the_shipped_params_file_is_declared(declared_parameters):
    document = yaml.safe_load((REPO_ROOT / "config" / "pointer.yaml").read_text())
    names = flatten(document["/**"]["ros__parameters"])
    assert names <= declared_parameters, names - declared_parameters
    declared_without_sim_time = declared_parameters - {"use_sim_time", "start_type_description_service"}
    assert declared_without_sim_time <= names, f"undocumented: {declared_without_sim_time - names}"


def test_the_shipped_params_file_holds_the_declared_defaults(declared_node):
    """The settings dataclasses hold each default once; the file repeats them for users: they must agree."""
    document = yaml.safe_load((REPO_ROOT / "config" / "pointer.yaml").read_text())["/**"]["ros__parameters"]

    def values(parameters: dict, prefix: str = "") -> dict[str, object]:
        flat = {}
        for key, value in parameters.items():
            flat |= values(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return flat

    in_file = values(document)
    declared = {name: declared_node.get_parameter(name).value for name in in_file}
    assert in_file == declared
