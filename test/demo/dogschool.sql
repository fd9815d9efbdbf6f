-- The DogSchool of the eventsourcing library's tutorial, in SQL.
\pset footer off
\set VERBOSITY default
\set SHOW_CONTEXT never
\echo
\echo '== CREATE EXTENSION eventsourcing; SELECT es_create_application(''dogschool'');'
CREATE EXTENSION eventsourcing;
SELECT es_create_application('dogschool') \g /dev/null

-- What the application's command and query methods do, as SQL functions.
CREATE FUNCTION register_dog(name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT dog_id FROM (SELECT gen_random_uuid() AS dog_id) d,
        LATERAL es_append('dogschool', d.dog_id, 1, 'dogschool:Dog.Registered',
                          convert_to(json_build_object('name', name)::text, 'UTF8'))
$$;
CREATE FUNCTION add_trick(dog_id uuid, trick text) RETURNS bigint LANGUAGE sql AS $$
    SELECT es_append('dogschool', dog_id,
                     (SELECT max(originator_version) + 1 FROM es_events('dogschool', dog_id)),
                     'dogschool:Dog.TrickAdded',
                     convert_to(json_build_object('trick', trick)::text, 'UTF8'))
$$;
CREATE FUNCTION get_dog(dog_id uuid, version bigint DEFAULT NULL)
RETURNS TABLE (name text, version bigint, tricks text[]) LANGUAGE sql AS $$
    SELECT max(convert_from(state, 'UTF8')::json->>'name'), max(originator_version),
           coalesce(array_agg(convert_from(state, 'UTF8')::json->>'trick' ORDER BY originator_version)
                    FILTER (WHERE topic = 'dogschool:Dog.TrickAdded'), '{}')
    FROM es_events('dogschool', dog_id, lte => version)
$$;

\echo
\echo '== Register three dogs and teach them tricks (each es_append is one event)'
SELECT register_dog('Fido') AS fido \gset
SELECT add_trick(:'fido', 'roll over'), add_trick(:'fido', 'fetch ball'), add_trick(:'fido', 'play dead') \g /dev/null
SELECT register_dog('Millie') AS millie \gset
SELECT add_trick(:'millie', 'shake hands'), add_trick(:'millie', 'fetch ball'), add_trick(:'millie', 'sit pretty') \g /dev/null
SELECT register_dog('Scrappy') AS scrappy \gset
SELECT add_trick(:'scrappy', 'come'), add_trick(:'scrappy', 'spin'), add_trick(:'scrappy', 'stay') \g /dev/null

\echo
\echo '== The dogs and their tricks (get_dog folds es_events)'
SELECT d.* FROM (VALUES (:'fido'::uuid), (:'millie'::uuid), (:'scrappy'::uuid)) v(id), get_dog(v.id) d;

\echo '== The notification log: SELECT * FROM es_select(''dogschool'', 1, 4), then the next page from 5'
SELECT id, originator_id, originator_version AS v, topic, convert_from(state, 'UTF8') AS state
FROM es_select('dogschool', 1, 4);
SELECT id, originator_id, originator_version AS v, topic, convert_from(state, 'UTF8') AS state
FROM es_select('dogschool', 5, 4);

\echo '== A conflict: another writer tries to record Fido''s version 4 again (SQLSTATE 23505)'
SELECT es_append('dogschool', :'fido', 4, 'dogschool:Dog.TrickAdded', convert_to('{"trick":"sit"}', 'UTF8'));
\echo 'SQLSTATE' :LAST_ERROR_SQLSTATE '-- and the log still has' 
SELECT es_max_notification_id('dogschool') AS max_notification_id;

\echo '== A historical version: Fido at version 3, before "play dead"'
SELECT * FROM get_dog(:'fido', 3);

\echo '== Fido''s events: SELECT * FROM es_events(''dogschool'', <fido>)'
SELECT originator_version AS v, topic, convert_from(state, 'UTF8') AS state, recorded_at
FROM es_events('dogschool', :'fido');

\echo '== Replay in SQL: declarative folds, then es_state (latest and at version 3)'
SELECT es_define_fold('dogschool', 'dogschool:Dog.Registered',
    '[{"op": "set", "path": "name", "from": "name"}, {"op": "set", "path": "tricks", "value": []}]') \g /dev/null
SELECT es_define_fold('dogschool', 'dogschool:Dog.TrickAdded',
    '[{"op": "append", "path": "tricks", "from": "trick"}]') \g /dev/null
SELECT es_state('dogschool', :'fido') AS fido, es_state('dogschool', :'fido', 3) AS fido_at_version_3;

\echo '== Integrity: Fido''s head hash, and the verification of the whole log'
SELECT encode(es_head('dogschool', :'fido'), 'hex') AS fido_head;
SELECT seal_id, last_notification_id, encode(digest, 'hex') AS seal_digest FROM es_seal('dogschool');
SELECT count(*) AS problems FROM es_verify_log('dogschool');
