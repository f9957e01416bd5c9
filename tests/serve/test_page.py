"""The browser page's server side (issue 20): its files and settings without Ray, then over real HTTP
on 127.0.0.1: ``GET /`` and ``/page/*`` (open, with their security headers, not in the OpenAPI
schema), ``POST /v1/detect-language`` (keyed, in the schema) and the pivot's abstention threshold in
``/v1/pivot``. The browser itself drives the page in tests/serve/test_browser.py."""

from __future__ import annotations

import json
import os
import re

import pytest
import requests

from ray_cora.languages import LANGUAGES
from ray_cora.serve.core import PAGE_ASSETS, PAGE_DIR, detected_language, page_config, page_file, pivot_response
from ray_cora.serve.schemas import DetectLanguageResponse, PivotResponse
from tests.support import free_port

API_KEY_ENV = "RAY_CORA_TEST_PAGE_KEY"
API_KEY = "page-key-93ad"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
THRESHOLD = 0.95  # an exact English question scores about 1 with mUSE, a paraphrase in Spanish less


# --- without Ray ------------------------------------------------------------------------------


def test_page_files_are_the_package_files_and_nothing_else():
    assert page_file("index.html") == (PAGE_DIR / "index.html").read_bytes()
    for name in PAGE_ASSETS:
        assert page_file(name) == (PAGE_DIR / name).read_bytes() and page_file(name)
    for name in ("../app.py", "config.json", "page.css.bak", "", "/etc/passwd"):
        with pytest.raises(KeyError):
            page_file(name)


def test_the_page_loads_nothing_from_another_origin_and_has_no_inline_script():
    html = page_file("index.html").decode()
    # Every src/href is this app's own path; no inline <script> body, no on* handler attributes.
    assert set(re.findall(r'(?:src|href)="([^"]+)"', html)) == {"/page/page.css", "/page/page.js", "/openapi.json", "/docs"}
    assert re.findall(r"<script[^>]*>([^<]*)</script>", html) == [""]
    assert not re.search(r"\son[a-z]+=", html) and "style=" not in html
    script = page_file("page.js").decode()
    # API data goes into the page as text: page.js never writes HTML from a string.
    assert not re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write", script)
    assert not re.search(r"localStorage|document\.cookie", script) and "sessionStorage.setItem" in script
    assert not re.search(r"https?://", script + page_file("page.css").decode())


def test_page_config_lists_every_language_with_its_direction():
    config = page_config(needs_lang=False, retrievers=("dense", "bm25"), default_retriever="dense",
                         generator=False, pivot=True, max_question_chars=300, default_k=5, max_k=20)
    assert [lang["code"] for lang in config["languages"]] == sorted(LANGUAGES)
    directions = {lang["code"]: lang["direction"] for lang in config["languages"]}
    assert {code for code, d in directions.items() if d == "rtl"} == {"ar", "fa", "he"}
    assert (config["needs_lang"], config["retrievers"], config["pivot"], config["generator"]) == (
        False, ["dense", "bm25"], True, False)
    json.dumps(config)  # served as JSON as it is


@pytest.mark.parametrize("text, lang, direction", [
    ("في أي عام اكتمل بناء برج إيفل؟", "ar", "rtl"), ("מתי נבנה מגדל אייפל?", "he", "rtl"),
    ("富士山の標高は何メートルですか？", "ja", "ltr"), ("¿Quién escribió Don Quijote de la Mancha?", "es", "ltr"),
    ("42", None, None)])
def test_detected_language_names_the_language_and_its_direction(text, lang, direction):
    body = detected_language(text)
    DetectLanguageResponse.model_validate(body)
    assert (body["lang"], body["direction"]) == (lang, direction)
    if lang:
        assert (body["name"], body["script"]) == (LANGUAGES[lang].name, LANGUAGES[lang].script)
    else:
        assert body["name"] is None and body["how"]


