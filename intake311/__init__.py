"""intake311's shared runtime: settings, the Kafka bus, logging, dedupe and the CLI.

Every stage (channels, normalizer, router, sinks) builds on this package and on ``schemas``.
"""

__version__ = "0.1.0"
