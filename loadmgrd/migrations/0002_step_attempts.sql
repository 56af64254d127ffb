-- Steps may be retried (retries=N in step args): every attempt is kept as a JSON list of
-- {attempt, start_ts, end_ts, duration, exit_code, message}.
ALTER TABLE job_run_step ADD COLUMN attempt_log TEXT;
ALTER TABLE job_run_step_hist ADD COLUMN attempt_log TEXT;
