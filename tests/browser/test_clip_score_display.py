"""Level 4: a Video CLIP Score run queued from the page shows its numbers on the node."""
import pytest

pytestmark = pytest.mark.browser

BUILD_GRAPH = """() => {
    app.graph.clear();
    const video = tavGraph.add("TAVLoadVideo", [60, 120], {video: "clip.mp4", frame_count: 3, width: 64, height: 64});
    const score = tavGraph.add("TAVCLIPScore", [460, 120], {prompt: "a ball is rolling", clip_model: "tiny-clip-ui"});
    tavGraph.link(video, "IMAGE", score, "images");
    return score.id;
}"""


@pytest.fixture(scope="module")
def clip_model(server):
    pytest.importorskip("transformers")
    from tav_core.testing.clip_models import write_clip_model

    return write_clip_model(server.base_dir / "models" / "clip_scoring" / "tiny-clip-ui", "small", seed=2)


def test_scores_show_on_the_node(clip_model, page, server, artifacts_dir, shoot_node):
    score_id = page.evaluate(BUILD_GRAPH)
    shown = lambda: page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === "
                                  "'tav_clip_score').element.textContent", score_id)
    assert shown() == "The scores appear here after a run."
    page.evaluate("""() => { window.tavDone = null;
        const api = window.comfyAPI.api.api;
        for (const type of ["execution_error", "execution_success"])
            api.addEventListener(type, (e) => { window.tavDone = {type, detail: e.detail}; });
        return app.queuePrompt(0).then(() => { if (Object.keys(app.lastNodeErrors ?? {}).length)
            window.tavDone = {type: "validation_error", detail: app.lastNodeErrors}; }); }""")
    page.wait_for_function("() => window.tavDone", timeout=180_000)
    done = page.evaluate("() => window.tavDone")
    assert done["type"] == "execution_success", done
    page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'tav_clip_score')"
                           ".element.textContent.includes('frame consistency')", arg=score_id, timeout=30_000)
    prompt_id = done["detail"]["prompt_id"]
    numbers = server.history(prompt_id)["outputs"][str(score_id)]["clip_score"][0]
    assert shown() == (f"frame consistency: {numbers['frame_consistency']:.2f}\n"
                       f"text alignment: {numbers['text_alignment']:.2f}")
    shoot_node(score_id, artifacts_dir / "clip_score.png")
    assert page.our_errors() == []
