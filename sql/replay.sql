-- Replay: folding events into state in SQL.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
RESET client_min_messages;
\set VERBOSITY default
\pset null '(null)'
SELECT es_create_application('dogs');
-- the seed tutorial's DogSchool: Fido registered, then four tricks
SELECT count(*) FROM (
    SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 1, 'dogschool:Dog.Registered', convert_to('{"name": "Fido"}', 'UTF8'))
    UNION ALL SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 2, 'dogschool:Dog.TrickAdded', convert_to('{"trick": "roll over"}', 'UTF8'))
    UNION ALL SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 3, 'dogschool:Dog.TrickAdded', convert_to('{"trick": "fetch ball"}', 'UTF8'))
    UNION ALL SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 4, 'dogschool:Dog.TrickAdded', convert_to('{"trick": "play dead"}', 'UTF8'))) s;

-- Without folds: the default shallow merge of each event's fields
SELECT es_replay('dogs', e) FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;

-- Declarative folds: the Dog aggregate without writing a function
SELECT es_define_fold('dogs', 'dogschool:Dog.Registered',
    '[{"op": "set", "path": "name", "from": "name"}, {"op": "set", "path": "tricks", "value": []}]');
SELECT es_define_fold('dogs', 'dogschool:Dog.TrickAdded',
    '[{"op": "append", "path": "tricks", "from": "trick"}]');
-- get_dog(), at the latest version and at version 3
SELECT es_replay('dogs', e) FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
SELECT es_replay('dogs', e) FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', lte => 3) e;
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001');
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 3);
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 3)->'tricks'->>-1 AS last_trick;
-- the same, given the columns instead of the rows
SELECT es_replay('dogs', originator_id, originator_version, topic, state)
FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', lte => 3);
SELECT es_replay('dogs', originator_id, originator_version, NULL, state)
FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001');
SELECT es_state('dogs', '00000000-0000-0000-0000-000000000000');
-- many aggregates at once
SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000002', 1, 'dogschool:Dog.Registered', convert_to('{"name": "Millie"}', 'UTF8'));
SELECT e.originator_id, es_replay('dogs', e ORDER BY e.originator_version)
FROM es_applications a, LATERAL (SELECT DISTINCT originator_id FROM es_stored_events WHERE application_id = a.id) d,
     LATERAL es_events('dogs', d.originator_id) e
WHERE a.name = 'dogs' GROUP BY e.originator_id ORDER BY 1;

