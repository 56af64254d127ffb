"""Every metadata command through the real loadmgrctl against a real loadmgrd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Daemon

JOB_FILE = """\
# nightly sales load
job_step,job_step_description,job_step_function,job_step_command,job_step_args,job_step_ignore_error,job_step_capture_output
# extract
10,Extract,run_command,echo a\\,b,mode=fast,False,yes
20,Count,run_command,"wc -l, then echo",,no,1
# the end
30,Quote,run_command,echo \\"quoted\\" and back\\\\slash %step_10%,,TRUE,False
"""


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text(JOB_FILE)
    return path


def steps_of(daemon: Daemon, job: str) -> list[dict[str, object]]:
    return daemon.json("job", "view", job)["steps"]  # type: ignore[no-any-return]


def jobs(daemon: Daemon) -> list[dict[str, object]]:
    return daemon.json("listall")  # type: ignore[no-any-return]


def test_import_export_reimport_round_trip(daemon: Daemon, job_file: Path, tmp_path: Path) -> None:
    out = daemon.ok("job", "import", "-g", "sales", "rt_job", str(job_file))
    assert "imported with 3 steps" in out
    original = steps_of(daemon, "rt_job")
    assert [s["job_step_command"] for s in original] == [
        "echo a,b",
        "wc -l, then echo",
        'echo "quoted" and back\\slash %step_10%',
    ]
    assert [s["job_step_ignore_error"] for s in original] == [False, False, True]
    assert [s["job_step_capture_output"] for s in original] == [True, True, False]

    exported = tmp_path / "exported.csv"
    daemon.ok("job", "export", "rt_job", str(exported))
    daemon.ok("job", "import", "rt_copy", str(exported))
    assert steps_of(daemon, "rt_copy") == original

    exported_json = tmp_path / "exported.json"
    daemon.ok("job", "export", "rt_job", str(exported_json))
    assert json.loads(exported_json.read_text())["steps"][0]["job_step"] == 10
    daemon.ok("job", "import", "rt_json", str(exported_json))
    assert steps_of(daemon, "rt_json") == original

    listed = {j["job_name"]: j for j in jobs(daemon)}
    assert listed["rt_job"]["job_group"] == "sales"
    assert listed["rt_job"]["status"] == "Not Running"


def test_import_existing_without_force_changes_nothing(daemon: Daemon, job_file: Path, tmp_path: Path) -> None:
    daemon.ok("job", "import", "-g", "g1", "keep_job", str(job_file))
    other = tmp_path / "other.csv"
    other.write_text("job_step,job_step_function,job_step_command\n5,run_command,true\n")
    result = daemon.ctl("job", "import", "-g", "g2", "keep_job", str(other))
    assert result.returncode == 0
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert [s["job_step"] for s in steps_of(daemon, "keep_job")] == [10, 20, 30]

    daemon.ok("job", "import", "--force", "-g", "g2", "keep_job", str(other))
    view = daemon.json("job", "view", "keep_job")
    assert [s["job_step"] for s in view["steps"]] == [5]
    assert view["job_group"] == "g2"
    assert view["job_file"] == str(other)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("10,run_command,true\n", "line 1, column 1: missing header"),
        ("job_step,job_step_function,job_step_command,colour\n1,run_command,true,red\n", "unknown column 'colour'"),
        (
            "job_step,job_step_function,job_step_command,job_step_ignore_error\n1,run_command,true,maybe\n",
            "line 2, column job_step_ignore_error: 'maybe' is not a boolean",
        ),
        (
            "job_step,job_step_function,job_step_command\n1,run_command,true\n# c\n1,run_command,false\n",
            "line 4, column job_step: step 1 is already defined on line 2",
        ),
        ("", "no header record"),
        ("job_step;job_step_function;job_step_command\n1;run_command;true\n", "looks split by ';'"),
        (
            "job_step,job_step_function,job_step_command,job_step_wait_step\n1,run_command,true,7\n",
            "waits for step 7, which does not exist",
        ),
        ('{"steps": [{"job_step": 1, "job_step_function": "run_command"', "invalid JSON"),
    ],
)
def test_bad_job_files_are_refused_with_location(daemon: Daemon, tmp_path: Path, content: str, expected: str) -> None:
    before = jobs(daemon)
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = daemon.ctl("job", "import", "bad_job", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert jobs(daemon) == before


def test_undecodable_bytes_are_refused_with_line_and_column(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"job_step,job_step_function,job_step_command\n1,run_command,ec\xffho\n")
    result = daemon.ctl("job", "import", "bin_job", str(path))
    assert result.returncode == 1
    assert "line 2, column 17" in result.stderr and "0xff" in result.stderr
    assert "bin_job" not in {j["job_name"] for j in jobs(daemon)}


def test_force_reimport_of_a_bad_file_keeps_the_old_steps(daemon: Daemon, job_file: Path, tmp_path: Path) -> None:
    daemon.ok("job", "import", "atomic_job", str(job_file))
    bad = tmp_path / "bad.csv"
    bad.write_text("job_step,job_step_function,job_step_command\n1,run_command,a\n1,run_command,b\n")
    assert daemon.ctl("job", "import", "--force", "atomic_job", str(bad)).returncode == 1
    assert [s["job_step"] for s in steps_of(daemon, "atomic_job")] == [10, 20, 30]


def test_job_rename_group_reset_remove(daemon: Daemon, job_file: Path) -> None:
    daemon.ok("job", "import", "old_name", str(job_file))
    daemon.ok("job", "import", "taken", str(job_file))
    refused = daemon.ctl("job", "rename", "old_name", "taken")
    assert refused.returncode == 1 and "a job named 'taken' already exists" in refused.stderr
    daemon.ok("job", "rename", "old_name", "new_name")
    names = {j["job_name"] for j in jobs(daemon)}
    assert "new_name" in names and "old_name" not in names

    daemon.ok("job", "group", "new_name", "nightly")
    assert {j["job_name"]: j["job_group"] for j in jobs(daemon)}["new_name"] == "nightly"
    daemon.ok("job", "group", "new_name", "")
    assert {j["job_name"]: j["job_group"] for j in jobs(daemon)}["new_name"] is None

    assert "no run -> Not Running" in daemon.ok("job", "reset", "new_name")

    no_tty = daemon.ctl("job", "remove", "new_name")
    assert no_tty.returncode == 1 and "--yes" in no_tty.stderr
    daemon.ok("job", "remove", "--yes", "new_name")
    assert "new_name" not in {j["job_name"] for j in jobs(daemon)}

    missing = daemon.ctl("job", "remove", "--yes", "new_name")
    assert missing.returncode == 1 and "no job named 'new_name'" in missing.stderr


def test_reserved_and_unsafe_job_names_are_refused(daemon: Daemon, job_file: Path) -> None:
    for name in ("ALL", "../etc", "a/b", "-x"):
        result = (
            daemon.ctl("job", "import", "--", name, str(job_file))
            if name.startswith("-")
            else daemon.ctl("job", "import", name, str(job_file))
        )
        assert result.returncode != 0, name
        assert name not in {j["job_name"] for j in jobs(daemon)}


def test_listall_status_filter(daemon: Daemon, job_file: Path) -> None:
    daemon.ok("job", "import", "filter_job", str(job_file))
    not_running = daemon.json("listall", "--status", "Not Running")
    assert "filter_job" in {j["job_name"] for j in not_running}
    assert daemon.json("listall", "--status", "Running") == []
    bad = daemon.ctl("listall", "--status", "Sleeping")
    assert bad.returncode == 2


def test_events(daemon: Daemon, job_file: Path) -> None:
    daemon.ok("job", "import", "ev_job", str(job_file))
    daemon.ok("event", "add", "ev_job", "arrived", "/data/in/$FEED.done")
    daemon.ok("event", "add", "-a", "create", "ev_job", "loaded", "/data/out/loaded.flag")
    dup = daemon.ctl("event", "add", "ev_job", "arrived", "/x")
    assert dup.returncode == 1 and "already has an event named 'arrived'" in dup.stderr
    other = daemon.ctl("event", "add", "-t", "other", "ev_job", "x", "y")
    assert other.returncode == 1 and "'other' is reserved" in other.stderr

    events = {e["event_name"]: e for e in daemon.json("event", "view", "ev_job")}
    assert events["arrived"]["action_type"] == "wait" and events["arrived"]["event_item"] == "/data/in/$FEED.done"
    assert events["loaded"]["action_type"] == "create" and events["loaded"]["enabled"] is True

    daemon.ok("event", "disable", "ev_job", "arrived", "loaded")
    assert all(not e["enabled"] for e in daemon.json("event", "view", "ev_job"))
    missing = daemon.ctl("event", "enable", "ev_job", "arrived", "nope")
    assert missing.returncode == 1 and "no event named 'nope'" in missing.stderr
    assert all(not e["enabled"] for e in daemon.json("event", "view", "ev_job")), "partial change"
    daemon.ok("event", "enable", "ev_job", "arrived")

    daemon.ok("event", "rename", "ev_job", "arrived", "landed")
    clash = daemon.ctl("event", "rename", "ev_job", "landed", "loaded")
    assert clash.returncode == 1 and "already has an event named 'loaded'" in clash.stderr
    daemon.ok("event", "remove", "ev_job", "loaded")
    assert [e["event_name"] for e in daemon.json("event", "view", "ev_job")] == ["landed"]

    unknown_job = daemon.ctl("event", "add", "no_such_job", "e", "/x")
    assert unknown_job.returncode == 1 and "no job named 'no_such_job'" in unknown_job.stderr


def test_processes(daemon: Daemon) -> None:
    out = daemon.ok(
        "process",
        "add",
        "--process_type",
        "consumption",
        "--subject_area",
        "sales",
        "--row_count_type",
        "Temp Table",
        "--row_count_property",
        "stage.sales_tmp",
        "--currency_date_flag",
        "--currency_start_offset",
        "2",
        "--currency_end_offset",
        "-1",
        "proc_a",
    )
    assert "added" in out
    process = daemon.json("process", "view", "proc_a")["process"]
    assert process["process_type"] == "consumption"
    assert process["row_count_type"] == "Temp Table"
    assert process["currency_date_flag"] is True
    assert (process["currency_start_offset"], process["currency_end_offset"]) == (2, -1)

    again = daemon.ok("process", "add", "--subject_area", "finance", "proc_a")
    assert "updated" in again
    process = daemon.json("process", "view", "proc_a")["process"]
    assert process["subject_area"] == "finance" and process["process_type"] == "consumption"

    daemon.ok("process", "update", "--currency_end_offset", "3", "proc_a")
    process = daemon.json("process", "view", "proc_a")["process"]
    assert process["currency_end_offset"] == 3 and process["currency_start_offset"] == 2

    missing = daemon.ctl("process", "update", "--currency_end_offset", "3", "nope")
    assert missing.returncode == 1 and "no process named 'nope'" in missing.stderr
    bad_type = daemon.ctl("process", "add", "--process_type", "sideways", "proc_b")
    assert bad_type.returncode == 2

    daemon.ok("process", "add", "proc_b")
    clash = daemon.ctl("process", "rename", "proc_a", "proc_b")
    assert clash.returncode == 1 and "already exists" in clash.stderr
    daemon.ok("process", "rename", "proc_b", "proc_c")
    daemon.ok("process", "remove", "proc_c")
    gone = daemon.ctl("process", "view", "proc_c")
    assert gone.returncode == 1 and "no process named 'proc_c'" in gone.stderr


def test_currency_and_links(daemon: Daemon) -> None:
    daemon.ok("process", "add", "link_proc")
    daemon.ok(
        "currency",
        "configure",
        "--subject_area",
        "sales",
        "--currency_date_offset",
        "--currency_dttm_query",
        "select max(load_dttm) from dw.sales",
        "dw",
        "sales",
        "load_dttm",
    )
    view = daemon.json("currency", "view", "dw", "sales")
    assert view["currency"]["date_column"] == "load_dttm"
    assert view["currency"]["currency_date_offset"] is True
    assert view["current_currency_dttm"] is None

    bad_identifier = daemon.ctl("currency", "configure", "dw", "sales;drop", "x")
    assert bad_identifier.returncode == 1 and "not a plain SQL identifier" in bad_identifier.stderr

    daemon.ok("link", "create", "link_proc", "dw", "sales")
    dup = daemon.ctl("link", "create", "link_proc", "dw", "sales")
    assert dup.returncode == 1 and "already linked" in dup.stderr
    assert daemon.json("process", "view", "link_proc")["linked_tables"] == ["dw.sales"]

    linked = daemon.ctl("process", "remove", "link_proc")
    assert linked.returncode == 1
    assert "linked to dw.sales" in linked.stderr and "link remove link_proc dw sales" in linked.stderr
    linked_table = daemon.ctl("currency", "remove", "dw", "sales")
    assert linked_table.returncode == 1 and "link remove" in linked_table.stderr

    daemon.ok("currency", "rename", "dw", "sales", "dw", "sales_v2")
    assert daemon.json("process", "view", "link_proc")["linked_tables"] == ["dw.sales_v2"]
    missing = daemon.ctl("currency", "view", "dw", "sales")
    assert missing.returncode == 1 and "no data currency configured for dw.sales" in missing.stderr

    daemon.ok("link", "remove", "link_proc", "dw", "sales_v2")
    not_linked = daemon.ctl("link", "remove", "link_proc", "dw", "sales_v2")
    assert not_linked.returncode == 1 and "is not linked" in not_linked.stderr
    daemon.ok("currency", "remove", "dw", "sales_v2")
    daemon.ok("process", "remove", "link_proc")
