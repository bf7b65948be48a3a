"""The dashboard over real HTTP, on SQLite and PostgreSQL: a route job written into the
ledger through the models, the pages' numbers read back against the database, keyset pages
that cover every row once, the filters, bad input, escaping, the login and the downloads.
(The browser's view is tests/test_ui_browser.py.)"""

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlmodel import Session

from models import FineTune, FineTuneBackend, FineTuneStatus, TrainingFile
from models.tables import ATTEMPTS, PROMPTS
from producer.ui import auth
from tests.helpers.config import write_config
from tests.helpers.ledger_job import LedgerJob, write_route_job
from tests.helpers.services import make_engine
from tests.helpers.ui import as_int, cell, data_ids, link, ui_server

HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
PROMPTS_IN_JOB = 230  # several pages of 50


@pytest.fixture
def engine(database_url: str) -> Any:
    return make_engine(database_url)


@pytest.fixture
def job(engine: Any) -> LedgerJob:
    return write_route_job(engine, PROMPTS_IN_JOB, seed=7, texts={5: HOSTILE, 6: "100% _odd_"})


@pytest.fixture
def ui(tmp_path: Path, database_url: str, use_config: Any, job: LedgerJob) -> Iterator[str]:
    from workers.settings import get_settings

    use_config(
        write_config(
            tmp_path / "ui.toml", base_url="http://127.0.0.1:9/v1", database_url=database_url
        )
    )
    with ui_server(get_settings()) as url:
        yield url


def get(url: str, path: str, **options: Any) -> httpx.Response:
    return httpx.get(url + path, timeout=60, **options)


def scalar(engine: Any, query: Any) -> Any:
    with Session(engine) as session:
        return session.execute(query).scalar_one()


def ids_where(engine: Any, job_id: int, *where: Any) -> list[int]:
    query = select(PROMPTS.c.id).where(PROMPTS.c.job_id == job_id, *where).order_by(PROMPTS.c.idx)
    with Session(engine) as session:
        return list(session.execute(query).scalars())


def walk(url: str, path: str) -> list[int]:
    """Every prompt id the pager shows, following `next` from the first page."""
    seen: list[int] = []
    page = get(url, path)
    while True:
        assert page.status_code == 200, page.text
        seen += data_ids(page.text, "prompt")
        following = link(page.text, "next")
        if following is None:
            return seen
        page = get(url, path.split("?")[0] + following)


def test_job_page_numbers_are_the_databases(ui: str, engine: Any, job: LedgerJob) -> None:
    page = get(ui, f"/ui/jobs/{job.job_id}")
    assert page.status_code == 200
    assert as_int(cell(page.text, 'id="total"')) == PROMPTS_IN_JOB
    # Never computed: the page comes at once and fetches its figures as a fragment.
    fragment = f'data-fragment="/ui/jobs/{job.job_id}/aggregates"'
    assert fragment in page.text
    assert get(ui, f"/ui/jobs/{job.job_id}/aggregates").status_code == 200
    html = get(ui, f"/ui/jobs/{job.job_id}").text  # now inline
    assert fragment not in html
    calls = scalar(engine, select(func.count()).select_from(ATTEMPTS))
    assert as_int(cell(html, 'id="calls"')) == calls
    failed = len(ids_where(engine, job.job_id, PROMPTS.c.status == "failed"))
    assert as_int(cell(html, 'data-status="failed"')) == failed == job.failed
    rate = job.fell_back / PROMPTS_IN_JOB  # every prompt finished (succeeded or failed)
    assert f"{rate * 100:.1f} %" in cell(html, 'id="fallback-rate">fallback rate <strong')
    for tier in ("small", "medium", "frontier"):
        routed = len(ids_where(engine, job.job_id, PROMPTS.c.routed_tier == tier))
        row = re.search(rf'data-tier="{tier}">.*?class="n routed">([^<]*)<', html, re.S)
        assert row is not None and as_int(row.group(1)) == routed
    assert html.count("<svg") >= 6  # progress, statuses, tiers, latency, cost, reasons


