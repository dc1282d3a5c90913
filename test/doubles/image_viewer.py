"""Test double of another program that watches the camera (a viewer, a recorder): it subscribes to the image
topic with the sensor-data QoS, as image viewers do, and takes every frame until SIGINT.

    python test/doubles/image_viewer.py [TOPIC]
"""

import signal
import sys
import threading

import rclpy
from rclpy.qos import qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

SPIN_PERIOD_S = 0.1


def main() -> int:
    topic = sys.argv[1] if len(sys.argv) > 1 else "/camera/image_raw"
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    node = rclpy.create_node("image_viewer")
    node.create_subscription(Image, topic, lambda message: None, qos_profile_sensor_data)
    while not stop.is_set():
        rclpy.spin_once(node, timeout_sec=SPIN_PERIOD_S)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
