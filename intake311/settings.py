"""Settings from environment variables (``INTAKE311_…``) and an optional YAML file.

Precedence, highest first: explicit arguments, environment, the YAML file named by
``INTAKE311_CONFIG`` (or ``--config``), defaults. Nested fields use ``__`` in variable names:
``INTAKE311_KAFKA__BOOTSTRAP_SERVERS=broker1:9092,broker2:9092``.
"""

from __future__ import annotations

import os
import ssl
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from schemas.language import DEFAULT_LANGUAGES, check_languages
from schemas.topics import Topics

CONFIG_ENV = "INTAKE311_CONFIG"
# A --config given on the command line, without writing it into the process environment.
_config_file: ContextVar[str | None] = ContextVar("intake311_config_file", default=None)


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list that an environment variable gives as "a,b,c" (NoDecode: not as a JSON list).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]
CommaSecrets = Annotated[list[SecretStr], NoDecode, BeforeValidator(_comma_separated)]


class KafkaSettings(BaseModel):
    """Where the bus is. No bootstrap servers means: start the embedded broker."""

    bootstrap_servers: CommaList = Field(default_factory=list)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    partitions: int | None = Field(
        default=None,
        ge=1,
        description="partitions for topics intake311 creates: the most consumers of one group that "
        "share the work (with 3, a second normalizer took one partition to the first's two: 1.3x "
        "the throughput, not 2x). None: 6 on a cluster (even between 1, 2, 3 or 6 members), 4 on "
        "the embedded broker, which gives a topic a publish creates 4 of its own: after an empty "
        "restart a racing publish can create one, and Tansu then failed writes to that topic for "
        "as long as producers used another count (a Tansu reached by address: set 4)",
    )
    replication_factor: int = Field(default=1, ge=1)
    client_id: str = "intake311"
    session_timeout_ms: int | None = Field(
        default=None,
        ge=1000,
        description="consumer group session timeout: how long a crashed (SIGKILLed) member keeps "
        "its partitions; on Tansu also how long every rebalance takes (group_coordinator). None: "
        "2000 where the group coordinator is Tansu, 10000 otherwise",
    )
    group_coordinator: Literal["kafka", "tansu"] | None = Field(
        default=None,
        description="whose consumer-group coordinator the brokers run, for the session timeout's "
        "default. Tansu holds every JoinGroup for half the session timeout and a member's SyncGroup "
        "up to 8/10 of it, and evicts a crashed member only after a whole one, so there the session "
        "timeout is what a member joining or crashing costs: with 10000 a second normalizer joining "
        "stalled the first's contacts up to 8.7 s and a SIGKILL up to 21 s, with 2000 about 3 s "
        "and 4 s. None: tansu for the embedded broker, kafka otherwise; set tansu for a Tansu reached "
        "by address (another process's embedded broker, bench/e2e_bench.py)",
    )
    fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="how long a consumer's fetch may wait for records while records flow (after "
        "idle_after_s without any, idle_fetch_max_wait_ms). The embedded broker holds an empty "
        "fetch for the whole wait, so there this is each hop's latency. A cluster answers as soon "
        "as a record arrives for a partition the fetch names, but aiokafka's fetch in flight names "
        "only the partitions with nothing buffered: the others' buffered records run out while it "
        "waits, and the stage then sits out the rest of the wait (0.6 s of a 2.3 s router run at "
        "500). None: 20 (about 60 ms from a resident's POST to the sink over three hops)",
    )
    idle_fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="the fetch wait once a consumer has had no records for idle_after_s: what keeps "
        "an idle embedded broker cheap (each group then polls twice a second, not 50 times), at the "
        "price of up to this much more latency per hop for the first report after a quiet spell. "
        "None: 500, or fetch_max_wait_ms if that is longer",
    )
    idle_after_s: float = Field(
        default=10.0,
        gt=0,
        description="seconds without records after which a consumer uses idle_fetch_max_wait_ms",
    )
    commit_interval_ms: int = Field(
        default=1000,
        ge=0,
        le=60_000,
        description="how often a consumer commits the offsets its handled batches reached (0: after "
        "every batch). A batch's offsets are committed only once it was handled, and pending ones "
        "before a rebalance and at stop, so a longer interval only means that after a crash up to "
        "this much is handled again (consumers dedupe on ids). At a city's rates a batch is one "
        "record: committing each one was a broker round trip per report on every hop",
    )
    linger_ms: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="how long a producer holds a record to batch it with the next: the pipelined "
        "sends of a stage's batch share produce requests; every accepted report waits this long",
    )
    topic_prefix: str = "intake311"
    embedded_storage: Literal["durable", "memory"] = Field(
        default="durable",
        description="the embedded broker's storage (no bootstrap servers only): durable keeps the "
        "logs under <data_dir>/broker/ across restarts and crashes; memory loses them at exit "
        "(`up --ephemeral`)",
    )

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers

    @property
    def consumer_fetch_max_wait_ms(self) -> int:
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        return 20

    @property
    def topic_partitions(self) -> int:
        if self.partitions is not None:
            return self.partitions
        return 4 if self.embedded else 6

    @property
    def consumer_idle_fetch_max_wait_ms(self) -> int:
        if self.idle_fetch_max_wait_ms is not None:
            return self.idle_fetch_max_wait_ms
        return max(500, self.consumer_fetch_max_wait_ms)

    @property
    def tansu_coordinator(self) -> bool:
        """Whether the consumer groups are coordinated by Tansu (``group_coordinator``)."""
        if self.group_coordinator is not None:
            return self.group_coordinator == "tansu"
        return self.embedded

    @property
    def consumer_session_timeout_ms(self) -> int:
        # Tansu waits half the session timeout in every JoinGroup (a group's first join and every
        # rebalance) and a whole one before it evicts a crashed member; it runs on one machine
        # with no GC-pause risk worth those waits. What a stage does to one batch on the event
        # loop holds its heartbeats too, so that must stay well under it (max_batch).
        return self.session_timeout_ms or (2000 if self.tansu_coordinator else 10000)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        # ssl's own errors name neither the file nor the setting ("[Errno 2] No such file or directory").
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"kafka.{name}: {path}: no such file")
        try:
            context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
            if self.ssl_certfile:
                context.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"kafka.ssl_cafile/ssl_certfile/ssl_keyfile: cannot be loaded: {exc}") from exc
        return context