-- Each declarative operation
SELECT es_create_application('ops');
SELECT es_define_fold('ops', 'Init', '[{"op": "init", "value": {"items": [], "total": 0, "meta": {"v": 1}}}]');
SELECT es_define_fold('ops', 'Set', '[{"op": "set", "path": "owner.name", "from": "name"}, {"op": "set", "path": ["owner", "kind"], "value": "person"}]');
SELECT es_define_fold('ops', 'Append', '[{"op": "append", "path": "items", "from": "item"}]');
SELECT es_define_fold('ops', 'Remove', '[{"op": "remove", "path": "items", "from": "item"}]');
SELECT es_define_fold('ops', 'Add', '[{"op": "add", "path": "total", "from": "amount"}]');
SELECT es_define_fold('ops', 'Merge', '[{"op": "merge", "path": "meta", "from": "changes"}]');
SELECT es_define_fold('ops', 'MergeAll', '[{"op": "merge"}]');
SELECT es_define_fold('ops', 'Delete', '[{"op": "delete", "path": "owner.kind"}]');
SELECT count(*) FROM (
    SELECT es_append('ops', ARRAY[
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 1, 'Init', '{}'::bytea)::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 2, 'Set', convert_to('{"name": "ann"}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 3, 'Append', convert_to('{"item": "a"}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 4, 'Append', convert_to('{"item": {"sku": 7}}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 5, 'Append', convert_to('{"item": "b"}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 6, 'Remove', convert_to('{"item": "a"}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 7, 'Add', convert_to('{"amount": 10.5}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 8, 'Add', convert_to('{"amount": -0.5}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 9, 'Merge', convert_to('{"changes": {"v": 2, "w": true}}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 10, 'MergeAll', convert_to('{"status": "open", "total": 100}', 'UTF8'))::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 11, 'Delete', '{}'::bytea)::es_event,
        ROW('0b0b0b0b-0000-4000-8000-000000000001', 12, 'Add', convert_to('{"other": 1}', 'UTF8'))::es_event])) s;
SELECT v, es_state('ops', '0b0b0b0b-0000-4000-8000-000000000001', v) FROM generate_series(1, 12) v;

-- A user-defined fold in PL/pgSQL, named in the call or per application
CREATE FUNCTION dog_fold(state jsonb, topic text, event jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF topic = 'dogschool:Dog.Registered' THEN
        RETURN jsonb_build_object('name', event->'name', 'tricks', '[]'::jsonb);
    ELSIF topic = 'dogschool:Dog.TrickAdded' THEN
        RETURN jsonb_set(state, '{tricks}', (state->'tricks') || jsonb_build_array(event->'trick'));
    END IF;
    RETURN state;
END $$;
SELECT es_replay('dogs', e, 'dog_fold') FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
SELECT es_replay('dogs', e, 'dog_fold') = es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') AS same
FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
SELECT es_create_application('dogs2');
SELECT count(*) FROM es_append('dogs2', ARRAY(SELECT ROW(originator_id, originator_version, topic, state)::es_event
                                FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001')));
SELECT es_set_fold_function('dogs2', 'dog_fold');
SELECT es_state('dogs2', 'd0d0d0d0-0000-4000-8000-000000000001', 2);

-- Snapshots: used, and invalidated when a fold changes
SELECT es_snapshot('dogs', 'd0d0d0d0-0000-4000-8000-000000000001');
SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 5, 'dogschool:Dog.TrickAdded', convert_to('{"trick": "sit"}', 'UTF8'));
-- a snapshot that differs from the events proves es_state starts from it
BEGIN;
UPDATE es_snapshots SET state = jsonb_set(state, '{name}', '"Fido (from the snapshot)"');
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001');
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 3);   -- below the snapshot: from the events
-- a changed fold definition makes the snapshot stale
SELECT es_define_fold('dogs', 'dogschool:Dog.TrickAdded', '[{"op": "append", "path": "tricks", "from": "trick"}, {"op": "add", "path": "count", "value": 1}]');
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001');
ROLLBACK;
-- automatic snapshots every 2 folded events
SELECT es_set_snapshot_every('dogs', 2);
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000002') IS NOT NULL AS millie;   -- 1 event: no snapshot
SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000002', 2, 'dogschool:Dog.TrickAdded', convert_to('{"trick": "shake hands"}', 'UTF8'));
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000002');
SELECT s.originator_version, s.state FROM es_snapshots s JOIN es_applications a ON a.id = s.application_id
WHERE a.name = 'dogs' ORDER BY s.originator_id, s.originator_version;
SELECT es_set_snapshot_every('dogs', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_set_snapshot_every('dogs', NULL);

-- Folds that read fields parse only those fields; reading the whole event
-- (a "from": "" operation) parses all of it as jsonb.  Both give the same
-- state for escapes, nesting, duplicate keys (the last wins), arrays and
-- scalars: the same events folded both ways, compared version by version.
SELECT es_create_application('pick');
SELECT es_define_fold('pick', 'Fields', ops), es_define_fold('pick', 'Whole', ops || '[{"op": "merge", "path": "_w", "from": ""}, {"op": "delete", "path": "_w"}]')
FROM (VALUES ('[{"op": "set", "path": "s", "from": "s"}, {"op": "set", "path": "deep", "from": "a.b.c"},
               {"op": "append", "path": "list", "from": "x"}, {"op": "add", "path": "sum", "from": "n"},
               {"op": "merge", "path": "m", "from": "obj"}, {"op": "set", "path": "arr", "from": "arr"},
               {"op": "set", "path": "flag", "from": "f"}, {"op": "set", "path": "nil", "from": "z"}]'::jsonb)) o(ops);
CREATE TEMP TABLE pick_events (v int, body text);
INSERT INTO pick_events VALUES
    (1, '{"s": "plain", "n": 1, "f": true, "z": null, "arr": [1, {"s": "inner"}], "obj": {"k": 1}}'),
    (2, '{"s": "esc\"aped \u00e9\n", "x": "\u0041", "obj": {"k": 2, "j": [3]}}'),
    (3, '{"a": {"b": {"c": [1, 2]}}, "x": {"y": [true, null]}, "f": false}'),
    (4, '{"s": "first", "s": "second", "a": {"b": {"c": 1}}, "a": {"d": 2}}'),
    (5, '[{"s": "in an array"}, {"a": {"b": {"c": 9}}}]'),
    (6, '{"arr2": [{"a": {"b": {"c": 9}}}], "q": {"a": {"b": {"c": 8}}}}'),
    (7, '{"\u0073": "escaped key", "n": 1e2, "\u0061": {"b": {"c": "via escaped key"}}}'),
    (8, '{"n": -0.5e-1, "x": 12345678901234567890.5}'),
    (9, '"just a string"'),
    (10, '42'),
    (11, '{"a": {"b": 5}}'),
    (12, '{"a": {"b": {"c": "first"}}, "a": {"b": {"c": "second"}}}'),
    (13, '{"a": {"b": {"c": "kept"}, "b": 1}}'),
    (14, '  { "s" : "spaced" , "z" : "not null" , "f" : null }  ');
SELECT count(*) FROM pick_events p,
    LATERAL (SELECT es_append('pick', '0c0c0c0c-0000-4000-8000-000000000001', p.v, 'Fields', convert_to(p.body, 'UTF8'))
             UNION ALL
             SELECT es_append('pick', '0c0c0c0c-0000-4000-8000-000000000002', p.v, 'Whole', convert_to(p.body, 'UTF8'))) s;
SELECT v, f.state = w.state AS same, f.state
FROM generate_series(1, 14) v,
     LATERAL (SELECT es_state('pick', '0c0c0c0c-0000-4000-8000-000000000001', v) AS state) f,
     LATERAL (SELECT es_state('pick', '0c0c0c0c-0000-4000-8000-000000000002', v) AS state) w
ORDER BY v;
SELECT es_replay('pick', e) = es_state('pick', '0c0c0c0c-0000-4000-8000-000000000001') AS replay_same
FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000001') e;
-- a field that jsonb cannot hold is refused by both
SELECT es_append('pick', '0c0c0c0c-0000-4000-8000-000000000001', 15, 'Fields', convert_to('{"other": "\u0000"}', 'UTF8'));
SELECT es_state('pick', '0c0c0c0c-0000-4000-8000-000000000001');
\echo :LAST_ERROR_SQLSTATE

-- Errors
SELECT es_append('dogs', 'd0d0d0d0-0000-4000-8000-000000000003', 1, 'dogschool:Dog.Registered', convert_to('{"name": ', 'UTF8'));
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000003');
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('dogs', e) FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000003') e;
\echo :LAST_ERROR_SQLSTATE
CREATE FUNCTION failing_fold(state jsonb, topic text, event jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF topic = 'dogschool:Dog.TrickAdded' THEN RAISE EXCEPTION 'no tricks allowed'; END IF;
    RETURN event;
END $$;
SELECT es_replay('dogs', e, 'failing_fold') FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('dogs', e, 'no_such_fold') FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('dogs', e, 'now') FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_set_fold_function('dogs', 'now');
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('dogs', e ORDER BY originator_version DESC) FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001') e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('dogs', e) FROM (SELECT * FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000001')
                                  UNION ALL SELECT * FROM es_events('dogs', 'd0d0d0d0-0000-4000-8000-000000000002')) e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('dogs', 'X', '{"op": "set"}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('dogs', 'X', '[{"op": "jump", "path": "a", "value": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('dogs', 'X', '[{"op": "set", "path": "a"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('dogs', 'X', '[{"op": "set", "path": 7, "value": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('dogs', NULL, '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_define_fold('nope', 'X', '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_state('dogs', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', -1);
\echo :LAST_ERROR_SQLSTATE
-- an "add" to a field that is not a number
SELECT es_define_fold('ops', 'Add', '[{"op": "add", "path": "owner", "from": "amount"}]');
SELECT es_state('ops', '0b0b0b0b-0000-4000-8000-000000000001');
\echo :LAST_ERROR_SQLSTATE
-- removing a fold returns its topic to the default
SELECT es_define_fold('dogs', 'dogschool:Dog.TrickAdded', NULL);
SELECT es_state('dogs', 'd0d0d0d0-0000-4000-8000-000000000001', 3);

-- Folding many events: the partial parse ('Fields') against the whole event
-- ('Whole') over 300 generated events each (escapes in keys and values,
-- surrogate pairs, exponents, duplicate keys, nested and missing paths,
-- arrays, strings long enough to take their own allocation), version by
-- version, and es_replay's two forms against es_state.
SELECT count(*) FROM (VALUES ('0c0c0c0c-0000-4000-8000-000000000003'::uuid, 'Fields'), ('0c0c0c0c-0000-4000-8000-000000000004'::uuid, 'Whole')) t(id, topic),
    LATERAL generate_series(1, 300) v,
    LATERAL es_append('pick', t.id, v, t.topic, convert_to(
        CASE v % 7
            WHEN 0 THEN format('{"s": %s, "n": %s, "x": %s, "z": null, "a": {"b": {"c": %s}}}',
                               to_json('v' || v || E' caf\u00e9 "quoted" \\ tab\t'), v || 'e-2', v, v * 2)
            WHEN 1 THEN format('{"\u0073": "key escaped %s", "n": -%s.25E+1, "x": "\ud83d\ude00 %s", "obj": {"k%s": [%s, {"d": true}]}}', v, v, v, v % 4, v)
            WHEN 2 THEN format('{"s": "first %s", "s": "last %s", "a": {"b": {"c": "first"}}, "a": {"b": {"c": "last %s"}}, "n": 0.%s}', v, v, v, v)
            WHEN 3 THEN format('{"x": %s, "arr": [1, [2, {"s": "not this"}], {"a": {"b": {"c": 0}}}], "f": %s}',
                               to_json(repeat(chr(65 + v % 26), 3000 + v)), CASE WHEN v % 2 = 0 THEN 'true' ELSE 'false' END)
            WHEN 4 THEN format('{"other": {"s": "nested, not read", "n": 1}, "a": 5, "x": [%s, "%s"], "n": 1E2}', v, v)
            WHEN 5 THEN format('  { "s" : "spaced %s" , "n" : %s , "a" : { "b" : { "c" : { "deep" : [ %s ] } } } }  ', v, v, v)
            ELSE format('{"a": {"b": {}}, "x": {"y": [true, null, %s]}, "f": null, "obj": {"k": {"j": %s}}, "z": %s}', v, v, v)
        END, 'UTF8')) s;
SELECT count(*) AS versions, count(*) FILTER (WHERE f IS DISTINCT FROM w) AS different
FROM generate_series(1, 300) v,
     LATERAL (SELECT es_state('pick', '0c0c0c0c-0000-4000-8000-000000000003', v) - 'list' AS f) a,
     LATERAL (SELECT es_state('pick', '0c0c0c0c-0000-4000-8000-000000000004', v) - 'list' AS w) b;
SELECT f = w AS same, jsonb_array_length(f->'list') AS appended, f->'sum' AS sum, f->'s' AS s, f->'deep' AS deep, f->'m' AS m
FROM (SELECT es_state('pick', '0c0c0c0c-0000-4000-8000-000000000003') AS f,
             es_state('pick', '0c0c0c0c-0000-4000-8000-000000000004') AS w) s;
SELECT (SELECT es_replay('pick', e) FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000003') e)
       = es_state('pick', '0c0c0c0c-0000-4000-8000-000000000003') AS row_same,
       (SELECT es_replay('pick', originator_id, originator_version, topic, state) FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000004'))
       = es_state('pick', '0c0c0c0c-0000-4000-8000-000000000003') AS columns_same;
-- the running state (es_replay as a window function) is the state at each version
SELECT count(*) FILTER (WHERE r.state IS DISTINCT FROM es_state('pick', '0c0c0c0c-0000-4000-8000-000000000003', r.v)) AS different
FROM (SELECT originator_version AS v, es_replay('pick', e) OVER (ORDER BY originator_version) AS state
      FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000003') e) r;
-- many replays in one query, each folding every other event of the one aggregate
SELECT count(DISTINCT state) AS states, count(*) AS replays
FROM (SELECT v % 2 AS half, es_replay('pick', e ORDER BY originator_version) AS state
      FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000004') e, generate_series(1, 2) v
      GROUP BY half, originator_version % 50) s;
-- a replay that fails halfway leaves nothing behind for the next one
SELECT es_replay('pick', ROW(e.originator_id, e.originator_version, e.topic,
                             CASE WHEN e.originator_version = 200 THEN convert_to('{"s": "x", "unread": [1,}', 'UTF8') ELSE e.state END,
                             e.recorded_at, e.event_hash)::es_stored_event)
FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000003') e;
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('pick', e) = es_state('pick', '0c0c0c0c-0000-4000-8000-000000000003') AS same_after_error
FROM es_events('pick', '0c0c0c0c-0000-4000-8000-000000000003') e;

-- Invalid JSON where a fold reads nothing is still refused (22P02), and bytes
-- that are not text (22021), naming the event
SELECT es_replay('pick', ROW('0c0c0c0c-0000-4000-8000-000000000009'::uuid, 1, 'Fields', convert_to(body, 'UTF8'), now(), NULL)::es_stored_event)
FROM (VALUES ('{"s": "ok", "unread": "bad \x escape"}')) b(body);
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('pick', ROW('0c0c0c0c-0000-4000-8000-000000000009'::uuid, 1, 'Fields', convert_to(body, 'UTF8'), now(), NULL)::es_stored_event)
FROM (VALUES ('{"s": "ok", "unread": {"a": 1} "b"}')) b(body);
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('pick', ROW('0c0c0c0c-0000-4000-8000-000000000009'::uuid, 1, 'Fields', convert_to(body, 'UTF8'), now(), NULL)::es_stored_event)
FROM (VALUES ('{"s": "ok"} trailing')) b(body);
\echo :LAST_ERROR_SQLSTATE
SELECT es_replay('pick', ROW('0c0c0c0c-0000-4000-8000-000000000009'::uuid, 1, 'Fields', state, now(), NULL)::es_stored_event)
FROM (VALUES ('\x7b2273223a20226f6b222c2022223a2022ff227d'::bytea)) b(state);
\echo :LAST_ERROR_SQLSTATE

-- A document whose root is not an object (init with a scalar, or the
-- application's fold function returning an array or a scalar), then fields
-- set or merged into it: the root becomes an object, as it always did
SELECT es_create_application('roots');
SELECT es_define_fold('roots', 'Scalar', '[{"op": "init", "value": 7}]');
SELECT es_define_fold('roots', 'Set', '[{"op": "set", "path": "a.b", "from": "v"}, {"op": "append", "path": "l", "from": "v"}]');
SELECT es_define_fold('roots', 'Merge', '[{"op": "merge", "from": "o"}]');
CREATE FUNCTION roots_fold(state jsonb, topic text, event jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT CASE WHEN event ? 'root' THEN event->'root' ELSE state || event END $$;
SELECT es_set_fold_function('roots', 'roots_fold');
SELECT t, es_replay('roots', ROW('0d0d0d0d-0000-4000-8000-000000000001'::uuid, v, t, convert_to(b, 'UTF8'), now(), NULL)::es_stored_event ORDER BY v)
FROM (VALUES (1, 'Scalar', '{}'), (2, 'Set', '{"v": 1}'), (3, 'Merge', '{"o": {"m": [2]}}'), (4, 'Set', '{"v": "two"}')) e(v, t, b)
GROUP BY GROUPING SETS ((t), ()) ORDER BY t NULLS LAST;
SELECT es_replay('roots', ROW('0d0d0d0d-0000-4000-8000-000000000002'::uuid, v, t, convert_to(b, 'UTF8'), now(), NULL)::es_stored_event ORDER BY v)
FROM (VALUES (1, 'Fn', '{"root": [1, {"x": 2}]}'), (2, 'Merge', '{"o": {"m": 1}}')) e(v, t, b);
SELECT es_replay('roots', ROW('0d0d0d0d-0000-4000-8000-000000000003'::uuid, v, t, convert_to(b, 'UTF8'), now(), NULL)::es_stored_event ORDER BY v)
FROM (VALUES (1, 'Fn', '{"root": "a string"}'), (2, 'Set', '{"v": null}'), (3, 'Fn', '{"root": [[1], 2]}'), (4, 'Set', '{"v": false}'),
             (5, 'Scalar', '{}'), (6, 'Fn', '{"k": "merged"}')) e(v, t, b);
-- topics that alternate, and one longer than any fold's topic may be (no fold: the fold function)
SELECT es_replay('roots', ROW('0d0d0d0d-0000-4000-8000-000000000004'::uuid, v, t, convert_to(b, 'UTF8'), now(), NULL)::es_stored_event ORDER BY v)
FROM (VALUES (1, 'Set', '{"v": 1}'), (2, repeat('T', 2000), '{"long": true}'), (3, 'Set', '{"v": 2}'),
             (4, 'Fn', '{"u": 1}'), (5, 'Set', '{"v": 3}'), (6, repeat('T', 2000), '{"long": 2}')) e(v, t, b);
