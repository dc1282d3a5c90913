"""Depth: pointed pixels to metric 3D points, from a registered depth image and the colour camera's model.

Pure numpy + OpenCV, no ROS import: the node, the pointing service and the `molmo-point` CLI all lift
points the same way, and the arithmetic is tested without DDS. The node and the CLI convert their inputs
(sensor_msgs/Image and CameraInfo, or files) into `images.DepthImage` and `camera.CameraModel` at their
edge. Modules: `settings`, `errors`, `images` (depth buffers), `camera` (CameraModel), `lifting` (pixels
to 3D), `surface` (which depth is the pointed surface's), `normals` (its plane fit), `transforms` (rigid
transforms and approach poses), `pairing` (which depth frame goes with a colour frame), `files` (depth and
calibration files).

Conventions:
- Points come in molmo_ros's continuous pixel coordinates (see geometry.py: pixel column c spans
  [c, c + 1)). OpenCV, CameraInfo and image_geometry put the centre of pixel 0 at 0, so a point x is
  OpenCV coordinate x - 0.5 before undistortion and projection.
- The result is in the colour camera's optical frame (x right, y down, z forward, metres). Z is the depth
  value, the distance along the optical axis (not the range), as depth_image_proc reads it:
  X = (u - cx) Z / fx, Y = (v - cy) Z / fy, with (u, v) the undistorted pixel and fx, fy, cx, cy from P.
- Undistortion follows image_geometry: OpenCV undistortPoints with K, D and P= for plumb_bob and
  rational_polynomial, cv2.fisheye.undistortPoints for equidistant; no distortion is the pinhole model.
  CameraInfo's R is not applied: it rotates into a stereo pair's rectified frame, and the points are wanted
  in the camera's own optical frame (the result's header.frame_id). Likewise P's Tx, Ty (the baseline of a
  stereo pair's second camera) are not applied.
- The depth image is registered to the colour image (same field of view, same pixel grid up to a scale),
  so depth is sampled at the pointed pixel itself, not at its undistorted position.
"""
