-- Compression and encryption in the database: per application, mixed logs,
-- per-aggregate keys, forgetting, tampering.  (The private clusters load a
-- master key through eventsourcing.key_command; test/t/008_encryption.pl
-- covers the key's absence, a wrong key, rotation, files, WAL and dumps.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
DROP ROLE IF EXISTS es_enc_reader;
RESET client_min_messages;
\set VERBOSITY default
CREATE ROLE es_enc_reader;
SELECT es_create_application('enc');
SELECT es_grant('enc', 'es_enc_reader', 'read');
SELECT es_grant('enc', 'es_enc_reader', 'verify');
CREATE FUNCTION enc_state(v text) RETURNS bytea LANGUAGE sql AS
$$ SELECT convert_to(format('{"owner": "%s", "notes": "%s"}', v, repeat('so far so good ', 20)), 'UTF8') $$;

-- 1. Mixed log: plain, compressed, encrypted, both, plain again.
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 1, 'Opened', enc_state('plain'));
SELECT es_configure('enc', compression => true);
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 2, 'Noted', enc_state('compressed'));
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 3, 'Noted', '{"short": 1}');   -- would not shrink
SELECT es_configure('enc', compression => false, encryption => true);
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 4, 'Noted', enc_state('encrypted'));
SELECT es_configure('enc', compression => true);             -- encryption stays on
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 5, 'Noted', enc_state('both'));
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000b2', 1, 'Opened', enc_state('another aggregate'));
SELECT es_configure('enc', compression => false, encryption => false);
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 6, 'Noted', enc_state('plain again'));
SELECT compression, encryption FROM es_applications WHERE name = 'enc';
-- what is stored: form 1 behind a header (byte 1: 1 compressed, 2 encrypted)
SELECT id, stored_form, get_byte(stored_state, 0) AS format_version,
       CASE WHEN stored_form = 1 THEN get_byte(stored_state, 1) END AS flags,
       length(stored_state) AS stored_bytes,
       position(convert_to('owner', 'UTF8') IN stored_state) > 0 AS readable
