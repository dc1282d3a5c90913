"""How pointed pixels are lifted to 3D: the depth parameters, each default written once.

The depth noise model: an active stereo or structured-light camera measures depth by disparity, so its
axial noise grows with the square of the distance, sigma(Z) = depth_noise + depth_noise_quadratic * Z^2.
The defaults are those of a RealSense D435 at 848x480: Intel's depth RMS error formula (Grunnet-Jepsen et
al., "Tuning depth cameras for best performance"), Z^2 * subpixel / (focal * baseline), with its typical
subpixel 0.08, a 424 px focal length (848 px across the 90 degrees Intel states) and a 50 mm baseline, gives
0.0038 Z^2; the 1 mm floor is the order of Nguyen, Izadi and Lovell's Kinect model (2012: 1.2 mm + 1.9 mm
(Z - 0.4)^2 per metre squared). Set both for another camera (a D415 at 1280 px is about 0.0015 Z^2).
"""

from dataclasses import dataclass

from molmo_ros.settings_fields import check_setting_bounds, setting, setting_error


@dataclass(frozen=True)
class DepthSettings:
    """How pointed pixels are lifted to 3D; the same for every camera."""

    depth_window: int = setting(
        5,
        "Side in depth-image pixels of the square window around the pointed pixel: its depths near the "
        "pointed pixel's, re-centred on their median, are the pointed surface (their median is the depth); "
        "two or more others (off the surface, or off the plane fitted around the point) show an edge.",
        minimum=1,
        maximum=101,
    )
    depth_noise: float = setting(
        0.001,
        "Depth noise of the camera near zero range, in metres (the constant term of the noise model "
        "sigma(Z) = depth_noise + depth_noise_quadratic * Z^2): window depths within 4 sigma of the "
        "surface are on it, and the normal's plane is fitted to the points within 3 sigma of it.",
        minimum=0.0,
        maximum=1.0,
    )
    depth_noise_quadratic: float = setting(
        0.0038,
        "Growth of the depth noise with distance, per metre (sigma(Z) = depth_noise + "
        "depth_noise_quadratic * Z^2; 0.0038 is a RealSense D435 at 848x480).",
        minimum=0.0,
        maximum=1.0,
    )
    depth_min_support: int = setting(
        3,
        "Window depths (the pixel's own included) that must agree with a pixel's depth for it to count "
        "as a surface; a lone value (a flying pixel between an edge's two sides) is treated as a hole.",
        minimum=1,
        maximum=10201,
    )
    min_depth: float = setting(
        0.1, "Depths nearer than this many metres are ignored (sensor noise).", minimum=0.0, maximum=1000.0
    )
    max_depth: float = setting(
        20.0,
        "Depths farther than this many metres are ignored (beyond the sensor's useful range).",
        minimum=0.0,
        maximum=1000.0,
    )
    depth_search_radius: int = setting(
        10,
        "When the pointed pixel has no usable depth, use the nearest surface among the pixels up to this "
        "many rows and columns (depth-image pixels) from it, and say so; 0 disables the search.",
        minimum=0,
        maximum=500,
    )
    normal_radius: int = setting(
        10,
        "Half side, in samples, of the square grid of depth-image pixels whose points on the pointed "
        "surface are fitted with a plane for the surface normal (21 x 21 by default: more samples average "
        "more noise away, at more cost); 0 turns normals off.",
        minimum=0,
        maximum=100,
    )
    normal_size: float = setting(
        0.025,
        "Smallest side, in metres at the surface, of the neighbourhood the normal is fitted over: the grid's "
        "samples are spaced so that it spans this much (adjacent pixels where they span more). A normal's "
        "error is about the depth noise over this width, whatever the range and focal length; a smaller "
        "surface is fitted with its own points only. 0: adjacent pixels always.",
        minimum=0.0,
        maximum=1.0,
    )
    normal_min_points: int = setting(
        10,
        "Fewest surface points the plane fit needs; with fewer the point has no normal.",
        minimum=3,
        maximum=40401,
    )
    normal_max_error: float = setting(
        10.0,
        "Largest expected normal error, in degrees, given the depth noise and how far the surface's points "
        "spread: a thinner or smaller surface gets no normal.",
        minimum=0.0,
        maximum=90.0,
    )
    normal_max_bend: float = setting(
        30.0,
        "Largest angle, in degrees, between the planes of the surface's two sides of the point (beyond "
        "what noise explains) that still gets a normal, their average: a mug 8 cm across bends about 18 "
        "degrees over 2.5 cm; a sharper ridge or the corner between two faces gets none.",
        minimum=0.0,
        maximum=180.0,
    )
    max_depth_skew: float = setting(
        0.05,
        "Seconds the depth frame's stamp may differ from the colour frame's; the nearest within it is used.",
        minimum=0.0,
        maximum=10.0,
    )

    def __post_init__(self) -> None:
        check_setting_bounds(self)
        if not self.min_depth < self.max_depth:
            raise setting_error(
                self,
                f"the nearest depth ({self.min_depth:g} m) must be less than the farthest "
                f"({self.max_depth:g} m)",
                "min_depth",
                "max_depth",
            )
        if self.depth_min_support > self.depth_window**2:
            raise setting_error(
                self,
                f"the support a depth needs ({self.depth_min_support}) cannot exceed the "
                f"{self.depth_window**2} depths of a {self.depth_window}-pixel window; lower it or widen "
                "the window",
                "depth_min_support",
                "depth_window",
            )
