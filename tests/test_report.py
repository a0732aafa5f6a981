"""``neuronpath report``: one self-contained page per run, its numbers checked literally, and the
live page checked in headless Chromium (skipped with a reason where no browser is installed)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, save_tiny_model
from neuronpath.cli import main
from neuronpath.io.images import load_image
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]


def page_data(page: Path) -> dict:
    text = page.read_text()
    payload = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(payload.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = save_tiny_model(root / "model", layers=3, ffn=12)
    data = make_image_folder(root / "images", per_class=4)
    out = root / "run"
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(out),
                "--steps",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def full_run(run, tmp_path_factory):
    """The run evaluated, with class statistics, and its report."""
    full = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(run, full)
    assert main(["-q", "evaluate", str(full), "--device", "cpu", "--bootstrap", "20"]) == 0
    assert main(["-q", "classes", str(full), "--permutations", "20"]) == 0
    assert (
        main(["-q", "report", str(full), "--images", "8", "--cards", "5", "--device", "cpu"]) == 0
    )
    return full


def test_the_page_is_self_contained_and_holds_every_image(full_run):
    page = full_run / "report" / "index.html"
    text = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched
    assert "<link" not in text and "<script src" not in text
    data = page_data(page)
    images = {r["image"] for r in read_records(full_run)}
    assert set(data["rows"]["id"]) == images and len(data["rows"]["id"]) == 12
    assert len(data["details"]) == 8 and len(data["cards"]) == 5
    assert data["rows"]["removed"] is not None  # evaluated: removal effects in the list
    for name in ("Figure 3", "figure4", "similarity"):
        assert name in text
    assert "not a prune run" in text
    # the page leads with what the run found; its settings come last, folded
    order = ["<h2>Paths", "<h2>Removal and enhancement", 'id="explorer"', 'id="neurons"']
    order += ['id="experiments"', "<details><summary><h2>Settings of the run"]
    assert [text.index(mark) for mark in order] == sorted(text.index(mark) for mark in order)
    settings = text[text.index('id="settings"') :]
    assert "<th>versions" not in text[: text.index('id="settings"')] and "<th>versions" in settings


def test_path_details_and_cards_equal_a_literal_computation(full_run):
    data = page_data(full_run / "report" / "index.html")
    manifest = json.loads((full_run / "manifest.json").read_text())
    adapter = load_model(manifest["settings"]["model"], dtype=torch.float64)
    root = Path(manifest["settings"]["data"])
    records = {r["image"]: r for r in read_records(full_run, "jas")}
    sites = [dict(adapter.model.named_modules())[n] for n in adapter.site_names]

    def activations(image):  # literal: every layer's FFN hidden state (input of fc2), one image
        found = {}
        hooks = [
            s.register_forward_pre_hook(lambda m, i, l=l: found.__setitem__(l, i[0][0].clone()))
            for l, s in enumerate(sites)
        ]
        try:
            with torch.no_grad():
                adapter.logits(adapter.preprocess(load_image(root / image))[None])
        finally:
            for h in hooks:
                h.remove()
        return found

    for image, detail in data["details"].items():
        acts, path = activations(image), detail["paths"]["jas"]
        assert path["neurons"] == records[image]["path"]
        values = [float(acts[l][0, j]) for l, j in enumerate(path["neurons"])]  # CLS token
        assert path["act"] == pytest.approx(values, rel=1e-5, abs=1e-6)
        assert path["share"] == pytest.approx([v / sum(values) for v in values], rel=1e-4, abs=1e-6)
        for l, j in enumerate(path["neurons"]):  # the unit over the 2x2 patch grid
            grid = acts[l][1:, j]
            lo, hi = path["maps"][l]["lo"], path["maps"][l]["hi"]
            assert (lo, hi) == pytest.approx(
                (float(grid.min()), float(grid.max())), rel=1e-5, abs=1e-6
            )
    all_acts = {image: activations(image) for image in data["rows"]["id"]}
    for card in data["cards"]:  # the top images are the run's most activating ones
        l, j = card["layer"], card["neuron"]
        ranked = sorted(all_acts, key=lambda i: -float(all_acts[i][l][0, j]))
        assert [t["image"] for t in card["top"]] == ranked[: len(card["top"])]
        chosen = sum(1 for r in records.values() if r["path"][l] == j)
        assert card["count"] == chosen


def test_missing_parts_are_named_with_the_command_that_makes_them(run, tmp_path):
    out = tmp_path / "page.html"
    assert (
        main(
            [
                "-q",
                "report",
                str(run),
                "--out",
                str(out),
                "--images",
                "2",
                "--cards",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    text = out.read_text()
    assert f"neuronpath evaluate {run}" in text and f"neuronpath classes {run}" in text
    assert page_data(out)["rows"]["removed"] is None


def test_the_activation_pass_resumes_and_restarts_for_another_page(run, tmp_path, caplog):
    def report(images):
        caplog.clear()
        with caplog.at_level("INFO", logger="neuronpath"):
            assert (
                main(
                    [
                        "report",
                        str(run),
                        "--out",
                        str(tmp_path / "a.html"),
                        "--images",
                        str(images),
                        "--cards",
                        "2",
                        "--device",
                        "cpu",
                    ]
                )
                == 0
            )
        return re.search(r"(\d+) to do in the activation pass", caplog.text).group(1)

    assert report(3) == "12"
    cache = run / "report" / "activations" / "records.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:7]) + lines[7][:15])  # as a kill leaves it
    assert report(3) == "5"  # only the unfinished images
    assert report(3) == "0"
    assert len(read_records(cache.parent)) == 12
    first = page_data(tmp_path / "a.html")
    assert report(4) == "12"  # another page: a new cache
    assert len(page_data(tmp_path / "a.html")["details"]) == 4 and len(first["details"]) == 3


def test_a_damaged_records_file_fails_with_its_line_number(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    lines = (broken / "records.jsonl").read_text().splitlines()
    lines[4] = lines[4][:20]
    (broken / "records.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 5 is damaged" in err


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_live_page_in_headless_chromium(full_run):
    from selenium.webdriver.common.by import By

    browser = _browser()
    try:
        browser.get((full_run / "report" / "index.html").as_uri() + "#explorer")
        rows = browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")
        images = {r["image"] for r in read_records(full_run)}
        assert {row.get_attribute("data-image") for row in rows} == images
        first = next(
            r
            for r in rows
            if r.get_attribute("data-image")
            in page_data(full_run / "report" / "index.html")["details"]
        )
        first.click()
        strips = browser.find_elements(By.CSS_SELECTOR, "#detail .path")
        assert [s.get_attribute("data-method") for s in strips] == ["jas", "activation"]
        for strip in strips:  # one heatmap per layer
            assert len(strip.find_elements(By.CSS_SELECTOR, "canvas.heatmap")) == 3
        assert "removing the whole path" in browser.find_element(By.ID, "detail").text
        sections = browser.find_elements(By.CSS_SELECTOR, "main > section")
        assert [s.get_attribute("id") for s in sections] == [
            "overview",
            "explorer",
            "neurons",
            "experiments",
            "settings",
        ]
        first = browser.find_element(By.CSS_SELECTOR, "main h2")
        assert first.get_attribute("textContent") == "Paths"  # the findings first
        assert (
            browser.find_element(By.CSS_SELECTOR, "#settings details").get_attribute("open") is None
        )
        browser.find_element(By.CSS_SELECTOR, 'header a[href="#neurons"]').click()
        cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
        assert len(cards) == 5 and cards[0].find_elements(By.CSS_SELECTOR, ".tops canvas")
        browser.find_element(By.CSS_SELECTOR, 'header a[href="#explorer"]').click()
        first = browser.find_element(By.CSS_SELECTOR, "#images tbody tr")
        first.click()
        shots = ROOT / ".test-artifacts"
        shots.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(shots / "report-explorer.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()


def test_a_50000_image_page_renders_one_page_of_rows_at_a_time(tmp_path):
    """The explorer of an ImageNet-scale run: the list is paginated (the page keeps 50 rows in
    the document whatever the run's size) and sorting works over all rows."""
    from selenium.webdriver.common.by import By

    from neuronpath.report.page import write_page

    n = 50_000
    generator = torch.Generator().manual_seed(0)
    jas = torch.rand(n, generator=generator).tolist()
    data = {
        "method": "jas",
        "methods": ["jas"],
        "classes": [f"class{i}" for i in range(1000)],
        "layers": 12,
        "details": {},
        "cards": [],
        "thumbs": {},
        "rows": {
            "id": [f"c{i % 1000}/img{i}.JPEG" for i in range(n)],
            "label": [i % 1000 for i in range(n)],
            "pred": [0] * n,
            "predName": ["class0"] * n,
            "prob": [0.5] * n,
            "jas": {"jas": jas},
            "removed": None,
        },
        "capped": {"images": n, "details": 0, "neurons": 0, "cards": 0},
    }
    overview = {
        "facts": [("model", "synthetic")],
        "title": "synthetic",
        "summary": {},
        "run": "RUN",
        "evaluation": None,
        "classes": None,
        "prune": None,
        "method": "jas",
    }
    page = write_page(tmp_path / "big.html", overview, data)
    browser = _browser()
    try:
        browser.get(page.as_uri() + "#explorer")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")) == 50
        assert "50000 images — page 1 of 1000" in browser.find_element(By.ID, "page-info").text
        header = next(
            th
            for th in browser.find_elements(By.CSS_SELECTOR, "#images th")
            if th.text.startswith("JAS jas")
        )
        header.click()
        first = browser.find_element(By.CSS_SELECTOR, "#images tbody tr")
        assert (
            first.get_attribute("data-image")
            == data["rows"]["id"][max(range(n), key=jas.__getitem__)]
        )
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
