"""Shared benchmark set-up: a random-weight base CLIP folder and a catalog of ≥ N real images.

The images are the Tux Paint stamps plus deterministic variants of them (mirror, small rotation, 90 % crop),
written once to a work folder, so every measurement in one run reads the same files.
"""

import json
import os
import statistics
from pathlib import Path

from PIL import Image, ImageOps

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
VARIANTS = ("orig", "mirror", "rot5", "crop90")


def base_model(workdir: Path, size: str = "base") -> str:
    from serve_app.random_clip import make_random_clip

    folder = workdir / f"clip-random-{size}"
    if not (folder / "model.safetensors").exists():
        make_random_clip(folder, size)
    return str(folder)


def _variant(image: Image.Image, kind: str) -> Image.Image:
    if kind == "mirror":
        return ImageOps.mirror(image)
    if kind == "rot5":
        return image.rotate(5, expand=False)
    if kind == "crop90":
        w, h = image.size
        return image.crop((w // 20, h // 20, w - w // 20, h - h // 20))
    return image


def build_catalog(workdir: Path, n: int) -> Path:
    """Write ``n`` product images and a JSON Lines manifest under ``workdir``; returns the manifest path."""
    from batch_jobs.sample_catalog import sample_products

    manifest = workdir / f"catalog-{n}.jsonl"
    if manifest.exists():
        return manifest
    stamps = sample_products()
    images_dir = workdir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in VARIANTS:
        for row in stamps:
            if len(rows) >= n:
                break
            path = images_dir / f"{row['product_id']}-{kind}.png"
            if not path.exists():
                _variant(Image.open(row["image"]), kind).save(path)
            rows.append(row | {"product_id": f"{row['product_id']}-{kind}", "image": str(path)})
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} images available, asked for {n}")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation (NumPy's default method)."""
    import numpy as np

    return float(np.percentile(values, q))


def summary_ms(samples_s: list[float]) -> dict:
    ms = [1000 * s for s in samples_s]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def served_catalog(workdir: Path, n_products: int, index: str | None = None, dtype: str = "float32"):
    """The base random model, a catalog of ``n_products`` images and an index of it (ingested with Ray Data
    when missing or smaller). Returns ``(model, rows, index, products)``; Ray is left running."""
    from batch_jobs.pipeline import IngestOptions, ingest, init_ray
    from serve_app.index import IndexOpenError, open_index

    workdir.mkdir(parents=True, exist_ok=True)
    model = base_model(workdir)
    manifest = build_catalog(workdir, n_products)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    index = index or str(workdir / f"index-query-{n_products}")
    init_ray()
    try:
        products = open_index(index).count()
    except IndexOpenError:
        products = 0
    if products < n_products:
        products = ingest(str(manifest), index, IngestOptions(model=model, dtype=dtype)).products_in_index
    return model, rows, index, products

