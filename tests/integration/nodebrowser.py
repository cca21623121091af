"""nodebrowser.py - what the browser tests (test_browser.py,
test_browser_mqtt.py) share: Debian's chromium driven by a node script in
tests/browser/, the skip when either is missing, and the npm packages."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import IS_MOSQUITTO, REPO

BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# pytestmark of every browser test file
MARKS = [
    pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz only"),
    pytest.mark.skipif(not shutil.which("node") or not os.access(CHROMIUM, os.X_OK),
                       reason="needs node and chromium (scripts/deps)"),
]


def ensure_node_modules(*packages):
    """npm ci in tests/browser when one of packages is missing (make test
    does it too when the lock changed)."""
    if not all((BROWSER_DIR / "node_modules" / p).is_dir() for p in packages):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=BROWSER_DIR, check=True, timeout=300)


def node_args(script, cfg):
    """The command line and keyword arguments (env) that run
    tests/browser/SCRIPT with cfg (JSON) against CHROMIUM, for
    subprocess.run or Popen."""
    return (["node", str(BROWSER_DIR / script), json.dumps(cfg)],
            {"env": dict(os.environ, CHROMIUM=CHROMIUM)})
