"""The pack's HTTP routes on a real server: /tuneavideo/clip_info, which Load Video's preview reads."""
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tav_core.video import probe_clip

SERVER_CLIP = "clip.mp4"  # copied into the server's input folder by tests/conftest.py


def clip_info(server, filename, prefix=""):
    """(status, JSON body) of GET {prefix}/tuneavideo/clip_info?filename=..."""
    query = "" if filename is None else "?" + urllib.parse.urlencode({"filename": filename})
    try:
        with urllib.request.urlopen(f"{server.url}{prefix}/tuneavideo/clip_info{query}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("prefix", ["", "/api"])  # the frontend's api.fetchApi uses /api
def test_clip_info_reports_the_probe(server, prefix):
    truth = probe_clip(server.base_dir / "input" / SERVER_CLIP)
    status, body = clip_info(server, SERVER_CLIP, prefix)
    assert status == 200
    assert body == {"frame_count": truth.frame_count, "fps": truth.fps, "width": truth.width, "height": truth.height}


@pytest.mark.parametrize("filename, expected", [
    ("../../etc/passwd", "not inside ComfyUI's input folder"),
    ("/etc/passwd", "not inside ComfyUI's input folder"),
    ("missing.mp4", "not found"),
    ("", "filename"),
    (None, "filename"),
])
def test_clip_info_refuses_bad_names(server, filename, expected):
    status, body = clip_info(server, filename)
    assert status == 400
    assert expected in body["error"]


def test_clip_info_refuses_an_unreadable_file(server):
    broken = server.base_dir / "input" / "not-a-video.mp4"
    broken.write_bytes(b"this is no video")
    try:
        status, body = clip_info(server, broken.name)
    finally:
        broken.unlink()
    assert status == 400
    assert "not a readable video" in body["error"] or "no decodable frames" in body["error"]


def test_clip_info_answers_400_for_a_nul_byte(server):
    with urllib.request.urlopen(f"{server.url}/system_stats", timeout=30):
        pass
    try:
        urllib.request.urlopen(f"{server.url}/tuneavideo/clip_info?filename=%00", timeout=30)
    except urllib.error.HTTPError as e:
        status, body = e.code, json.loads(e.read())
    assert status == 400 and "input folder" in body["error"]


@pytest.fixture
def playlist_to_outside(server, tmp_path):
    """An HLS playlist in the input folder naming a real clip outside it (was decoded pixel for pixel)."""
    from tav_core.video import write_synthetic_clip

    secret = tmp_path / "secret.mp4"
    write_synthetic_clip(secret, frames=12, size=(192, 64))
    playlist = server.base_dir / "input" / "playlist.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n")
    yield playlist, secret
    playlist.unlink()


def test_clip_info_refuses_a_playlist_to_a_file_outside(server, playlist_to_outside):
    playlist, secret = playlist_to_outside
    status, body = clip_info(server, playlist.name)
    assert status == 400
    assert "not a single video container" in body["error"] or "not a readable video" in body["error"]
    assert str(secret) not in body["error"] and str(server.base_dir) not in body["error"]


def test_load_video_refuses_a_playlist_to_a_file_outside(server, playlist_to_outside):
    from tav_core.testing.server import PromptFailed

    playlist, secret = playlist_to_outside
    prompt = {"1": {"class_type": "TAVLoadVideo", "inputs": {
                  "video": playlist.name, "frame_count": 4, "start_frame": 0, "frame_stride": 1, "width": 64,
                  "height": 64, "resize_mode": "center crop"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(PromptFailed, match="not a single video container|not a readable video") as error:
        server.run(prompt, timeout=120)
    assert str(secret) not in str(error.value)
