"""Level 4: the real ComfyUI frontend in headless Chromium, with the pack installed."""
import json
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "example_workflows").glob("*.json"))
EXTENSIONS = ["TuneAVideo.LoadVideoPreview", "TuneAVideo.LossCurve"]


def assert_same_prompt(api: dict, twin: dict):
    """The frontend's API form of a workflow against its twin: the pack's nodes exactly; core nodes by
    their links and by the values of the inputs that both have, since core nodes change their inputs
    between ComfyUI versions (SaveVideo's codec moved under `format`, CreateVideo gained `bit_depth`),
    and the twin runs on both (tests/server/test_example_workflows.py)."""
    assert {k: v["class_type"] for k, v in api.items()} == {k: v["class_type"] for k, v in twin.items()}
    for node_id, node in twin.items():
        ours, theirs = node["inputs"], api[node_id]["inputs"]
        if node["class_type"].startswith("TAV"):
            assert theirs == ours, f"node {node_id} ({node['class_type']})"
            continue
        # Newer frontends send the inputs nested under a dynamic combo as "parent.child"; the node reads
        # them before a legacy flat input of the same name (SaveVideo: "format.codec" before "codec").
        theirs = {**theirs, **{k.rsplit(".", 1)[1]: v for k, v in theirs.items() if "." in k}}
        links = lambda inputs: {k: v for k, v in inputs.items() if isinstance(v, list)}
        assert links(theirs) == links(ours), f"links of node {node_id} ({node['class_type']})"
        shared = ours.keys() & theirs.keys()
        assert {k: theirs[k] for k in shared} == {k: ours[k] for k in shared}, f"node {node_id} ({node['class_type']})"


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
    assert_same_prompt(api, twin)
    # The pack's previews (video, loss curve) are displays: neither the workflow nor the prompt holds them.
    stored = page.evaluate("""() => app.graph._nodes.flatMap(n => (n.widgets ?? [])
        .filter(w => w.name.startsWith("tav_") && w.serialize !== false).map(w => `${n.type}.${w.name}`))""")
    assert stored == []
    assert page.our_errors() == []
