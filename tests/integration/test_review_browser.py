"""A reviewer in a real browser: the system Chromium, headless, driven by Selenium against the test
Label Studio. Drag a landmark and submit, mark a point occluded, skip a task in the label stream; then
pull and check what the store holds.

Browsers cannot be downloaded here, so the test uses Debian's ``chromium`` and ``chromium-driver``
(``.ci/run`` installs them). Without them the test is skipped locally and fails under ``CI=true``.
Screen positions come from the editor's own canvas (Konva: each point is a circle named after its
result id, ``lm<i>#<annotation>``), so the drag hits the landmark wherever the editor lays it out.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from annotations.review.client import LabelStudioClient
from annotations.review.convert import parse_annotation
from annotations.review.pull import pull_reviews
from annotations.review.push import push_reviews
from annotations.review.status import review_states
from annotations.store import Store
from tests.conftest import service_missing
from tests.integration.review_helpers import SCHEME, N, project_tasks, setup_store
from tools.labelstudio_server import LabelStudioServer

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")  # fmt: skip
DRAG = (20, -12)  # screen pixels
EDITOR_LOAD_S = 120.0  # the editor takes ~8-15 s to load 68 points on two busy cores

# The editor's canvas: the stage's position on screen, each point's circle and the drawn image.
_POINT_JS = """
const s = Konva.stages[Konva.stages.length - 1];
const r = s.container().getBoundingClientRect();
const c = s.find('Circle').find(c => c.name().startsWith(arguments[0] + '#'));
const p = c.getAbsolutePosition();
const im = s.find('Image')[0].getClientRect();
return [r.left + p.x, r.top + p.y, im.width, im.height];
"""
_CIRCLES_JS = (
    "return window.Konva && Konva.stages.length ? Konva.stages[Konva.stages.length - 1].find('Circle').length : 0"
)


@pytest.fixture(scope="module")
def browser(label_studio: LabelStudioServer) -> Iterator[Any]:
    """A headless system Chromium logged in to the test Label Studio as its admin."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        service_missing("browser", "selenium is not installed (pip install -e '.[dev]')")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        service_missing("browser", f"{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="pipstc-chromium-")
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get(label_studio.url + "/user/login/")
        driver.find_element(By.NAME, "email").send_keys(label_studio.username)
        driver.find_element(By.NAME, "password").send_keys(label_studio.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        _wait(lambda: "/user/login" not in driver.current_url, "the login to finish")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(ready: Any, what: str, budget_s: float = EDITOR_LOAD_S) -> Any:
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what} after {budget_s:.0f} s")


def _button(driver: Any, text: str) -> Any:
    from selenium.webdriver.common.by import By

    found = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]
    return found[0] if found else None


