"""Headless Chromium on the session's ComfyUI server (level 4), shared by the browser tests."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from tav_core.testing.graph_js import GRAPH_HELPERS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Served from here: web/js and web/docs of the pack, and its routes under /tuneavideo.
OUR_PATHS = ("ComfyUI-TuneAVideo", "TuneAVideo", "tuneavideo")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


def open_editor(browser, server):
    """A new page on `server`'s editor, loaded; `page.our_errors()` lists console errors that involve the
    pack's files. The caller closes `page.context`."""
    # The Templates dialog covers the editor at first start.
    server.post("/settings", {"Comfy.TutorialCompleted": True})
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.add_init_script(GRAPH_HELPERS)  # tavGraph.add / tavGraph.link
    # The frontend reaches for the Comfy web API; nothing may leave this machine.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
               else route.abort())
    page.console_errors = []
    # Where an error comes from is in its location or stack, not always in its text.
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(
        f"{m.text} at {m.location.get('url', '')}"))
    page.on("pageerror", lambda e: page.console_errors.append(f"{e}\n{e.stack}"))
    page.our_errors = lambda: [e for e in page.console_errors if any(p in e for p in OUR_PATHS)]
    page.goto(server.url)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                           " && LiteGraph.registered_node_types['TAVLoadVideo']", timeout=60_000)
    # Newer frontends load their default graph a moment after the node types are registered: a test
    # that clears and builds the graph before then loses its graph to it (seen on a loaded machine).
    page.wait_for_function("() => app.graph.nodes.length > 0", timeout=60_000)
    return page


@pytest.fixture(scope="session")
def editor():
    """open_editor and shoot_canvas_node, for modules that keep one page on a server of their own."""
    return SimpleNamespace(open=open_editor, shoot_canvas_node=shoot_canvas_node)


@pytest.fixture
def page(browser, server):
    """The editor of the session's server, loaded (see open_editor)."""
    page = open_editor(browser, server)
    yield page
    page.context.close()


def shoot_canvas_node(page, node_id, path):
    """A screenshot of one node of the graph as the canvas draws it, title bar included."""
    box = page.evaluate("""(id) => {
        const node = app.graph.getNodeById(id);
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
        const rect = app.canvas.canvas.getBoundingClientRect();
        const scale = app.canvas.ds.scale;
        return {x: rect.left + x - 10, y: rect.top + y - 10,
                width: node.size[0] * scale + 20, height: (node.size[1] + title) * scale + 20};
    }""", node_id)
    page.screenshot(path=str(path), clip=box)


@pytest.fixture
def shoot_node(page):
    """shoot_node(node_id, path): shoot_canvas_node on the session's page."""
    return lambda node_id, path: shoot_canvas_node(page, node_id, path)
