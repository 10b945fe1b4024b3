"""The ``intake311`` command: run the pipeline or one stage, submit a report, watch a topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from typer.core import TyperGroup

from intake311.embedded import embedded_bootstrap_file
from intake311.logging import configure_logging
from intake311.pipeline import ALL, WEB, serve
from intake311.settings import Settings, load_settings

if TYPE_CHECKING:
    # Typer vendors click (0.27): its groups take this Context, not the click package's.
    from typer._click.core import Context as ClickContext

# The settings the running command loaded (``_settings``), to name the setting an error is about.
_loaded: Settings | None = None


def setting_of(settings: Settings | None, filename: str | os.PathLike[str]) -> str | None:
    """The dotted name of the setting (``subscriptions_file``, ``geo.boundaries.ward``) whose
    value is ``filename``, if any: a missing file is reported as the setting to fix."""
    if settings is None:
        return None
    wanted = Path(filename).expanduser().absolute()

    def walk(value: Any, name: str) -> str | None:
        if isinstance(value, Path):
            return name if value.expanduser().absolute() == wanted else None
        if isinstance(value, BaseModel):
            items: Any = ((k, getattr(value, k)) for k in type(value).model_fields)
        elif isinstance(value, dict):
            items = value.items()
        else:
            return None
        for key, item in items:
            if found := walk(item, f"{name}.{key}" if name else str(key)):
                return found
        return None

    return walk(settings, "")


def config_error_line(exc: BaseException, settings: Settings | None) -> str | None:
    """One line for an error in the configuration (None: not one, let it raise).

    A file a setting names that cannot be read (``OSError`` with a filename), TLS material that
    does not load, and invalid values (``ValueError``: pydantic's errors and the validators',
    which already name their field) are the operator's to fix, and a traceback hid the one
    line that says which setting.
    """
    # A loader that wraps the OSError (``ValueError("routing table …") from exc``) still names a
    # file a setting gave: report it as that setting.
    cause: BaseException | None = exc
    while cause is not None:
        if (
            isinstance(cause, OSError)
            and cause.filename is not None
            and not isinstance(cause, ConnectionError)
        ):
            name = setting_of(settings, cause.filename)
            if name is not None or cause is exc:
                what = cause.strerror or type(cause).__name__
                return f"configuration error: {name + ': ' if name else ''}{cause.filename}: {what}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, ssl.SSLError):
        return f"configuration error: kafka TLS settings: {exc}"
    if isinstance(exc, ValueError):
        text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        return f"configuration error: {text[:500] or type(exc).__name__}"
    return None


class _Commands(TyperGroup):
    """Every command (and every sub-command group) runs through here, so a configuration error
    raised anywhere (loading settings, opening a file a setting names, building a Kafka client)
    ends as one line and exit status 2, not a traceback."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            line = config_error_line(exc, _loaded)
            if line is None:
                raise
            typer.echo(line, err=True)
            raise typer.Exit(2) from exc


app = typer.Typer(
    help="intake311: multi-channel 311 intake over Kafka.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Commands,
)
schemas_app = typer.Typer(help="The event contracts.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file", exists=True)]


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except Exception as exc:  # a settings error is the operator's to fix: say it plainly
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    global _loaded
    _loaded = settings
    return settings


def _utc(value: datetime) -> datetime:
    """Dates typed on the command line are UTC unless they say otherwise."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _embedded_if_running(settings: Settings) -> list[str]:
    file = embedded_bootstrap_file(settings)
    return file.read_text().split() if file.is_file() else []


def _client_bootstrap(settings: Settings) -> list[str]:
    """The cluster for client commands: configured, or the embedded one ``up`` announced."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    file = embedded_bootstrap_file(settings)
    if file.is_file():
        return file.read_text().split()
    typer.echo(
        "no Kafka configured and no running `intake311 up` found "
        f"({file} missing); start `intake311 up` first",
        err=True,
    )
    raise typer.Exit(2)


def _announce(settings: Settings, stages: tuple[str, ...]) -> None:
    lines = ["intake311 is running:"]
    if WEB in stages:
        base = settings.web.public_url
        lines += [
            f"  resident form    {base}/",
            f"  Open311 API      {base}/open311/v2/services.json",
            f"  AsyncAPI docs    {base}/docs/asyncapi",
        ]
        if settings.console.operators or settings.console.session_secret is not None:
            lines.append(f"  operator console {base}/console/")
    lines.append(f"  department files {settings.data_dir.resolve() / 'departments'}/<department>.jsonl")
    typer.echo("\n".join(lines), err=True)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a dependency on CPython/Linux), else asyncio's.

    The stages run inside ``asyncio.run``, so uvicorn's own ``loop="auto"`` never applies:
    the loop is chosen here, for every stage (issue 12: about a quarter less CPU per POST).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(settings: Settings, stages: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, stages, on_ready=lambda: _announce(settings, stages)))


