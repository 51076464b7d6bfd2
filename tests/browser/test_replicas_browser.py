"""Two replicas of the app on one workspace, in a real browser: two ``streamlit run`` servers whose EXPR_HOME is
the same shared folder see the same runs, jobs and active model, and at most one training job runs per workspace.

Server A trains from its Train page's form; the Train page on server B, opened before the run started and not
touched, must notice A's run by itself and show it live, instead of a form that would start a second one. A third start, from this test process, is refused with ``JobRunning``. When
the run ends both pages show it done; it is activated on A's Models page, and B's Models page and B's Detect
page show the same active model.

Run inside the private network namespace: ``EXPR_SHARED=/work/shared scripts/in_netns.sh .venv/bin/python -m
pytest -q tests/browser/test_replicas_browser.py -p no:cacheprovider``. Screenshots in ``test-artifacts/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.registry import Registry
from expr_core.settings import Settings
from tests.test_train_split import TINY, add_face_samples
from tests.waiting import wait_for

from .conftest import navigate, open_app_page, shared_models_dir
from .test_train_browser import LAST_RUN_DONE, RUN_HEADING, fill_train_form

PER_SESSION = 5  # faces per capture session (3 sessions per label): enough batches for the run to last a while
FORM = {
    "backbone": "mobilenetv3small",
    "image_size": 48,
    "batch_size": 8,
    "epochs_1": 3,
    "epochs_2": 6,
}  # phase 2 keeps the run going for a while
NOTICE_S = 15.0  # B's form page looks for a run started elsewhere every 2 s (one rerun after that may be slow)

# The rows of the Models page's runs table (the current st.dataframe with an "active" column), read from the
# accessible table glide-data-grid keeps inside its canvas; None while there is not exactly one such table.
RUNS_TABLE_JS = """() => {
    const tables = [...document.querySelectorAll('[data-testid="stDataFrame"] table[role="grid"]')]
        .filter(t => !t.closest('[data-stale="true"]'))
        .filter(t => [...t.querySelectorAll('thead th')].some(th => th.textContent.trim() === 'active'));
    if (tables.length !== 1) return null;
    const head = [...tables[0].querySelectorAll('thead th')].map(th => th.textContent.trim());
    return [...tables[0].querySelectorAll('tbody tr')].map(tr => Object.fromEntries(
        [...tr.querySelectorAll('td')].map((td, i) => [head[i], td.textContent.trim()])));
}"""


def run_heading(page) -> str | None:
    """The live section's "Run <id>: queued|running" heading, if the page shows it."""
    heading = page.get_by_role("heading", name=RUN_HEADING)
    return heading.first.inner_text().strip() if heading.count() else None


def shows_bars(page) -> str | None:
    bars = page.get_by_test_id("stProgress")
    return " | ".join(bars.all_inner_texts()) if bars.count() else None


def models_table(page) -> list[dict]:
    return wait_for(lambda: page.evaluate(RUNS_TABLE_JS), 30, "the Models page's table")


def shows_active(page, run_id: str) -> bool:
    """The Models page marks ``run_id`` (the run chosen in its box) as the active model: ● in its row of the table,
    and its Activate button is disabled without asking to confirm an unusable model."""
    rows = {row.get("run"): row for row in models_table(page)}
    activate = page.get_by_role("button", name="Activate")
    return (
        rows.get(run_id, {}).get("active") == "●"
        and [rid for rid, row in rows.items() if row.get("active")] == [run_id]
        and activate.count() == 1
        and activate.is_disabled()
        and page.get_by_text("I understand this model is not usable").count() == 0
    )


