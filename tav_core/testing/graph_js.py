"""Graphs built in the real frontend by the browser tests and scripts: JavaScript for Playwright.

`GRAPH_HELPERS` goes on every page before the frontend loads (`page.add_init_script`); it defines
`tavGraph` there:
- `tavGraph.add(type, pos, values)` adds a node of `type` at `pos`, sets the widgets named in `values`,
  and returns the node;
- `tavGraph.link(from, output, to, input)` links `from`'s output (its name, or its index where the
  frontend names it after its type) to `to`'s input of that name.
"""

GRAPH_HELPERS = """window.tavGraph = {
    add(type, pos, values = {}) {
        const node = LiteGraph.createNode(type);
        node.pos = pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(values)) node.widgets.find(w => w.name === name).value = value;
        return node;
    },
    link(from, output, to, input) {
        const slot = typeof output === "number" ? output : from.findOutputSlot(output);
        return from.connect(slot, to, to.findInputSlot(input));
    },
};"""

# Checkpoint -> Load Video -> VAE Encode, CLIP Text Encode -> One-Shot Tune -> Preview Image of its loss
# curve, added to the current graph; returns the One-Shot Tune node's id.
TUNE_GRAPH = """([ckpt, steps, frames]) => {
    const {add, link} = tavGraph;
    const checkpoint = add("CheckpointLoaderSimple", [60, 660], {ckpt_name: ckpt});
    const video = add("TAVLoadVideo", [60, 200], {video: "clip.mp4", frame_count: frames, width: 64, height: 64});
    const encode = add("VAEEncode", [440, 200]);
    const prompt = add("CLIPTextEncode", [440, 380], {text: "a man is skiing"});
    const tune = add("TAVOneShotTune", [820, 200], {steps, learning_rate: 1e-3});
    const preview = add("PreviewImage", [1200, 200]);
    link(video, "IMAGE", encode, "pixels");
    link(checkpoint, "VAE", encode, "vae");
    link(checkpoint, "CLIP", prompt, "clip");
    link(checkpoint, "MODEL", tune, "model");
    link(prompt, "CONDITIONING", tune, "positive");
    link(encode, "LATENT", tune, "latent");
    link(tune, 1, preview, "images");  // loss_curve: the frontend names this output "IMAGE"
    return tune.id;
}"""
