"""The web page end to end: headless Debian Chromium, driven by Playwright, against the real Ray Serve app.

Each test opens the page the service serves at ``/``, acts as a shopper would (choose, drop or paste a file,
type, pick a filter) and checks what is shown against an independent answer: the product whose image was
uploaded, the service's own JSON answer, the catalog rows of a category. Every request the page makes is
recorded and must go to the service's origin (no CDN, no fonts, no third-party images). Each mode saves a
screenshot under ``test-artifacts/screenshots/``.
"""

import base64
import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # headless Chromium against the Serve app

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/setup.sh does) to run the page tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def _open(browser, service: str, viewport: dict, route=None):
    """A fresh context and page on the service's page; returns ``(context, page, requests, js_errors)``."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    requests, js_errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    if route:
        page.route(*route)
    page.goto(service + "/")
    page.wait_for_selector("body[data-ready=true]", state="attached")
    return context, page, requests, js_errors


def _check_origin(service: str, requests: list[str], js_errors: list[str]) -> None:
    assert requests and requests[0] == service + "/"
    foreign = [u for u in requests if not u.startswith((service + "/", "data:", "blob:"))]
    assert not foreign, f"the page requested other hosts: {foreign}"
    assert not js_errors, f"JavaScript errors: {js_errors}"


@pytest.fixture
def page(browser, service):
    context, page, requests, js_errors = _open(browser, service, {"width": 1280, "height": 900})
    yield page
    context.close()
    _check_origin(service, requests, js_errors)


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all("#results .card", """cards => cards.map(c => ({
        id: c.dataset.productId, category: c.dataset.category, text: c.innerText,
        chips: [...c.querySelectorAll('.chip')].map(x => Number(x.dataset.t))}))""")


def _wait_results(page, n: int | None = None) -> list[dict]:
    page.wait_for_selector("#results .card")
    page.wait_for_function("!document.body.classList.contains('loading')")
    cards = _cards(page)
    if n is not None:
        assert len(cards) == n
    return cards


def _thumbnails_loaded(page) -> bool:
    page.wait_for_function("[...document.querySelectorAll('#results img.thumb')].slice(0, 4).every(i => i.complete)")
    return page.eval_on_selector_all("#results img.thumb", "imgs => imgs.slice(0, 4).every(i => i.naturalWidth > 0)")


def test_photo_upload_shows_that_product_first(page, sample_rows):
    row = sample_rows[7]
    assert page.get_attribute("[data-mode=photo]", "aria-selected") == "true"  # the default mode
    page.set_input_files("#image-file", row["image"])
    cards = _wait_results(page, 10)
    assert cards[0]["id"] == row["product_id"]
    assert row["title"] in cards[0]["text"] and "score 1.000" in cards[0]["text"]
    assert page.is_visible("#image-preview") and _thumbnails_loaded(page)
    page.screenshot(path=str(SHOTS / "photo.png"), full_page=True)


def test_drop_and_paste_an_image(page, sample_rows):
    rows = sample_rows[12], sample_rows[40]
    payloads = [base64.b64encode(Path(r["image"]).read_bytes()).decode() for r in rows]
    make_transfer = """([b64, name]) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: 'image/png'})); return dt; }"""
    searches = []
    page.on("request", lambda r: searches.append(r.url) if r.url.endswith("/search/image") else None)
    dropped = page.evaluate_handle(make_transfer, [payloads[0], "dropped.png"])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    assert _wait_results(page)[0]["id"] == rows[0]["product_id"]
    assert len(searches) == 1  # one drop, one search
    page.evaluate(f"""([b64, name]) => document.dispatchEvent(new ClipboardEvent('paste',
        {{clipboardData: ({make_transfer})([b64, name]), bubbles: true}}))""", [payloads[1], "pasted.png"])
    page.wait_for_function("id => document.querySelector('#results .card')?.dataset.productId === id",
                           arg=rows[1]["product_id"])
    assert len(searches) == 2


def test_text_query_shows_k_results_and_fits_a_phone(page, http):
    query = "a red apple on a table"
    page.click("[data-mode=text]")
    page.fill("#text-query", query)
    page.fill("#k", "7")
    page.click("#search-button")
    cards = _wait_results(page, 7)
    expected = http.post("/search/text", json={"query": query, "k": 7}).json()["results"]
    assert [c["id"] for c in cards] == [r["product_id"] for r in expected]
    assert page.inner_text("#status").startswith("7 results")
    page.screenshot(path=str(SHOTS / "text.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 800})
    page.wait_for_function("document.querySelector('#results').getBoundingClientRect().width <= 375")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the phone
    columns = page.evaluate("getComputedStyle(document.querySelector('#results')).gridTemplateColumns.split(' ').length")
    assert columns == 2
    page.screenshot(path=str(SHOTS / "text-phone.png"), full_page=True)


def test_category_filter_shows_only_that_category(page, http, sample_rows):
    counts = Counter(r["category"] for r in sample_rows)
    options = page.eval_on_selector_all("#category option", "os => os.map(o => o.value).filter(Boolean)")
    assert options == [f["value"] for f in http.get("/facets").json()["facets"]["category"]]
    assert set(options) == set(counts)
    category = sorted((c for c in counts if 2 <= counts[c] < 20), key=lambda c: (-counts[c], c))[0]
    page.click("[data-mode=text]")
    page.fill("#text-query", "something to buy")
    page.fill("#k", "20")
    page.select_option("#category", category)
    page.click("#search-button")
    cards = _wait_results(page, counts[category])  # fewer than k match: all of them, and nothing else
    assert {c["category"] for c in cards} == {category}
    assert {c["id"] for c in cards} == {r["product_id"] for r in sample_rows if r["category"] == category}
    page.screenshot(path=str(SHOTS / "filters.png"), full_page=True)


def test_corrupt_upload_shows_the_service_error_message(page, http):
    data = b"\x89PNG\r\n\x1a\n" + b"\x00broken" * 40
    expected = http.post("/search/image", files={"file": ("broken.png", data, "image/png")}, data={"k": "10"})
    assert expected.status_code in (400, 415)
    message = expected.json()["error"]["message"]
    page.set_input_files("#image-file", {"name": "broken.png", "mimeType": "image/png", "buffer": data})
    page.wait_for_selector("#error", state="visible")
    assert page.inner_text("#error") == message
    assert page.get_attribute("#error", "data-code") == expected.json()["error"]["code"]
    assert not _cards(page) and not page.evaluate("document.body.classList.contains('loading')")
    page.screenshot(path=str(SHOTS / "error.png"), full_page=True)


def test_video_clip_shows_the_frame_strip_and_matched_frames(page, http, clear_video_rows, tmp_path):
    rows = clear_video_rows(2)  # each clip's own product leads by a clear margin (conftest)
    clip = tmp_path / "two-products.mp4"
    subprocess.run([sys.executable, "-m", "batch_jobs", "make-clip", str(clip), rows[0]["image"], rows[1]["image"],
                    "--seconds", "2"], check=True, cwd=ROOT, capture_output=True)
    page.click("[data-mode=video]")
    page.set_input_files("#video-file", str(clip))
    cards = _wait_results(page, 10)
    page.wait_for_function("[...document.querySelectorAll('#frame-strip img')].every(i => i.complete)")
    strip = page.eval_on_selector_all("#frame-strip .frame", """fs => fs.map(f => ({t: Number(f.dataset.t),
        img: f.querySelector('img')?.naturalHeight || 0, label: f.querySelector('.time').textContent}))""")
    assert len(strip) == 2 and [f["label"] for f in strip] == ["0.0 s", "2.0 s"]
    assert all(f["img"] == 96 for f in strip)  # the server's 96 px frame thumbnails, decoded by the page
    assert {c["id"] for c in cards[:2]} == {r["product_id"] for r in rows}
    expected = {r["product_id"]: r for r in http.post("/search/video", files={"file": ("c.mp4", clip.read_bytes())},
                                                      data={"k": "10"}).json()["results"]}
    for card in cards:  # the matched frames the service returned, one chip each
        assert card["chips"] == [f["t"] for f in expected[card["id"]]["frames"]]
    for card in cards[:2]:  # and each product's best frame lies inside its own shot
        start = 0.0 if card["id"] == rows[0]["product_id"] else 2.0
        assert start <= max(expected[card["id"]]["frames"], key=lambda f: f["score"])["t"] < start + 2.0
    page.hover(f"#results .card[data-product-id='{cards[0]['id']}']")
    assert page.eval_on_selector_all("#frame-strip .frame.match", "fs => fs.map(f => Number(f.dataset.t))") == \
        cards[0]["chips"]
    page.screenshot(path=str(SHOTS / "video.png"), full_page=True)


def test_video_with_several_shots_shows_each_shots_own_results(page, http, clear_video_rows, tmp_path):
    from batch_jobs.make_clip import make_clip, shot_frame
    from serve_app.frame_dedup import frame_hashes
    from serve_app.images import decode_image
    from serve_app.phash import hamming_distance

    candidates = clear_video_rows(6)  # as tests/test_video.py's `synthesized`: 3 rows whose frames are far apart
    hashes = frame_hashes([shot_frame(decode_image(Path(r["image"]).read_bytes())) for r in candidates])
    trio = next((t for t in itertools.combinations(range(len(candidates)), 3)
                 if all(hamming_distance(hashes[i], hashes[j]) > 16 for i, j in itertools.combinations(t, 2))), None)
    assert trio is not None, "no 3 clear rows whose shot frames differ by more than 16 pHash bits"
    rows = [candidates[i] for i in trio]
    clip = tmp_path / "three-shots.mp4"
    make_clip(clip, [r["image"] for r in rows], [2.0, 3.0, 2.5])
    page.click("[data-mode=video]")
    page.set_input_files("#video-file", str(clip))
    _wait_results(page, 10)  # the whole clip's fused list stays where it was
    expected = http.post("/search/video", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")},
                         data={"k": "10", "fps": "1"}).json()["shots"]
    assert len(expected) == 3
    shown = page.eval_on_selector_all("#shots .shot", """ss => ss.map(s => ({
        heading: s.querySelector('.shot-heading').textContent,
        ids: [...s.querySelectorAll('.card')].map(c => c.dataset.productId)}))""")
    assert page.is_visible("#shots") and page.is_visible("#results-heading") and len(shown) == 3
    for n, (shot, answer, row) in enumerate(zip(shown, expected, rows), 1):
        heading = re.fullmatch(r"Shot (\d+) · ([\d.]+)–([\d.]+) s", shot["heading"])
        assert heading, shot["heading"]
        assert int(heading[1]) == n
        assert [float(heading[2]), float(heading[3])] == pytest.approx([answer["t_start"], answer["t_end"]], abs=0.051)
        assert shot["ids"][0] == answer["results"][0]["product_id"] == row["product_id"]  # each shot: its product
        assert len(shot["ids"]) == len(answer["results"])
    assert page.inner_text("#status").endswith("· 3 shots")
    page.hover("#shots .shot[data-shot='2'] .shot-heading")  # a shot's heading marks its kept frames
    assert page.eval_on_selector_all("#frame-strip .frame.match", "fs => fs.map(f => Number(f.dataset.t))") == \
        [f["t"] for f in expected[1]["frames"]]
    page.screenshot(path=str(SHOTS / "video-shots.png"), full_page=True)


def test_duplicates_mode_shows_match_percent_and_distance(page, sample_rows):
    row = sample_rows[20]
    page.click("[data-mode=duplicates]")
    assert page.is_hidden("#filters")  # find_similar takes no filters
    page.set_input_files("#image-file", row["image"])
    cards = _wait_results(page)
    first = page.query_selector("#results .card")
    assert cards[0]["id"] == row["product_id"]
    assert first.get_attribute("data-hamming-distance") == "0" and first.get_attribute("data-match-percent") == "100"
    assert "100 % match" in cards[0]["text"] and "distance 0 / 64 bits" in cards[0]["text"]
    page.screenshot(path=str(SHOTS / "duplicates.png"), full_page=True)


def test_soft_text_filter_sends_text_only_when_given_and_shows_the_score_breakdown(page, http, sample_rows):
    row = sample_rows[7]
    # Chromium does not expose multipart bodies with files to Playwright: record the form fields the page sends.
    page.evaluate("""() => { window.sentFields = []; const original = window.fetch;
        window.fetch = (url, options) => { if (options && options.body instanceof FormData)
            window.sentFields.push([...options.body.keys()]); return original(url, options); }; }""")
    last_fields = "window.sentFields[window.sentFields.length - 1]"
    assert page.is_visible("#soft-filter")  # /search/image takes `text`: the control is offered
    page.fill("#soft-text", "a red fruit")
    page.fill("#soft-weight", "0.5")
    assert page.inner_text("#soft-weight-value") == "0.50"
    page.set_input_files("#image-file", row["image"])
    cards = _wait_results(page, 10)
    assert {"file", "k", "text", "text_weight"} <= set(page.evaluate(last_fields))
    with open(row["image"], "rb") as f:
        expected = http.post("/search/image", files={"file": ("q.png", f, "image/png")},
                             data={"k": "10", "text": "a red fruit", "text_weight": "0.5"}).json()["results"]
    assert [c["id"] for c in cards] == [r["product_id"] for r in expected]
    for card, result in zip(cards, expected):
        assert f"score {result['score']:.3f}" in card["text"]
        assert f"image {result['image_score']:.3f} · text {result['text_score']:.3f}" in card["text"]
    page.screenshot(path=str(SHOTS / "soft-filter.png"), full_page=True)
    page.fill("#soft-text", "")
    page.click("#search-button")
    page.wait_for_function("document.querySelector('#results .card')?.innerText.includes('score 1.000')")
    assert page.evaluate(last_fields) == ["file", "k"] and not page.query_selector("#results .breakdown")
    page.click("[data-mode=video]")
    assert page.is_visible("#soft-filter")


def test_modes_appear_only_when_the_service_has_their_endpoint(browser, service):
    def without_video_and_duplicates(route):
        spec = route.fetch().json()  # the service's real answer, minus two endpoints
        for path in ("/search/video", "/find_similar"):
            spec["paths"].pop(path)
        route.fulfill(json=spec)

    context, page, requests, js_errors = _open(browser, service, {"width": 800, "height": 700},
                                               route=("**/openapi.json", without_video_and_duplicates))
    visible = page.eval_on_selector_all("#modes [data-mode]", "ts => ts.filter(t => !t.hidden).map(t => t.dataset.mode)")
    assert visible == ["photo", "text"]
    context.close()
    _check_origin(service, requests, js_errors)


def test_more_like_this_searches_by_the_clicked_product(page, http, sample_rows):
    row = sample_rows[7]
    page.set_input_files("#image-file", row["image"])
    assert _wait_results(page, 10)[0]["id"] == row["product_id"]

    def more_like_first_card() -> tuple[dict, list[dict]]:
        with page.expect_request(lambda r: r.url.endswith("/search/similar") and r.method == "POST") as sent:
            page.click("#results .card:first-child .more-like")
        page.wait_for_function("document.querySelector('#results').dataset.mode === 'similar' && "
                               "!document.body.classList.contains('loading')")
        return sent.value.post_data_json, _cards(page)

    body, cards = more_like_first_card()
    assert body == {"positive": [row["product_id"]], "k": 10}
    expected = http.post("/search/similar", json=body).json()
    assert expected["positive"] == [row["product_id"]]
    assert [c["id"] for c in cards] == [r["product_id"] for r in expected["results"]] and len(cards) == 10
    assert row["product_id"] not in {c["id"] for c in cards}  # the product itself is left out
    status = page.inner_text("#status")
    assert status.startswith("More like ") and row["title"] in status and "10 results" in status
    page.screenshot(path=str(SHOTS / "more-like-this.png"), full_page=True)

    first, category = cards[0]["id"], cards[0]["category"]  # again from a result, with the current k and filters
    page.fill("#k", "5")
    page.select_option("#category", category)
    body, cards = more_like_first_card()
    assert body == {"positive": [first], "k": 5, "filters": {"category": category}}
    expected = http.post("/search/similar", json=body).json()["results"]
    assert [c["id"] for c in cards] == [r["product_id"] for r in expected]
    assert first not in {c["id"] for c in cards} and {c["category"] for c in cards} <= {category}


def test_drawn_region_is_sent_as_crop_and_clear_region_removes_it(page, http, sample_rows):
    row = sample_rows[7]
    # Chromium does not expose multipart bodies with files to Playwright: record the `crop` field the page sends.
    page.evaluate("""() => { window.sentCrops = []; const original = window.fetch;
        window.fetch = (url, options) => { if (options && options.body instanceof FormData)
            window.sentCrops.push(options.body.get('crop')); return original(url, options); }; }""")
    assert page.is_hidden("#crop-controls")  # no photo yet: nothing to draw on
    page.set_input_files("#image-file", row["image"])
    _wait_results(page, 10)
    page.wait_for_selector("#crop-controls", state="visible")  # the preview has loaded: drawing is offered
    assert page.evaluate("window.sentCrops") == [None] and page.is_hidden("#crop-clear")
    box = page.locator("#image-preview").bounding_box()

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    drawn = [0.2, 0.25, 0.7, 0.8]
    page.mouse.move(*at(drawn[2], drawn[3]))  # from bottom right to top left: the page orders the corners
    page.mouse.down()
    page.mouse.move(*at(drawn[0], drawn[1]), steps=8)
    page.mouse.up()
    page.wait_for_function("window.sentCrops.length === 2")  # a region drawn is searched at once
    sent = page.evaluate("window.sentCrops[1]")
    crop = json.loads(sent)
    assert len(crop) == 4 and all(0 <= c <= 1 for c in crop)
    assert crop == pytest.approx(drawn, abs=0.05)
    overlay = page.locator("#crop-box").bounding_box()  # the box is drawn where the pointer went
    assert [overlay["x"], overlay["y"], overlay["x"] + overlay["width"], overlay["y"] + overlay["height"]] == \
        pytest.approx([*at(crop[0], crop[1]), *at(crop[2], crop[3])], abs=3)
    page.wait_for_function("!document.body.classList.contains('loading')")
    with open(row["image"], "rb") as f:
        expected = http.post("/search/image", files={"file": ("q.png", f, "image/png")},
                             data={"k": "10", "crop": sent}).json()["results"]
    assert [c["id"] for c in _cards(page)] == [r["product_id"] for r in expected]
    page.screenshot(path=str(SHOTS / "crop.png"), full_page=True)

    page.mouse.click(*at(0.5, 0.5))  # a click is no region: ignored, the box stays and nothing is searched
    assert page.is_visible("#crop-box") and page.is_visible("#crop-clear")
    page.click("#crop-clear")
    page.wait_for_function("window.sentCrops.length === 3")
    assert page.evaluate("window.sentCrops[2]") is None
    assert page.is_hidden("#crop-box") and page.is_hidden("#crop-clear")
    page.wait_for_function("document.querySelector('#results .card')?.innerText.includes('score 1.000')")


def test_more_like_this_and_regions_appear_only_when_the_service_has_them(browser, service, sample_rows):
    def without_similar_and_crop(route):
        spec = route.fetch().json()  # the service's real answer, minus /search/similar and the `crop` field
        spec["paths"].pop("/search/similar")
        schema = spec["paths"]["/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
        schema["properties"].pop("crop")
        route.fulfill(json=spec)

    context, page, requests, js_errors = _open(browser, service, {"width": 800, "height": 700},
                                               route=("**/openapi.json", without_similar_and_crop))
    row = sample_rows[7]
    page.set_input_files("#image-file", row["image"])
    assert _wait_results(page, 10)[0]["id"] == row["product_id"]
    page.wait_for_function("document.querySelector('#image-preview').complete")
    assert page.query_selector("#results .more-like") is None
    assert page.is_hidden("#crop-controls") and "croppable" not in page.get_attribute("#image-preview", "class")
    context.close()
    _check_origin(service, requests, js_errors)
