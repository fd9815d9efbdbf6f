-- No silent loss: DROP EXTENSION, DROP SCHEMA of its schema and DROP OWNED BY
-- its owner are refused while recorded events exist.  (In a database of its
-- own, so that the other tests keep theirs.)
SELECT current_database() AS original_db \gset
SET client_min_messages = warning;
DROP DATABASE IF EXISTS es_drop_test WITH (FORCE);
RESET client_min_messages;
CREATE DATABASE es_drop_test;
\c es_drop_test
\set VERBOSITY default
CREATE SCHEMA store;
CREATE EXTENSION eventsourcing SCHEMA store;
-- with no events, dropping is fine (and creating again works)
DROP EXTENSION eventsourcing;
CREATE EXTENSION eventsourcing SCHEMA store;
SELECT store.es_create_application('keep');
SELECT store.es_append('keep', '00000000-0000-0000-0000-000000000001', 1, 'Created', '{}');
SELECT store.es_append('keep', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '{}');
DROP EXTENSION eventsourcing;
\echo :LAST_ERROR_SQLSTATE
DROP EXTENSION eventsourcing CASCADE;
\echo :LAST_ERROR_SQLSTATE
DROP EXTENSION IF EXISTS pg_trgm, eventsourcing;
\echo :LAST_ERROR_SQLSTATE
DROP SCHEMA store CASCADE;
\echo :LAST_ERROR_SQLSTATE
SELECT current_user AS owner \gset
DROP OWNED BY :"owner";
\echo :LAST_ERROR_SQLSTATE
-- other drops are not concerned
CREATE SCHEMA other;
DROP SCHEMA other;
-- Each application's events are in a partition of es_stored_events, which is
-- not a member of the extension: dropping or detaching it while it holds
-- events is refused as well (by name, qualified or not, alone or in a list).
SELECT store.es_create_application('empty');
SELECT c.relname AS partition, pg_get_expr(c.relpartbound, c.oid) AS bound,
       (SELECT count(*) FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
          AND d.refclassid = 'pg_extension'::regclass) AS extension_members
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'store.es_stored_events'::regclass ORDER BY c.relname;
SELECT 'store.es_stored_events_' || id AS keep_log FROM store.es_applications WHERE name = 'keep' \gset
SELECT 'store.es_stored_events_' || id AS empty_log FROM store.es_applications WHERE name = 'empty' \gset
DROP TABLE :keep_log;
\echo :LAST_ERROR_SQLSTATE
SET search_path = store, public;
DROP TABLE IF EXISTS nothing_here, es_stored_events_1;
\echo :LAST_ERROR_SQLSTATE
RESET search_path;
ALTER TABLE store.es_stored_events DETACH PARTITION :keep_log;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE :keep_log;
\echo :LAST_ERROR_SQLSTATE
-- an empty application's partition may go; the application then reports its
-- missing log (XX001) instead of losing appends
BEGIN;
DROP TABLE :empty_log;
SELECT store.es_append('empty', '00000000-0000-0000-0000-000000000002', 1, 'Created', '{}');
ROLLBACK;
\echo :LAST_ERROR_SQLSTATE
-- what the C code relies on cannot be altered: the parent's columns, a
-- partition's keys, triggers, name, schema, owner (pg_restore --clean begins
-- with ALTER TABLE ... DROP CONSTRAINT); storage settings may change
ALTER TABLE store.es_stored_events ADD COLUMN extra text;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE ONLY :keep_log DROP CONSTRAINT es_stored_events_1_pkey;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE :keep_log DISABLE TRIGGER es_append_only_truncate;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE :keep_log RENAME TO kept;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE :keep_log SET SCHEMA public;
\echo :LAST_ERROR_SQLSTATE
CREATE ROLE es_drop_test_role;
ALTER TABLE :keep_log OWNER TO es_drop_test_role;
\echo :LAST_ERROR_SQLSTATE
DROP ROLE es_drop_test_role;
ALTER TABLE :keep_log SET (autovacuum_vacuum_scale_factor = 0.01);
ALTER TABLE :keep_log ALTER COLUMN state SET STATISTICS 200;
-- a partition's keys are found by name and must be its own indexes: an
-- index of that name on another table is never scanned (XX001 instead)
ALTER INDEX store.es_stored_events_1_pkey RENAME TO kept_pkey;
CREATE TABLE store.decoy (application_id integer, notification_id bigint);
CREATE UNIQUE INDEX es_stored_events_1_pkey ON store.decoy (application_id, notification_id);
SELECT count(*) FROM store.es_select('keep', 1, 10);
\echo :LAST_ERROR_SQLSTATE
DROP TABLE store.decoy;
ALTER INDEX store.kept_pkey RENAME TO es_stored_events_1_pkey;
SELECT count(*) AS events_again FROM store.es_select('keep', 1, 10);
-- archiving an application: its partition detached on the administrative
-- path (the application's calls then fail with XX001), and attached back
-- with its events, chains and seals intact
SELECT count(*) AS sealed FROM store.es_seal('keep');
SET eventsourcing.allow_rewrite = on;
ALTER TABLE store.es_stored_events DETACH PARTITION :keep_log;
RESET eventsourcing.allow_rewrite;
SELECT count(*) FROM store.es_select('keep', 1, 10);
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE store.es_stored_events ATTACH PARTITION :keep_log FOR VALUES IN (1);
SELECT count(*) AS events_back FROM store.es_select('keep', 1, 10);
SELECT count(*) AS problems FROM store.es_verify_log('keep');
-- other ALTER TABLE commands are not concerned
CREATE TABLE other_table (x int);
ALTER TABLE other_table ADD COLUMN y int;
DROP TABLE other_table;
SELECT count(*) AS events_still_there FROM store.es_select('keep', 1, 10);
-- the administrative way out
SET eventsourcing.allow_rewrite = on;
DROP EXTENSION eventsourcing;
RESET eventsourcing.allow_rewrite;
SELECT count(*) AS extensions_left FROM pg_extension WHERE extname = 'eventsourcing';
\c :original_db
DROP DATABASE es_drop_test WITH (FORCE);
