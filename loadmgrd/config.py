"""Configuration: ``loadmgr_config.cfg`` (INI, no ``%`` interpolation) validated by pydantic.

A missing file means built-in defaults. An unknown section or key, a bad value or a duplicate
key is a ``ConfigError`` naming the file, the line and the ``section.key``.
"""

from __future__ import annotations

import configparser
import logging
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loadmgrd import paths
from loadmgrd.errors import ConfigError
from loadmgrd.mail import valid_address
from loadmgrd.text import DecodeFailure, decode_utf8

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepositoryConfig(_Section):
    database: Path = Field(default_factory=paths.default_database)
    busy_timeout: Annotated[float, Field(gt=0)] = 30.0


class DaemonConfig(_Section):
    socket: Path = Field(default_factory=paths.default_socket)
    socket_mode: int = 0o666
    admin_group: str = "loadmgr"
    max_concurrent_jobs: Annotated[int, Field(ge=1)] = 64
    max_request_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    stop_grace_period: Annotated[float, Field(ge=0)] = 10.0
    log_level: str = "INFO"

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                mode = int(value, 8)
            except ValueError:
                raise ValueError(f"{value!r} is not an octal file mode such as 0660") from None
            if not 0 <= mode <= 0o777:
                raise ValueError(f"{value!r} is not a file mode between 0000 and 0777")
            return mode
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in _LEVELS:
            raise ValueError(f"must be one of {', '.join(_LEVELS)}")
        return upper