@pytest.mark.browser_timeout(300)
def test_two_servers_on_one_workspace_share_runs_jobs_and_the_active_model(
    server_factory, new_page, tmp_path: Path, astronaut_bgr, artifacts: Path, results
):
    shared = tmp_path / "shared-workspace"  # both servers' EXPR_HOME; their stop ends its job workers
    add_face_samples(shared, astronaut_bgr, per_session=PER_SESSION)
    per_label = 3 * PER_SESSION
    began = time.monotonic()
    a = server_factory(extra_env={"EXPR_HOME": str(shared)})
    b = server_factory(extra_env={"EXPR_HOME": str(shared)})
    assert a.workspace == b.workspace == shared and a.url != b.url
    page_a, page_b = new_page(), new_page()

    # -- Both Train pages, on their own servers, show the shared dataset; A gets its form filled in.
    open_app_page(page_a, a.url + "/train", "Train")
    open_app_page(page_b, b.url + "/train", "Train")
    for page in (page_a, page_b):
        page.get_by_text(f"happy: {per_label} · sad: {per_label}").wait_for()
    fill_train_form(page_a, FORM)
    page_b.get_by_role("button", name="Start training").wait_for()
    assert runs.run_ids(shared) == []

    # -- Start on A: A follows its run live.
    page_a.get_by_role("button", name="Start training").click()
    clicked = time.monotonic()
    heading_a = wait_for(lambda: run_heading(page_a), 30, "the live run on A's Train page")
    run_id = runs.active_run(shared)
    assert run_id and runs.run_ids(shared) == [run_id], runs.run_ids(shared)
    assert run_id in heading_a, heading_a
    config = runs.run_config(shared, run_id)
    assert {k: config[k] for k in FORM} == FORM and config["backbone"] == "mobilenetv3small", config
    page_a.screenshot(path=str(artifacts / "01-a-started.png"))

    # -- B's Train page was drawn before the run: it notices A's run by itself, with no click, and shows it live.
    heading_b = wait_for(lambda: run_heading(page_b), NOTICE_S, "A's run on B's untouched Train page")
    assert run_id in heading_b, heading_b
    page_b.screenshot(path=str(artifacts / "02-b-noticed-the-run.png"))
    # (while the rerun draws the live section, the old form stays on the page for a moment, marked stale)
    wait_for(
        lambda: page_b.get_by_role("button", name="Start training").count() == 0, 15, "B's form to go while a job runs"
    )
    assert runs.run_ids(shared) == [run_id], f"a second run was started from B: {runs.run_ids(shared)}"

    # -- A third start, from this process on the same folder, is refused: one training job per workspace.
    settings = Settings(
        workspace=shared,
        models_dir=shared_models_dir() or tmp_path / "no-models",
        cache_dir=tmp_path / "test-cache",
        allow_downloads=False,
    )
    with pytest.raises(runs.JobRunning, match=re.escape(run_id)):
        runs.start_training(settings, TINY)
    assert runs.run_ids(shared) == [run_id]
    live = [f.name for f in runs.runs_dir(shared).glob("*/") if job.worker_alive(f)]
    assert live == [run_id], f"training workers alive in the workspace: {live}"

    # -- B follows the run live (its fragment reads the shared run folder): the epoch bars show up on B too.
    bars_b = wait_for(
        lambda: shows_bars(page_b) or (runs.active_run(shared) is None and "(the run ended first)"),
        150,
        "the progress bars on B's Train page",
    )
    results("b_progress_while_running", bars_b)
    page_b.screenshot(path=str(artifacts / "03-b-follows-a-run.png"), full_page=True)
    page_a.screenshot(path=str(artifacts / "04-a-follows-its-run.png"), full_page=True)
    assert bars_b.startswith("(") or re.search(r"epoch \d+/\d+", bars_b), bars_b

    # -- The run ends: both pages show it done, by themselves.
    for name, page in (("a", page_a), ("b", page_b)):
        done = page.get_by_role("heading", name=LAST_RUN_DONE)
        done.wait_for(timeout=180_000)
        assert LAST_RUN_DONE.match(done.inner_text().strip()).group(1) == run_id
        page.get_by_test_id("stMetric").filter(has_text="Validation accuracy").wait_for()
        done.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / f"05-{name}-done.png"))
    finished = time.monotonic()
    assert [(r.run_id, r.state) for r in Registry(shared).runs()] == [(run_id, "done")]
    wait_for(lambda: not job.worker_alive(runs.run_dir(shared, run_id)), 60, "the training worker to exit")

    # -- Activate it on A's Models page (a tiny model is judged not usable, so it is not active by itself).
    navigate(page_a, "Models", "Models")
    auto_active = Registry(shared).active_id() == run_id
    results("run_became_active_by_itself", auto_active)
    if not auto_active:
        confirm = page_a.get_by_text("I understand this model is not usable")
        if confirm.count():
            confirm.click()
        activate = page_a.get_by_role("button", name="Activate")
        wait_for(lambda: activate.is_enabled(), 15, "A's Activate button to be enabled")
        activate.click()
    wait_for(lambda: Registry(shared).active_id() == run_id, 15, "the run to be the workspace's active model")
    wait_for(lambda: shows_active(page_a, run_id), 30, "A's Models page to mark the run active")
    page_a.screenshot(path=str(artifacts / "06-a-models-active.png"), full_page=True)

    # -- B's Models page and B's Detect page show the same active model.
    navigate(page_b, "Models", "Models")
    wait_for(lambda: shows_active(page_b, run_id), 30, "B's Models page to mark the run active")
    assert models_table(page_b) == models_table(page_a), "the two servers list different runs"
    page_b.screenshot(path=str(artifacts / "07-b-models-active.png"), full_page=True)
    navigate(page_b, "Detect", "Detect", timeout=60)
    page_b.get_by_text(re.compile(rf"^Model {re.escape(run_id)} · labels: happy, sad · input ")).wait_for()
    page_b.screenshot(path=str(artifacts / "08-b-detect-serves-it.png"))

    results("start_to_done_seconds", round(finished - clicked, 1))
    results("replicas_total_seconds", round(time.monotonic() - began, 1))