def test_jobs_list_shows_progress_and_cost(ui: str, engine: Any, job: LedgerJob) -> None:
    cost = f"${scalar(engine, select(func.sum(PROMPTS.c.cost_usd))):,.4f}"
    for _ in range(100):  # the cost is computed in the background after the first look
        html = get(ui, "/ui/jobs").text
        row = re.search(rf'<tr data-job="{job.job_id}">(.*?)</tr>', html, re.S)
        assert row is not None
        if cost in row.group(1):
            break
        time.sleep(0.1)
    assert cost in row.group(1)
    assert f'<span class="done">{PROMPTS_IN_JOB}</span>' in row.group(1)
    assert 'data-refresh="2"' in html  # the list refreshes itself


def test_keyset_pages_cover_every_row_once(ui: str, engine: Any, job: LedgerJob) -> None:
    assert walk(ui, f"/ui/jobs/{job.job_id}/prompts") == ids_where(engine, job.job_id)
    on_small = walk(ui, f"/ui/jobs/{job.job_id}/prompts?routed=small&fell_back=yes")
    expected = ids_where(
        engine, job.job_id, PROMPTS.c.routed_tier == "small", PROMPTS.c.fell_back.is_(True)
    )
    assert on_small == expected and expected
    # And back: the page before the second one is the first.
    second = get(ui, f"/ui/jobs/{job.job_id}/prompts?after=49")
    previous = link(second.text, "prev")
    assert previous is not None
    first = get(ui, f"/ui/jobs/{job.job_id}/prompts{previous}")
    assert data_ids(first.text, "prompt") == ids_where(engine, job.job_id)[:50]


def test_filters_match_the_database(ui: str, engine: Any, job: LedgerJob) -> None:
    failed = walk(ui, f"/ui/jobs/{job.job_id}/prompts?status=failed")
    assert failed == ids_where(engine, job.job_id, PROMPTS.c.status == "failed")
    frontier = walk(ui, f"/ui/jobs/{job.job_id}/prompts?tier=frontier&fell_back=no")
    assert frontier == ids_where(
        engine, job.job_id, PROMPTS.c.final_tier == "frontier", PROMPTS.c.fell_back.is_(False)
    )
    # Text search: in the prompt or the answer, any case; % and _ are literal.
    assert walk(ui, f"/ui/jobs/{job.job_id}/prompts?q=100%25+_ODD_") == ids_where(
        engine, job.job_id, PROMPTS.c.idx == 6
    )
    answered_on_medium = walk(ui, f"/ui/jobs/{job.job_id}/prompts?q=FROM+MEDIUM")
    assert answered_on_medium == ids_where(engine, job.job_id, PROMPTS.c.final_tier == "medium")


def judge_and_reduce(engine: Any, job_id: int, ids: list[int]) -> None:
    """An older and a newer judge run and training file, as `distillery judge` and `reduce`
    write them: the pages must use only the newest of each."""
    from models.tables import Judgement, JudgeRun, Rejection

    with Session(engine) as session:
        runs = [JudgeRun(job_id=job_id, tier="frontier", model="m", rubric="r", rubric_sha256="x")]
        runs.append(
            JudgeRun(job_id=job_id, tier="frontier", model="m", rubric="r", rubric_sha256="y")
        )
        files = [
            TrainingFile(job_id=job_id, path=f"/tmp/t{n}.jsonl", examples=1, sha256="z")
            for n in range(2)
        ]
        session.add_all([*runs, *files])
        session.flush()
        old_run, new_run = (run.id for run in runs)
        old_file, new_file = (file.id for file in files)
        assert old_run and new_run and old_file and new_file
        for n, prompt_id in enumerate(ids):
            session.add(Judgement(judge_run_id=old_run, prompt_id=prompt_id, score=10))
            session.add(Judgement(judge_run_id=new_run, prompt_id=prompt_id, score=n + 1))
            session.add(Rejection(training_file_id=old_file, prompt_id=prompt_id, reason="refusal"))
        for prompt_id in ids[:3]:
            session.add(
                Rejection(training_file_id=new_file, prompt_id=prompt_id, reason="low_score")
            )
        session.commit()


