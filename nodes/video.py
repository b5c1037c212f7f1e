"""Load Video node: a thin V3 wrapper over tav_core.video."""
import os

import folder_paths
import torch
from comfy_api.latest import InputImpl, io

from ..tav_core import video as clip_io
from ..tav_core import video_av

PREFIX = "Load Video (Tune-A-Video): "


def _input_videos():
    return clip_io.list_input_videos(folder_paths.get_input_directory())


def _resolve(video):
    return clip_io.resolve_input_path(video, folder_paths.get_input_directory())


_NOT_CONNECTED = object()


def _audio(samples, sample_rate):
    return None if samples is None else {"waveform": torch.as_tensor(samples)[None], "sample_rate": sample_rate}


def _file_audio(source, source_fps, frame_count, selection):
    """The audio under the loaded frames (frame_count: how many loaded; selection's may be 0, "to the end")."""
    start_frame, frame_stride = selection[1:3]
    found = video_av.read_audio(source, *video_av.excerpt_seconds(source_fps, start_frame, frame_count, frame_stride))
    return None if found is None else _audio(*found)


def _from_video_input(video_input, selection):
    """Frames, fps after the stride and audio of a core VIDEO: files streamed, decoded frames selected."""
    frame_stride = selection[2]
    if isinstance(video_input, InputImpl.VideoFromComponents):
        components = video_input.get_components()
        source_fps = float(components.frame_rate)
        frames = video_av.select_frames(components.images, *selection)
        audio = components.audio
        if audio is not None:
            start, duration = video_av.excerpt_seconds(source_fps, selection[1], len(frames), frame_stride)
            audio = _audio(video_av.trim_audio(audio["waveform"][0], audio["sample_rate"], start, duration),
                           audio["sample_rate"])
    else:
        source = video_input.get_stream_source()
        frames, source_fps = video_av.read_stream(source, *selection)
        audio = _file_audio(source, source_fps, len(frames), selection)
    return frames, source_fps / frame_stride, audio


class LoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVLoadVideo",
            display_name="Load Video (Tune-A-Video)",
            category="Tune-A-Video",
            description="Loads a short excerpt of a clip from ComfyUI's input folder as frames for "
                        "Tune-A-Video: picks every frame_stride-th frame from start_frame and resizes each to width x height.",
            inputs=[
                io.Combo.Input("video", options=_input_videos(), upload=io.UploadType.video,
                               tooltip="Video file in ComfyUI's input folder; use the upload button to add one."),
                io.Int.Input("frame_count", default=24, min=0,
                             tooltip="How many frames to load; 0 loads every frame to the end of the clip (after "
                                     "start_frame and frame_stride). Tune-A-Video tunes on 8 to 24 frames; longer "
                                     "clips want window_frames on One-Shot Tune, DDIM Invert and Video Sample. An "
                                     "excerpt that would not fit in memory is refused before decoding."),
                io.Int.Input("start_frame", default=0, min=0, tooltip="Index of the first frame to load (0 = first frame of the clip)."),
                io.Int.Input("frame_stride", default=2, min=1,
                             tooltip="Take every n-th frame: 1 keeps every frame, 2 every other one (covers twice the time)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=64,
                             tooltip="Output width in pixels, a multiple of 64 (what every SD UNet takes)."),
                io.Int.Input("height", default=512, min=64, max=4096, step=64,
                             tooltip="Output height in pixels, a multiple of 64 (what every SD UNet takes)."),
                io.Combo.Input("resize_mode", options=list(clip_io.RESIZE_MODES), default="center crop",
                               tooltip="center crop: fill the frame and cut the overflow; stretch: distort to fit; "
                                       "pad: fit inside and add black bars."),
                io.Video.Input("video_input", optional=True,
                               tooltip="Optional VIDEO (core Load Video or any node that makes one). When connected, "
                                       "the frames come from it and the video file above is not used."),
            ],
            outputs=[
                io.Image.Output(tooltip="The loaded frames as an image batch, one image per frame."),
                io.Int.Output("loaded_frame_count", display_name="frame_count", tooltip="Number of frames loaded."),
                io.Float.Output("fps", display_name="fps", tooltip="Frame rate of the loaded frames: the clip's fps divided by frame_stride."),
                io.Audio.Output("audio", display_name="audio",
                                tooltip="The clip's sound over the loaded excerpt, for core Create Video; "
                                        "nothing when the clip has no audio track."),
            ],
        )

    @classmethod
    def execute(cls, video, frame_count, start_frame, frame_stride, width, height, resize_mode,
                video_input=None) -> io.NodeOutput:
        selection = (frame_count, start_frame, frame_stride, width, height, resize_mode)
        try:
            if video_input is None:
                path = _resolve(video)
                frames, fps = clip_io.read_clip(path, *selection)
                audio = _file_audio(path, fps * frame_stride, len(frames), selection)
            else:
                frames, fps, audio = _from_video_input(video_input, selection)
        except clip_io.ClipError as e:
            raise ValueError(PREFIX + str(e)) from e
        return io.NodeOutput(torch.from_numpy(frames), len(frames), fps, audio)

    @classmethod
    def fingerprint_inputs(cls, video, video_input=None, **kwargs):
        if video_input is not None:
            return ""  # the connected node's own changes re-run this one
        try:
            return clip_io.file_fingerprint(_resolve(video))
        except (clip_io.ClipError, OSError) as e:
            # Changes whenever the problem changes; execute then reports it.
            return str(e)

    @classmethod
    def validate_inputs(cls, video, width=None, height=None, video_input=_NOT_CONNECTED):
        # width/height are None when linked from another node; execute checks them then. A connected
        # video_input is None here (not yet computed), an unconnected one is absent.
        if not isinstance(video, str):
            return f"{PREFIX}video must be a file name from the list, not {type(video).__name__} {video!r}."
        try:
            if video_input is _NOT_CONNECTED and not os.path.isfile(_resolve(video)):
                return f"{PREFIX}Video file not found: {video}. Upload it or pick a file from the list."
            if width is not None and height is not None:
                # Declaring width/height here turns off ComfyUI's own min/max check for them.
                if not (64 <= width <= 4096 and 64 <= height <= 4096):
                    return f"{PREFIX}width and height must be 64 to 4096; got {width}x{height}. Pick a size in that range."
                clip_io.check_size(width, height)
        except clip_io.ClipError as e:
            return PREFIX + str(e)
        return True


NODES = [LoadVideo]
