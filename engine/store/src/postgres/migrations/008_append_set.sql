-- Version 8: `shiphat_append` writes a group's events with a few set-based statements
-- instead of a PL/pgSQL loop of four or five statements per event, whose cost per statement
-- (about 90 µs a step, at 50 concurrent runs, of the server's CPU) was most of what the loop
-- added to the statements' own work.
--
-- What it answers and writes is what the loop of migration 006, kept as
-- `shiphat_append_each`, answers and writes: each event's fence is checked (its run's row is
-- locked, until the commit, when the fence holds), a step's second end is refused, refusals
-- are answered as values (0: a stale fence; -1: a second end), seqs follow the order of the
-- events, and the runs whose events grew are announced once for the call. The statements
-- below see the steps as they were before the call, so a call in which one event could see
-- what another did (two events of one step), or which holds a kind of event the loop would
-- refuse by name, is left to the loop; so is a call of fewer than four events, for which the
-- loop costs less.

ALTER FUNCTION shiphat_append(TEXT[], TEXT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[],
    INTEGER[], DOUBLE PRECISION[], TEXT[], TEXT[], TEXT[], BOOLEAN[], BIGINT)
    RENAME TO shiphat_append_each;

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
    -- Per event: whether its fence holds.
    fenced BOOLEAN[];
    answers BIGINT[];
    -- The runs whose events grew, as the JSON array's elements, in the order of their first
    -- event.
    payload TEXT;
    grown_run TEXT;
    -- Where the seqs of `events` come from.
    seqs REGCLASS;
