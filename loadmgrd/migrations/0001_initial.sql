-- loadmgr repository, version 1.
-- Timestamps of things that happened (*_ts) are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ'.
-- Data datetimes (load windows, data currency) are naive text 'YYYY-MM-DD HH:MM:SS'.
-- Durations are REAL seconds.

CREATE TABLE repository_info (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version    INTEGER NOT NULL,
    maintenance_mode  INTEGER NOT NULL DEFAULT 0 CHECK (maintenance_mode IN (0, 1)),
    maintenance_ts    TEXT,
    created_ts        TEXT NOT NULL
);

CREATE TABLE job (
    job_key      INTEGER PRIMARY KEY,
    job_name     TEXT NOT NULL UNIQUE,
    job_group    TEXT,
    job_file     TEXT,
    created_ts   TEXT NOT NULL,
    updated_ts   TEXT NOT NULL
);
CREATE INDEX job_group_idx ON job (job_group);

CREATE TABLE job_step (
    job_key                  INTEGER NOT NULL REFERENCES job (job_key) ON DELETE CASCADE,
    job_step                 INTEGER NOT NULL,
    job_step_description     TEXT NOT NULL DEFAULT '',
    job_step_function        TEXT NOT NULL,
    job_step_command         TEXT NOT NULL DEFAULT '',
    job_step_args            TEXT NOT NULL DEFAULT '',
    job_step_ignore_error    INTEGER NOT NULL DEFAULT 0,
    job_step_capture_output  INTEGER NOT NULL DEFAULT 0,
    job_step_wait_step       INTEGER NOT NULL DEFAULT 0,
    job_step_alt_wait_step   INTEGER NOT NULL DEFAULT 0,
    skip_step                INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_key, job_step)
) WITHOUT ROWID;

CREATE TABLE job_event (
    event_key     INTEGER PRIMARY KEY,
    job_key       INTEGER NOT NULL REFERENCES job (job_key) ON DELETE CASCADE,
    event_name    TEXT NOT NULL,
    action_type   TEXT NOT NULL CHECK (action_type IN ('wait', 'create')),
    event_type    TEXT NOT NULL CHECK (event_type IN ('file', 'other')),
    event_item    TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_ts    TEXT NOT NULL,
    UNIQUE (job_key, event_name)
);

-- The current (latest) run of each job. Finished runs move to the *_hist tables when the
-- next run starts, so these stay one row per job and status/listall stay cheap.
-- AUTOINCREMENT: a run key is never reused, so archived runs keep unique keys.
CREATE TABLE job_run (
    run_key              INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id               TEXT NOT NULL,
    job_key              INTEGER NOT NULL UNIQUE REFERENCES job (job_key) ON DELETE CASCADE,
    status               TEXT NOT NULL,
    status_reason        TEXT,
    start_step           INTEGER,
    end_step             INTEGER,
    last_completed_step  INTEGER,
    current_step         INTEGER,
    start_ts             TEXT,
    end_ts               TEXT,
    duration             REAL,
    log_file             TEXT,
    resumed_from         TEXT,
    one_off_steps        INTEGER NOT NULL DEFAULT 0,
    temp_args            TEXT NOT NULL DEFAULT '{}',
    skip_events          TEXT NOT NULL DEFAULT '[]',
    no_success_email     INTEGER NOT NULL DEFAULT 0,
    requested_by         TEXT,
    variables            TEXT NOT NULL DEFAULT '{}'
);

