"""serve_app.model_match: which served model may search which index (the 503 model_index_mismatch rule)."""

from serve_app.model_match import mismatch

CLIP = {"model_id": "clip-b32", "dim": 512, "family": "clip",
        "preprocessing": "shortest224-crop224-bicubic-floor mean=0.4815,0.4578,0.4082 std=0.2686,0.2613,0.2758 "
                         "text=77/longest"}


def test_the_same_model_matches_and_an_index_from_before_families_were_recorded_reads_as_clip():
    assert mismatch(CLIP, dict(CLIP)) is None
    assert mismatch(CLIP, {"model_id": "clip-b32", "dim": 512, "family": "clip", "preprocessing": ""}) is None


def test_another_dimension_family_or_preprocessing_is_named_with_both_models():
    dim = mismatch(CLIP | {"dim": 768}, CLIP)
    assert "512-d" in dim and "768-d" in dim
    family = mismatch(CLIP | {"model_id": "oc-b32", "family": "open_clip"}, CLIP)
    assert "open_clip" in family and "'oc-b32'" in family and "'clip-b32'" in family
    squashed = CLIP["preprocessing"].replace("shortest", "squash")
    pre = mismatch(CLIP | {"model_id": "clip-b32-squash", "preprocessing": squashed}, CLIP)
    assert "squash224" in pre and "shortest224" in pre and "'clip-b32-squash'" in pre


def test_the_index_record_keeps_family_and_preprocessing_and_old_records_read_as_clip():
    from serve_app.index.base import IndexInfo

    info = IndexInfo(model_id="m", dim=768, family="siglip", preprocessing="squash224-crop224-bicubic-floor ...")
    assert IndexInfo.from_record(info.record()) == info
    old = {"model_id": "m", "dim": 512, "weights": "random", "runtime": "torch", "dtype": "float32"}
    assert IndexInfo.from_record(old) == IndexInfo(model_id="m", dim=512, weights="random", family="clip",
                                                   preprocessing="")
    assert IndexInfo(model_id="m", dim=512).record() == old | {"weights": "pretrained"}  # unknown: written as before
