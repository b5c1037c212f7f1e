"""HTTP routes of the pack, for its frontend (web/js).

GET /tuneavideo/clip_info?filename=NAME (also under /api): the frame count, fps and size of a clip in
ComfyUI's input folder, shown under Load Video's preview so that frame_count, start_frame and
frame_stride can be chosen knowing the clip.
"""
import asyncio
import sys

import folder_paths
from aiohttp import web

from ..tav_core import video as clip_io

_registered = False


async def clip_info(request: web.Request) -> web.Response:
    name = request.rel_url.query.get("filename", "")
    if not name:
        return web.json_response({"error": "Pass the clip's name as ?filename=."}, status=400)
    try:
        path = clip_io.resolve_input_path(name, folder_paths.get_input_directory())
        # OpenCV blocks while it opens the file: keep the server's event loop free.
        info = await asyncio.to_thread(clip_io.probe_clip, path)
    except clip_io.ClipError as e:  # its messages name the clip, never the server's folders
        return web.json_response({"error": str(e)}, status=400)
    except OSError as e:  # e.g. the file vanished meanwhile; no server path in the answer
        return web.json_response({"error": f"{name!r} cannot be read ({e.strerror})."}, status=400)
    return web.json_response({"frame_count": info.frame_count, "fps": info.fps,
                              "width": info.width, "height": info.height})


def register() -> None:
    """Add the routes to ComfyUI's server, once; without a running server (in-process tests) do nothing."""
    global _registered
    # A running ComfyUI imported its server module before loading custom nodes; in-process use
    # (tests, scripts) has none, and importing it there would start building one.
    server_module = sys.modules.get("server")
    server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if _registered or server is None:
        return
    server.routes.get("/tuneavideo/clip_info")(clip_info)
    _registered = True