EphemeralOpt = Annotated[
    bool,
    typer.Option(
        "--ephemeral",
        help="embedded broker in memory: nothing kept after exit (default: durable, under DATA_DIR/broker)",
    ),
]


def _storage(settings: Settings, ephemeral: bool) -> Settings:
    """``--ephemeral`` wins over ``kafka.embedded_storage`` (it only matters without bootstrap servers)."""
    if not ephemeral:
        return settings
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"embedded_storage": "memory"})}
    )


@app.command()
def up(config: ConfigOpt = None, ephemeral: EphemeralOpt = False) -> None:
    """Everything in one process: embedded broker (if none configured), web, normalizer, router, sinks."""
    _run(_storage(_settings(config), ephemeral), ALL)


@app.command()
def run(
    stage: Annotated[str, typer.Argument(help=f"one of: {', '.join(ALL)}")],
    config: ConfigOpt = None,
    ephemeral: EphemeralOpt = False,
) -> None:
    """One stage alone, as a member of its consumer group (start more to scale out)."""
    if stage not in ALL:
        typer.echo(f"unknown stage {stage!r}; choose one of: {', '.join(ALL)}", err=True)
        raise typer.Exit(2)
    _run(_storage(_settings(config), ephemeral), (stage,))


@app.command()
def submit(
    text: Annotated[str, typer.Argument(help="what the resident reported")],
    address: Annotated[str | None, typer.Option(help="where it is")] = None,
    service: Annotated[str | None, typer.Option(help="service code, if known")] = None,
    config: ConfigOpt = None,
) -> None:
    """Report something as an operator would from the phone: prints the ticket number."""
    from channels.operator import operator_contact

    settings = _settings(config)
    contact = operator_contact(
        text, address=address, service_code=service, provider_id=str(uuid.uuid4()), now=datetime.now(UTC)
    )

    async def publish() -> None:
        from channels.base import KafkaContactPublisher
        from intake311.bus import make_broker

        broker = make_broker(settings.kafka, _client_bootstrap(settings))
        await broker.connect()
        try:
            await KafkaContactPublisher(broker, settings.topics).publish(contact)
        finally:
            await broker.stop()

    asyncio.run(publish())
    typer.echo(contact.request_id)


