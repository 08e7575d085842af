"""Media I/O: ffprobe, streamed ffmpeg decode to float32, AudioConfig-driven ffmpeg encode."""
from .decode import decode_stream, load_audio
from .encode import EncodeSettings, Encoder, encode_array, resolve_encoding
from .ffmpeg import FFmpegNotFound, ffmpeg_exe, ffprobe_exe, has_encoder
from .probe import AudioStream, MediaProbe, media_info, outputs_media_info, probe

__all__ = [
    "probe", "MediaProbe", "AudioStream", "media_info", "outputs_media_info",
    "decode_stream", "load_audio",
    "resolve_encoding", "EncodeSettings", "Encoder", "encode_array",
    "ffmpeg_exe", "ffprobe_exe", "has_encoder", "FFmpegNotFound",
]
