"""Test double of a user's program: sends COUNT Point requests at once and reports what came back.

    python test/doubles/burst_client.py COUNT WAIT_S QUERY_PREFIX [default|keep_all] [BURSTS]

With BURSTS (default 1), each burst is sent when every answer to the one before has come (or WAIT_S
has passed). Prints one JSON line over all bursts: {"sent": .., "codes": {code name: count},
"messages": [...], "unanswered": .., "frame_ages_s": [age of the frame of each answer with points]}.
The client's QoS matters for bursts: with rclpy's default (keep last 10) the client's own response reader
may drop answers that arrive faster than its executor takes them, after the node has sent them all.
`keep_all` is what the README recommends to clients that send more than ten requests at once.
"""

import collections
import json
import sys
import threading
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_services_default

from molmo_ros.pointing.errors import ErrorCode
from molmo_ros.srv import Point


def main() -> int:
    count, wait_s = int(sys.argv[1]), float(sys.argv[2])
    prefix = sys.argv[3]
    bursts = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    qos = {
        "keep_all": QoSProfile(history=HistoryPolicy.KEEP_ALL),
        "deep": QoSProfile(depth=1000),
    }.get(sys.argv[4] if len(sys.argv) > 4 else "", qos_profile_services_default)
    rclpy.init()
    node = rclpy.create_node(f"burst_client_{prefix}")
    client = node.create_client(Point, "/molmo/point", qos_profile=qos)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    if not client.wait_for_service(timeout_sec=60):
        print(json.dumps({"error": "no service"}), flush=True)
        return 1
    # wait_for_service only says the node's request reader is matched, not that its answers can reach
    # this client yet. As a precaution, one answered call (an empty query, refused at once) proves both
    # directions before the burst.
    probe = client.call_async(Point.Request(query=""))
    deadline = time.monotonic() + 60
    while not probe.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not probe.done():
        print(json.dumps({"error": "the probe call was never answered"}), flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.readline()  # the test says go, so that several clients send at the same moment
    answered = []
    for burst in range(bursts):
        futures = [client.call_async(Point.Request(query=f"{prefix} {burst}.{i}")) for i in range(count)]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not all(f.done() for f in futures):
            time.sleep(0.01)
        answered += [f.result() for f in futures if f.done()]
    report = {
        "sent": count * bursts,
        "codes": dict(collections.Counter(ErrorCode(r.error_code).name for r in answered)),
        "messages": sorted({r.message for r in answered if not r.success}),
        "unanswered": count * bursts - len(answered),
        "frame_ages_s": [r.result.frame_age_seconds for r in answered if r.success],
    }
    print(json.dumps(report), flush=True)
    executor.shutdown()
    spinner.join(timeout=5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
