"""Headless Chromium for tests, driven over the DevTools protocol (a websocket, aiohttp's client).

Debian's ``chromium`` is used as installed: no browser is downloaded. One page target; what a test needs:
extra request headers (basic auth), navigation, script evaluation, key presses and mouse clicks as real
input events, and screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from skuvid.brokers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEYS = {  # key -> (code, windowsVirtualKeyCode)
    **{c: (f"Key{c.upper()}", ord(c.upper())) for c in "abcdefghijklmnopqrstuvwxyz"},
    **{d: (f"Digit{d}", ord(d)) for d in "0123456789"},
    " ": ("Space", 32),
}


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, proc: subprocess.Popen, session: aiohttp.ClientSession, ws, log_path: Path) -> None:
        self.proc = proc
        self.session = session
        self.ws = ws
        self.log_path = log_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._loads = 0
        self.console: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, work_dir: Path, timeout_s: float = 30.0):
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        work_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log_path = work_dir / "chromium.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--mute-audio", "--disable-extensions",
             "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={work_dir / 'profile'}",
             "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={port}", "--window-size=1280,900",
             "about:blank"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        session = aiohttp.ClientSession()
        browser = None
        try:
            target = await _page_target(session, port, proc, timeout_s)
            ws = await session.ws_connect(target, max_msg_size=64 << 20)
            browser = cls(proc, session, ws, log_path)
            for domain in ("Page", "Network", "Runtime"):
                await browser.send(f"{domain}.enable")
            yield browser
        finally:
            if browser is not None:
                browser._reader.cancel()
                await browser.ws.close()
            await session.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Page.loadEventFired":
                self._loads += 1
            elif data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in
                                             data["params"].get("args", [])))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self.ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        async with asyncio.timeout(30):
            answer = await future
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def headers(self, headers: dict[str, str]) -> None:
        await self.send("Network.setExtraHTTPHeaders", headers=headers)

    async def navigate(self, url: str, timeout_s: float = 20.0) -> None:
        loads = self._loads
        await self.send("Page.navigate", url=url)
        await self.wait_loaded(loads, timeout_s)

    async def wait_loaded(self, loads_before: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._loads <= loads_before:
            if time.monotonic() > deadline:
                raise BrowserError("page did not load")
            await asyncio.sleep(0.05)

    def loads(self) -> int:
        return self._loads

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(BrowserError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not within {timeout_s} s: {what or expression}")
            await asyncio.sleep(0.1)

    async def press(self, key: str) -> None:
        """A key press as the keyboard makes it (keydown with text, keyup) on the focused element."""
        code, vk = KEYS[key]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
        await self.send("Input.dispatchKeyEvent", type="keyDown", text=key, unmodifiedText=key, **common)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element ``selector``."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()")
        if box is None:
            raise BrowserError(f"no element {selector}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                            clickCount=1 if kind != "mouseMoved" else 0)

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


async def _page_target(session: aiohttp.ClientSession, port: int, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BrowserError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                for target in await response.json():
                    if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                        return target["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise BrowserError("chromium's DevTools endpoint did not come up")
        await asyncio.sleep(0.2)
