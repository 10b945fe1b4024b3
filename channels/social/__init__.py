"""Social-media channels: residents mention the city's account, get a ticket in reply.

Every network (X, Mastodon) is a ``SocialNetwork`` adapter that only speaks its provider's
API; ``SocialChannel`` does the 311 part once for all of them (checkpoint, rate limits,
tickets, follow-ups, privacy-safe replies). See ``docs/social.md``.
"""

from channels.social.base import (
    MediaRef,
    Mention,
    MentionPage,
    RateLimit,
    RateLimited,
    SocialChannel,
    SocialConfig,
    SocialError,
    SocialNetwork,
)

__all__ = [
    "MediaRef",
    "Mention",
    "MentionPage",
    "RateLimit",
    "RateLimited",
    "SocialChannel",
    "SocialConfig",
    "SocialError",
    "SocialNetwork",
]
