"""Render example_workflows/<name>.jpg: each workflow as the real frontend shows it.

ComfyUI's Templates browser shows a workflow's thumbnail from the .jpg of the same name.

    .venv/bin/python scripts/make_thumbnails.py
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tav_core.testing.server import ComfyServer  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 960


def main() -> None:
    workflows = sorted((ROOT / "example_workflows").glob("*.json"))
    with tempfile.TemporaryDirectory() as base, ComfyServer(Path(base)) as server, sync_playwright() as p:
        server.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                  # full-detail nodes even when the whole workflow is fitted in view
                                  "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1})
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server.url) else r.abort())
        page.goto(server.url)
        page.wait_for_function("() => window.app && app.graph && LiteGraph.registered_node_types['TAVLoadVideo']",
                               timeout=60_000)
        for workflow in workflows:
            page.evaluate("async (g) => { await app.loadGraphData(g); }", json.loads(workflow.read_text()))
            page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
            page.wait_for_timeout(800)
            box = page.locator("canvas#graph-canvas").bounding_box()
            # Below the tab bar and beside the side bar: the graph alone.
            clip = {"x": box["x"] + 40, "y": box["y"] + 90, "width": box["width"] - 40, "height": box["height"] - 90}
            shot = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
            shot.thumbnail((WIDTH, WIDTH))
            target = workflow.with_suffix(".jpg")
            shot.save(target, quality=85)
            print(target)
        browser.close()


if __name__ == "__main__":
    main()