class WebSettings(BaseModel):
    """The web channel (Open311 API, resident form, AsyncAPI docs)."""

    host: str = "127.0.0.1"
    port: int = 8311
    base_url: str | None = Field(default=None, description="public URL when behind a proxy")
    api_keys: CommaSecrets = Field(
        default_factory=lambda: [SecretStr("demo-key")],
        description="Open311 api_key values accepted for POST requests",
    )
    jurisdiction_id: str = "intake311.local"
    contact: str | None = Field(
        default=None,
        max_length=500,
        description="Open311 discovery: how to reach the people running this endpoint (an email, a "
        "phone, a page); None: a sentence sending developers to the city's 311 office",
    )
    key_service: str | None = Field(
        default=None,
        max_length=500,
        description="Open311 discovery: how a developer gets an api_key; None: a default sentence",
    )
    endpoint_type: Literal["production", "test"] = Field(
        default="production",
        description="Open311 discovery: 'test' for an install whose requests nobody acts on",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="connections and requests the web stage serves at once; beyond it uvicorn answers "
        "503 at once, so an overload refuses some residents quickly instead of slowing every one to "
        "their client's timeout; None: no limit",
    )
    max_accepting: int | None = Field(
        default=32,
        ge=1,
        description="submissions (Open311 POST requests, the resident form) each web worker has in "
        "progress at once; one beyond it waits up to accept_wait_ms for a slot, then is refused with "
        "503, Retry-After and a reason, nothing published, so the accepted ones stay fast under "
        "overload; GETs and health probes are never counted; None: no limit. 32: at 500/s offered "
        "(about twice what this stage answers on 2 cores with the pipeline) as many accepted as with 64, "
        "answered in about 60% of the time",
    )
    accept_wait_ms: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="how long a submission beyond max_accepting waits for a slot before its 503: "
        "about what an overload adds to an accepted submission's answer",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="web processes serving the one port (SO_REUSEPORT), each with its own event loop "
        "and Kafka producer; only the first runs the process's other stages; more than 1 needs a "
        "fixed port (not 0). 1: on 2 cores shared with the broker and the other stages, 2 workers "
        "answered no more (378 against 504 accepted/s in adjacent runs); with spare cores, more",
    )

    @property
    def public_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")


