"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) against a real gateway process (`distillery serve`, keys set) whose live job
was made by real requests through the router, the simulator's tiers and the ledger. Each
page's numbers are checked against the database; the pages must load nothing from another
origin, run no script a prompt carried, and log no console error.

Screenshots go to the test's directory, and to $DISTILLERY_UI_SCREENSHOTS when it names one
(docs/images holds the ones the docs show: `DISTILLERY_UI_SCREENSHOTS=docs/images pytest
tests/test_ui_browser.py -k sqlite`)."""

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from openai import OpenAI
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import func, select
from sqlmodel import Session

from models import FineTune, FineTuneBackend, FineTuneStatus, TrainingFile
from models.tables import ATTEMPTS, JOBS, PROMPTS
from simulator import RunningSimulator
from tests.helpers.gateway import GatewayProcess
from tests.helpers.routing import CASES, route_config
from tests.helpers.services import IN_CI, make_engine

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
KEY = "ui-test-key"
HOSTILE = "<script>window.pwned = 1</script> [easy] What is <b>bold</b>?"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = "chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        # Debian's chromium: Playwright's own browser download is never used.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def gateway(
    tmp_path: Path, tiered_sim: RunningSimulator, database_url: str, clean_redis: Any
) -> Iterator[GatewayProcess]:
    make_engine(database_url)
    config = route_config(tmp_path, tiered_sim, database_url)
    process = GatewayProcess(config, tmp_path / "gateway.log", DISTILLERY_GATEWAY_KEYS=KEY)
    yield process
    process.stop()


def ask(gateway: GatewayProcess, text: str) -> None:
    client = OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    client.chat.completions.create(model="route", messages=[{"role": "user", "content": text}])


def one(engine: Any, query: Any) -> Any:
    with Session(engine) as session:
        return session.execute(query).scalar_one()


def count_prompts(engine: Any, job_id: int, *where: Any) -> int:
    query = select(func.count()).where(PROMPTS.c.job_id == job_id, *where)
    return int(one(engine, query))


def number(text: str) -> int:
    return int(text.replace(",", "").split()[0])


class Shots:
    """Full-page screenshots: the test's directory, and the docs' when asked for."""

    def __init__(self, directory: Path, publish: bool) -> None:
        self.directory = directory
        self.publish = os.environ.get("DISTILLERY_UI_SCREENSHOTS") if publish else None

    def take(self, page: Any, name: str) -> None:
        path = self.directory / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000  # a page was drawn, not a blank
        if self.publish:
            shutil.copy(path, Path(self.publish) / path.name)


def watch(page: Any, origin: str) -> dict[str, list[str]]:
    """Requests to any other origin (aborted: the dashboard must work offline) and the
    console's errors (a Content-Security-Policy refusal is one)."""
    seen: dict[str, list[str]] = {"foreign": [], "errors": []}

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlsplit(url).netloc != urlsplit(origin).netloc:
            seen["foreign"].append(url)
            request_route.abort()
        else:
            request_route.continue_()

    page.route("**/*", route)
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    return seen


def record_training(engine: Any, job_id: int, directory: Path) -> tuple[int, int, Path]:
    """A training file of the job (its rejections per reason) and a local run's loss curve,
    written into the ledger as the reducer and the trainer write them."""
    train = directory / "train.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    with Session(engine) as session:
        record = TrainingFile(
            job_id=job_id,
            path=str(train),
            examples=1,
            rejected={"too_short": 2, "refusal": 1, "duplicate": 1},
            sha256=digest,
        )
        curve = [
            {"step": s, "epoch": s / 20, "train_loss": 2.4 * 0.9**s, "validation_loss": None}
            for s in range(1, 41)
        ]
        for entry in curve[9::10]:
            entry["validation_loss"] = entry["train_loss"] * 1.1
        run = FineTune(
            backend=FineTuneBackend.LOCAL,
            base_model="SmolLM2-135M-Instruct",
            training_path=str(train),
            training_sha256=digest,
            status=FineTuneStatus.SUCCEEDED,
            examples=1,
            loss_curve=curve,
            steps_done=40,
            steps_total=40,
        )
        session.add_all([record, run])
        session.commit()
        assert record.id is not None and run.id is not None
        return record.id, run.id, train


