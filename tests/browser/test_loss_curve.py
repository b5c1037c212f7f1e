"""Level 4: a tune run queued from the page draws its loss curve live on the One-Shot Tune node."""
import pytest

STEPS = 5

# Checkpoint -> Load Video -> VAE Encode, CLIP Text Encode -> One-Shot Tune -> Preview Image (loss curve).
BUILD_GRAPH = """(ckpt) => {
    app.graph.clear();
    const add = (type, pos, values = {}) => {
        const node = LiteGraph.createNode(type);
        node.pos = pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(values)) node.widgets.find(w => w.name === name).value = value;
        return node;
    };
    const link = (from, output, to, input) => from.connect(from.findOutputSlot(output), to, to.findInputSlot(input));
    const linkSlot = (from, slot, to, input) => from.connect(slot, to, to.findInputSlot(input));
    const checkpoint = add("CheckpointLoaderSimple", [60, 420], {ckpt_name: ckpt});
    const video = add("TAVLoadVideo", [60, 120], {video: "clip.mp4", frame_count: 4, width: 64, height: 64});
    const encode = add("VAEEncode", [420, 120]);
    const prompt = add("CLIPTextEncode", [420, 300], {text: "a man is skiing"});
    const tune = add("TAVOneShotTune", [900, 120], {steps: %d, learning_rate: 1e-3});
    const preview = add("PreviewImage", [1280, 120]);
    link(video, "IMAGE", encode, "pixels");
    link(checkpoint, "VAE", encode, "vae");
    link(checkpoint, "CLIP", prompt, "clip");
    link(checkpoint, "MODEL", tune, "model");
    link(prompt, "CONDITIONING", tune, "positive");
    link(encode, "LATENT", tune, "latent");
    linkSlot(tune, 1, preview, "images"); // loss_curve: the frontend names this output "IMAGE"
    // Required inputs only: an optional one (Load Video's video_input) may stay open.
    const optional = (n) => Object.keys(n.constructor.nodeData?.input?.optional ?? {});
    const unlinked = app.graph._nodes.flatMap(n => n.inputs.filter(i => !i.widget && i.link == null
        && !optional(n).includes(i.name)).map(i => `${n.type}.${i.name}`));
    return {id: tune.id, unlinked};
}""" % STEPS

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
    built = page.evaluate(BUILD_GRAPH, ckpt)
    assert built["unlinked"] == []
    tune_id = built["id"]
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
