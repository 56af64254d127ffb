"""Unit tests for loadmgrd.config: defaults, a full file, literal '%', paths, targets and every error."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from loadmgrd import config as config_module
from loadmgrd.config import Config, load_config
from loadmgrd.errors import ConfigError, ErrorCode

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pin the environment the default paths are derived from."""
    for name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "LOGS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home / "loadmgr"


def write(tmp_path: Path, text: str, name: str = "loadmgr_config.cfg") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.code == ErrorCode.INVALID_INPUT
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_without_a_file(state_home: Path) -> None:
    config = load_config(None)
    assert config == Config()
    assert config.source is None
    assert config.repository.database == state_home / "loadmgr.db"
    assert config.repository.busy_timeout == 30.0
    assert config.daemon.socket == state_home / "loadmgrd.sock"
    assert config.daemon.socket_mode == 0o666
    assert config.daemon.admin_group == "loadmgr"
    assert config.daemon.max_concurrent_jobs == 64
    assert config.daemon.max_request_bytes == 16 * 1024 * 1024
    assert config.daemon.stop_grace_period == 10.0
    assert config.daemon.log_level == "INFO"
    assert config.log_level == logging.INFO
    assert config.jobs.job_file_delimiter == ","
    assert config.jobs.variable_delimiter == "%"
    assert config.jobs.queue_size_limit == 100
    assert config.jobs.capture_output_limit == 64 * 1024
    assert config.logging.location == state_home / "logs"
    assert config.logging.prefix == "loadmgr_"
    assert config.logging.extension == ".log"
    assert config.logging.date_format == "%Y%m%d%H%M%S"
    assert config.events.wait_sleep_time == 1.0
    assert config.events.wait_timeout == 0.0
    assert config.email.smtp_host == "localhost"
    assert config.email.smtp_port == 25
    assert config.email.from_domain == "localhost"
    assert config.email.success_list == []
    assert config.email.failure_list == []
    assert config.email.logging_level == "WARNING"
    assert config.targets.default_target is None
    assert config.targets.urls == {}


def test_systemd_directories_win_for_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/run")
    monkeypatch.setenv("LOGS_DIRECTORY", f"{tmp_path}/logs")
    config = load_config(None)
    assert config.repository.database == tmp_path / "state" / "loadmgr.db"
    assert config.daemon.socket == tmp_path / "run" / "loadmgrd.sock"
    assert config.logging.location == tmp_path / "logs"


def test_empty_file_gives_defaults(tmp_path: Path, state_home: Path) -> None:
    path = write(tmp_path, "# nothing but a comment\n\n")
    config = load_config(path)
    assert config.source == path
    assert config.model_dump(exclude={"source"}) == Config().model_dump(exclude={"source"})


# --------------------------------------------------------------------------- a full file

FULL = """\
    # every section and key
    [repository]
    database = state/lm.db
    busy_timeout = 5.5

    [daemon]
    socket = /run/loadmgr/test.sock
    socket_mode = 0660
    admin_group = etl-admins
    max_concurrent_jobs = 8
    max_request_bytes = 2048
    stop_grace_period = 2.5
    log_level = debug

    [jobs]
    job_file_delimiter = ;
    variable_delimiter = $
    queue_size_limit = 50
    capture_output_limit = 1024

    [logging]
    location = logs
    prefix = lm_%%_
    extension = .txt
    date_format = %Y%m%d

    [events]
    wait_sleep_time = 0.25
    wait_timeout = 3600

    [email]
    smtp_host = mail.example.com
    smtp_port = 2525
    from_domain = example.com
    success_list = a@x.com, b@y.org
    failure_list = ops@example.com
    logging_level = info
    starttls = yes
    use_tls = no
    username = loadmgr
    password =
    password_file = smtp_password
    ca_file = smtp-ca.pem
    timeout = 5
    send_attempts = 2
    max_log_lines = 50

    [targets]
    warehouse = postgresql://etl:p%%40ss@dbhost:5432/warehouse
    local = sqlite:////var/lib/loadmgr/local.db
    default_target = warehouse
"""


