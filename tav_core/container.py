"""Only a single local video container is decoded: no playlists, no references to other files.

FFmpeg (under OpenCV) decodes whatever its probe recognises: an HLS playlist or a concat script in
the input folder, whatever its name, makes it read (and decode pixel for pixel) files anywhere on
the server, or URLs; an image2 pattern reads an image sequence. Checking the name is not enough.
So the file is opened once, its demuxer is read with PyAV (installed with ComfyUI) on that very
open file, and only demuxers of self-contained video containers pass. The decoder then reads the
same open file (through /proc/self/fd where the system has it), so the file checked is the file
decoded even if the name is swapped in between.
"""
from __future__ import annotations

import contextlib
import os
import stat

# FFmpeg demuxer names (AVInputFormat.name) of single-file video containers, for the extensions
# Load Video lists. Deliberately absent: hls, concat, image2 and the *_pipe image demuxers, tee,
# and everything that is a protocol, a device or a script.
ALLOWED_DEMUXERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "gif"})


class ContainerError(ValueError):
    """The file is not a single local video container; the message says what to do."""


def _pinned_path(fd: int, path: str) -> str:
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else path


def _demuxer(source: str) -> tuple[str, int]:
    import av  # PyAV: ComfyUI's own video dependency

    try:
        with av.open(source, mode="r", options={"protocol_whitelist": "file"}) as container:
            return container.format.name, len(container.streams.video)
    except Exception as e:  # FFmpeg refused it: not a container we decode
        raise ContainerError(f"it is not a readable video ({type(e).__name__})") from e


@contextlib.contextmanager
def checked_video(path: str, display_name: str):
    """Yield a path to hand to the decoder, for the open file `path` after checking its demuxer.

    Raises ContainerError (naming `display_name`, never the server's path) for anything but a
    regular file holding one of ALLOWED_DEMUXERS' containers with a video stream.
    """
    try:
        # Non-blocking: a FIFO named like a clip must not hang the server; it is refused below.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
    except OSError as e:
        raise ContainerError(f"{display_name} cannot be opened ({e.strerror}).") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ContainerError(f"{display_name} is not a regular file.")
        source = _pinned_path(fd, path)
        try:
            demuxer, video_streams = _demuxer(source)
        except ContainerError as e:
            raise ContainerError(f"{display_name}: {e}. Re-encode it as H.264 MP4 and load that file.") from e
        if demuxer not in ALLOWED_DEMUXERS:
            raise ContainerError(
                f"{display_name} is a {demuxer!r} file, not a single video container (MP4, MOV, MKV, WebM, "
                "AVI or GIF). Playlists, concat lists, image sequences and files that point to other files "
                "are not loaded; re-encode the clip as H.264 MP4 and load that file.")
        if video_streams == 0:
            raise ContainerError(f"{display_name} holds no video stream. Load a video file.")
        yield source
    finally:
        os.close(fd)
