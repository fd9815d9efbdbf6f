-- Integrity: hash chains, heads, verification, seals, the append-only guard.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
\pset null '(null)'
SELECT es_create_application('ledger');
-- three aggregates: a (5 events), b (3 events), c (2 events), interleaved
SELECT count(*) FROM (
    SELECT es_append('ledger', ARRAY[
        ROW('aaaaaaaa-0000-4000-8000-000000000000', 1, 'Opened', convert_to('{"owner":"ann"}', 'UTF8'))::es_event,
        ROW('bbbbbbbb-0000-4000-8000-000000000000', 0, 'Opened', convert_to('{"owner":"bob"}', 'UTF8'))::es_event])
    UNION ALL SELECT es_append('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', 2, 'Deposited', convert_to('{"amount":10}', 'UTF8'))
    UNION ALL SELECT es_append('ledger', 'cccccccc-0000-4000-8000-000000000000', 1, 'Opened', convert_to('{"owner":"cy"}', 'UTF8'))
    UNION ALL SELECT es_append('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', 3, 'Deposited', convert_to('{"amount":20}', 'UTF8'))
    UNION ALL SELECT es_append('ledger', 'bbbbbbbb-0000-4000-8000-000000000000', 1, 'Deposited', convert_to('{"amount":5}', 'UTF8'))
    UNION ALL SELECT es_append('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', 4, 'Withdrew', convert_to('{"amount":7}', 'UTF8'))
    UNION ALL SELECT es_append('ledger', 'cccccccc-0000-4000-8000-000000000000', 2, 'Deposited', '')
    UNION ALL SELECT es_append('ledger', 'bbbbbbbb-0000-4000-8000-000000000000', 2, 'Withdrew', convert_to('{"amount":1}', 'UTF8'))
    UNION ALL SELECT es_append('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', 5, 'Closed', '\x00ff')) s;

-- The chain: each hash is SHA-256 over the documented encoding, chained to
-- the previous event's hash (32 zero bytes for the first).  Recomputed here
-- with PostgreSQL's own sha256() to pin the encoding down.
CREATE FUNCTION expected_hash(prev bytea, app text, id uuid, v bigint, topic text, state bytea)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256('es-event-v1'::bytea || prev
                  || int4send(octet_length(app)) || convert_to(app, 'UTF8')
                  || uuid_send(id) || int8send(v)
                  || int4send(octet_length(topic)) || convert_to(topic, 'UTF8')
                  || int4send(octet_length(state)) || state)
$$;
SELECT e.originator_id, e.originator_version,
       e.event_hash = expected_hash(coalesce(lag(e.event_hash) OVER w, '\x0000000000000000000000000000000000000000000000000000000000000000'),
                                    'ledger', e.originator_id, e.originator_version, e.topic, e.state) AS chained,
       octet_length(e.event_hash) AS hash_bytes
FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id AND a.name = 'ledger'
WINDOW w AS (PARTITION BY e.originator_id ORDER BY e.originator_version)
ORDER BY 1, 2;
-- the read functions return the hash; es_head is the last one
SELECT count(DISTINCT event_hash) FROM es_select('ledger', 1, 100);
SELECT es_head('ledger', 'aaaaaaaa-0000-4000-8000-000000000000')
     = (SELECT event_hash FROM es_events('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', descending => true, max_count => 1)) AS head_is_last;
SELECT es_head('ledger', '00000000-0000-0000-0000-000000000000');
SELECT es_head('ledger', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT es_head('nope', 'aaaaaaaa-0000-4000-8000-000000000000');
\echo :LAST_ERROR_SQLSTATE
-- same content in another application hashes differently (the name is hashed)
SELECT es_create_application('ledger2');
SELECT es_append('ledger2', 'aaaaaaaa-0000-4000-8000-000000000000', 1, 'Opened', convert_to('{"owner":"ann"}', 'UTF8'));
SELECT es_head('ledger2', 'aaaaaaaa-0000-4000-8000-000000000000')
    <> (SELECT event_hash FROM es_events('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', max_count => 1)) AS differs;

-- Untouched data verifies
SELECT * FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000');
SELECT * FROM es_verify('ledger', 'bbbbbbbb-0000-4000-8000-000000000000');
SELECT * FROM es_verify('ledger', '00000000-0000-0000-0000-000000000000');
SELECT ok FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000',
                         es_head('ledger', 'aaaaaaaa-0000-4000-8000-000000000000'));
-- a head kept earlier is still in the chain after new appends
SELECT es_head('ledger', 'cccccccc-0000-4000-8000-000000000000') AS kept_c \gset
SELECT es_append('ledger', 'cccccccc-0000-4000-8000-000000000000', 3, 'Withdrew', '');
SELECT ok FROM es_verify('ledger', 'cccccccc-0000-4000-8000-000000000000', :'kept_c');
SELECT * FROM es_verify(NULL, 'aaaaaaaa-0000-4000-8000-000000000000');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_verify('ledger', NULL);
\echo :LAST_ERROR_SQLSTATE

