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
