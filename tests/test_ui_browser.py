"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright): the runs list,
the live curve of a run launched from the form, stop and resume, the report, the streamed chat box
and the classifier box. Screenshots go to the test's folder and, when LMFORGE_SCREENSHOT_DIR is
set, are copied there as well."""

import os
import shutil
from pathlib import Path

import pytest
from serving import ServerThread

from lmforge.serve.ui import create_ui

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the networking switches, Chromium keeps trying to reach Google services and its
# connections are refused again and again on a machine without a network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TINY_PRESET = """\
tokenizer: {kind: char}
model: {n_layer: 2, n_head: 2, d_model: 32, context_len: 32}
train: {max_steps: 100000, global_batch_tokens: 256, log_interval: 2, save_interval: 4}
eval: {interval: 20, max_tokens: 2048}
optim: {lr: 3.0e-3}
schedule: {min_lr: 3.0e-4, warmup_steps: 10}
runtime: {compile: "off", precision: fp32}
sample: {num_samples: 1, max_new_tokens: 40}
"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail("Chromium is missing: the browser tests need Debian's chromium package "
                    "(`make test` installs it when run as root; else: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives each browser a fresh temporary profile (--user-data-dir).
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dashboard(trained_runs, tmp_path_factory):
    presets = tmp_path_factory.mktemp("presets")
    (presets / "tiny.yaml").write_text(TINY_PRESET)
    app = create_ui(trained_runs["runs"], presets)
    srv = ServerThread(app)
    srv.presets = presets
    yield srv
    srv.stop()


@pytest.fixture
def page(browser, dashboard, tmp_path, request):
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    shots = []

    def shot(name):
        path = tmp_path / f"{name}.png"
        pg.screenshot(path=str(path), full_page=True)
        shots.append(path)

    pg.shot = shot
    yield pg
    context.close()
    target = os.environ.get("LMFORGE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in shots:
            shutil.copy(path, Path(target) / path.name)


def test_runs_list_shows_finished_runs_and_a_run_page_draws_its_curve(page, dashboard, trained_runs):
    import json

    page.goto(dashboard.url + "/")
    row = page.locator("tr[data-run='lm']")
    assert row.locator(".status").inner_text() == "finished"
    val = json.loads((trained_runs["lm"] / "result.json").read_text())["val_loss"]
    assert f"val loss {val:.4f}" in row.inner_text()
    assert page.locator("tr[data-run='chat']").inner_text().count("chat") >= 2  # name and "(chat)"
    assert "accuracy" in page.locator("tr[data-run='clf']").inner_text()
    page.shot("runs_list")
    row.locator("a").click()
    page.wait_for_function("document.getElementById('chart').dataset.points > 10")
    assert page.locator("#chart svg polyline.line-train").count() == 1
    assert page.locator("#chart svg polyline.line-validation").count() == 1
    page.shot("run_page")
    page.click("#report")
    assert page.locator("h1").inner_text() == "lmforge report: lm"
    page.shot("report")


def test_chat_box_streams_an_answer(page, dashboard):
    page.goto(dashboard.url + "/runs/chat")
    page.fill("#playground textarea", "where does the cat sleep")
    page.click("#playground button")
    page.wait_for_selector("#answer[data-done='1']")
    answer = page.locator("#answer")
    assert not answer.get_attribute("class").endswith("error"), answer.inner_text()
    assert int(answer.get_attribute("data-chunks")) > 1  # streamed, not one block
    assert answer.inner_text().strip()
    page.shot("chat")


def test_classifier_text_box(page, dashboard):
    page.goto(dashboard.url + "/runs/clf")
    page.fill("#classify textarea", "good great fine day")
    page.click("#classify button")
    page.wait_for_selector("#label")
    assert page.locator("#label").inner_text() == "pos"
    assert page.locator("#probabilities tr").count() == 3
    page.shot("classify")


def test_launch_from_the_form_then_stop_resume_and_finish(page, dashboard, trained_runs):
    # The run ends at its time budget, whatever the machine's speed; Stop ends its first half early
    # and Resume continues it from its last checkpoint (one every 4 steps) until the budget is used.
    page.goto(dashboard.url + "/launch")
    page.fill("input[name=name]", "launched")
    page.select_option("select[name=task]", "lm")
    page.fill("input[name=data]", str(trained_runs["corpus"]))
    page.fill("input[name=time]", "20s")
    page.select_option("select[name=mode]", str(dashboard.presets / "tiny.yaml"))
    page.shot("launch_form")
    page.click("#start")
    page.wait_for_url("**/runs/launched")
    # The curve grows while the run trains: points are pushed, the page is not reloaded.
    page.wait_for_function("document.getElementById('chart').dataset.points >= 2", timeout=120_000)
    first = int(page.locator("#chart").get_attribute("data-points"))
    page.wait_for_function(f"document.getElementById('chart').dataset.points > {first}", timeout=60_000)
    assert page.locator("#status").inner_text() == "training"
    page.shot("live_curve")
    page.wait_for_function("document.getElementById('chart').dataset.points >= 6", timeout=60_000)  # step 12
    page.click("#stop")
    try:
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'", timeout=60_000)
    except Exception as e:  # say what the run did (it once ran to its budget instead)
        log = (trained_runs["runs"] / ".ui-logs" / "launched.log").read_text()
        raise AssertionError(f"not stopped: status {page.locator('#status').inner_text()!r}; log:\n{log[-3000:]}") from e
    page.wait_for_selector("#resume")
    page.shot("stopped")
    page.click("#resume")
    page.wait_for_function("document.getElementById('status').textContent === 'finished'", timeout=180_000)
    page.wait_for_selector("#report")
    page.wait_for_function("document.getElementById('chart').dataset.points > 6")
    page.shot("finished")
    run = trained_runs["runs"] / "launched"
    for name in ("result.json", "report.html", "model.safetensors"):
        assert (run / name).is_file(), name
    log = (trained_runs["runs"] / ".ui-logs" / "launched.log").read_text()
    assert "interrupted" in log and log.count("$ ") == 2  # the launch and the resume
    assert "time budget of 20s reached" in log


def test_bad_launch_form_shows_the_error(page, dashboard):
    page.goto(dashboard.url + "/launch")
    page.fill("input[name=name]", "bad")
    page.fill("input[name=data]", "/no/such/file.txt")
    page.click("#start")
    assert "does not exist" in page.locator("#form-error").inner_text()