def test_full_file(tmp_path: Path) -> None:
    (tmp_path / "smtp-ca.pem").write_text("a PEM file\n")
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.source == path
    assert config.repository.database == tmp_path / "state" / "lm.db"
    assert config.repository.busy_timeout == 5.5
    assert config.daemon.socket == Path("/run/loadmgr/test.sock")
    assert config.daemon.socket_mode == 0o660
    assert config.daemon.admin_group == "etl-admins"
    assert config.daemon.max_concurrent_jobs == 8
    assert config.daemon.max_request_bytes == 2048
    assert config.daemon.stop_grace_period == 2.5
    assert config.daemon.log_level == "DEBUG"
    assert config.log_level == logging.DEBUG
    assert config.jobs.job_file_delimiter == ";"
    assert config.jobs.variable_delimiter == "$"
    assert config.jobs.queue_size_limit == 50
    assert config.jobs.capture_output_limit == 1024
    assert config.logging.location == tmp_path / "logs"
    assert config.logging.prefix == "lm_%%_"
    assert config.logging.extension == ".txt"
    assert config.logging.date_format == "%Y%m%d"
    assert config.events.wait_sleep_time == 0.25
    assert config.events.wait_timeout == 3600.0
    assert config.email.smtp_host == "mail.example.com"
    assert config.email.smtp_port == 2525
    assert config.email.from_domain == "example.com"
    assert config.email.success_list == ["a@x.com", "b@y.org"]
    assert config.email.failure_list == ["ops@example.com"]
    assert config.email.logging_level == "INFO"
    assert config.email.ca_file == tmp_path / "smtp-ca.pem"  # relative to the config file
    assert config.targets.default_target == "warehouse"
    assert config.targets.urls == {
        "warehouse": "postgresql://etl:p%%40ss@dbhost:5432/warehouse",
        "local": "sqlite:////var/lib/loadmgr/local.db",
    }


def test_full_file_names_every_key_of_the_model() -> None:
    """Keeps FULL honest: a key added to the model must be added to the test."""
    text = textwrap.dedent(FULL)
    for section, model in config_module._SECTIONS.items():
        assert f"[{section}]" in text
        if section == "targets":
            assert "\ndefault_target = " in text
            continue
        for key in model.model_fields:
            assert f"\n{key} =" in text, f"{section}.{key} missing from FULL"
    assert set(Config.model_fields) == {*config_module._SECTIONS, "source"}


def test_example_config_file_loads() -> None:
    example = REPO_ROOT / "etc" / "loadmgr_config.cfg.example"
    config = load_config(example)
    assert config.source == example
    assert config.daemon.socket_mode == 0o666
    assert config.logging.date_format == "%Y%m%d%H%M%S"
    assert config.email.success_list == []


@pytest.mark.parametrize(
    ("line", "attribute", "expected"),
    [
        pytest.param("[logging]\ndate_format = %Y%m%d\n", ("logging", "date_format"), "%Y%m%d", id="date-format"),
        pytest.param("[logging]\ndate_format = %(x)s %\n", ("logging", "date_format"), "%(x)s %", id="named-style"),
        pytest.param("[logging]\nprefix = 100%_\n", ("logging", "prefix"), "100%_", id="lone-percent"),
        pytest.param("[jobs]\nvariable_delimiter = %\n", ("jobs", "variable_delimiter"), "%", id="delimiter"),
        pytest.param("[daemon]\nadmin_group = %(admin)s\n", ("daemon", "admin_group"), "%(admin)s", id="group"),
    ],
)
def test_percent_is_literal(tmp_path: Path, line: str, attribute: tuple[str, str], expected: str) -> None:
    config = load_config(write(tmp_path, line))
    section, key = attribute
    assert getattr(getattr(config, section), key) == expected


