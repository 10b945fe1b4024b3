"""IMAP polling of an existing mailbox, for cities that cannot point mail at a listener.

Each poll is one short IMAP session (stdlib ``imaplib`` in a worker thread): EXAMINE the folder
read-only, ``UID SEARCH`` past the checkpoint, fetch a batch, log out. Messages are then
published in UID order and the checkpoint (UIDVALIDITY + last UID, SQLite under data_dir) moves
past each one only once it is on Kafka; a broker outage stops the batch and the next poll
resumes there. If the server changes UIDVALIDITY the folder is read again from the start:
contact ids derive from Message-IDs, so what was already published dedupes downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import ssl
import time
from dataclasses import dataclass, field

from channels.email.config import ImapConfig
from channels.email.intake import EmailIntake, EmailStats, TemporaryFailure
from channels.email.state import EmailState
from intake311.logging import get_logger

log = get_logger("channels.email.imap")

_SIZE = re.compile(rb"RFC822\.SIZE\s+(\d+)")


@dataclass
class Fetched:
    uidvalidity: int
    messages: list[tuple[int, bytes | None]] = field(default_factory=list)  # None: too large
    more: bool = False


class ImapError(Exception):
    """The server refused a command (login, select, fetch)."""


def _ok(typ: str, data: object, what: str) -> None:
    if typ != "OK":
        raise ImapError(f"IMAP {what} failed: {typ}")


def _quote(mailbox: str) -> str:
    return '"' + mailbox + '"'


class ImapPoller:
    """Polls one folder every ``poll_interval_s``; ``poll_once`` is the unit tests drive."""

    def __init__(
        self,
        config: ImapConfig,
        intake: EmailIntake,
        state: EmailState,
        stats: EmailStats,
        *,
        max_bytes: int,
    ) -> None:
        self.config = config
        self.intake = intake
        self.state = state
        self.stats = stats
        self.max_bytes = max_bytes
        self.mailbox = f"{config.username}@{config.host}:{config.imap_port}/{config.folder}"
        self._task: asyncio.Task[None] | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.polls = 0

    # one IMAP session, in a thread --------------------------------------------------------------

    def _connect(self) -> imaplib.IMAP4:
        c = self.config
        if c.security == "ssl":
            return imaplib.IMAP4_SSL(
                c.host, c.imap_port, ssl_context=ssl.create_default_context(), timeout=c.timeout_s
            )
        imap = imaplib.IMAP4(c.host, c.imap_port, timeout=c.timeout_s)
        if c.security == "starttls":
            imap.starttls(ssl.create_default_context())
        return imap

    def fetch_batch(self) -> Fetched:
        """Log in, read what is past the checkpoint (at most ``batch`` messages), log out."""
        imap = self._connect()
        try:
            _ok(*imap.login(self.config.username, self.config.secret.get_secret_value()), "LOGIN")
            _ok(*imap.select(_quote(self.config.folder), readonly=True), "EXAMINE")
            _, validity = imap.response("UIDVALIDITY")
            if not validity or validity[0] is None:
                raise ImapError("server sent no UIDVALIDITY")
            uidvalidity = int(validity[0])
            checkpoint = self.state.checkpoint(self.mailbox)
            if checkpoint is None or checkpoint.uidvalidity != uidvalidity:
                if checkpoint is not None:
                    log.warning(
                        "IMAP UIDVALIDITY changed; reading the folder again", folder=self.config.folder
                    )
                    last = 0
                elif self.config.first_run == "new":
                    last = max(self._search(imap, "ALL"), default=0)
                    self.state.save_checkpoint(self.mailbox, uidvalidity, last)
                    log.info(
                        "IMAP first run: existing mail skipped", folder=self.config.folder, last_uid=last
                    )
                    return Fetched(uidvalidity)
                else:
                    last = 0
            else:
                last = checkpoint.last_uid
            uids = sorted(u for u in self._search(imap, f"UID {last + 1}:*") if u > last)
            fetched = Fetched(uidvalidity, more=len(uids) > self.config.batch)
            for uid in uids[: self.config.batch]:
                fetched.messages.append((uid, self._fetch(imap, uid)))
            return fetched
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def _search(self, imap: imaplib.IMAP4, criteria: str) -> list[int]:
        typ, data = imap.uid("SEARCH", *criteria.split())
        _ok(typ, data, "UID SEARCH")
        return [int(x) for chunk in data if chunk for x in chunk.split()]

    def _fetch(self, imap: imaplib.IMAP4, uid: int) -> bytes | None:
        typ, data = imap.uid("FETCH", str(uid), "(RFC822.SIZE)")
        _ok(typ, data, "UID FETCH size")
        header = b" ".join(d if isinstance(d, bytes) else d[0] for d in data if d)
        size = _SIZE.search(header)
        if size and int(size.group(1)) > self.max_bytes:
            return None
        typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        _ok(typ, data, "UID FETCH body")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return item[1]
        raise ImapError(f"UID FETCH {uid}: no message body in the response")

    # async side ---------------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """Publish everything new; returns how many messages were handled (any outcome)."""
        handled = 0
        while True:
            fetched = await asyncio.to_thread(self.fetch_batch)
            for uid, raw in fetched.messages:
                if raw is None:
                    self.stats.rejected += 1
                    log.warning("IMAP message over the size limit skipped", uid=uid, limit=self.max_bytes)
                else:
                    try:
                        await self.intake.ingest_bytes(raw, source="imap", mailbox=self.config.folder)
                    except TemporaryFailure:
                        # The checkpoint stays before this message: the next poll retries it.
                        self.last_error = "publish failed; retrying at the next poll"
                        return handled
                await self.state.run(self.state.save_checkpoint, self.mailbox, fetched.uidvalidity, uid)
                handled += 1
            self.polls += 1
            self.last_success = time.time()
            self.last_error = None
            if not fetched.more:
                return handled

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("IMAP poll failed", error=type(exc).__name__, detail=str(exc)[:200])
            await asyncio.sleep(self.config.poll_interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="email-imap-poller")
            log.info("IMAP poller started", host=self.config.host, folder=self.config.folder)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Running, and a poll succeeded within three intervals (or none has finished yet)."""
        if not self.running:
            return False
        if self.last_success is None:
            return self.last_error is None
        return time.time() - self.last_success < 3 * self.config.poll_interval_s + self.config.timeout_s
