"""Write configs/serve.prod.yaml into k8s/rayservice.yaml's ``serveConfigV2`` block (verbatim, comments kept).

    python scripts/render_k8s.py           # rewrite the block in place
    python scripts/render_k8s.py --check   # exit 1 (and say so) when the manifest is out of date

The RayService must serve exactly the production Serve config; nobody edits the embedded copy by hand.
tests/test_deploy_configs.py runs the check.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "configs" / "serve.prod.yaml"
MANIFEST = ROOT / "k8s" / "rayservice.yaml"
KEY_LINE = "  serveConfigV2: |"  # the literal block scalar under `spec:`
INDENT = "    "


def render(manifest: str, serve_config: str) -> str:
    """``manifest`` with the body of its ``serveConfigV2: |`` block replaced by ``serve_config``.

    The block body is every line after the key line that is indented by at least four spaces, or blank,
    up to the next line indented less (the next key of ``spec``); trailing blank lines stay outside.

    Raises:
        ValueError: the manifest has no, or more than one, ``serveConfigV2: |`` line under ``spec``.
    """
    lines = manifest.splitlines(keepends=True)
    keys = [i for i, line in enumerate(lines) if line.rstrip("\n") == KEY_LINE]
    if len(keys) != 1:
        raise ValueError(f"expected exactly one line {KEY_LINE!r} in the manifest, found {len(keys)}")
    start = end = keys[0] + 1
    while end < len(lines) and (lines[end].startswith(INDENT) or not lines[end].strip()):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    body = [INDENT + line if line.strip() else "\n" for line in serve_config.splitlines(keepends=True)]
    if body and not body[-1].endswith("\n"):
        body[-1] += "\n"
    return "".join(lines[:start] + body + lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if current == wanted:
        return 0
    if args.check:
        print(f"{MANIFEST.relative_to(ROOT)}: serveConfigV2 differs from {SERVE_CONFIG.relative_to(ROOT)}; "
              "run `python scripts/render_k8s.py` to regenerate it", file=sys.stderr)
        return 1
    MANIFEST.write_text(wanted)
    print(f"wrote {SERVE_CONFIG.relative_to(ROOT)} into {MANIFEST.relative_to(ROOT)} (serveConfigV2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
