-- The per-database worker publishes a watermark for every application that
-- has been appended to (readers on hot standbys rely on them).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
SELECT count(*) FROM (SELECT es_create_application('wm' || i) FROM generate_series(1, 100) i) s;
SELECT count(*) FROM (
    SELECT es_append('wm' || i, gen_random_uuid(), 1, 'Created', '') FROM generate_series(1, 100) i
    UNION ALL
    SELECT es_append('wm' || i, gen_random_uuid(), 1, 'Created', '') FROM generate_series(1, 100, 2) i) s;
-- wait (at most 30 s) for the worker to publish all of them
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN (SELECT count(*) FROM es_watermarks w JOIN es_applications a ON a.id = w.application_id
                   WHERE a.name LIKE 'wm%'
                     AND w.notification_id = (SELECT max(notification_id) FROM es_stored_events e
                                              WHERE e.application_id = a.id)) = 100;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT count(*) AS published, sum(w.notification_id) AS sum_of_watermarks
FROM es_watermarks w JOIN es_applications a ON a.id = w.application_id WHERE a.name LIKE 'wm%';

-- With eventsourcing.seal_interval set, the worker seals every application.
ALTER SYSTEM SET eventsourcing.seal_interval = '1s';
SELECT pg_reload_conf();
SELECT es_create_application('autoseal');
SELECT pg_sleep(0.2);   -- let the worker see the new setting
SELECT count(*) FROM (SELECT es_append('autoseal', gen_random_uuid(), 1, 'Created', '') FROM generate_series(1, 3)) s;
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN EXISTS (SELECT FROM es_seals s JOIN es_applications a ON a.id = s.application_id
                          WHERE a.name = 'autoseal' AND s.last_notification_id = 3);
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT s.seal_id, s.after_notification_id, s.last_notification_id, s.event_count
FROM es_seals s JOIN es_applications a ON a.id = s.application_id WHERE a.name = 'autoseal';
SELECT count(*) AS problems FROM es_verify_log('autoseal');
-- An application whose partition is detached (archived) is skipped: the
-- worker goes on sealing the others.
SELECT es_create_application('archived');
SELECT count(*) FROM es_append('archived', gen_random_uuid(), 1, 'Created', '');
SELECT id AS archived_id, 'es_stored_events_' || id AS archived_log FROM es_applications WHERE name = 'archived' \gset
SET eventsourcing.allow_rewrite = on;
ALTER TABLE es_stored_events DETACH PARTITION :archived_log;
RESET eventsourcing.allow_rewrite;
SELECT count(*) FROM (SELECT es_append('autoseal', gen_random_uuid(), 1, 'Created', '') FROM generate_series(1, 2)) s;
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN EXISTS (SELECT FROM es_seals s JOIN es_applications a ON a.id = s.application_id
                          WHERE a.name = 'autoseal' AND s.last_notification_id = 5);
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT max(s.last_notification_id) AS autoseal_sealed_through
FROM es_seals s JOIN es_applications a ON a.id = s.application_id WHERE a.name = 'autoseal';
ALTER TABLE es_stored_events ATTACH PARTITION :archived_log FOR VALUES IN (:archived_id);
SELECT count(*) AS archived_events_back FROM es_select('archived', 1, 10);
ALTER SYSTEM RESET eventsourcing.seal_interval;
SELECT pg_reload_conf();