class JobsConfig(_Section):
    job_file_delimiter: str = ","
    variable_delimiter: str = "%"
    queue_size_limit: Annotated[int, Field(ge=1)] = 100
    capture_output_limit: Annotated[int, Field(ge=1)] = 64 * 1024

    @field_validator("job_file_delimiter", "variable_delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if value == "\\t":
            value = "\t"
        if len(value) != 1 or value in '"\\\r\n':
            raise ValueError("must be a single character other than a quote, backslash or newline")
        return value


class LoggingConfig(_Section):
    location: Path = Field(default_factory=paths.default_log_location)
    prefix: str = "loadmgr_"
    extension: str = ".log"
    date_format: str = "%Y%m%d%H%M%S"

    @field_validator("prefix", "extension", "date_format")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        if "/" in value or "\0" in value:
            raise ValueError("must not contain '/' (log files always stay in the log location)")
        return value


class EventsConfig(_Section):
    wait_sleep_time: Annotated[float, Field(gt=0)] = 1.0
    wait_timeout: Annotated[float, Field(ge=0)] = 0.0


class EmailConfig(_Section):
    smtp_host: str = "localhost"
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    from_domain: str = "localhost"
    success_list: list[str] = Field(default_factory=list)
    failure_list: list[str] = Field(default_factory=list)
    logging_level: str = "WARNING"
    starttls: bool = False
    use_tls: bool = False
    username: str = ""
    password: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: Annotated[float, Field(gt=0)] = 10.0
    send_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    max_log_lines: Annotated[int, Field(ge=0)] = 200

    @model_validator(mode="after")
    def _tls_and_login(self) -> EmailConfig:
        if self.starttls and self.use_tls:
            raise ValueError("starttls and use_tls exclude each other (use_tls = TLS from the first byte)")
        if self.password and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        if self.ca_file is not None:
            if not (self.starttls or self.use_tls):
                raise ValueError("ca_file is for TLS: set starttls or use_tls too")
            if not self.ca_file.is_file():
                raise ValueError(f"ca_file {str(self.ca_file)!r} is not a readable file")
        return self

    def secret(self) -> str:
        """The SMTP password (read from ``password_file`` when that is set)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password

    @field_validator("success_list", "failure_list", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("success_list", "failure_list")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not valid_address(address):
                raise ValueError(f"{address!r} is not an email address")
        return value

    @field_validator("logging_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ("INFO", "WARNING", "ERROR"):
            raise ValueError("must be INFO, WARNING or ERROR")
        return upper


def _url_problem(url: str) -> str | None:
    """What is wrong with a target URL, checked as SQLAlchemy will parse it; None when it is fine."""
    if not _URL_RE.match(url):
        return "is not a database URL such as sqlite:////path/x.db or postgresql://user@host/db"
    if any(ch.isspace() for ch in url):
        return (
            "contains whitespace: a value runs to the end of its line, so a '#' comment after it is part "
            "of it (put comments on a line of their own; write a space in a URL as %20)"
        )
    from sqlalchemy.engine import make_url  # only when there are targets: the import is not free
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError) as exc:
        return f"is not a valid database URL: {exc}"
    return None


class TargetsConfig(BaseModel):
    """Named target databases (SQLAlchemy URLs) and the one used when a step names none."""

    model_config = ConfigDict(frozen=True)

    default_target: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not _URL_RE.match(url):
                raise ValueError(f"target {name!r}: {url!r} is not a database URL such as sqlite:///x.db")
        return value

    @model_validator(mode="after")
    def _default_exists(self) -> TargetsConfig:
        if self.default_target is not None and self.default_target not in self.urls:
            raise ValueError(f"default_target names {self.default_target!r}, which is not a target here")
        return self


class Config(_Section):
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    source: Path | None = None

    @property
    def log_level(self) -> int:
        return int(logging.getLevelName(self.daemon.log_level))


_SECTIONS: dict[str, type[BaseModel]] = {
    "repository": RepositoryConfig,
    "daemon": DaemonConfig,
    "jobs": JobsConfig,
    "logging": LoggingConfig,
    "events": EventsConfig,
    "email": EmailConfig,
    "targets": TargetsConfig,
}

_PATH_KEYS = {
    ("repository", "database"),
    ("daemon", "socket"),
    ("logging", "location"),
    ("email", "password_file"),
    ("email", "ca_file"),
}


def _key_lines(text: str) -> dict[tuple[str, str], list[int]]:
    """Line numbers of every ``key = value`` per section (configparser does not keep them)."""
    lines: dict[tuple[str, str], list[int]] = {}
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;" or raw[:1].isspace():
            continue
        if stripped.startswith("[") and "]" in stripped:
            section = stripped[1 : stripped.index("]")].strip()
            lines.setdefault((section, ""), []).append(number)
            continue
        match = re.match(r"([^=:]+?)\s*[=:]", stripped)
        if match:
            lines.setdefault((section, match.group(1).strip().lower()), []).append(number)
    return lines


def load_config(path: Path | None) -> Config:
    """Read and validate ``path``; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    where = str(path)
    try:
        text = decode_utf8(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{where}: configuration file not found") from None
    except DecodeFailure as exc:
        raise ConfigError(f"{where}, {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None

    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0none")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # target names keep their case
    try:
        parser.read_string(text, source=where)
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{where}, line {exc.lineno}: key {exc.section}.{exc.option} is given twice") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{where}, line {exc.lineno}: section [{exc.section}] is given twice") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{where}, line {exc.lineno}: a key before any [section] header") from None
    except configparser.ParsingError as exc:
        first = exc.errors[0] if exc.errors else (0, "")
        raise ConfigError(f"{where}, line {first[0]}: cannot parse {first[1]!s}") from None

    key_lines = _key_lines(text)

    def line_of(section: str, key: str = "", *, last: bool = False) -> str:
        section = section.strip()
        numbers = key_lines.get((section, key)) or key_lines.get((section, "")) or []
        return f", line {numbers[-1 if last else 0]}" if numbers else ""

    raw: dict[str, Any] = {}
    for section in parser.sections():
        if section not in _SECTIONS:
            raise ConfigError(f"{where}{line_of(section)}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        items = dict(parser.items(section))
        if section == "targets":
            default = items.pop("default_target", None)
            for name, url in items.items():
                problem = _url_problem(url)
                if problem:
                    raise ConfigError(f"{where}{line_of(section, name.lower())}: targets.{name}: {url!r} {problem}")
            raw["targets"] = {"default_target": default or None, "urls": items}
            continue
        lowered: dict[str, str] = {}
        for key, value in items.items():
            if key.lower() in lowered:
                raise ConfigError(
                    f"{where}{line_of(section, key.lower(), last=True)}: key {section}.{key.lower()} is given twice"
                )
            lowered[key.lower()] = value
        items = lowered
        known = _SECTIONS[section].model_fields
        for key, value in list(items.items()):
            if key not in known:
                raise ConfigError(
                    f"{where}{line_of(section, key)}: unknown key {section}.{key} "
                    f"(known in [{section}]: {', '.join(known)})"
                )
            if (section, key) in _PATH_KEYS:
                if not value.strip():
                    del items[key]  # an empty path means the default
                    continue
                items[key] = str(paths.resolve(path, value))
        raw[section] = items

    try:
        return Config.model_validate({**raw, "source": path})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        section = loc[0] if loc else ""
        key = loc[1] if len(loc) > 1 else ""
        if section == "targets":
            key = loc[2] if len(loc) > 2 and loc[1] == "urls" else "default_target"
        message = str(error["msg"]).removeprefix("Value error, ")
        name = f"{section}.{key}" if key else f"[{section}]"
        raise ConfigError(f"{where}{line_of(section, key)}: {name}: {message}") from None
