"""A headless Chromium page for console tests: ``tests/console/driver.mjs`` over a pipe.

:class:`Page` sends one JSON command per line and reads one JSON answer; Playwright
does every wait (selectors, URLs, conditions) with its own timeout, so a command
never hangs. :func:`browser_or_skip` says why the browser cannot run here: without
chromium the tests skip; without the npm package they skip too, except in CI
(``CI=true``) or with ``EVENTD_REQUIRE_BROWSER=1``, where that fails
(``.ci/browser-setup.sh`` installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

DRIVER_DIR = Path(__file__).parent / "console"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: docs/console/ with ``EVENTD_CONSOLE_SCREENSHOTS=1`` (to
    refresh the README's pictures), else the test's temporary directory."""
    if os.environ.get("EVENTD_CONSOLE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        return DOCS
    return tmp_path


def browser_or_skip() -> str:
    """chromium's path, or a skip (a failure in CI when only the npm package is missing)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/browser-setup.sh installs it with apt)")
    missing = None
    if not shutil.which("node"):
        missing = "node is not installed"
    elif not (DRIVER_DIR / "node_modules" / "playwright-core").exists():
        missing = "tests/console/node_modules is missing (run .ci/browser-setup.sh)"
    if missing:
        if os.environ.get("CI") == "true" or os.environ.get("EVENTD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"console browser test cannot run: {missing}")
        pytest.skip(missing)
    return chromium


class Page:
    """One browser page on ``origin``; every method is one command to the driver."""

    def __init__(self, chromium: str, origin: str) -> None:
        self.origin = origin
        self.proc = subprocess.Popen(
            ["node", "driver.mjs", chromium, origin],
            cwd=DRIVER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the browser driver exited ({self.proc.poll()}) during {op}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError(answer["error"])
        return answer["value"]

    def goto(self, path: str) -> str:
        return str(self.do("goto", url=path))

    def texts(self, sel: str) -> list[str]:
        return list(self.do("texts", sel=sel))

    def columns(self, rows: str) -> dict[str, str]:
        """First column -> second column of the rows ``rows`` selects."""
        keys = self.texts(f"{rows} td:first-child")
        return dict(zip(keys, self.texts(f"{rows} td:nth-child(2)"), strict=True))

    def wait(self, sel: str, text: str | None = None, state: str = "visible") -> None:
        self.do("wait", sel=sel, text=text, state=state)

    def sign_in(self, token: str) -> None:
        self.goto("/console")
        self.do("waitUrl", path="/console/login")
        self.do("fill", sel="#token", value=token)
        self.do("click", sel="button[type=submit]")
        self.do("waitUrl", path="/console")

    def screenshots(self, name: str, out: Path) -> list[Path]:
        """Full-page pictures at 1280 px and 390 px wide: ``out/NAME-1280.png``, ``-390``."""
        paths = []
        for width in (1280, 390):
            path = out / f"{name}-{width}.png"
            self.do("screenshot", path=str(path), width=width)
            paths.append(path)
        return paths

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
