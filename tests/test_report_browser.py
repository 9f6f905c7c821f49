"""The report's HTML in a real headless Chromium: every image loads and the console shows no error.

Chromium (Debian's `chromium`, installed by `make system-deps`) is started by the test with its
own profile folder and driven over the DevTools protocol (aiohttp's websocket client, which
ray[default] already brings); it is stopped by its own process group.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import stop_process
from test_report import SWEEP, write_handmade

from rethink_dist.report import build_report, load_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """A headless Chromium with a DevTools port; :meth:`inspect` loads a page and reports on it."""

    def __init__(self, profile: Path):
        if CHROMIUM is None:
            pytest.fail("chromium is not installed: run `make system-deps` (apt-get install chromium)")
        self.log = open(profile.parent / "chromium.log", "w")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.2)
        self.port = int(port_file.read_text().split()[0])

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()

    def _page_ws(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        return pages[0]["webSocketDebuggerUrl"]

    def inspect(self, url: str, timeout: float = 60) -> dict:
        """Load ``url``; return its images (src prefix, complete, naturalWidth) and the console's errors."""
        return asyncio.run(asyncio.wait_for(self._inspect(url), timeout))

    async def _inspect(self, url: str) -> dict:
        import aiohttp

        errors: list[str] = []
        loaded = asyncio.Event()
        pending: dict[int, asyncio.Future] = {}
        ids = itertools.count(1)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self._page_ws(), max_msg_size=0) as ws:

                async def reader() -> None:
                    async for msg in ws:
                        m = json.loads(msg.data)
                        if "id" in m and m["id"] in pending:
                            pending.pop(m["id"]).set_result(m)
                        elif m.get("method") == "Page.loadEventFired":
                            loaded.set()
                        elif m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert"):
                            errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                                  for a in m["params"]["args"]))
                        elif m.get("method") == "Runtime.exceptionThrown":
                            d = m["params"]["exceptionDetails"]
                            errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
                        elif m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error":
                            errors.append("log: " + m["params"]["entry"]["text"])

                async def call(method: str, **params) -> dict:
                    i = next(ids)
                    pending[i] = asyncio.get_running_loop().create_future()
                    await ws.send_json({"id": i, "method": method, "params": params})
                    reply = await pending[i]
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]

                task = asyncio.create_task(reader())
                for domain in ("Page", "Runtime", "Log"):
                    await call(f"{domain}.enable")
                await call("Page.navigate", url=url)
                await loaded.wait()
                await asyncio.sleep(0.5)  # let late console messages arrive
                js = ("JSON.stringify(Array.from(document.images, i => "
                      "({src: i.src.slice(0, 30), complete: i.complete, width: i.naturalWidth})))")
                res = await call("Runtime.evaluate", expression=js, returnByValue=True)
                title = (await call("Runtime.evaluate", expression="document.title", returnByValue=True))
                task.cancel()
        return {"images": json.loads(res["result"]["value"]), "errors": errors, "title": title["result"]["value"]}

    def text_when(self, url: str, needles: list[str], timeout: float = 90) -> tuple[str, str]:
        """Load ``url`` (a single-page app) and wait until its text holds every needle; (text, final URL)."""
        return asyncio.run(asyncio.wait_for(self._text_when(url, needles, timeout), timeout + 10))

    async def _text_when(self, url: str, needles: list[str], timeout: float) -> tuple[str, str]:
        import aiohttp

        ids = itertools.count(1)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self._page_ws(), max_msg_size=0) as ws:

                async def call(method: str, **params) -> dict:
                    i = next(ids)
                    await ws.send_json({"id": i, "method": method, "params": params})
                    async for msg in ws:  # replies in order; events in between are skipped
                        m = json.loads(msg.data)
                        if m.get("id") == i:
                            return m.get("result", {})
                    raise RuntimeError("DevTools closed the connection")

                await call("Page.navigate", url=url)
                deadline = time.time() + timeout
                text = ""
                while time.time() < deadline:
                    r = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                   returnByValue=True)
                    text = r.get("result", {}).get("value", "") or ""
                    if all(n in text for n in needles):
                        break
                    await asyncio.sleep(1.0)
                where = await call("Runtime.evaluate", expression="location.href", returnByValue=True)
        return text, where.get("result", {}).get("value", "")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def check_report_page(browser: Browser, html: Path, n_figures: int) -> None:
    page = browser.inspect(html.resolve().as_uri())
    assert page["title"].startswith("rethink-dist report")
    assert len(page["images"]) == n_figures > 0
    assert all(i["complete"] and i["width"] > 0 for i in page["images"]), page["images"]
    assert all(i["src"].startswith("data:image/png;base64,") for i in page["images"])
    assert page["errors"] == []


def test_report_html_loads_every_image_without_console_errors(browser, tmp_path):
    folder = write_handmade(tmp_path / SWEEP)
    report = build_report(load_folder(folder), folder / "report")
    check_report_page(browser, report.html, sum(1 for f in report.figures if f.png))


def test_the_check_sees_a_broken_image_and_console_errors(browser, tmp_path):
    """A control: the same inspection on a page with a broken image and errors must see them."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><head><title>x</title><link rel="icon" href="data:,"></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
                    '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    res = browser.inspect(page.as_uri())
    assert [i["width"] for i in res["images"]] == [0, 0]
    assert any("boom" in e for e in res["errors"]) and any("undefinedFunction" in e for e in res["errors"])
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in res["errors"]), res["errors"]


UI_SWEEP = """
NAME = "ui_check"

def trials(data_root=None):
    return [{"optim": {"epochs": 2}, "data": {"max_train": 100}, "name": "ui_run_true"},
            {"optim": {"epochs": 2}, "data": {"max_train": 100}, "corruption": {"kind": "labels", "level": 1.0},
             "name": "ui_run_random"}]
"""


def test_the_mlflow_ui_opens_a_sweep_on_its_runs(browser, mlflow_server, tmp_path):
    """As a user looks: the link the sweep prints opens the experiment of a real `mlflow server` on its
    trial runs (MLflow 3.17 opens an experiment on its GenAI overview, where the runs are not listed,
    unless the link asks for the model-training view)."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "ui_check.py").write_text(UI_SWEEP)
    p = subprocess.run([sys.executable, "-m", "rethink_dist.cli", "sweep", str(tmp_path / "ui_check.py"), "--storage",
                        str(tmp_path / "store"), "--tracking-uri", mlflow_server, "--ray-address", "local",
                        "--num-cpus", "1"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    exp = MlflowClient(mlflow_server).get_experiment_by_name("ui_check")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    link = next(line.split()[-1] for line in p.stdout.splitlines() if line.startswith("MLflow UI:"))
    assert link.startswith(f"{mlflow_server}/#/experiments/{exp.experiment_id}")  # the link the sweep printed
    # The runs table (the sweep's parent run, its two trial runs folded under it), not the GenAI
    # overview ("Observability", traces) where MLflow 3.17 opens an experiment by default.
    text, where = browser.text_when(link, ["Run Name", "3 matching runs"])
    assert "Run Name" in text and "3 matching runs" in text and "ui_check" in text, \
        f"the page at {where} does not list the sweep's runs:\n{text[:1500]}"
    assert "Observability" not in text, f"the page at {where} is the GenAI overview"
    default, _ = browser.text_when(f"{mlflow_server}/#/experiments/{exp.experiment_id}", ["Observability"], timeout=30)
    assert "Observability" in default, "control: without the link's view, MLflow opens the GenAI overview"
