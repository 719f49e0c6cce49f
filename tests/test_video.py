"""Video search: decoding, frame dedup and fusion alone, then the whole graph over HTTP.

Real media: Debian's opencv-doc clips (box.mp4, cup.mp4, vtest.avi) and clips synthesised from catalog
images with the FFmpeg in imageio-ffmpeg, whose shots and times are known.
"""

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest

from serve_app.frame_dedup import dedup_frames, frame_hashes
from serve_app.fusion import fuse
from serve_app.phash import hamming_distance
from serve_app.video import NoFramesError, VideoDecodeError, VideoLimitError, decode_and_sample, sample_times

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")


def _opencv_clip(name: str) -> bytes:
    matches = list(OPENCV_DOC.rglob(name))
    if not matches:
        pytest.skip(f"{name} not found: apt-get install opencv-doc")
    data = matches[0].read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def test_sample_times():
    assert sample_times(10.0, 1.0) == [float(i) for i in range(10)]
    assert sample_times(2.2, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert sample_times(0.01, 1.0) == [0.0]


def test_real_hand_held_clip_is_sampled_at_the_requested_rate():
    clip = decode_and_sample(_opencv_clip("box.mp4.gz"), fps=1.0)
    assert clip.duration_s == pytest.approx(456 / 29.966, abs=0.05)  # 456 frames at 29.97 fps
    assert len(clip.frames) == 16 and clip.times[:3] == pytest.approx([0.0, 1.0, 2.0], abs=0.02)
    assert min(clip.frames[0].shape[:2]) == 224 and clip.frames[0].dtype == np.uint8
    avi = decode_and_sample(_opencv_clip("vtest.avi"), fps=0.5)
    assert len(avi.frames) == 40 and avi.native_fps == pytest.approx(10.0)


def test_frames_follow_the_model_geometry_and_are_prepared_in_the_decoding_stage():
    """A SigLIP-384-like model (squash to 384×384, no crop): frames decode with a 384-px short side and leave the
    decoding stage as the model's uint8 input, equal to what the catalog's photos get (clip_batch); without a
    geometry, 224-px frames go on raw, as before."""
    from PIL import Image

    from serve_app.preprocess import ClipGeometry, clip_batch
    from serve_app.video_query import sample_video

    data = _opencv_clip("box.mp4.gz")
    geometry = ClipGeometry(size=384, crop=384, resize="squash")
    query = sample_video(data, fps=1.0, geometry=geometry)
    assert query.frames is None and query.pixels.shape == (query.frames_kept, 3, 384, 384)
    frames = decode_and_sample(data, fps=1.0, short_side=384).frames
    assert min(frames[0].shape[:2]) == 384
    kept = [frames[i] for i, t in enumerate(decode_and_sample(data, fps=1.0).times) if t in query.times]
    np.testing.assert_array_equal(query.pixels, clip_batch([Image.fromarray(f) for f in kept], geometry))
    plain = sample_video(data, fps=1.0)
    assert plain.pixels is None and min(plain.frames.shape[1:3]) == 224 and plain.times == query.times


def test_limits_and_bad_bytes():
    data = _opencv_clip("cup.mp4.gz")
    with pytest.raises(VideoLimitError, match="5 s"):
        decode_and_sample(data, fps=1.0, max_duration_s=5)
    with pytest.raises(VideoLimitError, match="limit is 4 frames"):
        decode_and_sample(data, fps=1.0, max_frames=4)
    with pytest.raises(VideoDecodeError):
        decode_and_sample(b"\x00\x01garbage" * 100)
    with pytest.raises(VideoDecodeError):
        decode_and_sample(b"")
    with pytest.raises((NoFramesError, VideoDecodeError)):
        decode_and_sample(data[:4000])  # header only: opens or not, but yields no frames


def _frame_with_bits(bits: int) -> np.ndarray:
    """An 8×8 block image whose pHash-relevant structure is set by ``bits`` (used only for dedup inputs)."""
    rng = np.random.default_rng(bits)
    return np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((32, 32, 1))).astype(np.uint8)


