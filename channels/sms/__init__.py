"""The SMS channel: residents text 311 through Twilio and get their ticket back at once.

Webhooks (mounted at ``/channels/sms``): ``POST /inbound`` (Twilio "A message comes in") and
``POST /status`` (delivery status callbacks), both checked against ``X-Twilio-Signature``.
Outbound messages queued on ``intake311.outbound.sms`` are sent with the Twilio REST API,
never to a number that texted STOP. See docs/twilio.md.
"""

from channels.sms.config import SmsConfig, TwilioWebhookConfig
from channels.sms.dialogue import Outcome, SmsDialogue
from channels.sms.location import find_location, has_location
from channels.sms.parse import Keyword, keyword, parse_sms
from channels.sms.plugin import SmsChannel
from channels.sms.signing import TwilioSignature

__all__ = [
    "Keyword",
    "Outcome",
    "SmsChannel",
    "SmsConfig",
    "SmsDialogue",
    "TwilioSignature",
    "TwilioWebhookConfig",
    "find_location",
    "has_location",
    "keyword",
    "parse_sms",
]