-- The run's queue: the steps frozen at run start, with their per-step state. pgid and
-- pgid_started (the leader's start time in clock ticks) identify a running step's process
-- group, so a restarted daemon can end the steps of a daemon that died.
CREATE TABLE job_run_step (
    run_key                  INTEGER NOT NULL REFERENCES job_run (run_key) ON DELETE CASCADE,
    job_step                 INTEGER NOT NULL,
    job_step_description     TEXT NOT NULL DEFAULT '',
    job_step_function        TEXT NOT NULL,
    job_step_command         TEXT NOT NULL DEFAULT '',
    job_step_args            TEXT NOT NULL DEFAULT '',
    job_step_ignore_error    INTEGER NOT NULL DEFAULT 0,
    job_step_capture_output  INTEGER NOT NULL DEFAULT 0,
    job_step_wait_step       INTEGER NOT NULL DEFAULT 0,
    job_step_alt_wait_step   INTEGER NOT NULL DEFAULT 0,
    skip_step                INTEGER NOT NULL DEFAULT 0,
    status                   TEXT NOT NULL DEFAULT 'Pending',
    start_ts                 TEXT,
    end_ts                   TEXT,
    duration                 REAL,
    exit_code                INTEGER,
    attempts                 INTEGER NOT NULL DEFAULT 0,
    output                   TEXT,
    message                  TEXT,
    pgid                     INTEGER,
    pgid_started             TEXT,
    PRIMARY KEY (run_key, job_step)
) WITHOUT ROWID;

-- The run's events, frozen at run start.
CREATE TABLE job_run_event (
    run_key      INTEGER NOT NULL REFERENCES job_run (run_key) ON DELETE CASCADE,
    event_name   TEXT NOT NULL,
    action_type  TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    event_item   TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'Pending',
    status_ts    TEXT,
    PRIMARY KEY (run_key, event_name)
) WITHOUT ROWID;

CREATE TABLE job_run_hist (
    run_key              INTEGER PRIMARY KEY,
    run_id               TEXT NOT NULL,
    job_key              INTEGER NOT NULL REFERENCES job (job_key) ON DELETE CASCADE,
    status               TEXT NOT NULL,
    status_reason        TEXT,
    start_step           INTEGER,
    end_step             INTEGER,
    last_completed_step  INTEGER,
    current_step         INTEGER,
    start_ts             TEXT,
    end_ts               TEXT,
    duration             REAL,
    log_file             TEXT,
    resumed_from         TEXT,
    one_off_steps        INTEGER NOT NULL DEFAULT 0,
    temp_args            TEXT NOT NULL DEFAULT '{}',
    skip_events          TEXT NOT NULL DEFAULT '[]',
    no_success_email     INTEGER NOT NULL DEFAULT 0,
    requested_by         TEXT,
    variables            TEXT NOT NULL DEFAULT '{}',
    archived_ts          TEXT NOT NULL
);
CREATE INDEX job_run_hist_job_idx ON job_run_hist (job_key, run_key DESC);

CREATE TABLE job_run_step_hist (
    run_key                  INTEGER NOT NULL REFERENCES job_run_hist (run_key) ON DELETE CASCADE,
    job_step                 INTEGER NOT NULL,
    job_step_description     TEXT NOT NULL DEFAULT '',
    job_step_function        TEXT NOT NULL,
    job_step_command         TEXT NOT NULL DEFAULT '',
    job_step_args            TEXT NOT NULL DEFAULT '',
    job_step_ignore_error    INTEGER NOT NULL DEFAULT 0,
    job_step_capture_output  INTEGER NOT NULL DEFAULT 0,
    job_step_wait_step       INTEGER NOT NULL DEFAULT 0,
    job_step_alt_wait_step   INTEGER NOT NULL DEFAULT 0,
    skip_step                INTEGER NOT NULL DEFAULT 0,
    status                   TEXT NOT NULL,
    start_ts                 TEXT,
    end_ts                   TEXT,
    duration                 REAL,
    exit_code                INTEGER,
    attempts                 INTEGER NOT NULL DEFAULT 0,
    output                   TEXT,
    message                  TEXT,
    pgid                     INTEGER,
    pgid_started             TEXT,
    PRIMARY KEY (run_key, job_step)
) WITHOUT ROWID;

CREATE TABLE job_run_event_hist (
    run_key      INTEGER NOT NULL REFERENCES job_run_hist (run_key) ON DELETE CASCADE,
    event_name   TEXT NOT NULL,
    action_type  TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    event_item   TEXT NOT NULL,
    status       TEXT NOT NULL,
    status_ts    TEXT,
    PRIMARY KEY (run_key, event_name)
) WITHOUT ROWID;

CREATE TABLE process (
    process_key            INTEGER PRIMARY KEY,
    process_name           TEXT NOT NULL UNIQUE,
    process_type           TEXT NOT NULL CHECK (process_type IN ('ingestion', 'consumption')),
    subject_area           TEXT,
    row_count_type         TEXT NOT NULL CHECK (row_count_type IN ('Batch', 'Temp Table')),
    row_count_property     TEXT,
    currency_date_flag     INTEGER NOT NULL DEFAULT 0,
    currency_start_offset  INTEGER NOT NULL DEFAULT 0,
    currency_end_offset    INTEGER NOT NULL DEFAULT 0,
    created_ts             TEXT NOT NULL,
    updated_ts             TEXT NOT NULL
);

CREATE TABLE process_log (
    process_log_key     INTEGER PRIMARY KEY,
    process_key         INTEGER NOT NULL REFERENCES process (process_key) ON DELETE CASCADE,
    batch_nbr           TEXT NOT NULL,
    run_id              TEXT,
    job_name            TEXT,
    load_strategy       TEXT NOT NULL,
    currency_start_dttm TEXT NOT NULL,
    currency_end_dttm   TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('Running', 'Complete', 'Failed')),
    start_ts            TEXT NOT NULL,
    end_ts              TEXT,
    duration            REAL,
    row_count           INTEGER
);
CREATE INDEX process_log_process_idx ON process_log (process_key, process_log_key DESC);

