"""A real IMAP conversation: a small IMAP4rev1 server speaks to the channel's poller (imaplib)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from channels.email import EmailConfig
from schemas import make_contact_id
from tests.unit.test_email_support import email_config, harness, make_message

USER, PASSWORD = "311@city.example", "imap-secret"


@dataclass
class FakeImapServer:
    """Enough IMAP4rev1 for LOGIN, EXAMINE/SELECT, UID SEARCH, UID FETCH, LOGOUT."""

    messages: dict[int, bytes] = field(default_factory=dict)
    uidvalidity: int = 42
    port: int = 0
    commands: list[str] = field(default_factory=list)
    sessions: int = 0

    def add(self, raw: bytes) -> int:
        uid = max(self.messages, default=0) + 1
        self.messages[uid] = raw
        return uid

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        writer.write(b"* OK fake IMAP4rev1 server ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
                command, _, args = rest.partition(" ")
                command = command.upper()
                self.commands.append(f"{command} {args}".strip() if command != "LOGIN" else "LOGIN")
                if command == "CAPABILITY":
                    writer.write(b"* CAPABILITY IMAP4rev1\r\n" + f"{tag} OK done\r\n".encode())
                elif command == "LOGIN":
                    user, _, password = args.partition(" ")
                    ok = user.strip('"') == USER and password.strip('"') == PASSWORD
                    writer.write(f"{tag} {'OK' if ok else 'NO'} login\r\n".encode())
                elif command in ("SELECT", "EXAMINE"):
                    writer.write(
                        f"* {len(self.messages)} EXISTS\r\n* 0 RECENT\r\n"
                        f"* OK [UIDVALIDITY {self.uidvalidity}] UIDs valid\r\n"
                        f"* OK [UIDNEXT {max(self.messages, default=0) + 1}] next\r\n"
                        f"{tag} OK [READ-ONLY] {command} done\r\n".encode()
                    )
                elif command == "UID":
                    writer.write(self._uid(tag, args))
                elif command == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK logout\r\n".encode())
                    await writer.drain()
                    break
                else:
                    writer.write(f"{tag} BAD unknown command\r\n".encode())
                await writer.drain()
        finally:
            writer.close()

    def _uid(self, tag: str, args: str) -> bytes:
        sub, _, rest = args.partition(" ")
        uids = sorted(self.messages)
        if sub.upper() == "SEARCH":
            found = uids
            match = re.match(r"UID (\d+):\*", rest, re.IGNORECASE)
            if match:
                start = int(match.group(1))
                # RFC 3501: "n:*" always includes the highest UID, even when it is below n.
                found = [u for u in uids if u >= start] or uids[-1:]
            return f"* SEARCH {' '.join(map(str, found))}\r\n{tag} OK search\r\n".encode()
        if sub.upper() == "FETCH":
            uid_text, _, items = rest.partition(" ")
            uid = int(uid_text)
            if uid not in self.messages:
                return f"{tag} OK fetch\r\n".encode()
            seq = uids.index(uid) + 1
            raw = self.messages[uid]
            if "RFC822.SIZE" in items.upper():
                return f"* {seq} FETCH (UID {uid} RFC822.SIZE {len(raw)})\r\n{tag} OK fetch\r\n".encode()
            return (
                f"* {seq} FETCH (UID {uid} BODY[] {{{len(raw)}}}\r\n".encode()
                + raw
                + f")\r\n{tag} OK fetch\r\n".encode()
            )
        return f"{tag} BAD unknown UID command\r\n".encode()


@contextlib.asynccontextmanager
async def imap_server() -> AsyncIterator[FakeImapServer]:
    fake = FakeImapServer()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


def imap_config(port: int, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": USER,
        "password": PASSWORD,
        "first_run": "all",
        "poll_interval_s": 0.05,
        "timeout_s": 5,
    }
    config.update(overrides)
    return config


def mail(n: int, headers: dict[str, str] | None = None) -> bytes:
    text = f"Pothole number {n} at {n} Main Street"
    return bytes(make_message(text, message_id=f"<i{n}@example.org>", headers=headers))


async def test_poll_publishes_new_mail_and_checkpoint_survives_restart(tmp_path: Path) -> None:
    async with imap_server() as server:
        server.add(mail(1))
        server.add(mail(2, headers={"Auto-Submitted": "auto-replied"}))
        server.add(mail(3))
        async with harness(tmp_path, start=False, smtp=None, imap=imap_config(server.port)) as h:
            assert h.channel.imap is not None
            assert await h.channel.imap.poll_once() == 3
            assert [c.contact_id for c in h.publisher.contacts] == [
                make_contact_id("email", "i1@example.org"),
                make_contact_id("email", "i3@example.org"),
            ]
            assert all(c.metadata["source"] == "imap" for c in h.publisher.contacts)
            assert h.channel.stats.auto_ignored == 1
            assert len(h.outbox.messages) == 2
            assert await h.channel.imap.poll_once() == 0
        # The mailbox is read-only to us: EXAMINE and BODY.PEEK, never a flag change.
        assert any(c.startswith("EXAMINE") for c in server.commands)
        assert not any(c.startswith(("STORE", "SELECT")) for c in server.commands)
        assert any("BODY.PEEK[]" in c for c in server.commands)

        async with harness(tmp_path, start=False, smtp=None, imap=imap_config(server.port)) as restarted:
            assert restarted.channel.imap is not None
            assert await restarted.channel.imap.poll_once() == 0
            assert restarted.publisher.contacts == []
            server.add(mail(4))
            assert await restarted.channel.imap.poll_once() == 1
            assert [c.contact_id for c in restarted.publisher.contacts] == [
                make_contact_id("email", "i4@example.org")
            ]


async def test_publish_failure_keeps_the_checkpoint_before_the_message(tmp_path: Path) -> None:
    async with imap_server() as server:
        for n in (1, 2):
            server.add(mail(n))
        async with harness(tmp_path, start=False, smtp=None, imap=imap_config(server.port)) as h:
            assert h.channel.imap is not None
            h.publisher.fail_next = 1
            assert await h.channel.imap.poll_once() == 0
            assert h.publisher.contacts == []
            assert h.channel.imap.last_error
            assert await h.channel.imap.poll_once() == 2
            assert len(h.publisher.contacts) == 2


async def test_uidvalidity_change_rereads_the_folder(tmp_path: Path) -> None:
    async with imap_server() as server:
        server.add(mail(1))
        async with harness(tmp_path, start=False, smtp=None, imap=imap_config(server.port)) as h:
            assert h.channel.imap is not None
            await h.channel.imap.poll_once()
            server.uidvalidity = 43
            assert await h.channel.imap.poll_once() == 1
            # Same Message-ID, same contact id: downstream dedupes the re-read.
            assert len({c.contact_id for c in h.publisher.contacts}) == 1


async def test_first_run_new_skips_existing_mail(tmp_path: Path) -> None:
    async with imap_server() as server:
        server.add(mail(1))
        server.add(mail(2))
        async with harness(
            tmp_path, start=False, smtp=None, imap=imap_config(server.port, first_run="new")
        ) as h:
            assert h.channel.imap is not None
            assert await h.channel.imap.poll_once() == 0
            server.add(mail(3))
            assert await h.channel.imap.poll_once() == 1
            assert [c.contact_id for c in h.publisher.contacts] == [
                make_contact_id("email", "i3@example.org")
            ]


async def test_oversize_message_is_skipped_and_batches_continue(tmp_path: Path) -> None:
    async with imap_server() as server:
        server.add(mail(1))
        server.add(bytes(make_message("x" * 30_000, message_id="<big@example.org>")))
        for n in (3, 4, 5):
            server.add(mail(n))
        imap = imap_config(server.port, batch=2)
        async with harness(tmp_path, start=False, smtp=None, imap=imap, max_message_bytes=20_000) as h:
            assert h.channel.imap is not None
            assert await h.channel.imap.poll_once() == 5
            assert len(h.publisher.contacts) == 4
            assert h.channel.stats.rejected == 1
            assert server.sessions >= 3  # three sessions of at most two messages each


async def test_background_poller_and_health(tmp_path: Path) -> None:
    async with imap_server() as server:
        server.add(mail(1))
        async with harness(tmp_path, smtp=None, imap=imap_config(server.port)) as h:
            for _ in range(100):
                if h.publisher.contacts:
                    break
                await asyncio.sleep(0.05)
            assert len(h.publisher.contacts) == 1
            health = await h.channel.health()
            assert health.ok and "imap: polling" in health.detail


async def test_wrong_password_is_reported_by_health(tmp_path: Path) -> None:
    async with imap_server() as server:
        imap = imap_config(server.port, password="wrong")
        async with harness(tmp_path, smtp=None, imap=imap) as h:
            assert h.channel.imap is not None
            for _ in range(100):
                if h.channel.imap.last_error:
                    break
                await asyncio.sleep(0.05)
            health = await h.channel.health()
            assert not health.ok and "imap: error" in health.detail
            assert "wrong" not in health.detail and PASSWORD not in health.detail


def test_imap_needs_a_password() -> None:
    imap = imap_config(1)
    imap.pop("password")
    with pytest.raises(ValidationError, match="password"):
        EmailConfig.model_validate(email_config(imap=imap))
