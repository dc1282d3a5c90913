"""molmo_ros: point at things named in plain language, from ROS 2, with MolmoE."""

# The generated interface modules (molmo_ros.msg, molmo_ros.srv) may be installed in another
# directory than this source tree (a venv's site-packages, a colcon install space); extending the
# package path lets both halves of the package be imported under one name.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
