"""How accurate the surface normals and 3D points are on rendered surfaces: prints figures, asserts nothing.

    $MOLMO_ROS_VENV/bin/python bench/normal_accuracy.py [--points 100] [--seed 14]

Normals: planes tilted by 30 degrees (about the image's x axis, its y axis and their diagonal, `--points`
points each in the middle half of the image) with 1 mm of Gaussian depth noise, the issue's case, seen by
a 640x480 camera with f = 600 px (a D435's depth stream), and the 720p and 1080p colour streams of a
D435 (f = 920 and 1380 px), at 0.45 to 1.5 m. For each, the angle between the fitted normal and the
plane's, with three neighbourhoods: 21 x 21 adjacent pixels (normal_radius 10, normal_size 0: what
molmo_ros did before normal_size), 31 x 31 adjacent pixels (normal_radius 15, normal_size 0) and the
defaults (a 21 x 21 grid spanning normal_size = 25 mm), with the mean of the published `normal_error`.

Positions: how far the lifted 3D point lies from the true surface point on the pointed ray, with the
depth taken three ways: the surface's depth (the median of the window's samples on it, the depth at
the seed pixel's centre) along the ray; the fitted plane's depth along the ray; and what molmo_ros
publishes, the surface's depth plus the plane's change of depth from the seed pixel's centre to the ray.
On tilted planes (as above, with and without noise) and on vertical cylinders 6 to 12 cm across, with the
angle of the published normal to the surface's at the point, and how many points got none.
"""

import argparse
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.lifting import lift_points
from molmo_ros.depth.normals import surface_normals
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.surface import pointed_surface

CAMERAS = {"640x480": (640, 480, 600.0), "1280x720": (1280, 720, 920.0), "1920x1080": (1920, 1080, 1380.0)}
DISTANCES = (0.45, 0.6, 1.0, 1.5)
TILT_DEG = 30.0
NOISE_M = 0.001
AXES = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0))
DEFAULTS = DepthSettings()
NEIGHBOURHOODS = {
    "21x21 px": replace(DEFAULTS, normal_radius=10, normal_size=0.0),
    "31x31 px": replace(DEFAULTS, normal_radius=15, normal_size=0.0),
    f"defaults ({DEFAULTS.normal_size * 1000:g} mm)": DEFAULTS,
}
CYLINDERS = ((0.03, 0.5), (0.04, 0.6), (0.04, 0.8), (0.06, 0.6))  # (radius, distance of the axis), metres


