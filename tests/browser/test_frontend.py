"""Level 4: the real ComfyUI frontend in headless Chromium, with the pack installed."""
import json
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "example_workflows").glob("*.json"))
EXTENSIONS = ["TuneAVideo.LoadVideoPreview", "TuneAVideo.LossCurve"]


def test_nodes_and_extension_registered(page, artifacts_dir):
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert set(EXTENSIONS) <= set(names)
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert "TAVLoadVideo" in types
    page.screenshot(path=str(artifacts_dir / "editor.png"))
    assert page.our_errors() == []


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
    # The pack's previews (video, loss curve) are displays: neither the workflow nor the prompt holds them.
    stored = page.evaluate("""() => app.graph._nodes.flatMap(n => (n.widgets ?? [])
        .filter(w => w.name.startsWith("tav_") && w.serialize !== false).map(w => `${n.type}.${w.name}`))""")
    assert stored == []
    assert page.our_errors() == []
