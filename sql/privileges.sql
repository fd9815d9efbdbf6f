-- Privileges per application: ordinary roles hold no privilege on the tables;
-- the functions check read, append, track, verify, seal, admin per
-- application, and create for the database.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
DROP ROLE IF EXISTS es_test_nobody, es_test_reader, es_test_writer, es_test_creator, es_test_member, es_test_admin;
RESET client_min_messages;
\set VERBOSITY default
SELECT es_create_application('priv');
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 1, 'Created', '{}');

CREATE ROLE es_test_nobody;
CREATE ROLE es_test_reader;
CREATE ROLE es_test_writer;
CREATE ROLE es_test_creator;
CREATE ROLE es_test_member;

-- Nobody: an application without a privilege looks like an unknown one.
SET ROLE es_test_nobody;
SELECT id FROM es_select('priv', 1, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT id FROM es_select('no such application', 1, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT es_create_application('mine');
\echo :LAST_ERROR_SQLSTATE
SELECT es_has_privilege('priv', NULL) AS any_on_priv, es_has_privilege(NULL, 'create') AS may_create;
SELECT count(*) AS visible_grants FROM es_privileges;
RESET ROLE;

-- Grants: checked arguments.
SELECT es_grant('priv', 'es_test_reader', 'write');
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant('priv', 'es_test_reader', 'create');
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant('priv', 'no_such_role', 'read');
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant('priv', NULL, 'read');
\echo :LAST_ERROR_SQLSTATE

-- A reader reads, and nothing else.
SELECT es_grant('priv', 'es_test_reader', 'read');
SET ROLE es_test_reader;
SELECT id FROM es_select('priv', 1, 10);
SELECT originator_version FROM es_events('priv', '00000000-0000-0000-0000-000000000001');
SELECT es_max_notification_id('priv'), es_channel('priv'), length(es_head('priv', '00000000-0000-0000-0000-000000000001')) AS head_bytes;
SELECT es_state('priv', '00000000-0000-0000-0000-000000000001');
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_seal('priv');
\echo :LAST_ERROR_SQLSTATE
SELECT ok FROM es_verify('priv', '00000000-0000-0000-0000-000000000001');
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('priv', 'Created', '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant('priv', 'es_test_nobody', 'read');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_stored_events;
\echo :LAST_ERROR_SQLSTATE
SELECT application, grantee, privilege FROM es_privileges ORDER BY 1, 2, 3;
RESET ROLE;

-- Membership counts, and takes effect at once (the privilege cache forgets).
SET ROLE es_test_member;
SELECT count(*) FROM es_select('priv', 1, 10);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT es_test_reader TO es_test_member;
SET ROLE es_test_member;
SELECT count(*) FROM es_select('priv', 1, 10);
RESET ROLE;

-- A writer appends and tracks; verify and seal are their own privileges.
SELECT es_grant('priv', 'es_test_writer', p) FROM unnest(ARRAY['read', 'append', 'track', 'verify', 'seal']) p;
SET ROLE es_test_writer;
SELECT es_append('priv', '00000000-0000-0000-0000-000000000001', 2, 'Changed', '{"x": 1}');
SELECT es_append('priv', ARRAY[]::es_event[], 'upstream', 1);
SELECT es_tracking_position('priv', 'upstream');
SELECT es_snapshot('priv', '00000000-0000-0000-0000-000000000001');
SELECT ok FROM es_verify('priv', '00000000-0000-0000-0000-000000000001');
SELECT count(*) FROM es_verify_log('priv');
SELECT seal_id, last_notification_id FROM es_seal('priv');
SELECT es_set_snapshot_every('priv', 10);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- tracking alone needs track; events need append too
SELECT es_revoke('priv', 'es_test_writer', 'append');
SET ROLE es_test_writer;
SELECT es_append('priv', ARRAY[]::es_event[], 'upstream', 2);
SELECT es_append('priv', ARRAY[ROW('00000000-0000-0000-0000-000000000001', 3, 'Changed', '{}')]::es_event[], 'upstream', 3);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Revoking takes effect at once.
SELECT es_revoke('priv', 'es_test_reader', 'read');
SET ROLE es_test_reader;
SELECT count(*) FROM es_select('priv', 1, 10);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Creating applications: its own privilege; the creator administers its own.
SELECT es_grant(NULL, 'es_test_creator', 'create');
SET ROLE es_test_creator;
SELECT es_create_application('mine');
SELECT es_create_application('mine');                -- exists, and it may see it: nothing to do
SELECT es_append('mine', '00000000-0000-0000-0000-000000000002', 1, 'Created', '{}');
SELECT es_define_fold('mine', 'Created', '[{"op": "set", "path": "created", "value": true}]');
SELECT es_grant('mine', 'es_test_reader', 'read');
SELECT es_grant('mine', 'public', 'verify');
SELECT application, grantee, privilege FROM es_privileges ORDER BY 1, 2, 3;
SELECT es_create_application('priv');                -- taken, and not its own
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant('priv', 'es_test_creator', 'read');  -- cannot grant itself anything on others'
\echo :LAST_ERROR_SQLSTATE
SELECT es_grant(NULL, 'es_test_reader', 'read');     -- every application: the owner's call
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE es_test_reader;
SELECT id, topic FROM es_select('mine', 1, 10);
SELECT es_state('mine', '00000000-0000-0000-0000-000000000002');
RESET ROLE;
SET ROLE es_test_nobody;
SELECT ok FROM es_verify('mine', '00000000-0000-0000-0000-000000000002');   -- PUBLIC may verify
SELECT id FROM es_select('mine', 1, 10);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Every application, present and future.
SELECT es_grant(NULL, 'es_test_nobody', 'read');
SELECT es_create_application('later');
SET ROLE es_test_nobody;
SELECT count(*) FROM es_select('priv', 1, 10);
SELECT count(*) FROM es_select('later', 1, 10);
RESET ROLE;
SELECT es_revoke(NULL, 'es_test_nobody', 'read');

-- Append-only, also for roles that the owner gives UPDATE, DELETE and TRUNCATE
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
SELECT count(*) AS events_left FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'priv';

DROP OWNED BY es_test_nobody, es_test_reader, es_test_writer, es_test_creator, es_test_member, es_test_admin;
SELECT es_revoke(a.name, g.grantee::text, g.privilege)
FROM es_grants g JOIN es_applications a ON a.id = g.application_id
WHERE g.grantee::text LIKE 'es_test_%';
SELECT es_revoke(NULL, 'es_test_creator', 'create');
SELECT es_revoke('mine', 'public', 'verify');
DROP ROLE es_test_nobody, es_test_reader, es_test_writer, es_test_creator, es_test_member, es_test_admin;
