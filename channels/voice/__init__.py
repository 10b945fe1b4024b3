"""The voice channel: residents call 311 (Twilio Voice) or a call centre posts the transcript.

Webhooks (mounted at ``/channels/voice``): ``/incoming`` answers the call with TwiML (record
and transcribe, or live speech), ``/transcription`` and ``/speech`` turn what the caller said
into a ``RawContact``, and ``/transcripts`` takes a call centre's signed JSON transcript. The
caller's ticket goes back by SMS (through the sms channel) when ``sms_acknowledgement`` is on.
See docs/twilio.md.
"""

from channels.voice.config import VoiceConfig
from channels.voice.parse import (
    CallTranscript,
    ack_message,
    parse_speech,
    parse_transcript,
    parse_transcription,
    sign_transcript,
    verify_transcript,
)
from channels.voice.plugin import VoiceChannel

__all__ = [
    "CallTranscript",
    "VoiceChannel",
    "VoiceConfig",
    "ack_message",
    "parse_speech",
    "parse_transcript",
    "parse_transcription",
    "sign_transcript",
    "verify_transcript",
]