def _pointer(driver: Any, *steps: tuple[str, int, int]) -> None:
    """W3C pointer actions at viewport coordinates: ("move", x, y), ("down"|"up"|"click", 0, 0)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    ab = ActionBuilder(driver, duration=30)
    for kind, x, y in steps:
        if kind == "move":
            ab.pointer_action.move_to_location(x, y)
        elif kind == "down":
            ab.pointer_action.pointer_down()
        elif kind == "up":
            ab.pointer_action.pointer_up()
        else:
            ab.pointer_action.click()
        ab.pointer_action.pause(0.15)
    ab.perform()


def _isolated(landmarks: np.ndarray, k: int) -> list[int]:
    """The ``k`` landmarks farthest from their nearest neighbour (a drag there grabs only that point)."""
    dist = np.linalg.norm(landmarks[:, None] - landmarks[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    return [int(i) for i in np.argsort(-dist.min(axis=1))[:k]]


def _pushed(tmp_path: Path, server: LabelStudioServer, client: LabelStudioClient, title: str
            ) -> tuple[Store, list[str], Any]:  # fmt: skip
    store, ids, access = setup_store(tmp_path, server, n=2)
    report = push_reviews(store, client, ids[:2], round=1, access=access, title=title)
    assert report.pushed == 2
    return store, ids[:2], {t["data"]["sample_id"]: t for t in project_tasks(client, report.project_id)}


def test_a_reviewer_drags_a_landmark_marks_one_occluded_and_submits(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    store, ids, tasks = _pushed(tmp_path, label_studio, client, "browser drag")
    sid = ids[0]
    task = tasks[sid]
    s = store.samples().set_index("sample_id").loc[sid]
    W, H = int(s["width"]), int(s["height"])
    shown = parse_annotation(task["predictions"][0]["result"], SCHEME, W, H).landmarks
    dragged, occluded = _isolated(shown, 2)

    browser.get(f"{label_studio.url}/projects/{store.get_setting('labelstudio.project_id')}/data?task={task['id']}")
    _wait(lambda: browser.execute_script(_CIRCLES_JS) == N, "the editor to show the 68 predicted points")
    x, y, img_w, img_h = browser.execute_script(_POINT_JS, f"lm{dragged}")
    x0, y0 = int(round(x)), int(round(y))
    path = [("move", x0 + DRAG[0] * k // 4, y0 + DRAG[1] * k // 4) for k in range(1, 5)]
    _pointer(browser, ("move", x0, y0), ("down", 0, 0), *path, ("up", 0, 0))
    ox, oy, _, _ = browser.execute_script(_POINT_JS, f"lm{occluded}")
    _pointer(browser, ("move", int(round(ox)), int(round(oy))), ("click", 0, 0))  # select it
    tick = _wait(lambda: browser.find_elements(By.XPATH, "//span[normalize-space(text())='occluded']"),
                 "the per-point 'occluded' choice")  # fmt: skip
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", tick[0])
    tick[0].click()
    _wait(lambda: _button(browser, "Submit"), "the Submit button").click()
    annotation = _wait(lambda: client.annotations(task["id"]), "the annotation to be saved", 60.0)[0]

    report = pull_reviews(store, client)
    assert report.completed == 1
    corrected = store.labels(source="corrected")
    got = corrected.landmarks[0].astype(np.float64)
    saved = parse_annotation(annotation["result"], SCHEME, W, H)
    assert np.abs(got[dragged] - saved.landmarks[dragged]).max() < 1e-3  # the annotation's value, to 1e-3 px
    want = shown[dragged] + np.array([DRAG[0] * W / img_w, DRAG[1] * H / img_h])  # the drag in image pixels
    assert np.abs(got[dragged] - want).max() < 0.5
    others = np.delete(np.arange(N), dragged)
    assert np.abs(got[others] - shown[others]).max() < 1e-3  # the other 67 unchanged
    assert corrected.moved[0].tolist() == [i == dragged for i in range(N)]
    assert corrected.visibility[0][occluded] == 1 and (np.delete(corrected.visibility[0], occluded) == 2).all()


def test_a_reviewer_skips_a_task_in_the_label_stream(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, browser: Any
) -> None:
    store, ids, tasks = _pushed(tmp_path, label_studio, client, "browser skip")
    pid = store.get_setting("labelstudio.project_id")
    browser.get(f"{label_studio.url}/projects/{pid}/data?labeling=1")
    skip = _wait(lambda: browser.execute_script(_CIRCLES_JS) == N and _button(browser, "Skip"), "the Skip button")
    current = browser.execute_script("return window.Htx && window.Htx.task && window.Htx.task.id")
    sid = next(s for s, t in tasks.items() if t["id"] == int(current))
    skip.click()

    def skipped() -> bool:
        listed = client.iter_tasks(pid, include="id,annotations,was_cancelled", fields="all")
        return any(t["id"] == int(current) and any(a.get("was_cancelled") for a in t.get("annotations") or [])
                   for t in listed)  # fmt: skip

    _wait(skipped, "the skip to be saved", 60.0)
    assert pull_reviews(store, client).skipped == 1
    states = review_states(store).set_index("sample_id")
    assert states.at[sid, "status"] == "skipped"
    assert states.at[next(s for s in ids if s != sid), "status"] == "pushed"
