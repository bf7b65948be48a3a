"""Drift watch: has a job's routing moved away from the share its router was calibrated to?

A classifier file stores the last-tier share its thresholds were chosen for (at training,
or by `router calibrate`). Traffic that drifts from the data those thresholds were set on
moves that share: the "routing collapse" where a router slowly sends everything to the
frontier (or nothing). A job whose routed last-tier share is further than `margin` from the
calibrated one is flagged, with the command that re-fits the thresholds on its traffic.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DRIFT_MARGIN = 0.10  # of all prompts: a shift this large in the last tier's share is flagged


@dataclass(frozen=True)
class Drift:
    tier: str
    calibrated_share: float
    routed_share: float
    margin: float

    @property
    def drifted(self) -> bool:
        # a hair of tolerance: 4/10 against 0.3 is exactly the margin, not past it
        return abs(self.routed_share - self.calibrated_share) > self.margin + 1e-9

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "calibrated_share": round(self.calibrated_share, 6),
            "routed_share": round(self.routed_share, 6),
            "margin": self.margin,
            "drifted": self.drifted,
        }


def calibrated_share(path: str | Path | None) -> float | None:
    """The last-tier share a classifier file's thresholds were chosen for; None when the
    file is missing, unreadable, or was never calibrated."""
    if not path or not Path(path).is_file():
        return None
    import joblib  # only classifier users pay for it

    try:
        data = joblib.load(path)
    except Exception:  # not loadable: nothing to compare against, and the report goes on
        return None
    calibration = data.get("calibration") if isinstance(data, dict) else None
    share = calibration.get("target_share") if isinstance(calibration, dict) else None
    return float(share) if isinstance(share, int | float) else None


def tier_drift(
    *, tier: str, routed: int, total: int, calibrated: float | None, margin: float = DRIFT_MARGIN
) -> Drift | None:
    """The last tier's drift for a job that routed `routed` of `total` prompts there."""
    if calibrated is None or total <= 0:
        return None
    return Drift(tier, calibrated, routed / total, margin)
