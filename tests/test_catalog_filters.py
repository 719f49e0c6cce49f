"""Catalog manifests (JSON Lines, CSV), the sample catalog, and filter validation."""

import json

import pytest

from serve_app.catalog import ManifestError, read_manifest
from serve_app.filters import FilterError, parse_filters, to_sql


def test_jsonl_rows_validate_and_bad_rows_carry_line_and_reason(tmp_path):
    manifest = tmp_path / "c.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"product_id": "a", "title": "A", "image": "imgs/a.png", "price": 3, "color": "red"}),
        json.dumps({"product_id": 7, "title": "Seven", "image": "s3://bucket/7.jpg"}),
        json.dumps({"product_id": "b", "title": "B", "image": "b.png", "price": -1}),
        json.dumps({"product_id": "c", "title": "C", "image": "c.png", "tags": ["x"]}),
        "[1, 2]",
        "{broken",
        "",
        json.dumps({"product_id": "a", "title": "A again", "image": "https://shop.example/a.png"}),
    ]) + "\n")
    products, bad = read_manifest(str(manifest))
    assert [p.product_id for p in products] == ["7", "a"]
    a = products[1]
    assert a.title == "A again" and a.image == "https://shop.example/a.png"
    assert products[0].image == "s3://bucket/7.jpg"
    reasons = {b.line: b.reason for b in bad}
    assert "price" in reasons[3] and "tags" in reasons[4]
    assert "JSON object" in reasons[5] and "invalid JSON" in reasons[6]
    assert "duplicate" in reasons[1]


def test_relative_images_resolve_against_the_manifest_folder(tmp_path):
    manifest = tmp_path / "c.csv"
    manifest.write_text("product_id,title,image,category,price,material\n1,One,imgs/1.png,kitchen,2.5,steel\n")
    products, bad = read_manifest(str(manifest))
    assert not bad
    assert products[0].image == str(tmp_path / "imgs" / "1.png")
    assert products[0].price == 2.5 and products[0].attributes == {"material": "steel"}


def test_unreadable_or_unknown_manifest_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(str(tmp_path / "missing.jsonl"))
    (tmp_path / "c.parquet").write_bytes(b"")
    with pytest.raises(ManifestError, match="format"):
        read_manifest(str(tmp_path / "c.parquet"))


def test_sample_catalog_reads_captions_and_categories(sample_rows):
    by_id = {r["product_id"]: r for r in sample_rows}
    assert all(r["category"] != "symbols" and not r["image"].endswith("_mirror.png") for r in sample_rows)
    from batch_jobs.sample_catalog import sample_products

    every = {r["product_id"]: r for r in sample_products()}
    assert every["food-fruit-pineapple"]["title"] == "A pineapple."
    assert every["food-fruit-pineapple"]["category"] == "food"
    assert len(every) > 500 and len(by_id) == len(sample_rows)


def test_sample_catalog_missing_package_says_how_to_install(tmp_path):
    from batch_jobs.sample_catalog import SampleCatalogUnavailable, sample_products

    with pytest.raises(SampleCatalogUnavailable, match="apt-get install tuxpaint-stamps-default"):
        sample_products(tmp_path / "nope")


def test_filters_translate_to_sql():
    clauses = parse_filters({"category": ["kitchen", "tools"], "price": {"gte": 5, "lte": 50}, "brand": "O'Neil"})
    assert to_sql(clauses) == ("category IN ('kitchen', 'tools') AND price >= 5.0 AND price <= 50.0 "
                               "AND brand IN ('O''Neil')")
    assert to_sql(parse_filters({})) is None


@pytest.mark.parametrize("filters,field", [
    ({"colour": "red"}, "colour"), ({"price": "cheap"}, "price"), ({"price": {"between": 3}}, "price"),
    ({"category": []}, "category"), ({"category": 5}, "category"), ({"price": {"gte": float("nan")}}, "price"),
    ({"price": True}, "price"),
])
def test_bad_filters_name_the_field(filters, field):
    with pytest.raises(FilterError) as info:
        parse_filters(filters)
    assert info.value.field == field and field in str(info.value)
