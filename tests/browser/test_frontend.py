"""Level 4: the real ComfyUI frontend in headless Chromium, with the pack installed."""
import json
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "example_workflows").glob("*.json"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    # The Templates dialog covers the editor at first start.
    server.post("/settings", {"Comfy.TutorialCompleted": True})
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    # The frontend reaches for the Comfy web API; nothing may leave this machine.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
               else route.abort())
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                           " && LiteGraph.registered_node_types['TAVLoadVideo']", timeout=60_000)
    yield page
    context.close()


def our_errors(page):
    return [e for e in page.console_errors if "TuneAVideo" in e or "tuneavideo" in e.lower()]


def test_nodes_and_extension_registered(page, artifacts_dir):
    assert page.evaluate("() => app.extensions.some(e => e.name === 'TuneAVideo.Core')")
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert "TAVLoadVideo" in types
    page.screenshot(path=str(artifacts_dir / "editor.png"))
    assert our_errors(page) == []


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_loads_and_matches_its_api_twin(page, workflow, artifacts_dir):
    graph = json.loads(workflow.read_text())
    page.evaluate("async (g) => { await app.loadGraphData(g); }", graph)
    page.wait_for_timeout(500)
    missing = page.evaluate("""() => app.graph._nodes
        .filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)""")
    assert missing == [], f"unknown node types {missing}"
    dialogs = page.locator(".p-dialog").all_inner_texts()
    assert not [d for d in dialogs if "missing" in d.lower()], dialogs
    page.screenshot(path=str(artifacts_dir / f"{workflow.stem}.png"))
    api = page.evaluate("async () => (await app.graphToPrompt()).output")
    twin = json.loads((workflow.parent / "api" / workflow.name).read_text())
    strip = lambda prompt: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert strip(api) == strip(twin)
    assert our_errors(page) == []
