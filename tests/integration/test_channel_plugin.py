"""A third-party channel, installed as a package, discovered by entry point, end to end."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from channels.plugin import available_channels, configured_channels
from intake311.pipeline import channel_report, running, web_app
from intake311.settings import Settings
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kiosk-channel"
TOKEN = "kiosk-token-0123456789abcdef"
KIOSK = {"kiosks": {"lib-1": "Main Library, 133 Elm Street"}, "token": TOKEN}


@pytest.fixture(scope="module")
def kiosk_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """pip-install the example package into a private directory and put it on sys.path."""
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield
    sys.path.remove(str(target))
    sys.modules.pop("intake311_kiosk", None)


def test_entry_point_is_discovered_and_config_validated(kiosk_installed: None, tmp_path: Path) -> None:
    assert available_channels()["kiosk"] == "intake311_kiosk:KioskChannel"
    with pytest.raises(ValueError) as error:
        configured_channels(Settings(data_dir=tmp_path, channels={"kiosk": {"kiosks": {}, "token": "short"}}))
    message = str(error.value)
    assert "channel kiosk: kiosks:" in message and "token:" in message
    with pytest.raises(ValueError, match=r"unknown channel 'nope'; installed channels: .*kiosk"):
        configured_channels(Settings(data_dir=tmp_path, channels={"nope": {}}))


async def test_channels_command_reports_health(kiosk_installed: None, tmp_path: Path) -> None:
    rows = {
        r["channel"]: r for r in await channel_report(Settings(data_dir=tmp_path, channels={"kiosk": KIOSK}))
    }
    assert rows["kiosk"]["status"] == "healthy"
    assert "1 kiosk(s)" in rows["kiosk"]["detail"]
    rows = {r["channel"]: r for r in await channel_report(Settings(data_dir=tmp_path))}
    assert rows["kiosk"]["status"] == "not configured"


async def test_kiosk_report_reaches_the_department(
    kiosk_installed: None, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        channels={"kiosk": KIOSK},
        kafka={
            "bootstrap_servers": [kafka_bootstrap],
            "topic_prefix": f"kiosk{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2000,
        },
    )
    async with running(settings, ["web", "channels", "normalizer", "router", "sinks"]) as runtime:
        assert runtime.channels is not None and runtime.channels.names == ["kiosk"]
        transport = httpx.ASGITransport(app=web_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
            report = {"kiosk_id": "lib-1", "report_id": "r-1", "text": "Graffiti sprayed on the book drop"}
            forged = await web.post(
                "/channels/kiosk/reports", json=report, headers={"X-Kiosk-Token": "x" * 20}
            )
            assert forged.status_code == 403
            response = await web.post(
                "/channels/kiosk/reports", json=report, headers={"X-Kiosk-Token": TOKEN}
            )
            assert response.status_code == 201, response.text
            ticket = response.json()["ticket"]
            health = (await web.get("/healthz/channels")).json()
            assert health == {"kiosk": {"ok": True, "detail": "1 kiosk(s) configured"}}

        def delivered() -> list[str]:
            file = tmp_path / "departments" / "public-works.jsonl"
            return [line for line in file.read_text().splitlines() if ticket in line] if file.exists() else []

        [line] = await wait_for(delivered, what="the kiosk report in public-works.jsonl")
        assert '"channel":"kiosk"' in line and "Main Library, 133 Elm Street" in line