@app.command()
def tail(
    topic: Annotated[
        str,
        typer.Argument(
            help="requests, deadletter, status, contacts:CHANNEL, outbound:CHANNEL, department:ID,"
            " or a full topic name"
        ),
    ],
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="replay the topic")] = False,
    limit: Annotated[int | None, typer.Option(help="stop after N events")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print events on a topic as JSON lines as they pass."""
    from intake311.ops import tail_consumer

    settings = _settings(config)
    try:
        name = resolve_topic(settings, topic)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    bootstrap = _client_bootstrap(settings)

    async def follow() -> None:
        consumer = tail_consumer(settings, bootstrap, name, from_beginning=from_beginning)
        await consumer.start()
        seen = 0
        try:
            async for record in consumer:
                try:
                    value = json.loads(record.value or b"null")
                except ValueError:
                    value = (record.value or b"").decode(errors="replace")
                sys.stdout.write(
                    json.dumps(
                        {
                            "topic": record.topic,
                            "key": (record.key or b"").decode(errors="replace"),
                            "offset": record.offset,
                            "value": value,
                        }
                    )
                    + "\n"
                )
                sys.stdout.flush()
                seen += 1
                if limit is not None and seen >= limit:
                    return
        finally:
            await consumer.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow())


_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def resolve_topic(settings: Settings, short: str) -> str:
    """Accept short names so operators need not remember the prefix.

    Raises ``ValueError`` for anything that is neither a short name nor a legal topic name:
    aiokafka does not refuse an illegal name, it logs "not a valid topic name" every 100 ms
    for ever (``outbound:sms`` used to reach it unresolved).
    """
    topics = settings.topics
    kind, colon, arg = short.partition(":")
    named = {"requests": topics.requests, "deadletter": topics.deadletter, "status": topics.status}
    per_arg = {"contacts": topics.contacts, "outbound": topics.outbound, "department": topics.department}
    if kind in named and not colon:
        return named[kind]
    if kind in per_arg and arg:
        return per_arg[kind](arg)
    if colon:
        raise ValueError(
            f"unknown topic {short!r}: use requests, deadletter, status, "
            + ", ".join(f"{k}:NAME" for k in per_arg)
            + ", or a full topic name"
        )
    if not _TOPIC_NAME.match(short):
        raise ValueError(f"{short!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-')")
    return short


@schemas_app.command("export")
def schemas_export(directory: Annotated[Path, typer.Argument(help="where to write *.schema.json")]) -> None:
    """Write the JSON Schema of every event (RawContact, ServiceRequest, DeadLetter)."""
    from schemas.export import export_json_schemas

    for path in export_json_schemas(directory):
        typer.echo(str(path))


@app.command()
def channels(
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option(help="a running intake311's web or metrics URL (default: web.public_url, metrics_port)"),
    ] = None,
    fresh: Annotated[bool, typer.Option(help="check fresh copies, not the running process")] = False,
) -> None:
    """List installed channel plugins: configured? config valid? healthy in the running process?"""
    from intake311.pipeline import channel_report, health_urls

    settings = _settings(config)
    rows = asyncio.run(channel_report(settings, () if fresh else health_urls(settings, url)))
    width = max((len(r["channel"]) for r in rows), default=7)
    for row in rows:
        typer.echo(f"{row['channel']:<{width}}  {row['status']:<14}  {row['detail']}")
    if any(r["status"] in ("invalid", "unhealthy", "broken") for r in rows):
        raise typer.Exit(1)


@app.command()
def departments(
    config: ConfigOpt = None,
    backlog: Annotated[bool, typer.Option(help="ask the broker how far behind each sink is")] = True,
) -> None:
    """Departments, their topics, their sinks and each sink's backlog."""
    from intake311.ops import add_backlog, department_rows

    settings = _settings(config)
    rows = department_rows(settings)
    if backlog:
        servers = settings.kafka.bootstrap_servers or _embedded_if_running(settings)
        if servers:
            asyncio.run(add_backlog(settings, servers, rows))
    for row in rows:
        typer.echo(f"{row['department']}  ({row['topic']})")
        for sink in row["sinks"]:
            lag = sink.get("backlog")
            typer.echo(
                f"    {sink['name']:<16}{sink['type']:<10}backlog {lag if lag is not None else '-':>6}"
                f"   group {sink['group']}"
            )


@app.command()
def report(
    since: Annotated[datetime | None, typer.Option(help="start (ISO date); default 30 days ago")] = None,
    until: Annotated[datetime | None, typer.Option(help="end (ISO date); default now")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", metavar="LAYER", help="also per district of a boundary layer (e.g. ward), or per priority"
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Volume by channel and service, median time to close, share within the service level.

    With --by ward, the same figures per ward too (requests in no ward as "(none)"): where the
    work is, which is what a council member asks about. With --by priority, per priority
    (emergency, high, normal, low): whether the urgent work is done in time.
    """
    from datetime import timedelta

    from intake311.ops import format_report, service_report

    settings = _settings(config)
    end = _utc(until) if until else datetime.now(UTC)
    start = _utc(since) if since else end - timedelta(days=30)
    try:
        figures = asyncio.run(service_report(settings, start, end, by=by))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(figures, indent=2) if as_json else format_report(figures))


@app.command()
def replay(
    stage: Annotated[
        str | None,
        typer.Option(
            help="only letters from this stage (normalizer, router, sinks…); the others stay replayable"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be replayed; publish and mark nothing")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Re-publish dead letters to where they came from, after fixing the cause.

    Each letter is replayed once, whoever runs the replay: the letters replayed are recorded on
    the cluster (the dead-letter topic's ``.replayed`` topic), and every run skips them.
    A run only considers the letters that were there when it started, so it always ends: a
    replayed record that fails again becomes a new letter, for the next run.
    Records on the dead-letter topic that are not dead letters are listed and skipped.
    """
    from intake311.ops import replay as replay_letters

    settings = _settings(config)
    report = asyncio.run(
        replay_letters(
            settings,
            _client_bootstrap(settings),
            stage=stage,
            dry_run=dry_run,
            progress=lambda line: typer.echo(line, err=True),
        )
    )
    for letter in report.replayed:
        typer.echo(
            f"{'would replay' if dry_run else 'replayed'}  {letter.stage:<11}{letter.source_topic}"
            f"  {letter.reason[:100]}"
        )
    for where in report.not_letters:
        typer.echo(f"skipped  not a dead letter  {settings.topics.deadletter}/{where}")
    for name, counts in sorted(report.per_stage.items()):
        typer.echo(f"{name}: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())), err=True)
    skipped = [
        (report.failed_again, "of them failed again after an earlier replay"),
        (report.already_replayed, "already replayed"),
        (report.other_stages, "from other stages (not replayed, still replayable)"),
        (report.no_source, "without a source topic"),
        (report.no_original, "without their original (too large: see the reason)"),
        (len(report.not_letters), "not dead letters"),
    ]
    typer.echo(
        f"{len(report.replayed)} dead letter(s) {'would be replayed' if dry_run else 'replayed'}"
        + "".join(f"; {n} {what}" for n, what in skipped if n)
        + f" (of {report.considered} record(s) on the topic when the run started)",
        err=True,
    )


@app.command()
def asyncapi(config: ConfigOpt = None) -> None:
    """Print the AsyncAPI document of the full pipeline (topics, payload schemas)."""
    from intake311.pipeline import describe

    settings = _settings(config)
    typer.echo(asyncio.run(describe(settings)).to_specification().to_json())


@app.command()
def locate(
    text: Annotated[str | None, typer.Argument(help="an address or a resident's sentence")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="one text per line", exists=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per input line")] = False,
    config: ConfigOpt = None,
) -> None:
    """Where intake311 places a text: address, lat/long, precision, districts (check geo files)."""
    from normalizer.app import build_locator
    from normalizer.normalize import TextOnly

    if (text is None) == (file is None):
        typer.echo("give either TEXT or --file FILE", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    try:
        locator = build_locator(settings) or TextOnly()
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
    lines = [text or ""] if file is None else file.read_text(encoding="utf-8").splitlines()
    for line in lines:
        place = locator.place(text=line, address=None, lat=None, long=None)
        row = {
            "address": place.address,
            "lat": place.lat,
            "long": place.long,
            "precision": place.precision.value if place.precision else None,
            "districts": place.districts,
        }
        if place.outside_city:
            row["outside_city"] = True
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
        elif place.lat is None:
            typer.echo(f"not found   {line[:80]}" + (f"  (text: {place.address})" if place.address else ""))
        else:
            districts = ", ".join(f"{k}={v}" for k, v in place.districts.items())
            typer.echo(
                f"{row['precision']:<13}{place.lat:.6f},{place.long:.6f}  {place.address}"
                + (f"  [{districts}]" if districts else "")
                + ("  OUTSIDE THE CITY" if place.outside_city else "")
            )


@app.command()
def classify(
    text: Annotated[str | None, typer.Argument(help="a resident's report")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="one report per line", exists=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per input line")] = False,
    language: Annotated[str | None, typer.Option("--language", help="skip detection: this language")] = None,
    config: ConfigOpt = None,
) -> None:
    """What the normalizer makes of a text: service, confidence, triage, priority, language, emergency.

    Uses the configured taxonomy, learned model and emergency rules, so a city can try them
    before going live. No broker, no state: nothing is published.
    """
    from normalizer.app import build_normalizer
    from normalizer.trial import trial

    if (text is None) == (file is None):
        typer.echo("give either TEXT or --file FILE", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    try:
        normalizer = build_normalizer(settings, locate=False)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
    lines = [text or ""] if file is None else file.read_text(encoding="utf-8").splitlines()
    for line in lines:
        row = trial(normalizer, line, language)
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
            continue
        flags = [f for f in ("triage" if row["triage"] else "", row["emergency"] or "") if f]
        typer.echo(
            f"{row['service_code']:<22}{row['confidence']:.2f}  {row['priority']:<10}{row['language']}"
            + (f"  [{', '.join(flags)}]" if flags else "")
            + f"  {line[:60]}"
        )


incidents_app = typer.Typer(help="Incidents: reports of one problem grouped together.", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")


def _incident_of(settings: Settings, ticket: str) -> tuple[str, Any, Any]:
    """(request id, the normalizer's stored request or None, its incident or None) for a typed ticket."""
    from normalizer.app import open_state
    from schemas.ids import parse_ticket

    request_id = parse_ticket(ticket)
    if request_id is None:
        typer.echo(f"not a ticket number: {ticket!r}", err=True)
        raise typer.Exit(2)
    store = open_state(settings)
    try:
        stored = store.request(request_id)
        incident = store.incident(stored.request.incident) if stored else None
    finally:
        store.close()
    return request_id, stored, incident


@incidents_app.command("show")
def incidents_show(
    ticket: Annotated[str, typer.Argument(help="any ticket of the incident")],
    config: ConfigOpt = None,
) -> None:
    """The incident a ticket belongs to: its state and every report of it (normalizer state)."""
    settings = _settings(config)
    request_id, stored, incident = _incident_of(settings, ticket)
    if stored is None:
        typer.echo(f"{request_id}: not known to the normalizer", err=True)
        raise typer.Exit(1)
    if incident is None:
        typer.echo(f"{request_id}: {stored.request.service_code}, not placed in an incident (no point)")
        return
    typer.echo(
        f"incident {incident.incident_id}  {incident.service_code}  {incident.state.value}"
        f"  {incident.lat:.6f},{incident.long:.6f}  {incident.reports} report(s)"
    )
    for member in incident.members:
        typer.echo(f"  {member}{'  (first)' if member == incident.incident_id else ''}")


@incidents_app.command("split")
def incidents_split(
    ticket: Annotated[str, typer.Argument(help="the report that is not the same problem")],
    config: ConfigOpt = None,
) -> None:
    """Take a wrongly merged report out of its incident (it becomes an incident of its own)."""
    from intake311.bus import Outgoing, make_broker, publish_all
    from schemas.contact import split_command

    settings = _settings(config)
    request_id, stored, _ = _incident_of(settings, ticket)
    if stored is None or not stored.request.is_later_report:
        typer.echo(f"{request_id} is not part of another incident; nothing to split", err=True)
        raise typer.Exit(1)
    contact = split_command(request_id, incident_id=stored.request.incident, now=datetime.now(UTC), by="cli")

    async def publish() -> None:
        broker = make_broker(settings.kafka, _client_bootstrap(settings))
        await broker.connect()
        try:
            record = Outgoing(
                settings.topics.contacts(contact.channel), contact.model_dump_json().encode(), key=request_id
            )
            await publish_all(broker, [record])
        finally:
            await broker.stop()

    asyncio.run(publish())
    typer.echo(f"{request_id} split from incident {stored.request.incident}")


console_app = typer.Typer(help="The operator console (/console on the web stage).", no_args_is_help=True)
app.add_typer(console_app, name="console")


@console_app.command("hash-password")
def console_hash_password(
    name: Annotated[str, typer.Argument(help="the operator's login name")],
) -> None:
    """Ask for a password twice; print the settings line that gives NAME a console login."""
    from sinks.console.auth import hash_password

    password = typer.prompt("Password (12 characters or more)", hide_input=True, confirmation_prompt=True)
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("# in the settings file (every web host the same):")
    typer.echo("console:")
    typer.echo("  operators:")
    typer.echo(f"    {name}: '{hashed}'")
    typer.echo(f'# or in the environment: INTAKE311_CONSOLE__OPERATORS=\'{{"{name}": "{hashed}"}}\'')


classifier_app = typer.Typer(
    help="The free-text classifier: train a model on a city's labelled reports.", no_args_is_help=True
)
app.add_typer(classifier_app, name="classifier")


@classifier_app.command("train")
def classifier_train(
    file: Annotated[
        Path, typer.Argument(help="labelled reports (CSV with a header row)", exists=True, dir_okay=False)
    ],
    text: Annotated[list[str], typer.Option("--text", help="a text column; repeat for several")],
    label: Annotated[str, typer.Option("--label", help="the column holding the city's category")],
    out: Annotated[Path, typer.Option("--out", help="the model file to write (.joblib)")],
    map_file: Annotated[
        Path | None,
        typer.Option("--map", help="YAML: city category -> service code", exists=True, dir_okay=False),
    ] = None,
    taxonomy: Annotated[
        Path | None,
        typer.Option("--taxonomy", help="taxonomy YAML (default: packaged)", exists=True, dir_okay=False),
    ] = None,
    estimator: Annotated[str, typer.Option("--estimator", help="svm (default) or logreg")] = "svm",
    titles: Annotated[
        str,
        typer.Option("--titles", help="text equal to a category name (default titles): keep, drop or both"),
    ] = "both",
) -> None:
    """Train the learned classifier from a CSV export; prints the training report as JSON.

    Point ``INTAKE311_CLASSIFIER_MODEL`` at the file and restart the normalizer to use it.
    """
    from normalizer.learned import train_command

    try:
        report = train_command(file, text, label, map_file, out, taxonomy, estimator=estimator, titles=titles)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False, default=str))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
