"""Headless Chromium, driven over the DevTools protocol on a pipe: open a local page with no network, record what it
asked for and what it logged, query its DOM, and take PNG screenshots.

Chromium (Debian packages ``chromium`` and ``chromium-driver``) is started with ``--remote-debugging-pipe``: protocol
messages are NUL-terminated JSON on file descriptors 3 (to the browser) and 4 (from it), so no websocket client and
no Python dependency is needed. Network access is cut twice: every proxied request goes to a closed local port and
every host name resolves to nothing; on top of that every request the page makes is recorded, so a test can fail on
any that would have left the machine.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
"""URL schemes that never leave the machine."""


class BrowserUnavailable(RuntimeError):
    """No Chromium binary was found."""


def chromium_path() -> str:
    """The Chromium binary: ``$MODMASK_LENS_CHROMIUM`` or the first of :data:`CHROMIUM_CANDIDATES` that exists."""
    for candidate in (os.environ.get("MODMASK_LENS_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrowserUnavailable(
        "headless Chromium is needed for PNG export and the browser checks; install it with "
        "`apt-get install -y chromium chromium-driver` or set MODMASK_LENS_CHROMIUM to a Chrome/Chromium binary"
    )


@dataclass
class PageRecord:
    """What a page did while it loaded.

    Attributes:
        requests: every URL the page requested (including the page itself).
        console_errors: console messages of level error, uncaught exceptions and browser log errors, as text.
    """

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def network_requests(self) -> list[str]:
        """Requested URLs that would leave the machine (anything but file:, data:, blob: and about:)."""
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


class HeadlessChromium:
    """One headless Chromium with one page, as a context manager.

    Example:
        >>> with HeadlessChromium() as browser:                                   # doctest: +SKIP
        ...     record = browser.open(Path("report.html"))
        ...     browser.evaluate("document.querySelectorAll('.mm-node').length")
        ...     Path("shot.png").write_bytes(browser.screenshot())
    """

    def __init__(self, width: int = 1280, height: int = 900, timeout_s: float = 60.0):
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []

    def __enter__(self) -> HeadlessChromium:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self._profile = tempfile.TemporaryDirectory(prefix="modmask-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        arguments = [
            chromium_path(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--metrics-recording-only",
            "--disable-features=MediaRouter,OptimizationHints,Translate",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--allow-file-access-from-files",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]

        def place_pipes() -> None:
            # Chromium reads fd 3 and writes fd 4. Copy both ends to fds >= 10 first, so that neither overwrites the
            # other. (subprocess cannot renumber fds, and /bin/sh redirections stop at fd 9.)
            reader = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            writer = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(reader, 3)
            os.dup2(writer, 4)

        # close_fds=False: the dup2'ed fds 3 and 4 are inheritable; every other fd of ours is not (PEP 446).
        self._process = subprocess.Popen(
            arguments,
            close_fds=False,
            preexec_fn=place_pipes,  # noqa: PLW1509
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        target = next(
            info["targetId"] for info in self._call("Target.getTargets")["targetInfos"] if info["type"] == "page"
        )
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self._call(f"{domain}.enable", session=True)
        self._call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._call("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def open(self, page: Path, settle_ms: int = 500) -> PageRecord:
        """Load a local HTML file, wait for its load event plus ``settle_ms`` for scripts, and report what it did."""
        self._events.clear()
        self._call("Page.navigate", session=True, url=Path(page).resolve().as_uri())
        self._wait_for_event("Page.loadEventFired")
        self.evaluate(f"new Promise(resolve => setTimeout(resolve, {settle_ms}))", await_promise=True)
        self._drain()
        record = PageRecord()
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                record.requests.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                record.console_errors.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                record.console_errors.append(
                    " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                record.console_errors.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
        return record

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The JSON value of a JavaScript expression in the page; raises if it throws."""
        result = self._call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, selector: str | None = None, scale: float = 1.0, max_height: int | None = None) -> bytes:
        """PNG bytes of the whole page, or of the first element matching ``selector``, cut at ``max_height`` CSS px."""
        if selector is None:
            box = self.evaluate(
                "({x: 0, y: 0, width: document.documentElement.scrollWidth, "
                "height: document.documentElement.scrollHeight})"
            )
        else:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY, "
                "width: r.width, height: r.height}; })()"
            )
        clip = {key: float(value) for key, value in box.items()} | {"scale": scale}
        if max_height is not None:
            clip["height"] = min(clip["height"], float(max_height))
        data = self._call("Page.captureScreenshot", session=True, format="png", clip=clip, captureBeyondViewport=True)[
            "data"
        ]
        return base64.b64decode(data)

    def _call(self, method: str, session: bool = False, **params: Any) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"Chromium refused {method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _wait_for_event(self, method: str) -> None:
        while not any(event.get("method") == method for event in self._events):
            self._events.append(self._read_message())

    def _drain(self) -> None:
        """Collect events already sent, by a round trip the browser answers after them."""
        self._call("Browser.getVersion")

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], self.timeout_s)
            if not ready:
                raise RuntimeError(f"Chromium sent nothing for {self.timeout_s} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash? try running it by hand)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)