def test_percent_in_target_url_is_literal(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[targets]\nwh = postgresql://u:p%40ss@h/db\n"))
    assert config.targets.urls == {"wh": "postgresql://u:p%40ss@h/db"}


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("value", "relative_to_config"),
    [
        pytest.param("lm.db", "lm.db", id="bare-name"),
        pytest.param("state/lm.db", "state/lm.db", id="subdirectory"),
        pytest.param("../shared/lm.db", "../shared/lm.db", id="parent"),
    ],
)
def test_relative_paths_resolve_against_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, relative_to_config: str
) -> None:
    config_dir = tmp_path / "etc" / "loadmgr"
    config_dir.mkdir(parents=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        config_dir,
        f"[repository]\ndatabase = {value}\n[daemon]\nsocket = {value}\n[logging]\nlocation = {value}\n",
    )
    config = load_config(path)
    expected = config_dir / relative_to_config
    assert config.repository.database == expected
    assert config.daemon.socket == expected
    assert config.logging.location == expected


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[repository]\ndatabase = /var/lib/loadmgr/x.db\n"))
    assert config.repository.database == Path("/var/lib/loadmgr/x.db")


def test_path_variables_and_home_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LM_DATA", str(tmp_path / "data"))
    config = load_config(write(tmp_path, "[repository]\ndatabase = $LM_DATA/x.db\n[logging]\nlocation = ~/logs\n"))
    assert config.repository.database == tmp_path / "data" / "x.db"
    assert config.logging.location == tmp_path / "home" / "logs"


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0660", 0o660, id="leading-zero"),
        pytest.param("660", 0o660, id="no-leading-zero"),
        pytest.param("0o600", 0o600, id="python-prefix"),
        pytest.param("0", 0, id="zero"),
        pytest.param("0777", 0o777, id="max"),
    ],
)
def test_socket_mode_is_octal(tmp_path: Path, text: str, expected: int) -> None:
    assert load_config(write(tmp_path, f"[daemon]\nsocket_mode = {text}\n")).daemon.socket_mode == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a@x.com, b@y.org", ["a@x.com", "b@y.org"], id="two"),
        pytest.param("a@x.com,b@y.org,", ["a@x.com", "b@y.org"], id="trailing-comma"),
        pytest.param("  ops@example.com  ", ["ops@example.com"], id="one-with-spaces"),
        pytest.param("", [], id="empty"),
        pytest.param(" , ,", [], id="only-commas"),
    ],
)
def test_email_lists_split_on_commas(tmp_path: Path, text: str, expected: list[str]) -> None:
    config = load_config(write(tmp_path, f"[email]\nsuccess_list = {text}\nfailure_list = {text}\n"))
    assert config.email.success_list == expected
    assert config.email.failure_list == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("\\t", "\t", id="tab-escape"),
        pytest.param("|", "|", id="pipe"),
        pytest.param(":", ":", id="colon"),
    ],
)
def test_job_file_delimiter(tmp_path: Path, text: str, expected: str) -> None:
    assert load_config(write(tmp_path, f"[jobs]\njob_file_delimiter = {text}\n")).jobs.job_file_delimiter == expected


