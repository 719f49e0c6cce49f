"""scripts/setup.sh: the demo gets only what it runs with; the tests (and CI, through scripts/test.sh) get everything.

Runs the script's ``--dry-run``, which prints what a mode wants and changes nothing.
"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_ONLY_DEBIAN = {"chromium", "opencv-doc", "fonts-dejavu-core"}


def _dry_run(*args: str) -> tuple[set[str], str]:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), *args, "--dry-run"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    debian = re.search(r"Debian packages: ([^(]*) \(missing", result.stdout)
    pip_target = re.search(r'pip install -e "([^"]*)"', result.stdout)
    assert debian and pip_target, result.stdout
    return set(debian.group(1).split()), pip_target.group(1)


def test_demo_mode_installs_no_browser_and_no_test_extras():
    debian, pip_target = _dry_run("demo")
    assert debian == {"tuxpaint-stamps-default", "python3-venv"}
    assert pip_target == "."


def test_test_mode_and_the_default_install_everything():
    for args in (("test",), ()):
        debian, pip_target = _dry_run(*args)
        assert debian == {"tuxpaint-stamps-default", "python3-venv"} | TEST_ONLY_DEBIAN
        assert pip_target == ".[test]"


def test_the_entry_points_pick_their_mode():
    assert "bash scripts/setup.sh demo\n" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/setup.sh test\n" in (ROOT / "scripts" / "test.sh").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def test_an_unknown_mode_is_refused():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "prod"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "usage: bash scripts/setup.sh [demo|test]" in result.stderr