FROM es_select_stored('enc', 1, 100);
-- what readers get: the states as given, in one es_select
SELECT id, length(state) AS bytes, convert_from(state, 'UTF8')::jsonb ->> 'owner' AS owner
FROM es_select('enc', 1, 100);
SELECT es_state('enc', '00000000-0000-0000-0000-0000000000a1') ->> 'owner' AS owner_now;
SELECT ok, events FROM es_verify('enc', '00000000-0000-0000-0000-0000000000a1');
SELECT seal_id, event_count FROM es_seal('enc');
SELECT count(*) AS problems FROM es_verify_log('enc');
-- readers read through the functions, and only those
SET ROLE es_enc_reader;
SELECT count(*) FROM es_select('enc', 1, 100) WHERE state IS NOT NULL;
SELECT es_configure('enc', encryption => true);
\echo :LAST_ERROR_SQLSTATE
SELECT es_forget('enc', '00000000-0000-0000-0000-0000000000a1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- 2. Snapshots of an encrypting application are encrypted under the aggregate's key.
SELECT es_configure('enc', encryption => true);
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000b2', 2, 'Noted', enc_state('snapshotted'));
SELECT es_snapshot('enc', '00000000-0000-0000-0000-0000000000b2');
SELECT s.state IS NULL AS no_jsonb, position(convert_to('snapshotted', 'UTF8') IN s.stored_state) AS marker_at
FROM es_snapshots s JOIN es_applications a ON a.id = s.application_id WHERE a.name = 'enc';
SELECT es_state('enc', '00000000-0000-0000-0000-0000000000b2') ->> 'owner' AS from_the_snapshot;

-- 3. Tampering: a changed byte of the ciphertext, the nonce or the tag is
-- reported by verification and refused by decryption, never read as garbage.
SET eventsourcing.allow_rewrite = on;
CREATE TEMP TABLE saved AS
SELECT e.notification_id, e.state FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id
WHERE a.name = 'enc' AND e.originator_version = 4 AND e.originator_id = '00000000-0000-0000-0000-0000000000a1';
-- byte 30: ciphertext; byte 10: the nonce; the last byte: the tag
UPDATE es_stored_events e SET state = set_byte(e.state, 30, get_byte(e.state, 30) # 1)
FROM saved WHERE e.notification_id = saved.notification_id AND e.application_id = (SELECT id FROM es_applications WHERE name = 'enc');
SELECT originator_version, problem FROM es_verify('enc', '00000000-0000-0000-0000-0000000000a1');
SELECT id FROM es_select('enc', 4, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT es_state('enc', '00000000-0000-0000-0000-0000000000a1');
\echo :LAST_ERROR_SQLSTATE
UPDATE es_stored_events e SET state = set_byte(saved.state, 10, get_byte(saved.state, 10) # 1)
FROM saved WHERE e.notification_id = saved.notification_id AND e.application_id = (SELECT id FROM es_applications WHERE name = 'enc');
SELECT id FROM es_select('enc', 4, 1);
\echo :LAST_ERROR_SQLSTATE
UPDATE es_stored_events e SET state = set_byte(saved.state, length(saved.state) - 1, get_byte(saved.state, length(saved.state) - 1) # 1)
FROM saved WHERE e.notification_id = saved.notification_id AND e.application_id = (SELECT id FROM es_applications WHERE name = 'enc');
SELECT id FROM es_select('enc', 4, 1);
\echo :LAST_ERROR_SQLSTATE
-- a ciphertext moved from another event of the aggregate does not authenticate either
UPDATE es_stored_events e SET state = (SELECT state FROM es_stored_events x WHERE x.application_id = e.application_id AND x.notification_id = 5)
FROM saved WHERE e.notification_id = saved.notification_id AND e.application_id = (SELECT id FROM es_applications WHERE name = 'enc');
SELECT id FROM es_select('enc', 4, 1);
\echo :LAST_ERROR_SQLSTATE
-- flipping the stored form makes a changed event too
UPDATE es_stored_events e SET state = saved.state, stored_form = 0
FROM saved WHERE e.notification_id = saved.notification_id AND e.application_id = (SELECT id FROM es_applications WHERE name = 'enc');
SELECT originator_version, problem FROM es_verify('enc', '00000000-0000-0000-0000-0000000000a1');
UPDATE es_stored_events e SET stored_form = 1
FROM saved WHERE e.notification_id = saved.notification_id AND e.application_id = (SELECT id FROM es_applications WHERE name = 'enc');
RESET eventsourcing.allow_rewrite;
SELECT ok FROM es_verify('enc', '00000000-0000-0000-0000-0000000000a1');
SELECT convert_from(state, 'UTF8')::jsonb ->> 'owner' AS restored FROM es_select('enc', 4, 1);

-- 4. Forgetting one aggregate.
SELECT es_forget('enc', '00000000-0000-0000-0000-0000000000a1');
SELECT s.id, s.originator_version, s.state IS NULL AS forgotten, e.state IS NULL AS forgotten_in_es_events
FROM es_events('enc', '00000000-0000-0000-0000-0000000000a1') e
JOIN es_select('enc', 1, 100) s USING (originator_version, originator_id) ORDER BY s.id;
-- the log, ids, hashes and chains are intact; what was in clear stays in clear
SELECT ok, events FROM es_verify('enc', '00000000-0000-0000-0000-0000000000a1');
SELECT count(*) AS problems FROM es_verify_log('enc');
SELECT es_state('enc', '00000000-0000-0000-0000-0000000000a1') ->> 'owner' AS owner_left;
SELECT es_replay('enc', e) ->> 'owner' AS replayed FROM es_events('enc', '00000000-0000-0000-0000-0000000000a1') e;
-- other aggregates are not touched; the forgotten one takes no new event, even in clear
SELECT es_state('enc', '00000000-0000-0000-0000-0000000000b2') ->> 'owner' AS other;
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 7, 'Noted', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_configure('enc', encryption => false);
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000a1', 7, 'Noted', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_forget('enc', '00000000-0000-0000-0000-0000000000a1');      -- again: nothing more to do
SELECT count(*) AS snapshots_left FROM es_snapshots s JOIN es_applications a ON a.id = s.application_id
WHERE a.name = 'enc' AND s.originator_id = '00000000-0000-0000-0000-0000000000a1';
SELECT master_key_id IS NULL AND wrapped_key IS NULL AND forgotten_at IS NOT NULL AS key_destroyed
FROM es_keys k JOIN es_applications a ON a.id = k.application_id
WHERE a.name = 'enc' AND k.originator_id = '00000000-0000-0000-0000-0000000000a1';
-- an aggregate that was never encrypted has no key to destroy
SELECT es_append('enc', '00000000-0000-0000-0000-0000000000c3', 1, 'Opened', '{}');
SELECT es_forget('enc', '00000000-0000-0000-0000-0000000000c3');
\echo :LAST_ERROR_SQLSTATE
-- the stored form is still there for backups (the forgotten states stay ciphertext)
SELECT count(*) FILTER (WHERE stored_form = 1) AS stored_encoded, count(*) AS events FROM es_select_stored('enc', 1, 100);

-- 5. A preset dictionary makes small events much smaller; older ones still read.
SELECT es_create_application('enc_dict');
SELECT es_configure('enc_dict', compression => true);
SELECT es_append('enc_dict', '00000000-0000-0000-0000-0000000000d1', v, 'Ordered',
    convert_to(format('{"order_id": "%s", "customer": "customer-%s", "currency": "EUR", "shipping": {"method": "standard", "country": "DE"}}',
                      md5(v::text), v), 'UTF8'))
FROM generate_series(1, 3) v;
SELECT es_set_compression_dictionary('enc_dict',
    convert_to('{"order_id": "", "customer": "customer-", "currency": "EUR", "shipping": {"method": "standard", "country": "DE"}}', 'UTF8'));
SELECT es_append('enc_dict', '00000000-0000-0000-0000-0000000000d1', v, 'Ordered',
    convert_to(format('{"order_id": "%s", "customer": "customer-%s", "currency": "EUR", "shipping": {"method": "standard", "country": "DE"}}',
                      md5(v::text), v), 'UTF8'))
FROM generate_series(4, 6) v;
SELECT es_set_compression_dictionary('enc_dict', convert_to('another dictionary', 'UTF8'));
SELECT es_configure('enc_dict', encryption => true);
SELECT es_append('enc_dict', '00000000-0000-0000-0000-0000000000d1', 7, 'Ordered', convert_to('{"currency": "EUR", "note": "another dictionary, another dictionary"}', 'UTF8'));
SELECT es_set_compression_dictionary('enc_dict', NULL);
SELECT es_append('enc_dict', '00000000-0000-0000-0000-0000000000d1', 8, 'Ordered', convert_to('{"currency": "EUR", "note": "another dictionary, another dictionary"}', 'UTF8'));
SELECT s.id, s.stored_form, get_byte(s.stored_state, 1) AS flags, length(s.stored_state) AS stored_bytes, length(e.state) AS bytes
FROM es_select_stored('enc_dict', 1, 100) s JOIN es_select('enc_dict', 1, 100) e USING (id) ORDER BY s.id;
SELECT count(*) AS readable FROM es_select('enc_dict', 1, 100) WHERE convert_from(state, 'UTF8')::jsonb ->> 'currency' = 'EUR';
SELECT es_set_compression_dictionary('enc_dict', ''::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT es_set_compression_dictionary('enc_dict', convert_to(repeat('x', 40000), 'UTF8'));
\echo :LAST_ERROR_SQLSTATE
SELECT dictionary_id, length(dictionary) FROM es_dictionaries d JOIN es_applications a ON a.id = d.application_id
WHERE a.name = 'enc_dict' ORDER BY 1;
SELECT count(*) AS problems FROM es_verify_log('enc_dict');

-- 6. A refused append rolls its new data key back: a retry makes another,
-- and another session reads what the retry recorded.
SELECT es_create_application('enc_retry');
SELECT es_configure('enc_retry', encryption => true);
SELECT es_append('enc_retry', '00000000-0000-0000-0000-0000000000b1', 1, 'T', '{}');
SELECT * FROM es_append('enc_retry', ARRAY[
    ROW('00000000-0000-0000-0000-0000000000a1', 1, 'T', '{"a": 1}')::es_event,
    ROW('00000000-0000-0000-0000-0000000000a1', 2, 'T', '{"a": 2}')::es_event,
    ROW('00000000-0000-0000-0000-0000000000b1', 1, 'T', '{}')::es_event]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM es_append('enc_retry', ARRAY[
    ROW('00000000-0000-0000-0000-0000000000a1', 1, 'T', '{"a": 1}')::es_event,
    ROW('00000000-0000-0000-0000-0000000000a1', 2, 'T', '{"a": 2}')::es_event]);
\c -
SELECT originator_version, convert_from(state, 'UTF8') FROM es_events('enc_retry', '00000000-0000-0000-0000-0000000000a1');
-- forgetting an aggregate whose events were recorded in clear says so
SELECT es_configure('enc_retry', encryption => false);
SELECT es_append('enc_retry', '00000000-0000-0000-0000-0000000000c1', 1, 'T', '{"c": 1}');
SELECT es_configure('enc_retry', encryption => true);
SELECT es_append('enc_retry', '00000000-0000-0000-0000-0000000000c1', 2, 'T', '{"c": 2}');
SELECT es_forget('enc_retry', '00000000-0000-0000-0000-0000000000c1');
SELECT originator_version, state IS NULL AS forgotten FROM es_events('enc_retry', '00000000-0000-0000-0000-0000000000c1');

-- A dictionary recorded and used in a transaction that rolls back: its id
-- goes to the next dictionary, and what this backend compresses with that
-- one is read back by another backend.
SELECT es_create_application('enc_dict_rb');
SELECT es_configure('enc_dict_rb', compression => true);
BEGIN;
SELECT es_set_compression_dictionary('enc_dict_rb', convert_to(repeat('{"first dictionary": 1}', 20), 'UTF8'));
SELECT es_append('enc_dict_rb', '00000000-0000-0000-0000-0000000000d1', 1, 'T', convert_to(repeat('{"first dictionary": 1}', 10), 'UTF8'));
ROLLBACK;
SELECT es_set_compression_dictionary('enc_dict_rb', convert_to(repeat('{"second one, other bytes": 2}', 20), 'UTF8'));
SELECT es_append('enc_dict_rb', '00000000-0000-0000-0000-0000000000d1', 1, 'T', convert_to(repeat('{"second one, other bytes": 2}', 10), 'UTF8'));
\c
SELECT convert_from(state, 'UTF8') = repeat('{"second one, other bytes": 2}', 10) AS read_back
  FROM es_select('enc_dict_rb', 1, 10);

-- 7. Rotation needs the previous key loaded.
SELECT es_rewrap_keys();
\echo :LAST_ERROR_SQLSTATE

DROP FUNCTION enc_state(text);
SELECT es_revoke('enc', 'es_enc_reader', 'read');
SELECT es_revoke('enc', 'es_enc_reader', 'verify');
DROP ROLE es_enc_reader;