BEGIN
    -- For a call of a few events (a lone run's commit holds one or two) the loop costs less:
    -- the statements below cost about as much as three of its events (pgbench; see
    -- docs/BENCHMARKS.md). The test of the events is not made for such a call.
    IF cardinality(run_ids) < 4
        OR EXISTS (SELECT 1 FROM unnest(run_ids, step_ids, kinds) e(run_id, step, kind)
            WHERE kind IS NOT NULL GROUP BY run_id, step
            HAVING count(*) > 1 OR bool_or(kind NOT IN ('started', 'finished'))) THEN
        RETURN shiphat_append_each(run_ids, fence_owners, fence_epochs, bodies, kinds,
            step_ids, step_sections, step_statuses, step_attempts, step_durations,
            step_summaries, step_outputs, step_errors, step_continued, at_ms);
    END IF;

    seqs := pg_get_serial_sequence('events', 'seq');
    -- The rows of the runs whose fence holds for some event, locked until the commit (in the
    -- order of their ids, as `interrupt_running` takes them): no change of a run's state (a
    -- cancel, another daemon taking it over) comes between this check and the writes. A
    -- statement of its own, so that the next one reads the steps as they are once the locks
    -- are held.
    SELECT array_agg(held.id IS NOT NULL ORDER BY e.i) INTO fenced
    FROM unnest(run_ids, fence_owners, fence_epochs) WITH ORDINALITY e(run_id, owner, epoch, i)
    LEFT JOIN (
        SELECT r.id, r.lease_owner, r.lease_epoch FROM runs r
        WHERE r.id = ANY (run_ids) AND r.status = 'running'
            AND r.lease_expires_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint
            AND EXISTS (SELECT 1 FROM unnest(run_ids, fence_owners, fence_epochs)
                f(run_id, owner, epoch)
                WHERE f.run_id = r.id AND f.owner = r.lease_owner AND f.epoch = r.lease_epoch)
        ORDER BY r.id
        FOR UPDATE OF r
    ) held ON held.id = e.run_id AND held.lease_owner = e.owner AND held.lease_epoch = e.epoch;

    -- Every write of a run's steps holds the run's row, so the steps read here stay as they
    -- are until the commit. A step's end finds its row there since its start, not ended yet
    -- (it is ended), ended already (it is refused), or none (a skipped step: its row is
    -- inserted). The seqs are drawn in the order of the events, before the inserts, so that
    -- each answer and each new step row gets its event's.
    WITH fenced_events AS MATERIALIZED (
        SELECT e.*, s.run_id IS NOT NULL AS has_row, s.finished_ms IS NOT NULL AS has_ended
        FROM unnest(run_ids, bodies, kinds, step_ids, step_sections, step_statuses,
            step_attempts, step_durations, step_summaries, step_outputs, step_errors,
            step_continued) WITH ORDINALITY e(run_id, body, kind, step, section, status,
            attempts, duration_ms, summary, outputs, error, continued, i)
        LEFT JOIN steps s ON e.kind = 'finished' AND s.run_id = e.run_id AND s.step = e.step
        WHERE fenced[e.i]
    ), written AS MATERIALIZED (
        SELECT w.*, nextval(seqs) AS seq
        FROM (SELECT * FROM fenced_events WHERE NOT has_ended ORDER BY i) w
    ), inserted AS (
        INSERT INTO events (seq, run_id, body) OVERRIDING SYSTEM VALUE
        SELECT seq, run_id, body FROM written ORDER BY seq
    ), started AS (
        INSERT INTO steps (run_id, step, section, status, attempts, started_ms, seq)
        SELECT run_id, step, section, 'running', attempts, at_ms, seq
        FROM written WHERE kind = 'started'
        ON CONFLICT (run_id, step) DO UPDATE SET status = 'running',
            attempts = excluded.attempts,
            started_ms = CASE WHEN steps.status = 'interrupted'
                THEN excluded.started_ms ELSE steps.started_ms END
    ), ended AS (
        UPDATE steps s SET status = w.status, attempts = w.attempts, finished_ms = at_ms,
            duration_ms = w.duration_ms, summary = w.summary, outputs = w.outputs,
            error = w.error, continued = w.continued
        FROM written w
        WHERE w.kind = 'finished' AND w.has_row AND s.run_id = w.run_id AND s.step = w.step
            AND s.finished_ms IS NULL
    ), skipped AS (
        INSERT INTO steps (run_id, step, section, status, attempts, finished_ms, duration_ms,
            summary, outputs, error, continued, seq)
        SELECT run_id, step, section, status, attempts, at_ms, duration_ms, summary, outputs,
            error, continued, seq
        FROM written WHERE kind = 'finished' AND NOT has_row
    )
    SELECT
        (SELECT array_agg(CASE WHEN NOT fenced[e.i] THEN 0 ELSE coalesce(w.seq, -1) END
                ORDER BY e.i)
            FROM generate_series(1, cardinality(run_ids)) e(i)
            LEFT JOIN written w ON w.i = e.i),
        (SELECT string_agg(to_json(g.run_id)::text, ',' ORDER BY g.first)
            FROM (SELECT run_id, min(i) AS first FROM written GROUP BY run_id) g)
    INTO answers, payload;

    -- Announced as the loop announces them: one notification when the list fits under the
    -- server's limit of 8,000 bytes, which is nearly always, else split where it would pass
    -- 7,900 bytes.
    IF payload IS NOT NULL AND octet_length(payload) <= 7900 THEN
        PERFORM pg_notify('shiphat', 'E:[' || payload || ']');
    ELSIF payload IS NOT NULL THEN
        payload := '';
        FOR grown_run IN
            SELECT run_id FROM unnest(run_ids, answers) WITH ORDINALITY u(run_id, answer, i)
            WHERE answer > 0 GROUP BY run_id ORDER BY min(i)
        LOOP
            IF payload <> '' AND octet_length(payload)
                    + octet_length(to_json(grown_run)::text) > 7900 THEN
                PERFORM pg_notify('shiphat', 'E:[' || payload || ']');
                payload := '';
            END IF;
            payload := payload || CASE WHEN payload = '' THEN '' ELSE ',' END
                || to_json(grown_run)::text;
        END LOOP;
        PERFORM pg_notify('shiphat', 'E:[' || payload || ']');
    END IF;
    RETURN coalesce(answers, '{}');
END
$$;
