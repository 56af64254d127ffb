"""R5 — injection: values substituted into shell commands, names that become file names, event items.

- captured output (``%step_N%``) holding ``;``, ``$()``, backticks, newlines, quotes, redirections,
  globs…, substituted into a later step's command and into its ``key=value`` args, and the same
  strings given as ``--tempargs``: each arrives as one literal word (compared byte for byte) and
  nothing runs (marker files never appear);
- job names with ``../``, ``/``, line breaks… are refused at import; names with odd characters
  import, run, and their log files land in ``[logging] location`` and nowhere else (every file under
  the daemon's home, through ``os.path.realpath``, is inside the expected directories);
- event items are operator-chosen paths by design, but a line break (or NUL) in one is refused at
  ``event add``.

Two ways in which captured output once became shell syntax have their regression tests here: a
variable inside a ``--tempargs`` value that needs quoting, and a variable inside JSON step args.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from tests.reliability.support import (
    DaemonFactory,
    call,
    import_job,
    rpc,
    run_of,
    step,
)

q = shlex.quote


def payloads(markers: Path) -> list[str]:
    """Hostile strings; each would create ``markers/M<n>`` if it were ever run as shell code."""
    m = [q(str(markers / f"M{n}")) for n in range(20)]
    return [
        f"a; touch {m[0]}",
        f"$(touch {m[1]})",
        f"`touch {m[2]}`",
        f"first line\ntouch {m[3]}",
        f"'; touch {m[4]}; '",
        f'"; touch {m[5]}; "',
        f"x | touch {m[6]}",
        f"x && touch {m[7]} || touch {m[7]}",
        f"> {m[8]}",
        f"${{IFS}}touch${{IFS}}{m[9]}",
        f"\\'$(touch {m[10]})\\'",
        f"$'\\x41' ; touch {m[11]} #",
        f"x\r\ntouch {m[12]}\r",
        f'{{"v": "$(touch {m[13]})"}}',
        "* ? [a-z] ~ ~root $HOME $((6*7)) %step_1% %job_log_file%",
        "-n",
        "tab\there ünïcødé ☃",
    ]


def read(path: Path) -> str:
    return path.read_bytes().decode()  # byte for byte: no newline translation


def test_captured_output_and_tempargs_are_substituted_as_literal_words(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon_factory()
    d.start()
    markers = tmp_path / "markers"
    markers.mkdir()
    got = tmp_path / "got"
    got.mkdir()
    strings = payloads(markers)
    steps: list[dict[str, Any]] = []
    for i, text in enumerate(strings):
        source = tmp_path / f"payload{i}"
        source.write_text(text)
        base = 100 * (i + 1)
        steps += [
            step(base, f"cat {q(str(source))}", capture=True),
            step(base + 1, f"printf '%s' %step_{base}% > {q(str(got / f'cmd{i}'))}"),
            step(base + 2, f"printf '%s' > {q(str(got / f'arg{i}'))}", args=f"v=%step_{base}%"),
            step(base + 3, f"printf '%s' > {q(str(got / f'tmp{i}'))}", args=f"t{i}=placeholder"),
        ]
    import_job(d, tmp_path, "r5-subst", steps, as_json=True)
    tempargs = [f"t{i}:{text}" for i, text in enumerate(strings)]
    result = d.ctl("start", "--wait", "--tempargs", *tempargs, "r5-subst")
    assert result.returncode == 0, f"{result.stderr}\n{d.ok('logs', 'r5-subst')[-3000:]}"

    assert sorted(p.name for p in markers.iterdir()) == [], "a substituted value ran as shell code"
    run = run_of(d, "r5-subst")
    outputs = {s["job_step"]: s["output"] for s in run["steps"]}
    for i, text in enumerate(strings):
        base = 100 * (i + 1)
        captured = outputs[base]
        assert captured == text.strip(), f"payload {i}: captured {captured!r}"
        assert read(got / f"cmd{i}") == captured, f"payload {i} in the command"
        assert read(got / f"arg{i}") == f"v={captured}", f"payload {i} in key=value args"
        # a temp arg is operator input: its own %variables% are expanded (values quoted as always)
        expected = text.replace("%job_log_file%", run["log_file"])
        assert read(got / f"tmp{i}") == f"t{i}={expected}", f"payload {i} as a temp arg"
    assert sorted(p.name for p in markers.iterdir()) == []


def test_variable_inside_a_temp_arg_value_is_not_executed(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    marker = tmp_path / "MARK"
    source = tmp_path / "payload"
    source.write_text(f"$(touch {q(str(marker))})")
    import_job(
        d,
        tmp_path,
        "r5-temparg-var",
        [
            step(10, f"cat {q(str(source))}", capture=True),
            step(20, f"printf '%s' > {q(str(tmp_path / 'got'))}", args="v=placeholder"),
        ],
    )
    result = d.ctl("start", "--wait", "--tempargs", "v:a b %step_10%", "r5-temparg-var")
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "step 10's output ran as shell code"
    assert (tmp_path / "got").read_text() == f"v=a b {source.read_text()}"


def test_variable_inside_json_args_is_not_executed(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    marker = tmp_path / "MARK"
    source = tmp_path / "payload"
    source.write_text(f"$(touch {q(str(marker))})")
    import_job(
        d,
        tmp_path,
        "r5-json-var",
        [
            step(10, f"cat {q(str(source))}", capture=True),
            step(20, f"printf '%s\\n' > {q(str(tmp_path / 'got'))}", args='{"v": "%step_10%"}'),
        ],
    )
    result = d.ctl("start", "--wait", "r5-json-var")
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "step 10's output ran as shell code"


# ---------------------------------------------------------------------------- names and paths

ODD_NAMES = [
    "r5 a;b",
    "r5 $(touch r5-marker)",
    "r5 `touch r5-marker`",
    "..r5hidden",
    "r5..dots..",
    "r5*?[x]",
    "~r5",
    "r5 'quote\" <>|&",
    "r5 ünïcødé ☃",
    "r5 %step_1% %job_log_file%",
    "r5#hash=eq:colon",
    "r5" + "x" * 198,
]
REFUSED_NAMES = [
    "../r5-escape",
    "r5/../../r5-escape",
    "r5/sub",
    "r5\\back",
    "..",
    ".",
    "-r5",
    "r5\nline",
    "r5\rline",
    "r5\ttab",
    " r5",
    "ALL",
    "r5" + "x" * 199,
]


def files_under(root: Path) -> set[str]:
    return {os.path.join(dirpath, name) for dirpath, _dirs, names in os.walk(root) for name in [*names, *_dirs]}


def test_odd_job_names_write_logs_only_inside_the_log_location(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    logs = d.home / "logs"
    before = files_under(d.home)
    job_file = tmp_path / "one.csv"
    job_file.write_text("job_step,job_step_function,job_step_command\n10,run_command,echo odd name ran\n")
    for name in REFUSED_NAMES:
        result = d.ctl("job", "import", "-g", "r5-odd", name, str(job_file))
        assert result.returncode != 0, f"job name {name!r} was accepted"
    assert call(d, "listall")["jobs"] == [], "a refused name created a job"
    for name in ODD_NAMES:
        d.ok("job", "import", "-g", "r5-odd", name, str(job_file))
    result = d.ctl("start", "--wait", "r5-odd")
    assert result.returncode == 0, result.stderr

    real_home = os.path.realpath(d.home)
    allowed = [os.path.realpath(p) for p in (logs, d.home / "state", d.home / "run", d.home / "etc")]
    new = sorted(files_under(d.home) - before)
    for path in new:
        real = os.path.realpath(path)
        assert real.startswith(real_home + os.sep), f"{path} resolves outside the daemon's home: {real}"
        assert real in allowed or any(real.startswith(a + os.sep) for a in allowed), f"unexpected file {real}"
    log_files = {run_of(d, name)["log_file"] for name in ODD_NAMES}
    assert len(log_files) == len(ODD_NAMES), "two jobs share a log file"
    for log_file in log_files:
        assert os.path.dirname(os.path.realpath(log_file)) == os.path.realpath(logs), log_file
        assert Path(log_file).is_file(), log_file
        assert "odd name ran" in Path(log_file).read_text()
    assert set(os.listdir(logs)) == {os.path.basename(f) for f in log_files}
    for path in (tmp_path, d.home):
        assert not list(path.rglob("r5-marker")), f"a job name ran as shell code (in {path})"
    assert not (Path.cwd() / "r5-marker").exists(), "a job name ran as shell code (in the working directory)"
    assert not list(d.home.parent.glob("r5-escape*")), "a job name escaped the daemon's home"


def test_line_breaks_in_event_items_are_refused(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    job_file = tmp_path / "one.csv"
    job_file.write_text("job_step,job_step_function,job_step_command\n10,run_command,true\n")
    d.ok("job", "import", "r5-events", str(job_file))
    d.ok("event", "add", "r5-events", "fine", str(tmp_path / "fine.flag"))
    before = call(d, "event.view", {"job": "r5-events"})
    for item in (f"{tmp_path}/a\nb.flag", f"{tmp_path}/a\rb.flag", f"{tmp_path}/ok.flag\n"):
        result = d.ctl("event", "add", "r5-events", "bad", item)
        assert result.returncode != 0, f"event item {item!r} accepted"
        assert "item" in result.stderr, result.stderr
    reply = rpc(d, "event.add", {"job": "r5-events", "event": "bad", "item": f"{tmp_path}/a\0b.flag"})
    assert reply["error"]["code"] in (-32602, 1004), reply
    for name in ("../bad", "bad\nname", "a/b"):
        result = d.ctl("event", "add", "r5-events", name, str(tmp_path / "x.flag"))
        assert result.returncode != 0, f"event name {name!r} accepted"
    assert call(d, "event.view", {"job": "r5-events"}) == before