def test_judge_scores_and_rejections_filter_and_show(ui: str, engine: Any, job: LedgerJob) -> None:
    ids = ids_where(engine, job.job_id, PROMPTS.c.idx < 8)
    judge_and_reduce(engine, job.job_id, ids)
    base = f"/ui/jobs/{job.job_id}/prompts"
    assert walk(ui, base + "?min_score=6") == ids[5:]  # newest run's scores: 1..8
    assert walk(ui, base + "?reason=low_score") == ids[:3]
    assert walk(ui, base + "?reason=refusal") == []  # only the older file said so
    assert walk(ui, base + "?reason=low_score&min_score=3") == ids[2:3]
    page = get(ui, base + "?min_score=8").text
    assert "<th>judge_score</th>" in page and "<th>reject_reason</th>" in page
    assert data_ids(page, "prompt") == ids[7:]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "status must be one of pending, succeeded, failed, cancelled"),
        ("fell_back=maybe", "fell_back must be yes or no"),
        ("after=abc", "after must be a prompt index"),
        ("q=" + "x" * 201, "q: at most 200 characters"),
        ("min_score=high", "min_score must be a number"),
    ],
)
def test_bad_filters_say_what_is_wrong(ui: str, job: LedgerJob, query: str, message: str) -> None:
    page = get(ui, f"/ui/jobs/{job.job_id}/prompts?{query}")
    assert page.status_code == 400
    assert message in page.text.replace("&#39;", "'")


def test_missing_things_are_404_pages(ui: str, job: LedgerJob) -> None:
    for path, message in [
        ("/ui/jobs/999999", "There is no job 999999."),
        ("/ui/prompts/999999", "There is no prompt 999999."),
        ("/ui/fine-tunes/999999", "There is no fine-tune 999999."),
        ("/ui/training/999999/download/train", "There is no training file 999999."),
        ("/ui/nowhere", "Not Found"),
    ]:
        page = get(ui, path)
        assert page.status_code == 404 and message in page.text
        assert page.headers["content-type"].startswith("text/html")


def test_prompts_are_escaped_everywhere(ui: str, engine: Any, job: LedgerJob) -> None:
    (hostile_id,) = ids_where(engine, job.job_id, PROMPTS.c.idx == 5)
    for path in (f"/ui/jobs/{job.job_id}/prompts", f"/ui/prompts/{hostile_id}"):
        page = get(ui, path)
        assert "<script>window.pwned" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page.text
        # And scripts only from the UI itself, were anything to slip through.
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"


def test_a_prompts_page_has_its_calls_and_fallbacks(ui: str, engine: Any, job: LedgerJob) -> None:
    (pid,) = ids_where(engine, job.job_id, PROMPTS.c.fell_back.is_(True))[:1]
    html = get(ui, f"/ui/prompts/{pid}").text
    with Session(engine) as session:
        attempts = session.execute(select(ATTEMPTS).where(ATTEMPTS.c.prompt_id == pid)).all()
    assert data_ids(html, "attempt") == [a.id for a in attempts]
    tiers = re.findall(r'<td class="tier">([^<]*)</td>', html)
    assert tiers == [a.tier for a in attempts]
    assert re.findall(r'<td class="reason">([^<]*)</td>', html) == ["low_confidence"]


