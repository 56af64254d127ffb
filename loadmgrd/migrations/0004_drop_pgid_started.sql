-- pgid_started was meant to tell a step's process group from a later one reusing its number;
-- a restarted daemon finds its predecessor's step processes by LOADMGR_RUN_ID in their
-- environment instead (no read of /proc at spawn), so the column was never written.
ALTER TABLE job_run_step DROP COLUMN pgid_started;
ALTER TABLE job_run_step_hist DROP COLUMN pgid_started;
