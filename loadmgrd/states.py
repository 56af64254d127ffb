"""Status and kind enums shared by the whole daemon. Imports nothing of ours."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    NOT_RUNNING = "Not Running"
    READY = "Ready"
    WAITING = "Waiting"
    RUNNING = "Running"
    PAUSING = "Pausing In Progress"
    PAUSED = "Paused"
    STOPPING = "Stopping In Progress"
    STOPPED = "Stopped"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def is_active(self) -> bool:
        """A run in one of these states is owned by a live task in the daemon."""
        return self in ACTIVE_RUN_STATUSES

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_RUN_STATUSES


ACTIVE_RUN_STATUSES = frozenset(
    {RunStatus.READY, RunStatus.WAITING, RunStatus.RUNNING, RunStatus.PAUSING, RunStatus.STOPPING}
)
FINISHED_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.FAILED})


class StepStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILURE = "Failure"
    WARNING = "Warning"
    SKIPPED = "Skipped"

    @property
    def is_complete(self) -> bool:
        """Complete steps are never re-run by a resume."""
        return self in (StepStatus.SUCCESS, StepStatus.WARNING, StepStatus.SKIPPED)


class EventAction(StrEnum):
    WAIT = "wait"
    CREATE = "create"


class EventType(StrEnum):
    FILE = "file"
    OTHER = "other"


class ProcessType(StrEnum):
    INGESTION = "ingestion"
    CONSUMPTION = "consumption"


class RowCountType(StrEnum):
    BATCH = "Batch"
    TEMP_TABLE = "Temp Table"


class ProcessLogStatus(StrEnum):
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


class StepFunction(StrEnum):
    RUN_COMMAND = "run_command"
    START_PROCESS = "start_process"
    STOP_PROCESS = "stop_process"
    LOG_DATA_CURRENCY = "log_data_currency"
    CALL_CREATE_EVENT = "call_create_event"
    EXECUTE_SQL = "execute_sql"
    SEND_EMAIL = "send_email"
    FILE_RECORD_COUNT = "file_record_count"
    CREATE_DONE_FILE = "create_done_file"
    HDFS_FILE_STAGE = "hdfs_file_stage"