def test_training_files_and_fine_tunes(
    ui: str, engine: Any, job: LedgerJob, tmp_path: Path
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": []}\n', encoding="utf-8")
    with Session(engine) as session:
        record = TrainingFile(
            job_id=job.job_id,
            path=str(train),
            examples=1,
            rejected={"too_short": 3, "refusal": 2},
            sha256=hashlib.sha256(train.read_bytes()).hexdigest(),
        )
        run = FineTune(
            backend=FineTuneBackend.LOCAL,
            base_model="SmolLM2-135M",
            training_path=str(train),
            training_sha256=record.sha256,
            status=FineTuneStatus.SUCCEEDED,
            loss_curve=[
                {"step": s, "epoch": s / 10, "train_loss": 2.0 / s, "validation_loss": None}
                for s in range(1, 11)
            ],
            steps_done=10,
            steps_total=10,
        )
        session.add_all([record, run])
        session.commit()
        file_id, run_id = record.id, run.id
    html = get(ui, "/ui/training").text
    assert as_int(cell(html, 'data-reason="too_short"')) == 3
    assert as_int(cell(html, 'data-reason="refusal"')) == 2
    download = get(ui, f"/ui/training/{file_id}/download/train")
    assert download.status_code == 200 and download.content == train.read_bytes()
    assert download.headers["content-disposition"].startswith("attachment")
    missing = get(ui, f"/ui/training/{file_id}/download/validation")
    assert missing.status_code == 404 and "has no validation file" in missing.text
    loss = get(ui, f"/ui/fine-tunes/{run_id}").text
    assert "<polyline" in loss and "0.2000" in loss  # the last step's loss, 2.0 / 10


def test_cli_binds_localhost_by_default() -> None:
    from producer.cli import main

    result = CliRunner().invoke(main, ["ui", "--help"])
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output


# --- login ---------------------------------------------------------------------------------


@pytest.fixture
def keyed_ui(
    tmp_path: Path, database_url: str, use_config: Any, job: LedgerJob, monkeypatch: Any
) -> Iterator[str]:
    from workers.settings import get_settings

    monkeypatch.setenv("DISTILLERY_GATEWAY_KEYS", "key-one, key-two")
    use_config(
        write_config(
            tmp_path / "ui.toml", base_url="http://127.0.0.1:9/v1", database_url=database_url
        )
    )
    with ui_server(get_settings()) as url:
        yield url


def test_with_keys_every_page_asks_for_one(keyed_ui: str, job: LedgerJob) -> None:
    for path in (
        "/ui/jobs",
        f"/ui/jobs/{job.job_id}",
        f"/ui/jobs/{job.job_id}/prompts",
        "/ui/training",
    ):
        page = get(keyed_ui, path, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/ui/login", path
    refused = httpx.post(keyed_ui + "/ui/login", data={"key": "key-three"}, follow_redirects=False)
    assert refused.status_code == 401 and "not one of the gateway" in refused.text
    assert auth.COOKIE not in refused.cookies
    empty = httpx.post(keyed_ui + "/ui/login", data={"key": ""}, follow_redirects=False)
    assert empty.status_code == 401


def test_a_key_logs_in_with_a_cookie_that_is_not_the_key(keyed_ui: str, job: LedgerJob) -> None:
    login = httpx.post(keyed_ui + "/ui/login", data={"key": "key-two"}, follow_redirects=False)
    assert login.status_code == 303 and "key-two" not in login.headers["location"]
    header = login.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/ui" in header
    value = login.cookies[auth.COOKIE]
    assert "key-two" not in value and hashlib.sha256(b"key-two").hexdigest() not in value
    page = get(keyed_ui, f"/ui/jobs/{job.job_id}", cookies={auth.COOKIE: value})
    assert page.status_code == 200 and f"Job {job.job_id}" in page.text
    expiry, _, mac = value.partition(".")
    for forged in (f"{int(expiry) + 1}.{mac}", f"{expiry}.{'0' * len(mac)}", "1.abc", "junk"):
        refused = get(keyed_ui, "/ui/jobs", cookies={auth.COOKIE: forged}, follow_redirects=False)
        assert refused.status_code == 303, forged
    logout = httpx.post(
        keyed_ui + "/ui/logout", cookies={auth.COOKIE: value}, follow_redirects=False
    )
    assert logout.status_code == 303 and 'distillery_ui=""' in logout.headers["set-cookie"]


def test_a_session_expires() -> None:
    from producer.gateway.keys import ApiKeys

    keys = ApiKeys((auth.key_digest("k"),))
    value = auth.session_for(keys, "k", now=1000.0)
    assert value is not None
    assert auth.valid_session(keys, value, now=1000.0 + auth.SESSION_S - 1)
    assert not auth.valid_session(keys, value, now=1000.0 + auth.SESSION_S + 1)
    assert auth.session_for(keys, "not-k") is None


def test_served_and_teacher_answers_side_by_side(ui: str, engine: Any) -> None:
    """A live request and the teacher's shadow answer to it (linked as workers.shadow links
    them), from either prompt's page."""
    from models import Job, JobMode, Prompt, PromptStatus

    messages = [{"role": "user", "content": "Is tea a drink?"}]
    with Session(engine) as session:
        live, shadow = Job(mode=JobMode.LIVE, name="live-x"), Job(mode=JobMode.SHADOW, name="s")
        session.add_all([live, shadow])
        session.flush()
        answered = {"idx": 0, "messages": messages, "status": PromptStatus.SUCCEEDED}
        served = Prompt(
            job_id=live.id, final_tier="small", response="Yes <i>it is</i>.", **answered
        )
        session.add(served)
        session.flush()
        link_to_live = {"live_prompt_id": served.id, "live_job_id": live.id}
        teacher = Prompt(
            job_id=shadow.id,
            final_tier="frontier",
            response="Yes, tea is a drink.",
            meta=link_to_live,
            **answered,
        )
        session.add(teacher)
        session.commit()
        ids = served.id, teacher.id
    for pid in ids:
        html = get(ui, f"/ui/prompts/{pid}").text
        block = re.search(r'id="side-by-side">(.*?)</div>\s*</div>\s*\n', html + "\n", re.S)
        assert block is not None, pid
        sides = re.findall(
            r"<h3>([^<]*)<small>.*?<pre class=\"content\">([^<]*)</pre>", block.group(1), re.S
        )
        assert [(role.strip(), text) for role, text in sides] == [
            ("served (live)", "Yes &lt;i&gt;it is&lt;/i&gt;."),
            ("teacher (shadow)", "Yes, tea is a drink."),
        ]


def test_an_unreachable_database_is_a_503_page(tmp_path: Path, use_config: Any) -> None:
    from workers.settings import get_settings

    nowhere = "postgresql://postgres@127.0.0.1:9/nowhere"  # nothing listens on port 9
    use_config(
        write_config(tmp_path / "ui.toml", base_url="http://127.0.0.1:9/v1", database_url=nowhere)
    )
    with ui_server(get_settings()) as url:
        page = get(url, "/ui/jobs")
    assert page.status_code == 503 and "The database is unreachable" in page.text


def test_distillery_ui_serves_alone(tmp_path: Path, sqlite_url: str) -> None:
    """`distillery ui` as a user starts it: its own process, on 127.0.0.1."""
    import subprocess
    import sys

    from tests.helpers.services import free_port

    engine = make_engine(sqlite_url)
    job = write_route_job(engine, 3, seed=1)
    config = write_config(
        tmp_path / "ui.toml", base_url="http://127.0.0.1:9/v1", database_url=sqlite_url
    )
    port = free_port()
    env = {**os.environ, "DISTILLERY_CONFIG": str(config)}
    env.pop("DISTILLERY_GATEWAY_KEYS", None)
    command = [sys.executable, "-m", "producer.cli", "ui", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert page.status_code == 200 and page.url.path == "/ui/jobs"
        assert f'data-job="{job.job_id}"' in page.text
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert f"dashboard on http://127.0.0.1:{port}/ui" in output
