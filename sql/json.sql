-- JSON states from any driver: jsonb in, jsonb out, intact.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
SELECT es_create_application('json');
-- backslashes, newlines, quotes, non-ASCII, emoji: as JSON text, no bytea escaping
SELECT es_append_json('json', '00000000-0000-0000-0000-0000000000f1', 1, 'Dog.Registered',
    '{"name": "Zoé \\ \"the\" \n dog 🐕", "path": "C:\\dogs\\zoe"}');
SELECT es_append_json('json', '[
    {"originator_id": "00000000-0000-0000-0000-0000000000f1", "originator_version": 2, "topic": "Dog.TrickAdded", "state": {"trick": "roll\nover"}},
    {"originator_id": "00000000-0000-0000-0000-0000000000f2", "originator_version": 1, "topic": "Dog.Registered", "state": {"name": "Ünal"}},
    {"originator_id": "00000000-0000-0000-0000-0000000000f2", "originator_version": 2, "topic": "Dog.Note", "state": "just a string"}
]');
SELECT id, topic, es_jsonb(state) AS state FROM es_select('json', 1, 10);
SELECT es_jsonb(state) ->> 'name' AS name FROM es_events('json', '00000000-0000-0000-0000-0000000000f1') WHERE originator_version = 1;
SELECT (es_jsonb(state) ->> 'name') = E'Zoé \\ "the" \n dog 🐕' AS intact FROM es_events('json', '00000000-0000-0000-0000-0000000000f1') WHERE originator_version = 1;
-- the stored bytes are the JSON's UTF-8 text
SELECT convert_from(state, 'UTF8') AS stored FROM es_events('json', '00000000-0000-0000-0000-0000000000f2');
-- the tracking form
SELECT es_append_json('json', '[]', 'upstream', 7);
SELECT es_tracking_position('json', 'upstream');
-- errors name the event (JSON arrays count from 0) and write nothing
SELECT es_append_json('json', '{"not": "an array"}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append_json('json', '[{"originator_id": "00000000-0000-0000-0000-0000000000f3", "originator_version": 1, "topic": "T", "state": {}}, 5]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append_json('json', '[{"originator_id": "00000000-0000-0000-0000-0000000000f3", "originator_version": 1, "topic": "T", "state": {}}, {"originator_id": "00000000-0000-0000-0000-0000000000f3", "originator_version": 2, "topic": "T"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append_json('json', '[{"originator_id": "not-a-uuid", "originator_version": 1, "topic": "T", "state": {}}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append_json('json', '[{"originator_id": "00000000-0000-0000-0000-0000000000f3", "originator_version": 1.5, "topic": "T", "state": {}}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append_json('json', '[{"originator_id": "00000000-0000-0000-0000-0000000000f3", "originator_version": "1", "topic": "T", "state": {}}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_append_json('json', '00000000-0000-0000-0000-0000000000f1', 1, 'Dog.Registered', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_max_notification_id('json');
-- es_jsonb on bytes that are not JSON, or not text
SELECT es_jsonb('\x7b7d');
SELECT es_jsonb(NULL);
SELECT es_jsonb('\xff');
\echo :LAST_ERROR_SQLSTATE
SELECT es_jsonb(convert_to('not json', 'UTF8'));
\echo :LAST_ERROR_SQLSTATE
-- replay and es_state read JSON states as before
SELECT es_state('json', '00000000-0000-0000-0000-0000000000f1');
