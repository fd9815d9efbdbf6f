-- The seed tutorial's test() (DogSchool), in SQL.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
SELECT es_create_application('dogschool');

-- The application's commands, as the tutorial's DogSchool has them.
CREATE FUNCTION register_dog(name text, dog_id uuid) RETURNS bigint LANGUAGE sql AS $$
    SELECT es_append('dogschool', dog_id, 1, 'dogschool:Dog.Registered',
                     convert_to(json_build_object('name', name)::text, 'UTF8'))
$$;
CREATE FUNCTION add_trick(dog_id uuid, trick text) RETURNS bigint LANGUAGE sql AS $$
    SELECT es_append('dogschool', dog_id,
                     (SELECT max(originator_version) + 1 FROM es_events('dogschool', dog_id)),
                     'dogschool:Dog.TrickAdded',
                     convert_to(json_build_object('trick', trick)::text, 'UTF8'))
$$;
-- The dog at a version (all of it when NULL): its name and tricks.
CREATE FUNCTION get_dog(dog_id uuid, version bigint DEFAULT NULL)
RETURNS TABLE (name text, tricks text[]) LANGUAGE sql AS $$
    SELECT max(convert_from(state, 'UTF8')::json->>'name'),
           coalesce(array_agg(convert_from(state, 'UTF8')::json->>'trick' ORDER BY originator_version)
                    FILTER (WHERE topic = 'dogschool:Dog.TrickAdded'), '{}')
    FROM es_events('dogschool', dog_id, lte => version)
$$;

-- Check app has zero event notifications.
SELECT count(*) FROM es_select('dogschool', 1, 10);

-- Create a new aggregate and execute application commands.
SELECT register_dog('Fido', 'f1d0f1d0-0000-4000-8000-000000000001');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000001', 'roll over');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000001', 'fetch ball');

-- Check recorded state of the aggregate.
SELECT * FROM get_dog('f1d0f1d0-0000-4000-8000-000000000001');

-- Execute another command and check again.
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000001', 'play dead');
SELECT * FROM get_dog('f1d0f1d0-0000-4000-8000-000000000001');

-- The notification log in pages of two: [1, 2], then [3, 4].
SELECT id, originator_id, topic, convert_from(state, 'UTF8') AS state
FROM es_select('dogschool', 1, 2);
SELECT id, originator_id, topic, convert_from(state, 'UTF8') AS state
FROM es_select('dogschool', 3, 2);

-- The values are visible in the database (no compression nor encryption).
SELECT count(*) FROM es_select('dogschool', 1, 10)
WHERE position('roll over' IN convert_from(state, 'UTF8')) > 0
   OR position('fetch ball' IN convert_from(state, 'UTF8')) > 0
   OR position('play dead' IN convert_from(state, 'UTF8')) > 0;

-- Historical state at version 3, before 'play dead' happened.
SELECT name, array_length(tricks, 1) AS n_tricks, tricks[array_length(tricks, 1)] AS last_trick
FROM get_dog('f1d0f1d0-0000-4000-8000-000000000001', 3);

-- Check app has four event notifications.
SELECT count(*) FROM es_select('dogschool', 1, 10);

-- Optimistic concurrency control (no branches): writing version 4 again fails.
SELECT es_append('dogschool', 'f1d0f1d0-0000-4000-8000-000000000001', 4,
                 'dogschool:Dog.TrickAdded', convert_to('{"trick":"sit"}', 'UTF8'));
\echo :LAST_ERROR_SQLSTATE

-- Check app still has only four event notifications.
SELECT count(*) FROM es_select('dogschool', 1, 10);

-- Create eight more aggregate events.
SELECT register_dog('Millie', 'f1d0f1d0-0000-4000-8000-000000000002');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000002', 'shake hands');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000002', 'fetch ball');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000002', 'sit pretty');
SELECT register_dog('Scrappy', 'f1d0f1d0-0000-4000-8000-000000000003');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000003', 'come');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000003', 'spin');
SELECT add_trick('f1d0f1d0-0000-4000-8000-000000000003', 'stay');

-- Get the new event notifications from the reader: eight, after the last id.
SELECT count(*), min(id), max(id) FROM es_select('dogschool', 4 + 1, 10);
SELECT * FROM get_dog('f1d0f1d0-0000-4000-8000-000000000002');
SELECT * FROM get_dog('f1d0f1d0-0000-4000-8000-000000000003');
