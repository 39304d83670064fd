-- Version 6: `shiphat_append`, which appends a group of events in one statement: a daemon's
-- writing connection sends one call for every event its group commit holds, instead of five
-- statements each (a savepoint, the fence check, the insert, the step's upsert, the release).
--
-- The arrays hold one element per event, in the order the events were written. For each
-- event: the run's row is locked if the event's fence still holds (the run is running, under
-- this owner and epoch, and its lease has not run out by the database's clock), else the event
-- is refused; a step's end is refused when the step has ended already; otherwise the event is
-- inserted and its step's record changed. `kinds` says how: NULL for no step, `started` or
-- `finished`. The answer holds, per event, its `seq`, or 0 when its fence refused it, or -1
-- when its step had ended already: refusals are values, so that nothing it refuses aborts the
-- group's transaction.
--
-- The runs whose events grew are announced on `shiphat` (sent at the commit) once for the
-- call, as `E:` and a JSON array of their ids, rather than once per event: each announcement
-- wakes every daemon's listener, and at the server a backend per listener. A payload stays
-- under the server's limit of 8,000 bytes: a long list is split.

CREATE FUNCTION shiphat_append(
    run_ids TEXT[],
    fence_owners TEXT[],
    fence_epochs BIGINT[],
    bodies TEXT[],
    kinds TEXT[],
    step_ids TEXT[],
    step_sections TEXT[],
    step_statuses TEXT[],
    step_attempts INTEGER[],
    step_durations DOUBLE PRECISION[],
    step_summaries TEXT[],
    step_outputs TEXT[],
    step_errors TEXT[],
    step_continued BOOLEAN[],
    at_ms BIGINT
) RETURNS BIGINT[] LANGUAGE plpgsql AS $$
DECLARE
    answers BIGINT[] := '{}';
    new_seq BIGINT;
    ended BOOLEAN;
    i INTEGER;
    grown TEXT[] := '{}';
    grown_run TEXT;
    payload TEXT := '';
BEGIN
    FOR i IN 1 .. coalesce(array_length(run_ids, 1), 0) LOOP
        -- The run's row stays locked until the commit: no change of its state (a cancel,
        -- another daemon taking it over) comes between this check and the write.
        PERFORM 1 FROM runs WHERE id = run_ids[i] AND status = 'running'
            AND lease_owner = fence_owners[i] AND lease_epoch = fence_epochs[i]
            AND lease_expires_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint
            FOR UPDATE;
        IF NOT FOUND THEN
            answers := answers || 0::bigint;
            CONTINUE;
        END IF;
        -- A step's end: its row, there since its start, is ended where it has not been yet.
        -- When no row is, either the step never started (a skipped one: its row is inserted
        -- below, once the event has its `seq`) or it has ended already. Every write of a
        -- run's steps holds the run's row, so this answer stays true until the commit.
        ended := false;
        IF kinds[i] = 'finished' THEN
            UPDATE steps SET status = step_statuses[i], attempts = step_attempts[i],
                finished_ms = at_ms, duration_ms = step_durations[i],
                summary = step_summaries[i], outputs = step_outputs[i],
                error = step_errors[i], continued = step_continued[i]
            WHERE run_id = run_ids[i] AND step = step_ids[i] AND finished_ms IS NULL;
            ended := FOUND;
            IF NOT ended AND EXISTS (SELECT 1 FROM steps WHERE run_id = run_ids[i]
                    AND step = step_ids[i]) THEN
                answers := answers || -1::bigint;
                CONTINUE;
            END IF;
        END IF;
        INSERT INTO events (run_id, body) VALUES (run_ids[i], bodies[i])
            RETURNING seq INTO new_seq;
        IF NOT run_ids[i] = ANY (grown) THEN
            grown := grown || run_ids[i];
        END IF;
        IF kinds[i] = 'started' THEN
            INSERT INTO steps (run_id, step, section, status, attempts, started_ms, seq)
            VALUES (run_ids[i], step_ids[i], step_sections[i], 'running', step_attempts[i],
                at_ms, new_seq)
            ON CONFLICT (run_id, step) DO UPDATE SET status = 'running',
                attempts = excluded.attempts,
                started_ms = CASE WHEN steps.status = 'interrupted'
                    THEN excluded.started_ms ELSE steps.started_ms END;
        ELSIF kinds[i] = 'finished' THEN
            IF NOT ended THEN
                INSERT INTO steps (run_id, step, section, status, attempts, finished_ms,
                    duration_ms, summary, outputs, error, continued, seq)
                VALUES (run_ids[i], step_ids[i], step_sections[i], step_statuses[i],
                    step_attempts[i], at_ms, step_durations[i], step_summaries[i],
                    step_outputs[i], step_errors[i], step_continued[i], new_seq);
            END IF;
        ELSIF kinds[i] IS NOT NULL THEN
            RAISE EXCEPTION 'unknown kind of event `%`', kinds[i];
        END IF;
        answers := answers || new_seq;
    END LOOP;
    FOREACH grown_run IN ARRAY grown LOOP
        IF payload <> '' AND octet_length(payload) + octet_length(to_json(grown_run)::text)
                > 7900 THEN
            PERFORM pg_notify('shiphat', 'E:[' || payload || ']');
            payload := '';
        END IF;
        payload := payload || CASE WHEN payload = '' THEN '' ELSE ',' END
            || to_json(grown_run)::text;
    END LOOP;
    IF payload <> '' THEN
        PERFORM pg_notify('shiphat', 'E:[' || payload || ']');
    END IF;
    RETURN answers;
END
$$;
