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
SELECT count(*) AS events_still_there FROM store.es_select('keep', 1, 10);
-- the administrative way out
SET eventsourcing.allow_rewrite = on;
DROP EXTENSION eventsourcing;
RESET eventsourcing.allow_rewrite;
SELECT count(*) AS extensions_left FROM pg_extension WHERE extname = 'eventsourcing';
\c :original_db
DROP DATABASE es_drop_test WITH (FORCE);
