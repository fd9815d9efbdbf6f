-- Following: channels, es_wait, consumer groups.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
\pset null '(null)'
SELECT es_create_application('follow');
SELECT es_channel('follow');
SELECT es_create_application(repeat('n', 61));
SELECT es_channel(repeat('n', 61)) ~ '^es:#[0-9]+$' AS by_id;
SELECT es_channel('nope');
\echo :LAST_ERROR_SQLSTATE

-- es_wait: NULL on timeout when nothing is readable, at once when something is
SELECT es_wait('follow', 0, 0);
SELECT es_wait('follow', 0, 50);
SELECT count(*) FROM (SELECT es_append('follow', gen_random_uuid(), 1, 'Created', '') FROM generate_series(1, 3)) s;
SELECT es_wait('follow', 0, 10000);
SELECT es_wait('follow', 2, 10000);
SELECT es_wait('follow', 3, 0);
-- an open append in this transaction is not readable by others yet, but is by us
BEGIN;
SELECT es_append('follow', gen_random_uuid(), 1, 'Created', '');
SELECT es_wait('follow', 3, 0);
ROLLBACK;
SELECT es_wait('follow', 3, 0);
SELECT es_wait(NULL, 0, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_wait('follow', NULL, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_wait('follow', -1, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_wait('follow', 0, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT es_wait('follow', 0, -5);
\echo :LAST_ERROR_SQLSTATE

-- Consumer groups: every event to exactly one member, whole aggregates
SELECT es_create_application('groups');
SELECT count(*) FROM generate_series(1, 30) a,
    LATERAL es_append('groups', ARRAY(
        SELECT ROW(('00000000-0000-4000-8000-' || lpad(a::text, 12, '0'))::uuid, v, 'E', '')::es_event
        FROM generate_series(1, 3) v));
SELECT m AS member, count(*) AS events, count(DISTINCT originator_id) AS aggregates
FROM generate_series(0, 2) m, es_select('groups', 1, 1000, group_member => m, group_size => 3)
GROUP BY m ORDER BY m;
-- together: the whole log, each id once
SELECT count(*) = count(DISTINCT id) AS once, count(*) AS total
FROM generate_series(0, 2) m, es_select('groups', 1, 1000, group_member => m, group_size => 3);
-- each member gets exactly the aggregates es_partition gives it
SELECT bool_and(es_partition(originator_id, 3) = m) AS partitioned
FROM generate_series(0, 2) m, es_select('groups', 1, 1000, group_member => m, group_size => 3);
-- a group of one is the whole log; max_count counts the member's events
SELECT count(*) FROM es_select('groups', 1, 1000, group_member => 0, group_size => 1);
SELECT count(*) FROM es_select('groups', 1, 5, group_member => 1, group_size => 3);
SELECT es_partition('00000000-0000-4000-8000-000000000001', 1);
SELECT * FROM es_select('groups', 1, 10, group_member => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('groups', 1, 10, group_member => 3, group_size => 3);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_select('groups', 1, 10, group_member => 0, group_size => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_partition(NULL, 3);
\echo :LAST_ERROR_SQLSTATE
SELECT es_partition('00000000-0000-4000-8000-000000000001', 0);
\echo :LAST_ERROR_SQLSTATE