def test_the_dashboard_in_a_browser(
    gateway: GatewayProcess, database_url: str, browser: Any, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    for text, _, _ in CASES:
        ask(gateway, text)
    ask(gateway, HOSTILE)
    job_id = int(one(engine, select(func.max(JOBS.c.id))))
    shots = Shots(tmp_path, publish=database_url.startswith("sqlite"))
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    seen = watch(page, gateway.url)

    # The login: every page asks for a key first; the key goes in a form, never a URL.
    page.goto(gateway.url + f"/ui/jobs/{job_id}")
    assert page.url.endswith("/ui/login")
    page.fill("input[name=key]", "not-the-key")
    page.click("form.login button")
    assert "not one of the gateway" in page.inner_text("#login-error")
    assert [e for e in seen["errors"] if "401" not in e] == []  # the refusal's status only
    seen["errors"].clear()
    page.fill("input[name=key]", KEY)
    page.click("form.login button")
    page.wait_for_url("**/ui/jobs")
    assert all(KEY not in url for url in [page.url, *seen["foreign"]])
    cookie = next(c for c in page.context.cookies() if c["name"] == "distillery_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]

    # The jobs list, refreshing itself: one more request shows up without a reload.
    row = page.locator(f'tr[data-job="{job_id}"]')
    assert number(row.locator(".done").inner_text()) == len(CASES) + 1
    ask(gateway, "[easy] One more question, please?")
    expect(row.locator(".done")).to_have_text(str(len(CASES) + 2), timeout=15_000)
    shots.take(page, "jobs")

    # The job page: its numbers are the database's.
    page.click(f'tr[data-job="{job_id}"] a')
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    total = count_prompts(engine, job_id)
    assert number(page.inner_text("#total")) == total
    calls = one(
        engine,
        select(func.count()).select_from(ATTEMPTS.join(PROMPTS)).where(PROMPTS.c.job_id == job_id),
    )
    assert number(page.inner_text("#calls")) == calls
    fell_back = count_prompts(engine, job_id, PROMPTS.c.fell_back.is_(True))
    assert f"{fell_back / total * 100:.1f} %" in page.inner_text("#fallback-rate")
    for tier in ("small", "medium", "frontier"):
        routed = count_prompts(engine, job_id, PROMPTS.c.routed_tier == tier)
        final = count_prompts(engine, job_id, PROMPTS.c.final_tier == tier)
        cells = page.locator(f'#tiers tr[data-tier="{tier}"]')
        assert number(cells.locator(".routed").inner_text()) == routed
        assert number(cells.locator(".final").inner_text()) == final
    assert page.locator("svg.chart").count() >= 6
    shots.take(page, "job")

    # The answers: filtered by final tier on the server, and the hostile prompt as text.
    page.click("text=browse the answers")
    page.select_option("select[name=tier]", "frontier")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**tier=frontier**")
    shown = page.locator("#prompts tbody tr").count()
    assert shown == count_prompts(engine, job_id, PROMPTS.c.final_tier == "frontier")
    page.goto(gateway.url + f"/ui/jobs/{job_id}/prompts?q=window.pwned")
    assert page.locator("#prompts tbody tr").count() == 1
    assert "<script>window.pwned = 1</script>" in page.inner_text(".prompt-text")
    assert page.evaluate("window.pwned") is None
    assert page.locator("b", has_text="bold").count() == 0  # markup stays text
    page.goto(gateway.url + f"/ui/jobs/{job_id}/prompts")
    shots.take(page, "answers")

    # A prompt that escalated: every call and its fallback.
    escalated = one(
        engine,
        select(func.min(PROMPTS.c.id)).where(
            PROMPTS.c.job_id == job_id, PROMPTS.c.fell_back.is_(True)
        ),
    )
    page.goto(gateway.url + f"/ui/prompts/{escalated}")
    with Session(engine) as session:
        attempts = session.execute(select(ATTEMPTS).where(ATTEMPTS.c.prompt_id == escalated)).all()
    assert page.locator("#attempts tbody tr").count() == len(attempts) >= 2
    assert page.locator("#attempts td.tier").all_inner_texts() == [a.tier for a in attempts]
    assert page.locator("#fallbacks tbody tr").count() == 1
    shots.take(page, "prompt")

    # Training files and fine-tunes: counts per reason, the download, the loss curve.
    file_id, run_id, train = record_training(engine, job_id, tmp_path)
    page.goto(gateway.url + "/ui/training")
    section = page.locator(f"#file-{file_id}")
    assert number(section.locator('[data-reason="too_short"]').inner_text()) == 2
    with page.expect_download() as download:
        section.locator("a.download").first.click()
    saved = tmp_path / "downloaded.jsonl"
    download.value.save_as(saved)
    assert saved.read_bytes() == train.read_bytes()
    shots.take(page, "training")
    page.goto(gateway.url + f"/ui/fine-tunes/{run_id}")
    assert page.locator("svg.chart polyline").count() == 2  # training and validation loss
    assert page.locator("#loss tbody tr").count() == 40
    shots.take(page, "fine-tune")

    page.click("header .logout button")
    page.wait_for_url("**/ui/login")
    page.goto(gateway.url + "/ui/jobs")
    assert page.url.endswith("/ui/login")
    assert seen["foreign"] == [] and seen["errors"] == []
    assert re.search(r"ui\.js", page.content())  # the one script: the UI's own file
