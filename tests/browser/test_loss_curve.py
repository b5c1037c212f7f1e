"""Level 4: a tune run queued from the page draws its loss curve live on the One-Shot Tune node."""
import pytest

from tav_core.testing.graph_js import TUNE_GRAPH

STEPS = 5

# Required inputs only: an optional one (Load Video's video_input) may stay open.
UNLINKED_INPUTS = """() => {
    const optional = (n) => Object.keys(n.constructor.nodeData?.input?.optional ?? {});
    return app.graph._nodes.flatMap(n => n.inputs.filter(i => !i.widget && i.link == null
        && !optional(n).includes(i.name)).map(i => `${n.type}.${i.name}`));
}"""

# What the curve widget shows: its caption and how many canvas pixels are drawn.
CURVE_STATE = """(id) => {
    const root = app.graph.getNodeById(id).widgets.find(w => w.name === "tav_loss_curve").element;
    const canvas = root.querySelector("canvas");
    const pixels = canvas.width && canvas.height
        ? canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data : [];
    let drawn = 0;
    for (let i = 3; i < pixels.length; i += 4) drawn += pixels[i] > 0;
    return {caption: root.textContent, drawn, width: canvas.width};
}"""


def test_a_tune_run_draws_the_loss_curve(page, server, artifacts_dir, shoot_node):
    ckpt = server.get("/object_info/CheckpointLoaderSimple")["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0][0]
    page.evaluate("() => app.graph.clear()")
    tune_id = page.evaluate(TUNE_GRAPH, [ckpt, STEPS, 4])
    assert page.evaluate(UNLINKED_INPUTS) == []
    before = page.evaluate(CURVE_STATE, tune_id)
    assert before["width"] > 0 and before["drawn"] == 0  # blank until a run starts

    # Queued from the page, so that the server sends the run's messages to this page's client id.
    page.evaluate("""() => {
        window.tavEvents = [];
        const api = window.comfyAPI.api.api;
        for (const type of ["tuneavideo.loss", "execution_error", "execution_success"])
            api.addEventListener(type, (e) => window.tavEvents.push({type, detail: e.detail}));
        // A prompt that fails validation never runs: record the node errors instead of waiting.
        return app.queuePrompt(0).then(() => Object.keys(app.lastNodeErrors ?? {}).length
            && window.tavEvents.push({type: "validation_error", detail: app.lastNodeErrors}));
    }""")
    page.wait_for_function("""(steps) => window.tavEvents.some(e => e.type !== "tuneavideo.loss")
        || window.tavEvents.filter(e => e.type === "tuneavideo.loss").length >= steps""", arg=STEPS, timeout=240_000)
    events = page.evaluate("() => window.tavEvents")
    assert not [e for e in events if e["type"] in ("execution_error", "validation_error")], events
    losses = [e["detail"] for e in events if e["type"] == "tuneavideo.loss"]
    assert [e["step"] for e in losses] == list(range(1, STEPS + 1))
    assert all(e["node"] == str(tune_id) and e["steps"] == STEPS for e in losses)

    after = page.evaluate(CURVE_STATE, tune_id)
    caption = f"step {STEPS}/{STEPS}, loss "
    assert caption in after["caption"]
    assert float(after["caption"].split(caption)[1]) == pytest.approx(losses[-1]["loss"], rel=1e-3)
    assert after["drawn"] > 500  # axes, labels and two lines
    shoot_node(tune_id, artifacts_dir / "loss_curve.png")
    page.wait_for_function("() => window.tavEvents.some(e => e.type !== 'tuneavideo.loss')", timeout=120_000)
    assert page.our_errors() == []