def test_dedup_keeps_frames_farther_than_the_threshold_from_every_kept_frame():
    # Known distances: h1 is 3 bits from h0, h2 is 9 bits from h0 and 12 from h1, h3 repeats h2 exactly.
    h0 = 0b1010_1100
    h1 = h0 ^ 0b111
    h2 = h0 ^ (0b1_1111_1111 << 20)
    hashes = [h0, h1, h2, h2, h0 ^ (1 << 63)]
    assert [hamming_distance(hashes[0], h) for h in hashes] == [0, 3, 9, 9, 1]
    assert dedup_frames(hashes, max_distance=8) == [0, 2]
    assert dedup_frames(hashes, max_distance=2) == [0, 1, 2]
    assert dedup_frames(hashes, max_distance=0) == [0, 1, 2, 4]
    with pytest.raises(ValueError):
        dedup_frames(hashes, max_distance=65)


def test_dedup_on_frames_drops_exact_repeats():
    frames = [_frame_with_bits(1), _frame_with_bits(1), _frame_with_bits(2), _frame_with_bits(1)]
    hashes = frame_hashes(frames)
    assert hashes[0] == hashes[1] == hashes[3] and hamming_distance(hashes[0], hashes[2]) > 8
    assert dedup_frames(hashes, 8) == [0, 2]


def _hit(pid: str, score: float) -> dict:
    return {"product_id": pid, "score": score, "title": pid}


def test_max_fusion_prefers_products_seen_in_more_frames_at_equal_best_score():
    per_frame = [[_hit("a", 0.9), _hit("b", 0.5)], [_hit("b", 0.9), _hit("c", 0.2)], [_hit("b", 0.4)]]
    fused = fuse(per_frame, [0.0, 1.0, 2.0], k=3)
    assert [r["product_id"] for r in fused] == ["b", "a", "c"]
    assert fused[0]["score"] == 0.9 and [f["t"] for f in fused[0]["frames"]] == [0.0, 1.0, 2.0]
    assert fused[1]["frames"] == [{"t": 0.0, "score": 0.9}]


def test_rrf_fusion_formula():
    per_frame = [[_hit("a", 0.9), _hit("b", 0.8)], [_hit("b", 0.7), _hit("a", 0.1)], [_hit("c", 0.95)]]
    fused = {r["product_id"]: r for r in fuse(per_frame, [0, 1, 2], k=3, method="rrf")}
    assert fused["a"]["score"] == pytest.approx(1 / 61 + 1 / 62, abs=1e-6)
    assert fused["b"]["score"] == pytest.approx(1 / 62 + 1 / 61, abs=1e-6)
    assert fused["c"]["score"] == pytest.approx(1 / 61, abs=1e-6)
    with pytest.raises(ValueError):
        fuse(per_frame, [0, 1, 2], k=3, method="mean")


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, clear_video_rows, clip_vectors, catalog_vectors):
    """A clip of 3 catalog products (2, 3 and 2.5 s) whose frames are far apart in pHash, and whose max-fused
    exact k-NN answer, computed here from the same frames, ranks exactly those 3 first by a clear margin."""
    from batch_jobs.make_clip import make_clip, shot_frame
    from serve_app.images import decode_image

    candidates = clear_video_rows(6)
    hashes = frame_hashes([shot_frame(decode_image(Path(r["image"]).read_bytes())) for r in candidates])
    ids = list(catalog_vectors)
    matrix = np.stack([catalog_vectors[i] for i in ids])  # [N, D]
    path = tmp_path_factory.mktemp("clips") / "three-products.mp4"
    for trio in itertools.combinations(range(len(candidates)), 3):
        if not all(hamming_distance(hashes[i], hashes[j]) > 16 for i, j in itertools.combinations(trio, 2)):
            continue
        rows = [candidates[i] for i in trio]
        shots = make_clip(path, [r["image"] for r in rows], [2.0, 3.0, 2.5])
        fused = (clip_vectors(path)[1] @ matrix.T).max(axis=0)  # [N]: each product's best frame (max fusion)
        order = np.argsort(-fused)
        top = {ids[i] for i in order[:3]}
        if top == {r["product_id"] for r in rows} and fused[order[2]] - fused[order[3]] >= clear_video_rows.margin / 2:
            return path, rows, shots
    pytest.fail("no trio of clear rows gives a clip whose 3 products lead by a clear margin")