def test_keys_are_case_insensitive(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[daemon]\nMax_Concurrent_Jobs = 3\nLOG_LEVEL = warning\n"))
    assert config.daemon.max_concurrent_jobs == 3
    assert config.daemon.log_level == "WARNING"
    assert config.log_level == logging.WARNING


@pytest.mark.parametrize(
    ("text", "urls", "default"),
    [
        pytest.param(
            "[targets]\nwarehouse = postgresql://etl@dbhost/warehouse\nlocal = sqlite:////tmp/x.db\n"
            "default_target = local\n",
            {"warehouse": "postgresql://etl@dbhost/warehouse", "local": "sqlite:////tmp/x.db"},
            "local",
            id="with-default",
        ),
        pytest.param(
            "[targets]\nwh = mysql+pymysql://u@h/db\n",
            {"wh": "mysql+pymysql://u@h/db"},
            None,
            id="no-default",
        ),
        pytest.param(
            "[targets]\nwh = mysql+pymysql://u@h/db\ndefault_target =\n",
            {"wh": "mysql+pymysql://u@h/db"},
            None,
            id="empty-default",
        ),
        pytest.param("[targets]\n", {}, None, id="empty-section"),
    ],
)
def test_targets(tmp_path: Path, text: str, urls: dict[str, str], default: str | None) -> None:
    config = load_config(write(tmp_path, text))
    assert config.targets.urls == urls
    assert config.targets.default_target == default


def test_default_target_with_capitals(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[targets]\nWarehouse = postgresql://h/db\ndefault_target = Warehouse\n"))
    assert config.targets.default_target is not None
    assert config.targets.default_target.lower() == "warehouse"


# --------------------------------------------------------------------------- errors

ERRORS = [
    pytest.param(
        "[daemon]\nlog_level = INFO\n\n# comment\nbogus_key = 1\n",
        5,
        ["unknown key daemon.bogus_key", "known in [daemon]"],
        id="unknown-key",
    ),
    pytest.param(
        "[daemon]\nlog_level = INFO\n[jobs]\nqueue_size_limit = 5\nlog_level = INFO\n",
        5,
        ["unknown key jobs.log_level"],
        id="unknown-key-known-elsewhere",
    ),
    pytest.param(
        "[daemon]\nlog_level = INFO\n\n[bogus]\nx = 1\n",
        4,
        ["unknown section [bogus]", "known: repository"],
        id="unknown-section",
    ),
    pytest.param("[DEFAULT]\nx = 1\n", 1, ["unknown section [DEFAULT]"], id="default-section-not-special"),
    pytest.param(
        "[daemon]\nlog_level = INFO\n\nmax_concurrent_jobs = abc\n",
        4,
        ["daemon.max_concurrent_jobs", "valid integer"],
        id="bad-integer",
    ),
    pytest.param(
        "[daemon]\nmax_concurrent_jobs = 0\n",
        2,
        ["daemon.max_concurrent_jobs", "greater than or equal to 1"],
        id="int-too-small",
    ),
    pytest.param("[daemon]\nmax_request_bytes = 100\n", 2, ["daemon.max_request_bytes"], id="request-bytes-small"),
    pytest.param(
        "[email]\n\nsmtp_port = 70000\n",
        3,
        ["email.smtp_port", "less than or equal to 65535"],
        id="port-too-big",
    ),
    pytest.param("[repository]\nbusy_timeout = soon\n", 2, ["repository.busy_timeout", "valid number"], id="bad-float"),
    pytest.param(
        "[repository]\nbusy_timeout = 0\n",
        2,
        ["repository.busy_timeout", "greater than 0"],
        id="float-not-positive",
    ),
    pytest.param("[events]\nwait_timeout = -1\n", 2, ["events.wait_timeout"], id="negative-timeout"),
    pytest.param(
        "[daemon]\nsocket_mode = 999\n",
        2,
        ["daemon.socket_mode", "'999' is not an octal file mode"],
        id="socket-mode-not-octal",
    ),
    pytest.param(
        "[daemon]\nsocket_mode = rw-rw----\n",
        2,
        ["daemon.socket_mode", "is not an octal file mode"],
        id="socket-mode-symbolic",
    ),
    pytest.param(
        "[daemon]\n\nsocket_mode = 1777\n",
        3,
        ["daemon.socket_mode", "'1777' is not a file mode between"],
        id="socket-mode-too-big",
    ),
    pytest.param("[daemon]\nlog_level = LOUD\n", 2, ["daemon.log_level", "must be one of DEBUG"], id="log-level"),
    pytest.param(
        "[email]\nlogging_level = DEBUG\n",
        2,
        ["email.logging_level", "must be INFO, WARNING or ERROR"],
        id="email-logging-level",
    ),
    pytest.param(
        "[daemon]\nlog_level = INFO\nadmin_group = x\nlog_level = DEBUG\n",
        4,
        ["key daemon.log_level is given twice"],
        id="duplicate-key",
    ),
    pytest.param(
        "[daemon]\nLog_Level = INFO\nlog_level = DEBUG\n",
        3,
        ["key daemon.log_level is given twice"],
        id="duplicate-key-other-case",
    ),
    pytest.param(
        "[daemon]\nlog_level = INFO\n\n[daemon]\n",
        4,
        ["section [daemon] is given twice"],
        id="duplicate-section",
    ),
    pytest.param("log_level = INFO\n", 1, ["a key before any [section] header"], id="key-before-section"),
    pytest.param("[daemon]\nlog_level INFO\n", 2, ["cannot parse"], id="line-without-equals"),
    pytest.param(
        "[email]\nsmtp_host = h\nsuccess_list = a@x.com, bogus\n",
        3,
        ["email.success_list", "'bogus' is not an email address"],
        id="bad-email",
    ),
    pytest.param(
        "[email]\nfailure_list = ops@localhost\n",
        2,
        ["email.failure_list", "'ops@localhost' is not an email"],
        id="email-without-dot",
    ),
    pytest.param(
        "[email]\nsuccess_list = a@x.com; b@y.org\n",
        2,
        ["email.success_list", "is not an email address"],
        id="email-semicolon-separated",
    ),
    pytest.param(
        "[targets]\nlocal = sqlite:///x.db\n\ndefault_target = nope\n",
        4,
        ["targets.default_target", "default_target names 'nope', which is not a target here"],
        id="default-target-missing",
    ),
    pytest.param(
        "[targets]\n\nwh = postgresql://etl@dbhost/warehouse   # needs psycopg\n",
        3,
        ["targets.wh", "contains whitespace", "comment"],
        id="target-url-with-a-trailing-comment",
    ),
    pytest.param(
        "[targets]\nwh = postgresql://etl@dbhost:port/warehouse\n",
        2,
        ["targets.wh", "is not a valid database URL"],
        id="target-url-bad-port",
    ),
    pytest.param(
        "[jobs]\njob_file_delimiter = ;;\n",
        2,
        ["jobs.job_file_delimiter", "must be a single character"],
        id="delimiter-too-long",
    ),
    pytest.param("[jobs]\njob_file_delimiter =\n", 2, ["jobs.job_file_delimiter"], id="delimiter-empty"),
    pytest.param('[jobs]\njob_file_delimiter = "\n', 2, ["jobs.job_file_delimiter"], id="delimiter-quote"),
    pytest.param("[jobs]\n\nvariable_delimiter = %%\n", 3, ["jobs.variable_delimiter"], id="variable-delimiter"),
    pytest.param(
        "[logging]\nprefix = ../evil_\n",
        2,
        ["logging.prefix", "must not contain '/'"],
        id="prefix-with-slash",
    ),
]


@pytest.mark.parametrize(("text", "line", "fragments"), ERRORS)
def test_config_errors(tmp_path: Path, text: str, line: int, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}, line {line}: "), message
    for fragment in fragments:
        assert fragment in message


def test_target_that_is_not_a_url_names_the_target(tmp_path: Path) -> None:
    path = write(tmp_path, "[targets]\nlocal = sqlite:///x.db\ndefault_target = local\nbad = notaurl\n")
    message = config_error(path)
    assert message.startswith(f"{path}, line 4: targets.bad: "), message


def test_target_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[targets]\nlocal = sqlite:///x.db\n\nbad = notaurl\n")
    message = config_error(path)
    assert "line 4: targets.bad: 'notaurl' is not a database URL" in message
    assert message.startswith(f"{path}, line ")


def test_unknown_section_with_spaces_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nlog_level = INFO\n[ bogus ]\nx = 1\n")
    assert config_error(path).startswith(f"{path}, line 3: ")


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "loadmgr_config.cfg"
    assert config_error(path) == f"{path}: configuration file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = config_error(tmp_path)
    assert message.startswith(f"{tmp_path}: cannot read: ")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "loadmgr_config.cfg"
    path.write_bytes(b"[daemon]\nadmin_group = \xe9tl\n")
    assert config_error(path) == f"{path}, line 2, column 15: byte 0xe9 is not UTF-8 text"


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "loadmgr_config.cfg"
    path.write_bytes(b"[daemon]\nadmin_group = \xe9tl\n")
    assert config_error(path).startswith(f"{path}, line 2")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "loadmgr_config.cfg"
    path.write_bytes(b"\xef\xbb\xbf[daemon]\nadmin_group = \xc3\xa9tl\n")
    assert load_config(path).daemon.admin_group == "\u00e9tl"