def test_pivot_response_carries_the_threshold():
    result = {"prediction": "", "abstained": True, "matched_question": "How tall is Mount Fuji?",
              "matched_qid": "en-db-001", "score": 0.4, "english_answer": "3,776 metres",
              "translation_source": None, "threshold": 0.5}
    body = PivotResponse.model_validate(pivot_response("q", "es", result)).model_dump()
    assert (body["threshold"], body["abstained"], body["answer"]) == (0.5, True, None)
    assert pivot_response("q", "es", {k: v for k, v in result.items() if k != "threshold"})["threshold"] is None


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_url(ray_local):
    from ray import serve

    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import start_app

    os.environ[API_KEY_ENV] = API_KEY  # read by build_app in this process
    config = ServeConfig(port=free_port(), pivot_db="demo", pivot_threshold=THRESHOLD, api_key_env=API_KEY_ENV,
                         max_replicas=1, replica_cpus=0.25, max_question_chars=300, default_k=4)
    try:
        yield start_app(config)
    finally:
        serve.shutdown()
        os.environ.pop(API_KEY_ENV, None)


def _post(url: str, path: str, body, headers=HEADERS) -> requests.Response:
    return requests.post(url + path, data=json.dumps(body), timeout=60,
                         headers={"Content-Type": "application/json", **headers})


@pytest.mark.slow
def test_the_page_and_its_files_are_served_open_with_their_headers(page_url):
    page = requests.get(page_url + "/", timeout=30)  # no key: the page is static
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.content == (PAGE_DIR / "index.html").read_bytes()
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media in (("page.css", "text/css"), ("page.js", "text/javascript")):
        asset = requests.get(f"{page_url}/page/{name}", timeout=30)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
        assert asset.content == (PAGE_DIR / name).read_bytes()
        assert asset.headers["x-content-type-options"] == "nosniff"
    config = requests.get(page_url + "/page/config.json", timeout=30).json()
    assert (config["pivot"], config["generator"], config["needs_lang"]) == (True, False, False)
    assert (config["default_k"], config["max_question_chars"], config["retrievers"]) == (4, 300, ["dense"])
    assert {"code": "ar", "name": "Arabic", "script": "Arabic", "direction": "rtl"} in config["languages"]
    for path in ("/page/index.html", "/page/..%2Fapp.py", "/page/app.py", "/page/"):
        missing = requests.get(page_url + path, timeout=30)
        assert missing.status_code == 404, path
        assert set(missing.json()) == {"error", "field", "type", "code"} and missing.json()["code"] == "not_found"
    # The API itself still needs the key; the page's routes stay out of the OpenAPI schema.
    assert _post(page_url, "/v1/detect-language", {"text": "hola"}, headers={}).status_code == 401
    paths = requests.get(page_url + "/openapi.json", timeout=30).json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/page")]
    assert paths["/v1/detect-language"]["post"]["security"]


@pytest.mark.slow
def test_detect_language_answers_over_http_and_refuses_empty_text(page_url):
    arabic = _post(page_url, "/v1/detect-language", {"text": "في أي عام اكتمل بناء برج إيفل؟"})
    assert arabic.status_code == 200, arabic.text
    assert arabic.json() == {"lang": "ar", "name": "Arabic", "script": "Arabic", "direction": "rtl",
                             "how": "letters"}  # Arabic's ي, which Persian writes ی
    unsure = _post(page_url, "/v1/detect-language", {"text": "1889"}).json()
    assert unsure["lang"] is None and unsure["direction"] is None
    for body, field in (({"text": "  "}, "text"), ({"text": 3}, "text"), ({}, "text"), ({"text": "a", "x": 1}, "x")):
        refused = _post(page_url, "/v1/detect-language", body)
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.text


@pytest.mark.slow
def test_pivot_reports_the_threshold_it_abstains_below(page_url):
    seen = set()
    for question, lang in (("How tall is Mount Fuji?", "en"), ("¿Qué altura tiene el monte Fuji?", "es"),
                           ("Quel est le plus long fleuve du monde ?", "fr")):
        response = _post(page_url, "/v1/pivot", {"question": question, "lang": lang})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["threshold"] == pytest.approx(THRESHOLD)
        assert body["abstained"] == (body["score"] < THRESHOLD)
        assert (body["answer"] is None) == body["abstained"]
        seen.add(body["abstained"])
    assert seen == {True, False}  # the threshold both answered and abstained here
