"""Headless Chromium driven over the Chrome DevTools Protocol through a pipe.

``--remote-debugging-pipe`` makes the browser read commands from its file descriptor 3 and
write replies and events to 4, each a JSON message ending in a NUL byte: no port, no
network, no websocket library. Used by tests/test_report.py to open ``harness report``'s
page as a reader would and to check what it renders.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
"""Executables tried in order (Debian's package is ``chromium``)."""


def find_chromium() -> str | None:
    """The path of the first Chromium-family executable on ``PATH``, or None."""
    return next((path for name in NAMES if (path := shutil.which(name))), None)


@dataclass
class Page:
    """What the browser made of one page."""

    errors: list[str]
    """Console errors, uncaught exceptions and resources that failed to load, one line each."""
    value: Any
    """The JSON value of the expression evaluated after the load event."""
    screenshot: bytes
    """PNG of the whole page (not only the window)."""


@dataclass
class Browser:
    """One headless Chromium process (a context manager that closes it); ``open`` pages one
    after another."""

    binary: str
    timeout: float = 60.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="harness-chromium-")
        commands_r, self.commands = os.pipe()
        self.replies, replies_w = os.pipe()
        # numbers from 10 (bash reads any), so that the redirections onto 3 and 4 cannot clash
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, replies_w)]
        for fd in (commands_r, replies_w):
            os.close(fd)
        # --no-sandbox: Chromium's sandbox refuses to start as root, as in CI containers
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 f"--user-data-dir={self.profile.name}", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "about:blank"]
        # chromium's own chatter, read when it fails; closed by close()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        redirect = f"3<&{child[0]} 4>&{child[1]} {child[0]}<&- {child[1]}>&-"
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" {redirect}', self.binary, *flags],
            pass_fds=child, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )
        for fd in child:
            os.close(fd)
        self.buffer, self.next_id = b"", 0

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply; events received meanwhile are kept."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise TimeoutError(f"no reply from {self.binary} in {self.timeout} s")
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise RuntimeError(f"{self.binary} exited: {self.log.read()[-2000:]!r}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, session: str) -> None:
        while not any(e.get("method") == method and e.get("sessionId") == session
                      for e in self.events):
            self.events.append(self.receive())

    def open(self, url: str, expression: str, width: int = 1280) -> Page:
        """Load ``url`` in a new tab ``width`` CSS pixels wide, evaluate ``expression`` after
        the load event, take a full-page screenshot and close the tab."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session)
        navigated = self.send("Page.navigate", {"url": url}, session)
        if navigated.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {navigated['errorText']}")
        self.wait_for("Page.loadEventFired", session)
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True},
                           session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating the check failed: {result['exceptionDetails']}")
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                     "scale": 1},
        }, session)
        self.send("Target.closeTarget", {"targetId": target})
        errors = [line for event in self.events if event.get("sessionId") == session
                  if (line := error_line(event))]
        self.events = [e for e in self.events if e.get("sessionId") != session]
        return Page(errors, result["result"].get("value"), base64.b64decode(shot["data"]))

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close")  # if it is gone or stuck, it is killed below
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.commands, self.replies):
            os.close(fd)
        self.log.close()
        self.profile.cleanup()


def error_line(event: dict[str, Any]) -> str | None:
    """One line for an event that reports an error on the page, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return f"uncaught: {details.get('exception', {}).get('description') or details['text']}"
    if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
        return "console." + params["type"] + ": " + " ".join(
            str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        entry = params["entry"]
        return f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip()
    return None


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()
