"""m3_ros.params and m3_ros.graph: one declarative parameter pattern, typed launch arguments.

Declarations run on real rclpy nodes (in this process: a parameter declaration needs no peer);
the nodes themselves start in separate processes in test_node_params.py.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from tests.conftest import ros_available

pytestmark = pytest.mark.skipif(
    not ros_available(), reason="rclpy is not installed (run scripts/setup_env.sh)"
)

if ros_available():
    from rclpy.parameter import Parameter

    from m3_core.capture.keyframes import KeyframeConfig
    from m3_core.capture.session import CaptureConfig
    from m3_core.query.config import QueryConfig
    from m3_ros.graph import graph_argument_specs, group_arguments, load_group
    from m3_ros.params import (
        CAPTURE_PARAMS,
        NODE_PARAMS,
        QUERY_PARAMS,
        REPLAY_PARAMS,
        ParamType,
        dataclass_kwargs,
        declare_parameters,
    )


@pytest.fixture
def make_node(rclpy_node):
    """make_node(**overrides) -> a fresh rclpy node with those parameter overrides."""
    import rclpy

    made = []

    def make(**overrides):
        node = rclpy.create_node(
            f"params_test_{len(made)}",
            context=rclpy_node.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        )
        made.append(node)
        return node

    yield make
    for node in made:
        node.destroy_node()


def test_every_parameter_has_a_description_and_a_unique_name():
    for module, table in NODE_PARAMS.items():
        names = [p.name for p in table]
        assert len(names) == len(set(names)), f"{module} declares a name twice"
        for p in table:
            assert p.description.strip(), f"{module}: {p.name} has no description"
        assert "robot_config" in names, f"{module} does not take the robot description"


@pytest.mark.parametrize(
    ("cls", "table"),
    [(KeyframeConfig, CAPTURE_PARAMS), (CaptureConfig, CAPTURE_PARAMS), (QueryConfig, QUERY_PARAMS)],
)
def test_config_dataclass_fields_are_parameters_with_their_docstrings(cls, table):
    by_name = {p.name: p for p in table}
    source = " ".join(inspect.getsource(cls).split())
    for f in dataclasses.fields(cls):
        if f.name == "keyframes":  # the nested KeyframeConfig: its own fields are parameters
            continue
        assert f.name in by_name, f"{cls.__name__}.{f.name} is not a node parameter"
        description = by_name[f.name].description.split(" (ROS: ")[0]
        assert len(description) > 10 and f'"""{description}"""' in source, (f.name, description)
    # the node and the dataclass give the same config when nothing is overridden
    values = {p.name: p.default for p in table}
    rebuilt = cls(**dataclass_kwargs(values, table, cls))
    expected = cls() if cls is not QueryConfig else dataclasses.replace(QueryConfig(), render_width=320)
    assert rebuilt == expected


def test_number_like_string_is_refused_with_a_quoting_hint(make_node):
    node = make_node(output_dir=20250101)  # what ROS makes of `-p output_dir:=20250101`
    with pytest.raises(ValueError, match=r"output_dir must be a string.*quote it"):
        declare_parameters(node, CAPTURE_PARAMS)


def test_declared_types_are_explicit(make_node):
    node = make_node(min_translation_m=1, output_dir="~/scans/20250101", robot_config="~/robot.yaml")
    values = declare_parameters(node, CAPTURE_PARAMS)
    # a double takes an integer and gives a float back
    assert values["min_translation_m"] == 1.0 and isinstance(values["min_translation_m"], float)
    # ~ expanded for path parameters only
    assert not values["output_dir"].startswith("~") and values["output_dir"].endswith("/scans/20250101")
    assert not values["robot_config"].startswith("~")
    assert node.describe_parameter("output_dir").type == ParamType.STRING.value
    assert node.describe_parameter("output_dir").read_only
    assert not node.describe_parameter("min_translation_m").read_only  # tunable while capturing
    # a wrong type on a double is refused too, later as well as at start-up
    result = node.set_parameters([Parameter("min_translation_m", value="far")])[0]
    assert not result.successful and "takes a number" in result.reason


def test_empty_list_default_keeps_its_array_type(make_node):
    node = make_node()
    values = declare_parameters(node, REPLAY_PARAMS)
    assert values["topics"] == [] and values["wait_for"] == []
    assert node.describe_parameter("topics").type == ParamType.STRING_ARRAY.value
    assert node.get_parameter("topics").value == []
    with pytest.raises(ValueError, match="camera_intrinsics must be a double_array"):
        declare_parameters(make_node(camera_intrinsics=["a"]), QUERY_PARAMS)


def test_optional_config_fields_map_sentinels_to_none(make_node):
    values = declare_parameters(make_node(relevance_threshold=0.7), QUERY_PARAMS)
    config = QueryConfig(**dataclass_kwargs(values, QUERY_PARAMS, QueryConfig))
    assert config.relevance_threshold == 0.7 and config.min_similarity is None
    assert config.negatives == QueryConfig().negatives and isinstance(config.negatives, tuple)


# -- the node graph (launch files and `m3 ros-demo`) ------------------------------------------------


def test_number_like_launch_argument_stays_a_string():
    """Regression: `scene_dir:=20250101` reached the capture node as an INTEGER and killed it."""
    capture = {s.name: s for s in load_group("capture", {"scene_dir": "20250101"})}["m3_capture"]
    assert capture.parameters["output_dir"] == "20250101"
    assert 'output_dir:="20250101"' in capture.command()  # quoted: ROS reads -p values as YAML
    replay = load_group("replay", {"bag": "/data/bags/1.0", "rate": "2"})[0]
    assert replay.parameters["bag"] == "/data/bags/1.0" and replay.parameters["rate"] == 2.0


def test_required_argument_is_checked_before_any_node():
    with pytest.raises(ValueError, match="argument bag is required"):
        load_group("replay", {"scene_dir": "/tmp/x"})
    with pytest.raises(ValueError, match="argument memory is required"):
        load_group("query", {})
    with pytest.raises(ValueError, match="takes a double"):
        load_group("replay", {"bag": "/data/bag", "rate": "fast"})


def test_each_group_declares_only_the_arguments_it_uses():
    specs = graph_argument_specs()
    assert all(a.description for a in specs.values())
    assert [a.name for a in group_arguments(["capture"])] == [
        "robot_config", "scene_dir", "publish_static", "camera_reliable"
    ]  # fmt: skip
    assert {a.name for a in group_arguments(["query"])} == {
        "robot_config",
        "memory",
        "text_embeddings",
        "device",
        "require_grasp",
        "publish_static",
    }
    assert [a.name for a in group_arguments(["replay", "capture"]) if a.required] == ["bag"]
    values = {"bag": "/b", "memory": "/m"}
    for group in ("capture", "query", "replay", "replay_loop"):
        for spec in load_group(group, values):  # every parameter names a declared one, typed
            assert spec.parameters.get("robot_config") == "", (group, spec.name)


def test_ros_demo_without_a_required_argument_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "m3_ros.cli", "ros-demo", "query"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "--memory VALUE" in done.stderr
