"""workers.settings: a bad config file's error names the place in the file."""

from pathlib import Path

import pytest

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
