"""workers.settings: a bad config file's error names the place in the file."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from workers.settings import ConfigError, load_settings


def test_settings_errors_name_the_place(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[tiers.a]\nbase_url = "http://x/v1"\nmodel = "m"\n[teacher]\ntier = "a"\n'
        '[router]\nfallback = ["zzz"]\n'
    )
    with pytest.raises(ConfigError, match=r"unknown tier 'zzz' in \[router\] fallback"):
        load_settings(path)
    path.write_text(
        '[tiers.a]\nbase_url = "http://x/v1"\nmodel = "m"\ncolour = "red"\n[teacher]\ntier = "a"\n'
    )
    with pytest.raises(ConfigError, match=r"tiers\.a\.colour"):
        load_settings(path)


def test_cost_uses_tier_prices() -> None:
    from workers.settings import TierConfig

    tier = TierConfig(base_url="http://x/v1", model="m", input_per_1k=0.5, output_per_1k=1.5)  # type: ignore[arg-type]
    assert tier.cost_usd(1000, 2000) == pytest.approx(3.5)


def test_a_tier_knows_its_own_name() -> None:
    from workers.settings import Settings, TierConfig

    settings = Settings(
        tiers={
            "cheap": {"base_url": "http://x/v1", "model": "a"},
            "best": TierConfig(base_url="http://y/v1", model="b"),  # type: ignore[arg-type]
        },
        teacher={"tier": "best"},
        router={"fallback": ["best"]},
    )
    assert [t.name for t in settings.tiers.values()] == ["cheap", "best"]
    with pytest.raises(ValidationError, match="name is the table's key"):
        Settings(tiers={"cheap": {"base_url": "http://x/v1", "model": "a", "name": "other"}})


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, 256),  # no rpm: the most one worker's loop serves best
        ({"rpm": 1200}, 256),  # 20 a second x 60 s would be 1,200: capped
        ({"rpm": 120, "timeout_s": 30}, 60),  # 2 a second, each open at most 30 s
        ({"rpm": 10}, 16),  # never fewer than 16
        ({"rpm": 10, "concurrency": 4}, 4),  # the config's own figure wins
    ],
)
def test_calls_in_flight_default_follows_rpm_and_timeout(
    settings: dict[str, object], expected: int
) -> None:
    from workers.settings import TierConfig

    tier = TierConfig(base_url="http://x/v1", model="m", **settings)  # type: ignore[arg-type]
    assert tier.calls_in_flight == expected


def test_stream_holdback_tokens_is_unset_or_positive(tmp_path: Path) -> None:
    from workers.settings import GatewayConfig

    assert GatewayConfig().stream_holdback_tokens is None  # hold the whole answer
    assert GatewayConfig(stream_holdback_tokens=8).stream_holdback_tokens == 8
    path = tmp_path / "c.toml"
    path.write_text("[gateway]\nstream_holdback_tokens = 0\n")
    with pytest.raises(ConfigError, match=r"gateway\.stream_holdback_tokens"):
        load_settings(path)
