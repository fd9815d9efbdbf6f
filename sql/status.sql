-- es_status and es_followers: how an application is doing, at a glance.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
DROP ROLE IF EXISTS es_status_outsider;
RESET client_min_messages;
SELECT es_create_application('status_up');
SELECT es_create_application('status_f1');
SELECT es_create_application('status_f2');
SELECT es_configure('status_up', compression => true);
SELECT count(*) FROM (SELECT es_append('status_up', gen_random_uuid(), 1, 'Created', '{}') FROM generate_series(1, 10)) s;
SELECT seal_id FROM es_seal('status_up');
SELECT count(*) FROM (SELECT es_append('status_up', gen_random_uuid(), 1, 'Created', '{}') FROM generate_series(1, 5)) s;
-- two followers: one caught up to 12, one to 4
SELECT es_append('status_f1', ARRAY[]::es_event[], 'status_up', 12);
SELECT es_append('status_f2', ARRAY[]::es_event[], 'status_up', 4);
SELECT application, events, head_id, readable_id, last_seal_id, sealed_through_id,
       last_seal_age < interval '1 hour' AS sealed_recently, followers, max_follower_lag,
       compression, encryption, worker_running IS NOT NULL AS worker_known
FROM es_status WHERE application LIKE 'status_%' ORDER BY application;
SELECT application, follower, position, head_id, lag FROM es_followers
WHERE application = 'status_up' ORDER BY follower;
-- a role sees only what it has a privilege on
CREATE ROLE es_status_outsider;
SELECT es_grant('status_f1', 'es_status_outsider', 'read');
SET ROLE es_status_outsider;
SELECT application, events, readable_id FROM es_status WHERE application LIKE 'status_%' ORDER BY application;
SELECT application, follower, position FROM es_followers WHERE application = 'status_up' ORDER BY follower;
RESET ROLE;
SELECT es_revoke('status_f1', 'es_status_outsider', 'read');
DROP ROLE es_status_outsider;
