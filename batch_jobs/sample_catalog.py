"""Build a sample catalog from Debian's ``tuxpaint-stamps-default`` (real photos with English captions).

Each PNG stamp under ``/usr/share/tuxpaint/stamps/<category>/...`` becomes a product: ``title`` is the first
line of the stamp's ``.txt`` (the English caption; the file name when there is none), ``category`` the top
folder, ``subcategory`` the next one. ``symbols/`` (not objects) and ``*_mirror.png`` (mirrored copies of
another stamp) are skipped; SVG stamps are skipped (rendering them needs a separate rasteriser).
``price`` is **synthetic** (a deterministic function of the product id, 1.00–99.99) so price filters
can be tried on the sample; it is not real data.
"""

import hashlib
import json
from pathlib import Path

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
SKIP_TOP = {"symbols"}


class SampleCatalogUnavailable(FileNotFoundError):
    """The Tux Paint stamps are not installed."""


def _caption(png: Path) -> str:
    txt = png.with_suffix(".txt")
    if txt.is_file():
        first = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        if first and first[0].strip():
            return first[0].strip()
    return png.stem.replace("_", " ").replace("-", " ").strip().capitalize()


def _synthetic_price(product_id: str) -> float:
    digest = int.from_bytes(hashlib.sha256(product_id.encode()).digest()[:4], "big")
    return round(1.0 + (digest % 9900) / 100.0, 2)


def sample_products(stamps_dir: Path = STAMPS_DIR, limit: int | None = None) -> list[dict]:
    """Catalog rows for the Tux Paint stamps, sorted by ``product_id``.

    Raises:
        SampleCatalogUnavailable: ``stamps_dir`` is missing (with the apt command that installs it).
    """
    if not stamps_dir.is_dir():
        raise SampleCatalogUnavailable(
            f"{stamps_dir} not found: install the sample images with "
            "`sudo apt-get install tuxpaint-stamps-default` (Debian/Ubuntu)")
    rows = []
    for png in sorted(stamps_dir.rglob("*.png")):
        parts = png.relative_to(stamps_dir).parts
        if parts[0] in SKIP_TOP or png.stem.endswith("_mirror"):
            continue
        product_id = "-".join(parts[:-1] + (png.stem,)).lower().replace("_", "-").replace(" ", "-")
        rows.append({
            "product_id": product_id,
            "title": _caption(png),
            "image": str(png),
            "category": parts[0],
            "subcategory": parts[1] if len(parts) > 2 else parts[0],
            "price": _synthetic_price(product_id),
        })
    return rows[:limit] if limit else rows


def write_sample_catalog(out: Path, stamps_dir: Path = STAMPS_DIR, limit: int | None = None) -> int:
    """Write the sample catalog as JSON Lines to ``out``; returns the number of products."""
    rows = sample_products(stamps_dir, limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
