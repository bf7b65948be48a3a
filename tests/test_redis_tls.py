"""A rediss:// URL that would not verify the server's certificate is refused at start-up
(kombu would connect to anyone), unless the user opts out on purpose."""

from pathlib import Path

import pytest

from tests.helpers.cli import invoke
from workers.errors import ExitCode
from workers.settings import ConfigError, load_settings

PASSWORD = "tls-secret-hunter2"
BASE = f"rediss://:{PASSWORD}@redis.example:6380/0"
VERIFIED = f"{BASE}?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "distillery.toml"
    path.write_text('database_url = "sqlite://"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "url", [BASE, f"{BASE}?ssl_cert_reqs=none", f"{BASE}?ssl_cert_reqs=CERT_OPTIONAL"]
)
def test_unverified_tls_is_refused_and_says_how_to_fix_it(
    url: str, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError, match="ssl_cert_reqs=required") as refused:
        load_settings(config)
    assert PASSWORD not in str(refused.value)


def test_verified_tls_and_plain_redis_load(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (VERIFIED, "redis://127.0.0.1:6379/0"):
        monkeypatch.setenv("REDIS_URL", url)
        assert load_settings(config).redis_url == url


def test_the_opt_out_accepts_it(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", BASE)
    monkeypatch.setenv("REDIS_TLS_INSECURE", "true")
    assert load_settings(config).redis_url == BASE


def test_the_cli_exits_with_bad_config(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.settings import get_settings

    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("REDIS_URL", BASE)
    get_settings.cache_clear()
    try:
        result = invoke("status", "1")
    finally:
        get_settings.cache_clear()
    assert result.exit_code == ExitCode.BAD_CONFIG, result.output
    assert "ssl_cert_reqs" in result.output and PASSWORD not in result.output
