"""How pointed pixels are lifted to 3D: the depth parameters, each default written once."""

from dataclasses import dataclass

from molmo_ros.settings_fields import check_setting_bounds, setting


@dataclass(frozen=True)
class DepthSettings:
    """How pointed pixels are lifted to 3D; the same for every camera."""

    depth_window: int = setting(
        5,
        "Side in depth-image pixels of the square window around a point whose valid depths are "
        "combined by their median (odd sizes are centred on the pixel under the point).",
        minimum=1,
        maximum=101,
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
        "When the window holds no valid depth, use the valid depth nearest the point among the pixels up "
        "to this many rows and columns (depth-image pixels) from it; 0 disables the search.",
        minimum=0,
        maximum=500,
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
            raise ValueError(
                f"min_depth ({self.min_depth:g} m) must be less than max_depth ({self.max_depth:g} m)"
            )
