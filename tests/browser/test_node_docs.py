"""Level 4: every node of the pack has a help page where the frontend looks for it."""

# As the frontend's node help (fetchCustomNodeHelp): /extensions/<pack>/docs/<node>.md, the pack
# being the folder in the node's python_module "custom_nodes.<pack>...".
FETCH_DOCS = """async () => {
    const ours = Object.values(LiteGraph.registered_node_types)
        .map(type => type.nodeData)
        .filter(data => data?.python_module?.startsWith("custom_nodes.ComfyUI-TuneAVideo"));
    return Promise.all(ours.map(async (data) => {
        const pack = data.python_module.split(".")[1];
        const response = await fetch(window.comfyAPI.api.api.fileURL(`/extensions/${pack}/docs/${data.name}.md`));
        return {name: data.name, status: response.status, text: await response.text()};
    }));
}"""

NODES = {"TAVLoadVideo", "TAVInflateModel", "TAVOneShotTune", "TAVSaveTuned", "TAVLoadTuned",
         "TAVDDIMInvert", "TAVVideoSample", "TAVNullTextInvert", "TAVAttentionEditSample", "TAVCLIPScore"}


def test_every_node_has_a_help_page(page):
    pages = page.evaluate(FETCH_DOCS)
    assert {p["name"] for p in pages} >= NODES
    for help_page in pages:
        assert help_page["status"] == 200, help_page["name"]
        text = help_page["text"]
        assert text.startswith("# ") and "## Inputs" in text and "## Common errors" in text, help_page["name"]
    assert page.our_errors() == []
