-- Attacks by ordinary roles, each refused; and the defences that hold even
-- against forged rows an administrator planted.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
DROP ROLE IF EXISTS es_sec_mallory, es_sec_other;
RESET client_min_messages;
\set VERBOSITY default
CREATE ROLE es_sec_mallory;
CREATE ROLE es_sec_other;
SELECT es_create_application('sec');
SELECT es_create_application('sec_other');
SELECT es_append('sec', '00000000-0000-0000-0000-00000000000a', 1, 'Opened', '{"balance": 0}');
SELECT es_append('sec_other', '00000000-0000-0000-0000-00000000000b', 1, 'Opened', '{"balance": 0}');
-- mallory holds every privilege there is on 'sec', and may create applications
SELECT es_grant('sec', 'es_sec_mallory', 'admin');
SELECT es_grant(NULL, 'es_sec_mallory', 'create');

-- 1. No way in past the functions: every statement on every table is refused.
SET ROLE es_sec_mallory;
DO $$
DECLARE
    t text;
    stmt text;
    results text := '';
BEGIN
    -- (and each application's partition of es_stored_events)
    FOREACH t IN ARRAY ARRAY['es_applications', 'es_stored_events', 'es_tracking', 'es_watermarks',
                             'es_seals', 'es_folds', 'es_snapshots', 'es_grants']
                       || ARRAY(SELECT inhrelid::regclass::text FROM pg_inherits
                                WHERE inhparent = 'es_stored_events'::regclass ORDER BY 1) LOOP
        FOREACH stmt IN ARRAY ARRAY[
            format('SELECT * FROM %I', t),
            format('INSERT INTO %I DEFAULT VALUES', t),
            format('UPDATE %1$I SET %2$I = %2$I', t,
                   (SELECT attname FROM pg_attribute WHERE attrelid = t::regclass AND attnum = 1)),
            format('DELETE FROM %I', t),
            format('TRUNCATE %I', t)] LOOP
            BEGIN
                EXECUTE stmt;
                results := results || t || ': ' || split_part(stmt, ' ', 1) || ' ALLOWED; ';
            EXCEPTION WHEN insufficient_privilege THEN
                NULL;
            END;
        END LOOP;
    END LOOP;
    RAISE NOTICE 'statements that got through: %', CASE WHEN results = '' THEN 'none' ELSE results END;
END $$;
COPY es_stored_events FROM STDIN;
1	99	00000000-0000-0000-0000-00000000000a	2	Forged	\\x	2026-01-01	\\x
\.
\echo :LAST_ERROR_SQLSTATE
COPY es_snapshots TO STDOUT;
\echo :LAST_ERROR_SQLSTATE
SELECT nextval('es_applications_id_seq');
\echo :LAST_ERROR_SQLSTATE
-- the next real append gets the next id: nothing was forged in between
SELECT es_append('sec', '00000000-0000-0000-0000-00000000000a', 2, 'Deposited', '{"amount": 10}');

-- mallory's session settings do not decide where the new application's log
-- is stored (its partition is made as the extension's owner, with these pinned)
SET default_tablespace = pg_global;
SELECT es_create_application('sec_mallory_app');
RESET default_tablespace;
SELECT es_append('sec_mallory_app', '00000000-0000-0000-0000-00000000000c', 1, 'Opened', '{}') > 0 AS appended;
SELECT count(*) AS partitions_outside_the_default_tablespace
FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
WHERE i.inhparent = 'es_stored_events'::regclass AND c.reltablespace <> 0;

-- default privileges (of the owner, here a superuser) do not reach the
-- partitions of new applications, nor tables attached to es_stored_events
RESET ROLE;
ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT ON TABLES TO es_sec_mallory;
SELECT es_create_application('sec_default_privileges');
SELECT count(*) AS grants_beyond_the_owner
FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid, aclexplode(c.relacl) a
WHERE i.inhparent = 'es_stored_events'::regclass AND a.grantee <> c.relowner;
ALTER DEFAULT PRIVILEGES REVOKE SELECT, INSERT ON TABLES FROM es_sec_mallory;
CREATE TABLE es_sec_attached (LIKE es_stored_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
GRANT SELECT ON es_sec_attached TO es_sec_mallory;
GRANT INSERT ON es_sec_attached TO PUBLIC;
ALTER TABLE es_stored_events ATTACH PARTITION es_sec_attached FOR VALUES IN (2000000000);
SELECT coalesce(relacl::text, '(default)') AS attached_acl FROM pg_class WHERE relname = 'es_sec_attached';
ALTER TABLE es_stored_events DETACH PARTITION es_sec_attached;
DROP TABLE es_sec_attached;
SET ROLE es_sec_mallory;

-- 2. Nothing across applications without a privilege there.
SELECT count(*) FROM es_select('sec_other', 1, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('sec_other', '00000000-0000-0000-0000-00000000000b', 2, 'Deposited', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_state('sec_other', '00000000-0000-0000-0000-00000000000b');
\echo :LAST_ERROR_SQLSTATE
SELECT es_wait('sec_other', 0, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT es_channel('sec_other');
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant('sec_other', 'es_sec_mallory', 'read');
\echo :LAST_ERROR_SQLSTATE
SELECT es_has_privilege('sec_other', NULL) AS sees_other, es_has_privilege('sec', 'seal') AS seals_own;
SELECT DISTINCT application FROM es_privileges WHERE application LIKE 'sec%' ORDER BY 1;
RESET ROLE;

-- 3. Fold functions run only with the caller's EXECUTE privilege.
CREATE FUNCTION es_sec_privileged_fold(state jsonb, topic text, event jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER AS $$ SELECT state || jsonb_build_object('run_as', current_user) $$;
REVOKE EXECUTE ON FUNCTION es_sec_privileged_fold(jsonb, text, jsonb) FROM PUBLIC;
SET ROLE es_sec_mallory;
SELECT es_replay('sec', e, 'es_sec_privileged_fold') FROM es_events('sec', '00000000-0000-0000-0000-00000000000a') e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_set_fold_function('sec', 'es_sec_privileged_fold');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- set by the owner: callers still need EXECUTE on it
SELECT es_set_fold_function('sec', 'es_sec_privileged_fold');
SET ROLE es_sec_mallory;
SELECT es_state('sec', '00000000-0000-0000-0000-00000000000a');
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('sec', e) FROM es_events('sec', '00000000-0000-0000-0000-00000000000a') e;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT es_set_fold_function('sec', NULL);
-- a fold function returning NULL: 22004, not an internal error
CREATE FUNCTION es_sec_null_fold(state jsonb, topic text, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
SELECT es_replay('sec', e, 'es_sec_null_fold') FROM es_events('sec', '00000000-0000-0000-0000-00000000000a') e;
\echo :LAST_ERROR_SQLSTATE

-- 4. Snapshots cannot lie: one that does not match the chain is ignored.
SELECT es_snapshot('sec', '00000000-0000-0000-0000-00000000000a');
SELECT es_state('sec', '00000000-0000-0000-0000-00000000000a');
SET ROLE es_sec_mallory;
UPDATE es_snapshots SET state = '{"balance": 1000000}';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- an administrator's forged snapshot (its hash is not the event's)
UPDATE es_snapshots SET state = '{"balance": 1000000}', event_hash = '\x00'
WHERE application_id = (SELECT id FROM es_applications WHERE name = 'sec');
SELECT es_state('sec', '00000000-0000-0000-0000-00000000000a');
-- and one planted at a version whose event was rewritten after it was made
SELECT es_snapshot('sec', '00000000-0000-0000-0000-00000000000a');
SET eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET state = '{"amount": 99}'
WHERE application_id = (SELECT id FROM es_applications WHERE name = 'sec') AND originator_version = 2;
UPDATE es_stored_events SET event_hash = '\x01'
WHERE application_id = (SELECT id FROM es_applications WHERE name = 'sec') AND originator_version = 2;
RESET eventsourcing.allow_rewrite;
SELECT es_state('sec', '00000000-0000-0000-0000-00000000000a');

-- 5. State that is not text never reaches jsonb: 22021 naming the event.
SELECT es_append('sec', '00000000-0000-0000-0000-00000000000c', 1, 'Opened', '\xff7b7d');
SELECT es_state('sec', '00000000-0000-0000-0000-00000000000c');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('sec', '00000000-0000-0000-0000-00000000000d', 1, 'Opened', '\x7b7d007b');
SELECT es_replay('sec', e) FROM es_events('sec', '00000000-0000-0000-0000-00000000000d') e;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS snapshots_of_bad_state FROM es_snapshots s JOIN es_applications a ON a.id = s.application_id
WHERE a.name = 'sec' AND s.originator_id IN ('00000000-0000-0000-0000-00000000000c', '00000000-0000-0000-0000-00000000000d');

-- 6. Subscripts in messages as the caller wrote them.
SELECT es_append('sec', '[0:1]={NULL,"(00000000-0000-0000-0000-00000000000e,1,T,\"\\\\x\")"}'::es_event[]);
SELECT es_append('sec', '[5:6]={"(00000000-0000-0000-0000-00000000000e,1,T,\"\\\\x\")","(00000000-0000-0000-0000-00000000000e,1,T,\"\\\\x\")"}'::es_event[]);
SELECT es_select('sec', 1, 10, topics => '[3:4]={A,NULL}');

-- A fold path as deep as the caller likes would nest the state past the stack.
SELECT es_define_fold('sec', 'Deep', jsonb_build_array(jsonb_build_object('op', 'set', 'path', repeat('a.', 100000) || 'a', 'value', 1)));
\echo :LAST_ERROR_SQLSTATE
SELECT eventsourcing_internal.es_append_only_guard();
\echo :LAST_ERROR_SQLSTATE

-- 7. Ids near the end of a bigint: no overflow, no hang, no wrap.
SELECT es_create_application('sec_full');
-- an administrator plants a row at the last bigint (ordinary roles cannot, see 1)
INSERT INTO es_stored_events
SELECT id, 9223372036854775807, '00000000-0000-0000-0000-0000000000ff', 1, 'Forged', '{}', now(), '\x00'
FROM es_applications WHERE name = 'sec_full';
SELECT id, topic FROM es_select('sec_full', 1, 10);                        -- one range scan, not 2^63 probes
SELECT id FROM es_select('sec_full', 9223372036854775807, 10);
SELECT es_wait('sec_full', 0, 10), es_wait('sec_full', 9223372036854775806, 10), es_wait('sec_full', 9223372036854775807, 10);
SELECT es_max_notification_id('sec_full');
SELECT es_append('sec_full', '00000000-0000-0000-0000-000000000001', 1, 'Opened', '{}');   -- the log is full
\echo :LAST_ERROR_SQLSTATE
SELECT seal_id, after_notification_id, last_notification_id, event_count, gaps FROM es_seal('sec_full');
SELECT seal_id, last_notification_id FROM es_seal('sec_full');              -- nothing new
SELECT kind, originator_version, notification_id, problem FROM es_verify_log('sec_full');
SELECT es_append('sec_full', '00000000-0000-0000-0000-000000000001', 1, 'Opened', '{}');   -- still full, still 54000
\echo :LAST_ERROR_SQLSTATE
SELECT id FROM es_select('sec_full', 1, 10);

-- 8. Forced parallel mode: the read functions run in the leader.
SET force_parallel_mode = on;
SELECT count(*) FROM es_select('sec', 1, 100);
SELECT count(*) FROM es_events('sec', '00000000-0000-0000-0000-00000000000a');
SELECT es_max_notification_id('sec') > 0 AS has_events, es_tracking_position('sec', 'x') AS position,
       length(es_head('sec', '00000000-0000-0000-0000-00000000000a')) AS head, es_channel('sec');
SELECT ok FROM es_verify('sec_other', '00000000-0000-0000-0000-00000000000b');
SELECT count(*) FROM es_verify_log('sec_other');
SELECT es_wait('sec_other', 0, 10);
SELECT es_state('sec_other', '00000000-0000-0000-0000-00000000000b');
SELECT es_has_privilege('sec', 'read');
SELECT es_partition('00000000-0000-0000-0000-00000000000a', 4);
RESET force_parallel_mode;

-- 9. Limits: a database's share of id counters, set by a superuser only.
SET ROLE es_sec_mallory;
SET eventsourcing.max_applications_per_database = 100000;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET eventsourcing.max_applications_per_database = 1;
SELECT es_create_application('sec_one_too_many');
SELECT es_append('sec_one_too_many', '00000000-0000-0000-0000-000000000001', 1, 'Opened', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET eventsourcing.max_applications_per_database;
SELECT es_append('sec_one_too_many', '00000000-0000-0000-0000-000000000001', 1, 'Opened', '{}');

-- 10. Every long call can be cancelled.
SELECT es_create_application('sec_slow');
SELECT count(*) FROM es_append('sec_slow',
    (SELECT array_agg(ROW('00000000-0000-0000-0000-000000000001'::uuid, v, 'Added', '{"n": 1}')::es_event ORDER BY v)
     FROM generate_series(1, 200) v));
SELECT es_define_fold('sec_slow', 'Added',
    (SELECT jsonb_agg('{"op": "add", "path": "total", "from": "n"}'::jsonb) FROM generate_series(1, 200000)));
-- a large log: 300,000 events
SELECT es_create_application('sec_big');
SELECT count(*) FROM es_append('sec_big',
    (SELECT array_agg(ROW(('00000000-0000-0000-0000-' || lpad(a::text, 12, '0'))::uuid, v, 'Added', '{"n": 1}')::es_event
                      ORDER BY a, v)
     FROM generate_series(1, 100) a, generate_series(1, 3000) v));
\set VERBOSITY terse
SET statement_timeout = '200ms';
SELECT es_state('sec_slow', '00000000-0000-0000-0000-000000000001');      -- 40 million fold operations
\echo :LAST_ERROR_SQLSTATE
SELECT es_wait('sec_slow', 200, 5000);                                   -- nothing comes
\echo :LAST_ERROR_SQLSTATE
SET statement_timeout = '10ms';
SELECT count(*) FROM es_verify_log('sec_big');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM es_select('sec_big', 1, 1000000, topics => ARRAY['none']);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM es_seal('sec_big');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
\set VERBOSITY default
SELECT count(*) AS seals_left_by_cancelled_calls FROM es_seals s JOIN es_applications a ON a.id = s.application_id
WHERE a.name = 'sec_big';
SELECT es_define_fold('sec_slow', 'Added', NULL);

SELECT es_revoke('sec', 'es_sec_mallory', 'admin');
SELECT es_revoke(NULL, 'es_sec_mallory', 'create');
SELECT es_revoke(a.name, g.grantee::text, g.privilege)
FROM es_grants g JOIN es_applications a ON a.id = g.application_id WHERE g.grantee::text = 'es_sec_mallory';
DROP OWNED BY es_sec_mallory, es_sec_other;
DROP ROLE es_sec_mallory, es_sec_other;
