"""Level 4: Load Video previews the chosen clip and shows its frame count, fps and size."""
import base64

from tav_core.testing.clips import write_webm
from tav_core.video import probe_clip

SERVER_CLIP = "clip.mp4"  # copied into the server's input folder by tests/conftest.py

ADD_LOAD_VIDEO = """() => {
    app.graph.clear();
    return tavGraph.add("TAVLoadVideo", [320, 220]).id;
}"""

# The preview's state, once its <video> shows `name` (with `ready`: has its metadata) and the info
# line has the server's answer.
PREVIEW_OF = """([id, name, ready]) => {
    const node = app.graph.getNodeById(id);
    const root = node.widgets.find(w => w.name === "tav_video_preview")?.element;
    const video = root?.querySelector("video");
    const info = root?.querySelector(".tav-clip-info")?.textContent ?? "";
    const src = video ? new URL(video.src, location.href) : null;
    // "Reading the clip… (no preview: the browser cannot decode this clip)" comes before the server's answer.
    if (!src || src.searchParams.get("filename") !== name || info.startsWith("Reading the clip")
        || !/frames|error|cannot/i.test(info)) return null;
    if (ready && video.readyState < 1) return null;
    return {path: src.pathname, type: src.searchParams.get("type"), info, readyState: video.readyState,
            muted: video.muted, loop: video.loop, visible: root.getBoundingClientRect().height > 0};
}"""


def expected_info(path):
    info = probe_clip(path)
    return f"{info.frame_count} frames, {round(info.fps, 2):g} fps, {info.width}x{info.height}"


def wait_for_preview(page, node_id, name, ready=False):
    return page.wait_for_function(PREVIEW_OF, arg=[node_id, name, ready], timeout=30_000).json_value()


def test_choosing_a_clip_shows_its_preview_and_info(page, server, artifacts_dir, shoot_node):
    node_id = page.evaluate(ADD_LOAD_VIDEO)
    page.evaluate("""([id, name]) => {
        const combo = app.graph.getNodeById(id).widgets.find(w => w.name === "video");
        combo.value = name;
        combo.callback(name);
    }""", [node_id, SERVER_CLIP])
    preview = wait_for_preview(page, node_id, SERVER_CLIP)
    assert preview["path"].endswith("/view") and preview["type"] == "input"
    assert preview["muted"] and preview["loop"] and preview["visible"]
    assert preview["info"].startswith(expected_info(server.base_dir / "input" / SERVER_CLIP))
    # clip.mp4 is MPEG-4 Part 2 (OpenCV's mp4v), which Chromium cannot play: the node says so and
    # still shows the clip's info (the next test plays a WebM).
    page.wait_for_function("""(id) => app.graph.getNodeById(id).widgets
        .find(w => w.name === "tav_video_preview").element.textContent.includes("cannot decode")""",
                           arg=node_id, timeout=10_000)
    shoot_node(node_id, artifacts_dir / "load_video_mp4v.png")
    assert page.our_errors() == []


def test_an_uploaded_clip_plays_in_the_preview(page, server, tmp_path, artifacts_dir, shoot_node):
    webm = tmp_path / "clip-upload.webm"
    write_webm(server.base_dir / "input" / SERVER_CLIP, webm)
    node_id = page.evaluate(ADD_LOAD_VIDEO)
    # As a drop or paste on the node does: the upload widget posts the file, then sets the combo.
    page.evaluate("""([id, name, data]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        app.graph.getNodeById(id).pasteFiles([new File([bytes], name, {type: "video/webm"})]);
    }""", [node_id, webm.name, base64.b64encode(webm.read_bytes()).decode()])
    preview = wait_for_preview(page, node_id, webm.name, ready=True)
    uploaded = server.base_dir / "input" / webm.name
    assert uploaded.exists()
    assert preview["readyState"] >= 1  # HAVE_METADATA: the browser decoded the clip's header
    assert preview["info"] == expected_info(uploaded)
    # One preview: the upload widget's own one (a "video-preview" widget) stays off the node.
    widgets = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map(w => w.name)", node_id)
    assert "video-preview" not in widgets
    page.wait_for_timeout(500)  # a frame on screen for the screenshot
    shoot_node(node_id, artifacts_dir / "load_video_webm.png")
    assert page.our_errors() == []