def tilted(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """(0, 0, -1), a wall facing the camera, turned by `degrees` about `axis` (Rodrigues' formula)."""
    k = np.asarray(axis) / np.linalg.norm(axis)
    v, angle = np.array([0.0, 0.0, -1.0]), math.radians(degrees)
    return v * math.cos(angle) + np.cross(k, v) * math.sin(angle) + k * np.dot(k, v) * (1 - math.cos(angle))


class Scene:
    """A pinhole camera (principal point at the image centre) and the rays of its pixels' centres."""

    def __init__(self, width: int, height: int, focal: float) -> None:
        self.width, self.height, self.focal = width, height, focal
        self.camera = CameraModel.pinhole(width, height, focal, focal, (width - 1) / 2, (height - 1) / 2)
        self.ray_x = ((np.arange(width) - (width - 1) / 2) / focal)[np.newaxis, :]
        self.ray_y = ((np.arange(height) - (height - 1) / 2) / focal)[:, np.newaxis]

    def ray(self, x: float, y: float) -> np.ndarray:
        """The ray (x, y, 1) of a continuous point (the top-left pixel's centre is 0.5, 0.5)."""
        return np.array(
            [
                (x - 0.5 - (self.width - 1) / 2) / self.focal,
                (y - 0.5 - (self.height - 1) / 2) / self.focal,
                1.0,
            ]
        )

    def plane(self, normal: np.ndarray, distance: float) -> tuple[np.ndarray, Callable, Callable]:
        """Depth of the plane through (0, 0, distance) with `normal`, Z along any ray, and the normal at
        any point."""
        depth = normal[2] * distance / (normal[0] * self.ray_x + normal[1] * self.ray_y + normal[2])
        return depth, lambda ray: normal[2] * distance / float(normal @ ray), lambda point: normal

    def cylinder(self, radius: float, axis_z: float) -> tuple[np.ndarray, Callable, Callable]:
        """Depth of a vertical cylinder whose axis passes through (0, 0, axis_z), 1.5 m behind it elsewhere,
        Z along any ray that meets it (the nearer root of (Z x)^2 + (Z - axis_z)^2 = radius^2), and the
        normal at a point of it."""

        def along(ray_x: np.ndarray) -> np.ndarray:
            a, b, c = ray_x**2 + 1.0, -2.0 * axis_z, axis_z**2 - radius**2
            discriminant = b * b - 4.0 * a * c
            return np.where(discriminant >= 0, (-b - np.sqrt(np.maximum(discriminant, 0.0))) / (2 * a), 1.5)

        depth = np.broadcast_to(along(self.ray_x), (self.height, self.width))
        return (
            depth,
            lambda ray: float(along(np.array(ray[0]))),
            lambda point: np.array([point[0], 0.0, point[2] - axis_z]) / radius,
        )

    def middle_points(self, rng: np.random.Generator, count: int) -> np.ndarray:
        w, h = self.width, self.height
        return rng.uniform([w / 4, h / 4], [3 * w / 4, 3 * h / 4], (count, 2))


def normal_errors(
    scene: Scene, distance: float, settings: DepthSettings, rng: np.random.Generator, count: int
):
    """Angles (degrees) of the fitted normals to the true ones, and the published errors; inf where a
    point got no normal."""
    errors, published = [], []
    for axis in AXES:
        normal = tilted(axis, TILT_DEG)
        depth, _, _ = scene.plane(normal, distance)
        noisy = (depth + rng.normal(0.0, NOISE_M, depth.shape)).astype(np.float32)
        points = scene.middle_points(rng, count)
        for point in lift_points(points, (scene.width, scene.height), noisy, scene.camera, settings):
            if point.normal is None:
                errors.append(math.inf)
                continue
            cosine = min(1.0, abs(float(np.dot(point.normal, normal))))
            errors.append(math.degrees(math.acos(cosine)))
            published.append(point.normal_error)
    return np.array(errors), np.array(published)


def print_normals(points: int, seed: int) -> None:
    print(
        f"normal error (degrees) on planes tilted {TILT_DEG:g} degrees with {NOISE_M * 1000:g} mm of noise, "
        f"{3 * points} points per row: mean / p99 / max, and the share over 2 degrees"
    )
    header = f"{'camera':<10} {'f px':>5} {'Z m':>5}"
    for label in NEIGHBOURHOODS:
        header += f" | {label:^26}"
    print(header + " | published (mean)")
    for camera, (width, height, focal) in CAMERAS.items():
        scene = Scene(width, height, focal)
        for distance in DISTANCES:
            row = f"{camera:<10} {focal:>5.0f} {distance:>5.2f}"
            for settings in NEIGHBOURHOODS.values():
                errors, published = normal_errors(
                    scene, distance, settings, np.random.default_rng(seed), points
                )
                row += (
                    f" | {errors.mean():5.2f} / {np.percentile(errors, 99):5.2f} / {errors.max():5.2f} "
                    f"{np.mean(errors > 2.0) * 100:4.1f} %"
                )
            print(f"{row} | {published.mean():.2f}")
    print()


def position_errors(scene: Scene, surface: tuple, points: np.ndarray) -> dict[str, list[float]]:
    """Millimetres from each variant's 3D point to the true surface point on the pointed ray, and the
    published normal's angle to the true one (degrees; inf where a point got none)."""
    depth, true_z, true_normal = surface
    size = (scene.width, scene.height)
    depth = depth.astype(np.float32)
    lifted = lift_points(points, size, depth, scene.camera, DEFAULTS)
    surfaces = [pointed_surface(depth, x, y, DEFAULTS) for x, y in points]
    normals = surface_normals(depth, scene.camera, (1.0, 1.0), surfaces, DEFAULTS)
    errors: dict[str, list[float]] = {"surface depth": [], "plane": [], "published": [], "normal": []}
    for (x, y), point, found, normal in zip(points, lifted, surfaces, normals, strict=True):
        ray = scene.ray(x, y)
        truth = true_z(ray) * ray
        if normal.plane is None:
            errors["normal"].append(math.inf)
            continue
        errors["surface depth"].append(np.linalg.norm(found.depth * ray - truth) * 1000)
        errors["plane"].append(np.linalg.norm(normal.plane.depth_at(ray) * ray - truth) * 1000)
        errors["published"].append(np.linalg.norm(np.array(point.xyz) - truth) * 1000)
        cosine = min(1.0, abs(float(np.dot(point.normal, true_normal(truth)))))
        errors["normal"].append(math.degrees(math.acos(cosine)))
    return errors


def print_positions(points: int, seed: int) -> None:
    print(
        "3D point error (mm): mean / max, by how the depth along the pointed ray is taken; normal error (deg)"
    )
    print(
        f"{'surface':<37} | {'surface depth':^15} | {'plane':^15} | {'published':^15} | {'normal, none':^19}"
    )
    rng = np.random.default_rng(seed)
    rows = []
    for camera, (width, height, focal) in CAMERAS.items():
        scene = Scene(width, height, focal)
        for noise in (0.0, NOISE_M):
            depth, true_z, true_normal = scene.plane(tilted((0.0, 1.0, 0.0), TILT_DEG), 0.6)
            depth = depth + rng.normal(0.0, 1.0, depth.shape) * noise
            label = f"plane {TILT_DEG:g} deg, 0.6 m, {noise * 1000:g} mm, {camera}"
            surface = (depth, true_z, true_normal)
            rows.append((label, position_errors(scene, surface, scene.middle_points(rng, points))))
    scene = Scene(*CAMERAS["640x480"])
    for radius, axis_z in CYLINDERS:
        depth, true_z, true_normal = scene.cylinder(radius, axis_z)
        depth = depth + rng.normal(0.0, NOISE_M, depth.shape)
        # across the cylinder's middle 70 % (its rim is seen edge-on), anywhere within the pixel
        surface_z = axis_z - radius
        xs = rng.uniform(-0.7, 0.7, points) * radius / surface_z * scene.focal + scene.width / 2
        points_px = np.stack([xs, rng.uniform(200.0, 280.0, points)], axis=1)
        label = f"cylinder {radius * 200:g} cm across at {axis_z:g} m, 1 mm"
        rows.append((label, position_errors(scene, (depth, true_z, true_normal), points_px)))
    for label, errors in rows:
        *positions, angles = errors.values()
        fitted = [angle for angle in angles if math.isfinite(angle)]
        cells = " | ".join(f"{np.mean(values):6.2f} / {np.max(values):5.2f}" for values in positions)
        none = len(angles) - len(fitted)
        print(f"{label:<37} | {cells} | {np.mean(fitted):5.2f} / {np.max(fitted):5.2f}, {none:3d}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100, help="points per tilt axis (normals) or surface")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    print_normals(args.points, args.seed)
    print_positions(args.points, args.seed)


if __name__ == "__main__":
    main()