def test_synthesised_clip_finds_its_products_with_frame_times_inside_their_shots(http, synthesized):
    path, rows, shots = synthesized
    response = http.post("/search/video", files={"file": ("clip.mp4", path.read_bytes(), "video/mp4")},
                         data={"k": "5", "fps": "1.0"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frames_sampled"] == 8 and body["duration_s"] == pytest.approx(7.5, abs=0.1)
    assert abs(body["frames_kept"] - len(shots)) <= 1
    assert set(body["took_ms"]) >= {"decode", "dedup", "encode", "retrieve", "total"}
    top = [r["product_id"] for r in body["results"][:3]]
    assert set(top) == {r["product_id"] for r in rows}
    for result in body["results"][:3]:  # each product's best frame lies inside the shot that filmed it
        start, end = shots[[r["product_id"] for r in rows].index(result["product_id"])]
        best = max(result["frames"], key=lambda f: f["score"])
        assert start <= best["t"] < end and best["score"] == pytest.approx(result["best_score"])
        assert result["score"] == pytest.approx(result["best_score"])


def test_rrf_fusion_over_http_ranks_the_product_of_a_single_product_clip_first(http, clear_video_rows, tmp_path):
    from batch_jobs.make_clip import make_clip

    row = clear_video_rows(1)[0]
    path = tmp_path / "one.mp4"
    make_clip(path, [row["image"]], 3.0)
    body = http.post("/search/video", files={"file": ("one.mp4", path.read_bytes(), "video/mp4")},
                     data={"k": "5", "fusion": "rrf"}).json()
    assert body["fusion"] == "rrf" and body["frames_sampled"] == 3 and body["frames_kept"] == 1
    assert body["results"][0]["product_id"] == row["product_id"]
    assert body["results"][0]["score"] == pytest.approx(1 / 61, abs=1e-6)  # rank 1 in the one kept frame
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)


def test_real_video_over_http_with_filters(http, sample_rows):
    category = sample_rows[0]["category"]
    response = http.post("/search/video", files={"file": ("box.mp4", _opencv_clip("box.mp4.gz"), "video/mp4")},
                         data={"k": "4", "filters": f'{{"category": "{category}"}}'})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frames_sampled"] == 16 and 1 <= body["frames_kept"] <= 16
    assert len(body["results"]) == 4 and all(r["category"] == category for r in body["results"])
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)


@pytest.mark.parametrize("name,kwargs,status,code", [
    ("not a video", {"files": {"file": ("x.mp4", b"\x00garbage" * 64)}}, 415, "unsupported_media_type"),
    ("empty", {"files": {"file": ("x.mp4", b"")}}, 415, "unsupported_media_type"),
    ("too many frames", {"files": {"file": ("v.avi", "vtest.avi")}, "data": {"fps": "2"}}, 422,
     "video_limit_exceeded"),
    ("max_frames over the limit", {"files": {"file": ("v.mp4", "box.mp4.gz")}, "data": {"max_frames": "5000"}},
     422, "video_limit_exceeded"),
    ("max_frames below the clip", {"files": {"file": ("v.mp4", "box.mp4.gz")}, "data": {"max_frames": "3"}}, 422,
     "video_limit_exceeded"),
    ("fps zero", {"files": {"file": ("v.mp4", "box.mp4.gz")}, "data": {"fps": "0"}}, 422, "invalid_request"),
    ("bad fusion", {"files": {"file": ("v.mp4", "box.mp4.gz")}, "data": {"fusion": "avg"}}, 422, "invalid_request"),
    ("no file", {"data": {"k": "3"}}, 422, "invalid_request"),
])
def test_bad_video_input_gets_a_json_error_and_the_service_keeps_serving(http, name, kwargs, status, code):
    files = kwargs.get("files")
    if files and isinstance(files["file"][1], str):
        files = {"file": (files["file"][0], _opencv_clip(files["file"][1]))}
    response = http.post("/search/video", files=files, data=kwargs.get("data"))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if status == 422 and code == "video_limit_exceeded":
        assert "limit" in error["message"] or "at most" in error["message"]
    assert http.get("/healthz").status_code == 200


def test_video_upload_over_the_limit_is_413(http):
    response = http.post("/search/video", files={"file": ("big.mp4", b"\0" * (10 * 1024 * 1024))})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