class RemoteGeocoderSettings(BaseModel):
    """A geocoder the city runs or pays for, asked through geopy before the local address file."""

    provider: Literal["nominatim", "pelias", "arcgis"]
    url: str = Field(description="base URL, e.g. https://nominatim.city.internal")
    api_key: SecretStr | None = None
    user_agent: str = "intake311"
    timeout_s: float = Field(default=2.0, gt=0)
    cache_size: int = Field(default=10_000, ge=0)


class GeoSettings(BaseModel):
    """Where things are: the city's address points, its district layers, an optional remote geocoder.

    Both files are optional; without them requests keep only the coordinates a channel gave.
    """

    address_points: Path | None = Field(default=None, description="OpenAddresses-layout CSV")
    boundaries: dict[str, Path] = Field(
        default_factory=dict, description="layer name -> GeoJSON file; each feature's `name` is a district"
    )
    city_boundary: str | None = Field(
        default=None, description="layer whose union is the city limit; None: the first layer"
    )
    city: str | None = Field(default=None, description="city name added to remote geocoder queries")
    region: str | None = Field(default=None, description="state/region added to remote queries")
    fuzzy_threshold: float = Field(default=88.0, ge=50, le=100, description="street-name match score")
    remote: RemoteGeocoderSettings | None = None


class IncidentSettings(BaseModel):
    """Where the normalizer keeps request and incident state (see docs/incidents.md)."""

    state_dsn: SecretStr | None = Field(
        default=None,
        description="PostgreSQL DSN shared by every normalizer; None: the case store's DSN if set, "
        "else SQLite under the data directory (one host only)",
    )


class RetentionSettings(BaseModel):
    """How long local state is kept (docs/operations.md, "Local state and retention").

    The rule: ``state_days`` >= the topics' retention + the longest replay delay, so every record
    Kafka can still redeliver or replay finds its request, its delivered id or its accepted
    record (Kafka's default retention is 7 days; 30 leaves a wide margin).
    """

    state_days: float = Field(
        default=30.0,
        gt=0,
        description="closed normalizer requests/incidents, sinks' delivered ids and the web's "
        "accepted requests older than this are pruned; must cover topic retention + replay delay",
    )
    prune_every_minutes: float = Field(default=10.0, gt=0, description="at most one prune pass this often")
    prune_batch: int = Field(default=1000, ge=1, description="rows deleted per table per prune pass")

    @property
    def state_s(self) -> float:
        return self.state_days * 86400

    @property
    def prune_every_s(self) -> float:
        return self.prune_every_minutes * 60