CREATE TABLE data_currency (
    currency_key          INTEGER PRIMARY KEY,
    table_schema          TEXT NOT NULL,
    table_name            TEXT NOT NULL,
    subject_area          TEXT,
    date_column           TEXT NOT NULL,
    currency_dttm_query   TEXT,
    currency_date_offset  INTEGER NOT NULL DEFAULT 0,
    active                INTEGER NOT NULL DEFAULT 1,
    created_ts            TEXT NOT NULL,
    updated_ts            TEXT NOT NULL,
    UNIQUE (table_schema, table_name)
);

CREATE TABLE data_currency_log (
    currency_log_key  INTEGER PRIMARY KEY,
    currency_key      INTEGER NOT NULL REFERENCES data_currency (currency_key) ON DELETE CASCADE,
    currency_dttm     TEXT NOT NULL,
    currency_date     TEXT NOT NULL,
    run_id            TEXT,
    logged_ts         TEXT NOT NULL
);
CREATE INDEX data_currency_log_idx ON data_currency_log (currency_key, currency_log_key DESC);

CREATE TABLE process_currency_link (
    process_key   INTEGER NOT NULL REFERENCES process (process_key) ON DELETE CASCADE,
    currency_key  INTEGER NOT NULL REFERENCES data_currency (currency_key) ON DELETE CASCADE,
    created_ts    TEXT NOT NULL,
    PRIMARY KEY (process_key, currency_key)
) WITHOUT ROWID;
CREATE INDEX process_currency_link_currency_idx ON process_currency_link (currency_key);

CREATE TABLE file_log (
    file_log_key     INTEGER PRIMARY KEY,
    process_log_key  INTEGER NOT NULL REFERENCES process_log (process_log_key) ON DELETE CASCADE,
    file_name        TEXT NOT NULL,
    record_count     INTEGER NOT NULL,
    file_size        INTEGER NOT NULL,
    file_type        TEXT,
    file_date        TEXT,
    logged_ts        TEXT NOT NULL
);
CREATE INDEX file_log_process_log_idx ON file_log (process_log_key);

CREATE TABLE schedule (
    schedule_key   INTEGER PRIMARY KEY,
    target_name    TEXT NOT NULL,
    cron           TEXT NOT NULL,
    timezone       TEXT,
    enabled        INTEGER NOT NULL DEFAULT 1,
    last_fire_ts   TEXT,
    created_ts     TEXT NOT NULL,
    UNIQUE (target_name, cron)
);
