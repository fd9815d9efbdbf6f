-- The core interface: every function and every error path.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
\pset null '(null)'

-- Applications ------------------------------------------------------------
SELECT es_create_application('core');
SELECT es_create_application('core');   -- again: harmless
SELECT count(*) FROM es_applications WHERE name = 'core';
SELECT es_create_application(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT es_create_application('');
\echo :LAST_ERROR_SQLSTATE
SELECT es_create_application(repeat('x', 256));
\echo :LAST_ERROR_SQLSTATE
SELECT es_create_application('other');

-- Unknown application: 42704 with a hint, in every function
SELECT es_append('nope', ARRAY[]::es_event[]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('nope', 1, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_events('nope', '00000000-0000-0000-0000-000000000001');
\echo :LAST_ERROR_SQLSTATE
SELECT es_max_notification_id('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT es_tracking_position('nope', 'up');
\echo :LAST_ERROR_SQLSTATE

-- An empty log
SELECT es_max_notification_id('core');
SELECT * FROM es_select('core', 1, 10);
SELECT es_append('core', ARRAY[]::es_event[]);  -- no rows

-- Bad arguments to es_append: each named, nothing written ------------------
SELECT es_append(NULL, ARRAY[]::es_event[]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', NULL::es_event[]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[NULL]::es_event[]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, 't', '')::es_event,
                               ROW(NULL, 1, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', NULL, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, NULL, '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, 't', NULL)::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', -1, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, '', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, repeat('t', 1025), '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[[ROW('00000000-0000-0000-0000-00000000000a', 1, 't', '')::es_event]]);
\echo :LAST_ERROR_SQLSTATE
-- the same version twice in one call: 23505
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, 't', '')::es_event,
                               ROW('00000000-0000-0000-0000-00000000000a', 1, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
-- versions not consecutive within the call: 22023
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 1, 't', '')::es_event,
                               ROW('00000000-0000-0000-0000-00000000000a', 3, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 2, 't', '')::es_event,
                               ROW('00000000-0000-0000-0000-00000000000a', 1, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
-- a new aggregate starts at 0 or 1: 22023
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000a', 2, 't', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
-- nothing was written, and no id was used up
SELECT es_max_notification_id('core');
SELECT count(*) FROM es_stored_events;

-- Appends ------------------------------------------------------------------
-- several aggregates in one call; ids come back in input order
SELECT es_append('core', ARRAY[
    ROW('00000000-0000-0000-0000-00000000000b', 0, 'B.Created', '\x01')::es_event,
    ROW('00000000-0000-0000-0000-00000000000a', 1, 'A.Created', '\x02')::es_event,
    ROW('00000000-0000-0000-0000-00000000000b', 1, 'B.Changed', '\x03')::es_event,
    ROW('00000000-0000-0000-0000-00000000000a', 2, 'A.Changed', '\x04')::es_event]);
-- the single-event forms
SELECT es_append('core', ROW('00000000-0000-0000-0000-00000000000a', 3, 'A.Changed', '\x05')::es_event);
SELECT es_append('core', '00000000-0000-0000-0000-00000000000b', 2, 'B.Changed', '\x06');
SELECT es_append('core', NULL::es_event);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', '00000000-0000-0000-0000-00000000000b', 3, 'B.Changed', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', '00000000-0000-0000-0000-00000000000b', -3, 'B.Changed', '');
\echo :LAST_ERROR_SQLSTATE
-- optimistic concurrency: an existing version is 23505, a skip is 22023
SELECT es_append('core', '00000000-0000-0000-0000-00000000000a', 3, 'A.Changed', '\x07');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', '00000000-0000-0000-0000-00000000000a', 1, 'A.Changed', '\x07');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', '00000000-0000-0000-0000-00000000000a', 5, 'A.Changed', '\x07');
\echo :LAST_ERROR_SQLSTATE
-- all or nothing: one bad aggregate refuses the whole call
SELECT es_append('core', ARRAY[
    ROW('00000000-0000-0000-0000-00000000000c', 1, 'C.Created', '')::es_event,
    ROW('00000000-0000-0000-0000-00000000000a', 2, 'A.Changed', '')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_events('core', '00000000-0000-0000-0000-00000000000c');
-- ... and used no id: the next append gets 7, right after the 6 above
SELECT es_append('core', '00000000-0000-0000-0000-00000000000c', 1, 'C.Created', '\x08');
-- applications have their own aggregates and logs
SELECT es_append('other', '00000000-0000-0000-0000-00000000000a', 1, 'A.Created', '\x09');

-- es_select ------------------------------------------------------------------
SELECT id, originator_id, originator_version, topic, state FROM es_select('core', 1, 10);
SELECT id FROM es_select('core', 3, 2);
SELECT id FROM es_select('core', 2, 10, 4);
SELECT id FROM es_select('core', 5, 10, 4);   -- stop below start: nothing
SELECT id, topic FROM es_select('core', 1, 10, topics => ARRAY['A.Changed', 'C.Created']);
SELECT id, topic FROM es_select('core', 1, 2, topics => ARRAY['A.Changed']);
SELECT id FROM es_select('core', 1, 10, topics => ARRAY[]::text[]);
SELECT id FROM es_select('core', 100, 10);
SELECT id, originator_version FROM es_select('other', 1, 10);
SELECT count(*) FROM es_select('core', 1, 10) WHERE recorded_at <= now();
SELECT * FROM es_select('core', 1, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('core', 1, -5);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('core', 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('core', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('core', 0, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select(NULL, 1, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('core', 1, 10, topics => ARRAY['x', NULL]);
\echo :LAST_ERROR_SQLSTATE
SELECT es_max_notification_id('core');
SELECT es_max_notification_id(NULL);
\echo :LAST_ERROR_SQLSTATE

-- es_events ------------------------------------------------------------------
SELECT originator_version, topic, state FROM es_events('core', '00000000-0000-0000-0000-00000000000a');
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000a', lte => 2);
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000a', gt => 1);
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000a', gt => 1, lte => 2);
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000a', descending => true);
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000a', descending => true, max_count => 1);
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000b', max_count => 2);
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-0000000000ff');
SELECT * FROM es_events('core', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_events('core', '00000000-0000-0000-0000-00000000000a', max_count => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_events(NULL, '00000000-0000-0000-0000-00000000000a');
\echo :LAST_ERROR_SQLSTATE

-- Tracking -------------------------------------------------------------------
SELECT es_tracking_position('core', 'upstream');
-- no events, but the position is recorded
SELECT es_append('core', ARRAY[]::es_event[], 'upstream', 3);
SELECT es_tracking_position('core', 'upstream');
-- events and position together
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000d', 1, 'D.Created', '')::es_event], 'upstream', 5);
SELECT es_tracking_position('core', 'upstream');
-- not above the recorded position: 23505, and the events are not recorded
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000d', 2, 'D.Changed', '')::es_event], 'upstream', 5);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[]::es_event[], 'upstream', 4);
\echo :LAST_ERROR_SQLSTATE
SELECT originator_version FROM es_events('core', '00000000-0000-0000-0000-00000000000d');
SELECT es_tracking_position('core', 'upstream');
SELECT es_tracking_position('core', 'elsewhere');
SELECT es_tracking_position('other', 'upstream');
SELECT es_append('core', ARRAY[]::es_event[], NULL, 6);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[]::es_event[], 'upstream', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[]::es_event[], 'upstream', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('core', ARRAY[]::es_event[], '', 6);
\echo :LAST_ERROR_SQLSTATE
SELECT es_tracking_position('core', NULL);
\echo :LAST_ERROR_SQLSTATE
-- a bad tracking argument leaves the events unwritten
SELECT es_append('core', ARRAY[ROW('00000000-0000-0000-0000-00000000000d', 2, 'D.Changed', '')::es_event], 'upstream', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT es_max_notification_id('core');

-- Transactions ----------------------------------------------------------------
-- an aborted append leaves a permanent gap that readers skip
BEGIN;
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 1, 'E.Created', '');
ROLLBACK;
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 1, 'E.Created', '\x0a');
SELECT id, topic FROM es_select('core', 8, 10);
-- the same inside a subtransaction; own appends are visible before commit
BEGIN;
SAVEPOINT s;
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 2, 'E.Changed', '');
ROLLBACK TO SAVEPOINT s;
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 2, 'E.Changed', '\x0b');
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 3, 'E.Changed', '\x0c');
SELECT id, originator_version FROM es_select('core', 9, 10);
COMMIT;
-- an error caught inside PL/pgSQL leaves no slot behind: later appends and reads work
DO $$
BEGIN
    PERFORM es_append('core', '00000000-0000-0000-0000-00000000000e', 1, 'E.Created', '');
EXCEPTION WHEN unique_violation THEN
    RAISE NOTICE 'caught %', SQLSTATE;
END $$;
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 4, 'E.Changed', '\x0d');
SELECT id, originator_version FROM es_select('core', 9, 10);

-- a topic of exactly 1024 bytes is accepted
SELECT es_append('core', '00000000-0000-0000-0000-0000000000f0', 1, repeat('t', 1024), '');

-- read-only transactions cannot append
BEGIN READ ONLY;
SELECT es_append('core', '00000000-0000-0000-0000-00000000000e', 5, 'E.Changed', '');
ROLLBACK;
\echo :LAST_ERROR_SQLSTATE

-- Every object has a comment ----------------------------------------------------
SELECT pg_describe_object(classid, objid, objsubid) AS object
FROM pg_depend d
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'eventsourcing')
  AND deptype = 'e'
  AND obj_description(objid, (SELECT relname FROM pg_class WHERE oid = classid)) IS NULL
ORDER BY 1;