class TracingSettings(BaseModel):
    """OpenTelemetry traces (intake311/tracing.py, docs/operations.md "Traces"); off by default."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces); None: tracing off",
    )
    service_name: str = Field(default="intake311", description="service.name of this process's spans")


class ConsoleSettings(BaseModel):
    """The operator console (``/console`` on the web stage): who may log in, how sessions work.

    Operators log in with a name and password (``operators``: name -> the argon2 hash that
    ``intake311 console hash-password`` prints); department staff with their department id and
    its ``department_tokens`` token. Sessions are signed cookies, not server-side rows, so any
    web replica serves any operator: ``session_secret`` must be the same on every host, and
    changing it logs everyone out.
    """

    operators: dict[str, SecretStr] = Field(
        default_factory=dict, description="operator name -> argon2 password hash (console hash-password)"
    )
    session_secret: SecretStr | None = Field(
        default=None, description="signs session cookies; at least 32 characters, the same on every web host"
    )
    session_hours: float = Field(default=8.0, gt=0, le=24 * 7, description="a login lasts this long")
    secure_cookie: bool | None = Field(
        default=None, description="send the session cookie only over HTTPS; None: when web.base_url is https"
    )
    login_max_failures: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="wrong logins from one client address within login_window_minutes, after which "
        "that address is refused (429) until the oldest of them is that old; per web process",
    )
    login_window_minutes: float = Field(
        default=15.0, gt=0, le=24 * 60, description="the window login_max_failures counts in"
    )

    @field_validator("session_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "console.session_secret must be at least 32 characters (e.g. `openssl rand -hex 32`)"
            )
        return value


class Settings(BaseSettings):
    """All of intake311's configuration in one validated object."""

    model_config = SettingsConfigDict(
        env_prefix="INTAKE311_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    web: WebSettings = WebSettings()
    geo: GeoSettings = GeoSettings()
    incidents: IncidentSettings = IncidentSettings()
    tracing: TracingSettings = TracingSettings()
    retention: RetentionSettings = RetentionSettings()
    console: ConsoleSettings = ConsoleSettings()
    data_dir: Path = Path("var")
    taxonomy_file: Path | None = Field(default=None, description="None: the packaged default")
    routing_file: Path | None = Field(default=None, description="None: the packaged default")
    subscriptions_file: Path | None = Field(default=None, description="None: the packaged default")
    messages_dir: Path | None = Field(
        default=None,
        description="the city's message files (xx.yaml): add languages or override packaged "
        "messages key by key; None: the packaged schemas/messages only",
    )
    emergency_rules_file: Path | None = Field(
        default=None, description="emergency phrases (see schemas/emergency.yaml); None: the packaged file"
    )
    classifier_model: Path | None = Field(
        default=None, description="learned classifier (`intake311 classifier train`); None: taxonomy only"
    )
    case_store_dsn: SecretStr | None = Field(
        default=None,
        description="PostgreSQL case store (libpq DSN): enables status changes, Open311 GET "
        "from the store and `intake311 report`; postgres sinks may use dsn_env: INTAKE311_CASE_STORE_DSN",
    )
    department_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="department -> bearer token for the status API and Open311 updates",
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None, description="Slack app signing secret: verifies button clicks (interactivity)"
    )
    channels: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="channel name -> its config; a channel runs when it has an entry here",
    )
    languages: CommaList = Field(
        default_factory=lambda: list(DEFAULT_LANGUAGES),
        description="ISO 639-1 codes residents are answered in, the default first (docs/language.md)",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="port of /metrics, /health/live and /health/ready for a process without the web "
        "stage (the web stage serves them on web.port); 0: off. Off by default because replicas of a "
        "stage on one host would fight over any fixed port: a container sets one (e.g. 9311)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics port binds")
    metrics_district_layer: str | None = Field(
        default=None,
        description="geo.boundaries layer whose district names label intake311_requests_total "
        "(e.g. ward); None: no district label value",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    max_batch: int = Field(default=500, ge=1, description="records a stage takes per poll")
    retry_attempts: int = Field(default=5, ge=1, description="tries before a delivery is dead-lettered")
    retry_backoff_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles each try")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        # A code the detector does not know stops the process at start, not at the first text.
        return list(check_languages(value))

    @property
    def topics(self) -> Topics:
        return Topics(self.kafka.topic_prefix)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get(CONFIG_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_ENV}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        sources.append(file_secret_settings)
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, an optional YAML file, and explicit overrides."""
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings(**overrides)
    finally:
        _config_file.reset(token)
