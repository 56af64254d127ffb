-- A step's outcome and the run's progress must be committed together. The trigger makes the
-- one UPDATE of the step row also move the run's current and last completed step, so a step's
-- completion is a single atomic statement (one round trip to the database thread per step).
CREATE TRIGGER job_run_step_progress
AFTER UPDATE OF status ON job_run_step
WHEN NEW.status IN ('Success', 'Warning', 'Skipped', 'Failure') AND OLD.status NOT IN ('Success', 'Warning', 'Skipped', 'Failure')
BEGIN
    UPDATE job_run
    SET current_step = NEW.job_step,
        last_completed_step = CASE
            WHEN NEW.status = 'Failure' THEN last_completed_step
            WHEN last_completed_step IS NULL OR last_completed_step < NEW.job_step THEN NEW.job_step
            ELSE last_completed_step
        END
    WHERE run_key = NEW.run_key;
END;
