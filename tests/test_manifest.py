"""Manifest stage functions on their own (no Ray): one shard's parse with repeats marked, resumed rows marked,
bad rows passed through the load stage untouched, and the CLIP geometry read from a model folder's JSON."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batch_jobs.manifest import ALREADY_INDEXED, ROW_SCHEMA, mark_done, parse_shard


def _parse(path: Path, rows_per_block: int = 2) -> pa.Table:
    blocks = list(parse_shard({"shard": np.array([str(path)]), "index": np.array([0])}, rows_per_block))
    assert all(b.num_rows <= rows_per_block and b.schema == ROW_SCHEMA for b in blocks)
    return pa.concat_tables(blocks)


def test_a_product_id_repeated_within_one_shard_keeps_its_last_row(tmp_path, sample_rows):
    image = sample_rows[0]["image"]
    rows = [{"product_id": "a", "title": "first", "image": image}, {"product_id": "b", "title": "b", "image": image},
            {"product_id": "a", "title": "second", "image": image}, {"title": "no id", "image": image},
            {"product_id": "a", "title": "third", "image": image}, {"product_id": "c", "title": "c", "image": image}]
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = _parse(path).to_pylist()
    assert [r["line"] for r in table] == [1, 2, 3, 4, 5, 6]
    errors = {r["line"]: r["error"] for r in table}
    assert errors[1] == errors[3] == f"duplicate product_id; {path} line 5 replaces it"
    assert errors[2] is None and errors[5] is None and errors[6] is None
    assert "product_id" in errors[4]
    assert [r["title"] for r in table if r["error"] is None] == ["b", "third", "c"]


def test_an_unreadable_shard_is_one_bad_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\xff\xfe not utf-8 \xff")
    table = _parse(path).to_pylist()
    assert len(table) == 1 and table[0]["line"] == 0 and table[0]["error"].startswith("cannot read shard")


def test_resumed_rows_are_marked_and_bad_rows_keep_their_reason():
    batch = pa.Table.from_pylist([{"product_id": "a", "error": None}, {"product_id": "b", "error": None},
                                  {"product_id": "a", "error": "duplicate product_id; x line 9 replaces it"},
                                  {"product_id": "c", "error": None}], schema=pa.schema(
        [("product_id", pa.string()), ("error", pa.string())]))
    marked = mark_done(batch, ["a", "zz"]).column("error").to_pylist()
    assert marked == [ALREADY_INDEXED, None, "duplicate product_id; x line 9 replaces it", None]
    assert mark_done(batch, ["nothing"]) is batch


def test_the_load_stage_passes_rows_that_are_bad_already_without_fetching_them(tiny_model, sample_rows):
    from batch_jobs.stages import load_images

    batch = {"product_id": np.array(["good", "bad", None], object),
             "image": np.array([sample_rows[0]["image"], "/would/fail/if/fetched.png", None], object),
             "error": np.array([None, "price must be >= 0", "line is not valid JSON"], object)}
    out = load_images(batch, model=tiny_model)
    assert list(out["error"]) == ["", "price must be >= 0", "line is not valid JSON"]
    assert out["pixels"][0].any() and not out["pixels"][1:].any() and out["phash"][0] != 0


def test_the_clip_geometry_is_read_from_the_model_folder_as_the_processor_reads_it(tiny_model, tmp_path):
    from serve_app.embedding import load_processor
    from serve_app.preprocess import ClipGeometry, geometry_of_folder

    processor = load_processor(tiny_model)
    assert geometry_of_folder(tiny_model) == ClipGeometry.from_processor(processor.image_processor)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "preprocessor_config.json").write_text(json.dumps({"size": 256, "crop_size": 240, "resample": 2,
                                                               "do_center_crop": True}))
    assert geometry_of_folder(str(flat)) == ClipGeometry(256, 240, 2)
    (flat / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 224, "width": 224}}))
    assert geometry_of_folder(str(flat)) is None  # not a shortest-edge resize: the processor's own code runs
    assert geometry_of_folder(str(tmp_path / "missing")) is None


def test_projection_dim_from_the_folder_json_equals_the_loaded_config(tiny_model):
    from serve_app.embedding import load_model_config, projection_dim

    assert projection_dim(tiny_model) == int(load_model_config(tiny_model, check_processor=False).projection_dim)


def test_projection_dim_falls_back_to_transformers_which_names_the_problem(tmp_path):
    from serve_app.embedding import ModelLoadError, projection_dim

    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError):
        projection_dim(str(tmp_path))
