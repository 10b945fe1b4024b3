"""Secrets in config: inline (``token: …``) or, preferred, from the environment (``token_env``).

Resolved when the config is validated, so a missing variable stops the process at start with a
message naming the field, instead of failing on the first resident's message.
"""

from __future__ import annotations

import os
import re

from pydantic import SecretStr

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_value(var: str, what: str) -> str:
    """The value of environment variable ``var``; ``what`` names the config field in errors."""
    if not _ENV_NAME.match(var):
        raise ValueError(f"{what}: {var!r} is not an environment variable name")
    value = os.environ.get(var, "")
    if not value:
        raise ValueError(f"{what}: environment variable {var} is not set or is empty")
    return value


def resolve_secret(
    value: SecretStr | None, env: str | None, what: str, *, required: bool = True
) -> SecretStr | None:
    """``what`` from an inline secret or ``<what>_env``, never both; None only if not required."""
    if value is not None and env is not None:
        raise ValueError(f"give '{what}_env' (preferred) or '{what}', not both")
    if env is not None:
        return SecretStr(env_value(env, f"{what}_env"))
    if value is None:
        if required:
            raise ValueError(f"'{what}' or '{what}_env' is required")
        return None
    if not value.get_secret_value():
        raise ValueError(f"'{what}' is empty")
    return value
