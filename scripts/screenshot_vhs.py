"""Render assets/vhs-wiring.png: Load Video (Tune-A-Video) feeding VideoHelperSuite's Video Combine.

VideoHelperSuite is not a dependency of the pack and is not on the package registry, so it is not in the
test suite. This script takes a checkout of it (and a folder with its `imageio-ffmpeg` dependency), starts
a real ComfyUI with both packs, wires our Load Video's IMAGE, fps and AUDIO into VHS Video Combine's
`images`, `frame_rate` and `audio` in the real frontend, queues the graph, checks that the file VHS wrote
has the clip's frame rate, frame count and an audio track, and saves the screenshot:

    .venv/bin/python scripts/screenshot_vhs.py --vhs /path/to/ComfyUI-VideoHelperSuite --deps /path/to/site
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import av
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tav_core.testing.clips import write_clip_with_audio  # noqa: E402
from tav_core.testing.graph_js import GRAPH_HELPERS  # noqa: E402
from tav_core.testing.server import ComfyServer  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRAMES, FPS, STRIDE = 24, 12, 2

BUILD_GRAPH = """([frames, stride]) => {
    app.graph.clear();
    const {add, link} = tavGraph;
    const video = add("TAVLoadVideo", [40, 60],
                      {video: "with-audio.mp4", frame_count: frames, frame_stride: stride, width: 64, height: 64});
    const combine = add("VHS_VideoCombine", [480, 60], {format: "video/h264-mp4", filename_prefix: "vhs-wiring"});
    link(video, "IMAGE", combine, "images");
    link(video, "fps", combine, "frame_rate");
    link(video, "audio", combine, "audio");
    // Below the frontend's own overlays (tab bar, workflow name, Run toolbar).
    app.canvas.ds.offset = [120, 220];
    app.canvas.ds.scale = 1.0;
    app.graph.setDirtyCanvas(true, true);
    return [video.outputs.map(o => o.name), combine.inputs.filter(i => i.link != null).map(i => i.name)];
}"""


# The screen rectangle around every node of the graph, title bars included.
NODES_BOX = """() => {
    const title = LiteGraph.NODE_TITLE_HEIGHT, rect = app.canvas.canvas.getBoundingClientRect();
    const corners = app.graph.nodes.flatMap(n => [
        app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - title]),
        app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]])]);
    const xs = corners.map(c => c[0]), ys = corners.map(c => c[1]);
    const x = rect.left + Math.min(...xs) - 16, y = rect.top + Math.min(...ys) - 16;
    return {x, y, width: Math.max(...xs) - Math.min(...xs) + 32, height: Math.max(...ys) - Math.min(...ys) + 32};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vhs", type=Path, required=True, help="a checkout of ComfyUI-VideoHelperSuite")
    parser.add_argument("--deps", type=Path, required=True, help="a folder holding imageio_ffmpeg")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "vhs-wiring.png")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.deps), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as base:
        base = Path(base)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / "ComfyUI-VideoHelperSuite").symlink_to(args.vhs.resolve(), target_is_directory=True)
        (base / "input").mkdir()
        write_clip_with_audio(base / "input" / "with-audio.mp4", frames=FRAMES, fps=FPS)
        with ComfyServer(base) as server, sync_playwright() as p:
            server.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.add_init_script(GRAPH_HELPERS)  # tavGraph.add / tavGraph.link
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server.url) else r.abort())
            page.goto(server.url)
            page.wait_for_function("() => window.app && app.graph && app.graph.nodes.length > 0"
                                   " && LiteGraph.registered_node_types['VHS_VideoCombine']", timeout=120_000)
            outputs, linked = page.evaluate(BUILD_GRAPH, [FRAMES // STRIDE, STRIDE])
            assert set(linked) == {"images", "frame_rate", "audio"}, (outputs, linked)
            prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
            history = server.run(prompt, timeout=300)
            written = [f for f in server.output_files(history) if f.suffix == ".mp4"]
            assert written, history["outputs"]
            with av.open(str(written[0])) as container:
                video = container.streams.video[0]
                rate, count = float(video.average_rate), sum(1 for _ in container.decode(video))
                has_audio = bool(container.streams.audio)
            assert abs(rate - FPS / STRIDE) < 1e-6 and count == FRAMES // STRIDE and has_audio, (rate, count, has_audio)
            page.wait_for_timeout(1500)  # VHS's preview of the written file
            page.screenshot(path=str(args.out), clip=page.evaluate(NODES_BOX))
            browser.close()
    print(f"{args.out}: VHS wrote {count} frames at {rate:g} fps with audio")


if __name__ == "__main__":
    main()