-- Seals
SELECT seal_id, after_notification_id, last_notification_id, event_count, gaps,
       octet_length(digest) AS digest_bytes, previous_digest = '\x0000000000000000000000000000000000000000000000000000000000000000' AS first
FROM es_seal('ledger');
SELECT seal_id FROM es_seal('ledger');   -- nothing new: the same seal
BEGIN;
SELECT es_append('ledger', 'cccccccc-0000-4000-8000-000000000000', 4, 'Withdrew', '');
ROLLBACK;                                  -- id 12 is a permanent gap
SELECT es_append('ledger', 'cccccccc-0000-4000-8000-000000000000', 4, 'Withdrew', '\x01');
SELECT seal_id, after_notification_id, last_notification_id, event_count, gaps,
       previous_digest = (SELECT digest FROM es_seals s JOIN es_applications a ON a.id = s.application_id
                          WHERE a.name = 'ledger' AND seal_id = 1) AS chained
FROM es_seal('ledger');
SELECT es_seal('ledger2') IS NOT NULL AS sealed;
SELECT * FROM es_verify_log('ledger');
SELECT * FROM es_verify_log('ledger2');
SELECT es_seal(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_verify_log('nope');
\echo :LAST_ERROR_SQLSTATE

-- Append-only: refused for everybody, the owner included ...
UPDATE es_stored_events SET topic = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM es_stored_events;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE es_stored_events;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM es_seals;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE es_seals;
\echo :LAST_ERROR_SQLSTATE
-- ... and the switch is for superusers only (checked in privileges.sql)

-- Tampering, as a superuser through the administrative path; each case is
-- rolled back, and each is reported at the right place.
-- 1. one byte of a state
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET state = set_byte(state, 2, 88)
WHERE originator_id = 'aaaaaaaa-0000-4000-8000-000000000000' AND originator_version = 3;
SELECT * FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 2. a topic
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET topic = 'Deposited'
WHERE originator_id = 'bbbbbbbb-0000-4000-8000-000000000000' AND originator_version = 2;
SELECT * FROM es_verify('ledger', 'bbbbbbbb-0000-4000-8000-000000000000');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 3. a middle event
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
DELETE FROM es_stored_events WHERE originator_id = 'aaaaaaaa-0000-4000-8000-000000000000' AND originator_version = 2;
SELECT * FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 4. the last event: the chain alone still verifies, the kept head does not,
--    and the seal names the missing notification
SELECT es_head('ledger', 'aaaaaaaa-0000-4000-8000-000000000000') AS kept_a \gset
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
DELETE FROM es_stored_events WHERE originator_id = 'aaaaaaaa-0000-4000-8000-000000000000' AND originator_version = 5;
SELECT ok FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000');
SELECT * FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', :'kept_a');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 5. a whole aggregate
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
DELETE FROM es_stored_events WHERE originator_id = 'bbbbbbbb-0000-4000-8000-000000000000';
SELECT * FROM es_verify('ledger', 'bbbbbbbb-0000-4000-8000-000000000000');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 6. two versions swapped
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET originator_version = -originator_version
WHERE originator_id = 'aaaaaaaa-0000-4000-8000-000000000000' AND originator_version IN (2, 3);
UPDATE es_stored_events SET originator_version = CASE originator_version WHEN -2 THEN 3 ELSE 2 END
WHERE originator_id = 'aaaaaaaa-0000-4000-8000-000000000000' AND originator_version IN (-2, -3);
SELECT * FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 7. a forged event in the gap left by the aborted append (id 12)
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
INSERT INTO es_stored_events
SELECT id, 12, 'aaaaaaaa-0000-4000-8000-000000000000', 6, 'Deposited', '\x99', now(), sha256('forged')
FROM es_applications WHERE name = 'ledger';
SELECT * FROM es_verify('ledger', 'aaaaaaaa-0000-4000-8000-000000000000');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 8. a seal removed
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
DELETE FROM es_seals WHERE seal_id = 1 AND application_id = (SELECT id FROM es_applications WHERE name = 'ledger');
SELECT kind, originator_id, originator_version, notification_id, seal_id, problem FROM es_verify_log('ledger');
ROLLBACK;
-- 9. a stored hash that is not a hash: the next append refuses to chain to it
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET event_hash = '\x00'
WHERE originator_id = 'aaaaaaaa-0000-4000-8000-000000000000' AND originator_version = 5;
SELECT es_append('ledger', 'aaaaaaaa-0000-4000-8000-000000000000', 6, 'Deposited', '');
ROLLBACK;
\echo :LAST_ERROR_SQLSTATE
-- after all the rollbacks, everything verifies again
SELECT count(*) AS problems FROM es_verify_log('ledger');
