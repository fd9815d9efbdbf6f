-- Privileges: the table privileges on es_stored_events govern the functions,
-- which read and write the table directly.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
SELECT es_create_application('priv');
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 1, 'Created', '');

CREATE ROLE es_test_nobody;
CREATE ROLE es_test_reader;
CREATE ROLE es_test_writer;
GRANT SELECT ON es_stored_events, es_seals TO es_test_reader;
GRANT SELECT, INSERT ON es_stored_events TO es_test_writer;
GRANT SELECT, INSERT, UPDATE ON es_tracking TO es_test_writer;

SET ROLE es_test_nobody;
SELECT id FROM es_select('priv', 1, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT originator_version FROM es_events('priv', '00000000-0000-0000-0000-000000000001');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '');
\echo :LAST_ERROR_SQLSTATE
SELECT es_create_application('mine');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_stored_events;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SET ROLE es_test_reader;
SELECT id FROM es_select('priv', 1, 10);
SELECT originator_version FROM es_events('priv', '00000000-0000-0000-0000-000000000001');
SELECT es_max_notification_id('priv');
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SET ROLE es_test_writer;
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '');
SELECT es_append('priv', ARRAY[]::es_event[], 'upstream', 1);
SELECT es_tracking_position('priv', 'upstream');
RESET ROLE;

SELECT id, originator_version FROM es_select('priv', 1, 10);

-- Append-only, also for roles that hold UPDATE, DELETE and TRUNCATE
CREATE ROLE es_test_admin;
GRANT SELECT, UPDATE, DELETE, TRUNCATE ON es_stored_events, es_seals TO es_test_admin;
SET ROLE es_test_admin;
UPDATE es_stored_events SET topic = 'Forged';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM es_stored_events;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE es_stored_events;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM es_seals;
\echo :LAST_ERROR_SQLSTATE
-- only a superuser may open the administrative path
SET eventsourcing.allow_rewrite = on;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- readers may verify; verification needs SELECT only
SET ROLE es_test_reader;
SELECT ok FROM es_verify('priv', '00000000-0000-0000-0000-000000000001');
SELECT count(*) FROM es_verify_log('priv');
SELECT es_seal('priv');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT, INSERT ON es_seals TO es_test_writer;
SET ROLE es_test_writer;
SELECT seal_id, last_notification_id FROM es_seal('priv');
RESET ROLE;
SELECT count(*) AS events_left FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'priv';

DROP OWNED BY es_test_nobody, es_test_reader, es_test_writer, es_test_admin;
DROP ROLE es_test_nobody, es_test_reader, es_test_writer, es_test_admin;
