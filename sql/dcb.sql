-- Dynamic Consistency Boundaries (src/dcb.c): tagged events, queries,
-- conditional appends; every error; privileges; integrity, compression,
-- encryption and forgetting of tagged events; the specification's
-- course-subscription example written in PL/pgSQL.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventsourcing;
DROP ROLE IF EXISTS es_dcb_reader, es_dcb_writer, es_dcb_nobody;
RESET client_min_messages;
\set VERBOSITY default
CREATE ROLE es_dcb_reader;
CREATE ROLE es_dcb_writer;
CREATE ROLE es_dcb_nobody;
SELECT es_create_application('dcb');
SELECT es_grant('dcb', 'es_dcb_reader', 'read');
SELECT es_grant('dcb', 'es_dcb_writer', 'append');

-- 1. Appends: one position per event, the last returned; tags sorted and
-- without duplicates; JSON data and bytes.
SELECT es_dcb_append('dcb', '[{"type": "Opened", "data": {"n": 1}, "tags": ["b", "a", "b"]}]');
SELECT es_dcb_append('dcb', '[{"type": "Noted", "data": [1, "two", null], "tags": ["a"]},
                              {"type": "Noted", "data": "text", "tags": ["c"]},
                              {"type": "Closed", "data": null}]');
SELECT es_dcb_append('dcb', '[{"type": "Blob", "data_base64": "AP8Q", "tags": ["bin"]}]');
SELECT es_dcb_append('dcb', '[{"type": "Json", "data_base64": "eyJ4IjogMX0=", "tags": ["bin"]}]');
SELECT position, type, data, tags, data_bytes, event_id IS NOT NULL AS has_id
FROM es_dcb_read('dcb');
-- aggregate events share the log and its positions, and are never tagged events
SELECT es_append('dcb', '00000000-0000-0000-0000-00000000000a', 1, 'Aggregate', '{}');
SELECT es_dcb_append('dcb', '[{"type": "After", "data": 1, "tags": ["a"]}]');
SELECT id, topic, originator_version FROM es_select('dcb', 1, 100);
SELECT count(*) AS tagged_events FROM es_dcb_read('dcb');
-- push and consumer groups as for every event: es_wait sees the new position;
-- three group members together read every tagged event once
SELECT es_wait('dcb', 7, 1000) AS readable_after_7;
SELECT count(*) AS rows, count(DISTINCT id) AS distinct_ids
FROM generate_series(0, 2) AS m, es_select('dcb', 1, 100, group_member => m, group_size => 3);

-- 2. Queries: items ORed; in an item, any of its types and all of its tags.
SELECT array_agg(position) AS tag_a FROM es_dcb_read('dcb', '[{"tags": ["a"]}]');
SELECT array_agg(position) AS tags_a_and_b FROM es_dcb_read('dcb', '[{"tags": ["a", "b"]}]');
SELECT array_agg(position) AS type_noted FROM es_dcb_read('dcb', '[{"types": ["Noted"]}]');
SELECT array_agg(position) AS noted_or_closed FROM es_dcb_read('dcb', '[{"types": ["Noted", "Closed"]}]');
SELECT array_agg(position) AS noted_with_a FROM es_dcb_read('dcb', '[{"types": ["Noted"], "tags": ["a"]}]');
SELECT array_agg(position) AS a_or_bin FROM es_dcb_read('dcb', '[{"tags": ["a"]}, {"tags": ["bin"]}]');
SELECT array_agg(position) AS overlapping_items FROM es_dcb_read('dcb', '[{"tags": ["a"]}, {"types": ["Opened", "Noted"]}]');
SELECT array_agg(position) AS nothing FROM es_dcb_read('dcb', '[{"tags": ["zzz"]}]');
SELECT array_agg(position) AS all_after_3 FROM es_dcb_read('dcb', '[]', 3);
SELECT array_agg(position) AS a_after_1_max_1 FROM es_dcb_read('dcb', '[{"tags": ["a"]}]', 1, 1);
SELECT es_dcb_head('dcb') AS head_all, es_dcb_head('dcb', '[{"tags": ["a"]}]') AS head_a,
       es_dcb_head('dcb', '[{"tags": ["zzz"]}]') AS head_none,
       es_dcb_head('dcb', '[{"tags": ["zzz"]}]', 4) AS head_none_after_4;

-- 3. Conditions: 23505 when an event after `after` matches; nothing written.
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "tags": ["a"]}]',
                     '{"fail_if_events_match": [{"tags": ["a"]}], "after": 2}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "tags": ["a"]}]',
                     '{"fail_if_events_match": [{"types": ["Noted"], "tags": ["a"]}], "after": 1}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]',
                     '{"fail_if_events_match": [{"tags": ["zzz"]}, {"types": ["Blob"]}], "after": 0}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]',
                     '{"fail_if_events_match": [], "after": 6}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]',
                     '{"fail_if_events_match": [{"tags": ["a"]}]}');    -- after defaults to 0
\echo :LAST_ERROR_SQLSTATE
SELECT es_max_notification_id('dcb') AS nothing_written;
-- at or after the last matching position: the condition holds
SELECT es_dcb_append('dcb', '[{"type": "Y", "data": 1, "tags": ["a"]}]',
                     format('{"fail_if_events_match": [{"tags": ["a"]}], "after": %s}',
                            es_dcb_head('dcb', '[{"tags": ["a"]}]'))::jsonb);
SELECT es_dcb_append('dcb', '[{"type": "Z", "data": 1, "tags": ["q"]}]',
                     '{"fail_if_events_match": [{"tags": ["a", "c"]}, {"types": ["Nope"]}], "after": 0}');
SELECT es_dcb_append('dcb', '[{"type": "Z", "data": 2, "tags": ["q"]}]',
                     '{"fail_if_events_match": [{"tags": ["q"]}], "after": 9223372036854775807}');
-- in one transaction, the condition sees the transaction's own earlier events
BEGIN;
SELECT es_dcb_append('dcb', '[{"type": "T", "data": 1, "tags": ["own"]}]');
SELECT es_dcb_append('dcb', '[{"type": "T", "data": 2, "tags": ["own"]}]',
                     '{"fail_if_events_match": [{"tags": ["own"]}], "after": 0}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 4. Bad input: a clear error naming the argument, nothing written.
SELECT es_dcb_append(NULL, '[{"type": "X", "data": 1}]');
SELECT es_dcb_append('no such application', '[{"type": "X", "data": 1}]');
SELECT es_dcb_append('dcb', NULL);
SELECT es_dcb_append('dcb', '{"type": "X", "data": 1}');
SELECT es_dcb_append('dcb', '[]');
SELECT es_dcb_append('dcb', '[null]');
SELECT es_dcb_append('dcb', '[1]');
SELECT es_dcb_append('dcb', '[{"data": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "", "data": 1}]');
SELECT es_dcb_append('dcb', '[{"type": 5, "data": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', format('[{"type": "%s", "data": 1}]', repeat('t', 1025))::jsonb);
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X"}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "data_base64": "AA=="}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data_base64": "not base64!"}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data_base64": 12}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "tags": "a"}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}, {"type": "X", "data": 1, "tags": ["a", ""]}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "tags": ["a", null]}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "tags": [["a"]]}]');
SELECT es_dcb_append('dcb', format('[{"type": "X", "data": 1, "tags": ["%s"]}]', repeat('g', 1025))::jsonb);
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1, "tag": ["a"]}]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', 'null');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '[]');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"after": 0}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": null}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": {"tags": ["a"]}}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [{}]}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [{"types": [], "tags": []}]}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [{"tags": ["a"], "type": ["X"]}]}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [{"types": ["X", ""]}]}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [], "after": -1}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [], "after": 1.5}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [], "after": "1"}');
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [], "after": 9223372036854775808}');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]', '{"fail_if_events_match": [], "before": 1}');
SELECT es_dcb_read('dcb', '{"tags": ["a"]}');
SELECT es_dcb_read('dcb', 'null');
SELECT es_dcb_read('dcb', '[{"tags": []}]');
SELECT es_dcb_read('dcb', NULL, -1);
SELECT es_dcb_read('dcb', NULL, 0, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_head('no such application');
SELECT es_max_notification_id('dcb') AS still_nothing_written;

-- 5. Privileges: read and append per application, as for aggregate events.
SET ROLE es_dcb_nobody;
SELECT count(*) FROM es_dcb_read('dcb');
\echo :LAST_ERROR_SQLSTATE
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM es_dcb_index;
\echo :LAST_ERROR_SQLSTATE
SET ROLE es_dcb_reader;
SELECT count(*) AS readable FROM es_dcb_read('dcb');
SELECT es_dcb_head('dcb', '[{"tags": ["a"]}]') AS reader_head;
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]');
\echo :LAST_ERROR_SQLSTATE
SET ROLE es_dcb_writer;
SELECT es_dcb_append('dcb', '[{"type": "ByWriter", "data": 1, "tags": ["w"]}]',
                     '{"fail_if_events_match": [{"tags": ["w"]}], "after": 0}') > 0 AS appended;
SELECT count(*) FROM es_dcb_read('dcb');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO es_dcb_index VALUES (1, 'g', 'forged', 1);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- the index is append-only, like the log
UPDATE es_dcb_index SET value = 'changed';
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SET TRANSACTION READ ONLY;
SELECT es_dcb_append('dcb', '[{"type": "X", "data": 1}]');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 6. Integrity: tagged events are hashed with their tags, verified, sealed.
SELECT count(*) AS problems FROM es_verify_log('dcb');
SELECT seal_id, event_count FROM es_seal('dcb');
SELECT ok, events FROM es_verify('dcb', (SELECT event_id FROM es_dcb_read('dcb') LIMIT 1));
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET tags = '{a,b,forged}' WHERE notification_id = 1;
SELECT kind, notification_id, problem FROM es_verify_log('dcb');
ROLLBACK;
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
UPDATE es_stored_events SET topic = 'Renamed' WHERE notification_id = 1;
SELECT kind, notification_id, problem FROM es_verify_log('dcb');
ROLLBACK;
-- the index conditions trust is checked against the events: a row taken
-- away (a condition on that tag would miss the event) or added by hand
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
DELETE FROM es_dcb_index WHERE kind = 'g' AND value = 'b' AND notification_id = 1;
SELECT array_agg(position) AS b_now_misses_1 FROM es_dcb_read('dcb', '[{"tags": ["b"]}]');
SELECT kind, notification_id, problem, detail FROM es_verify_log('dcb');
ROLLBACK;
BEGIN;
SET LOCAL eventsourcing.allow_rewrite = on;
INSERT INTO es_dcb_index SELECT id, 'g', 'forged', 2 FROM es_applications WHERE name = 'dcb';
INSERT INTO es_dcb_index SELECT id, 'y', 'Opened', 7 FROM es_applications WHERE name = 'dcb';
SELECT kind, notification_id, problem, detail FROM es_verify_log('dcb');
ROLLBACK;

-- 7. Compression and encryption apply to tagged events; each has its own
-- data key, so one event can be forgotten.
SELECT es_create_application('dcb_enc');
SELECT es_configure('dcb_enc', compression => true, encryption => true);
SELECT es_dcb_append('dcb_enc', format('[{"type": "Secret", "data": {"note": "%s"}, "tags": ["s"]},
                                         {"type": "Secret", "data": {"note": "forget me"}, "tags": ["s"]}]',
                                       repeat('hidden ', 40))::jsonb);
SELECT id, stored_form, position(convert_to('hidden', 'UTF8') IN stored_state) AS plaintext_at
FROM es_select_stored('dcb_enc', 1, 10);
SELECT position, length(data ->> 'note') AS note_length FROM es_dcb_read('dcb_enc');
SELECT es_forget('dcb_enc', (SELECT event_id FROM es_dcb_read('dcb_enc') WHERE position = 2));
SELECT position, data IS NULL AS data_gone, data_bytes IS NULL AS bytes_gone, tags FROM es_dcb_read('dcb_enc');
SELECT count(*) AS problems FROM es_verify_log('dcb_enc');

-- 8. The course-subscription example of the DCB specification (dcb.events):
-- each command reads its decision model with es_dcb_read and appends on the
-- condition that nothing it read has changed.
CREATE FUNCTION course_define(course text, capacity int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q jsonb := jsonb_build_array(jsonb_build_object('types', '["CourseDefined"]'::jsonb,
                                                    'tags', jsonb_build_array('course:' || course)));
    head bigint := es_dcb_head('dcb_course', q);
BEGIN
    IF EXISTS (SELECT FROM es_dcb_read('dcb_course', q)) THEN
        RAISE EXCEPTION 'course % already exists', course USING ERRCODE = 'P0001';
    END IF;
    RETURN es_dcb_append('dcb_course',
        jsonb_build_array(jsonb_build_object('type', 'CourseDefined',
            'data', jsonb_build_object('courseId', course, 'capacity', capacity),
            'tags', jsonb_build_array('course:' || course))),
        jsonb_build_object('fail_if_events_match', q, 'after', head));
END $$;

CREATE FUNCTION course_change_capacity(course text, capacity int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q jsonb := jsonb_build_array(jsonb_build_object('types', '["CourseDefined", "CourseCapacityChanged"]'::jsonb,
                                                    'tags', jsonb_build_array('course:' || course)));
    head bigint := 0;
    current int;
    e record;
BEGIN
    FOR e IN SELECT * FROM es_dcb_read('dcb_course', q) LOOP
        current := coalesce(e.data ->> 'capacity', e.data ->> 'newCapacity')::int;
        head := e.position;
    END LOOP;
    IF current IS NULL THEN
        RAISE EXCEPTION 'course % does not exist', course USING ERRCODE = 'P0001';
    ELSIF current = capacity THEN
        RAISE EXCEPTION 'course % already has a capacity of %', course, capacity USING ERRCODE = 'P0001';
    END IF;
    RETURN es_dcb_append('dcb_course',
        jsonb_build_array(jsonb_build_object('type', 'CourseCapacityChanged',
            'data', jsonb_build_object('courseId', course, 'newCapacity', capacity),
            'tags', jsonb_build_array('course:' || course))),
        jsonb_build_object('fail_if_events_match', q, 'after', head));
END $$;

CREATE FUNCTION course_subscribe(student text, course text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    -- the course's definition and capacity, its subscriptions, and the student's
    q jsonb := jsonb_build_array(
        jsonb_build_object('types', '["CourseDefined", "CourseCapacityChanged"]'::jsonb,
                           'tags', jsonb_build_array('course:' || course)),
        jsonb_build_object('types', '["StudentSubscribedToCourse"]'::jsonb,
                           'tags', jsonb_build_array('course:' || course)),
        jsonb_build_object('types', '["StudentSubscribedToCourse"]'::jsonb,
                           'tags', jsonb_build_array('student:' || student)));
    head bigint := 0;
    capacity int;
    course_subscriptions int := 0;
    student_subscriptions int := 0;
    already boolean := false;
    e record;
BEGIN
    FOR e IN SELECT * FROM es_dcb_read('dcb_course', q) LOOP
        head := e.position;
        IF e.type = 'CourseDefined' THEN
            capacity := (e.data ->> 'capacity')::int;
        ELSIF e.type = 'CourseCapacityChanged' THEN
            capacity := (e.data ->> 'newCapacity')::int;
        ELSE
            IF e.data ->> 'courseId' = course THEN
                course_subscriptions := course_subscriptions + 1;
                already := already OR e.data ->> 'studentId' = student;
            END IF;
            IF e.data ->> 'studentId' = student THEN
                student_subscriptions := student_subscriptions + 1;
            END IF;
        END IF;
    END LOOP;
    IF capacity IS NULL THEN
        RAISE EXCEPTION 'course % does not exist', course USING ERRCODE = 'P0001';
    ELSIF course_subscriptions >= capacity THEN
        RAISE EXCEPTION 'course % is fully booked', course USING ERRCODE = 'P0001';
    ELSIF already THEN
        RAISE EXCEPTION 'student % is already subscribed to course %', student, course USING ERRCODE = 'P0001';
    ELSIF student_subscriptions >= 5 THEN
        RAISE EXCEPTION 'student % is already subscribed to 5 courses', student USING ERRCODE = 'P0001';
    END IF;
    RETURN es_dcb_append('dcb_course',
        jsonb_build_array(jsonb_build_object('type', 'StudentSubscribedToCourse',
            'data', jsonb_build_object('studentId', student, 'courseId', course),
            'tags', jsonb_build_array('student:' || student, 'course:' || course))),
        jsonb_build_object('fail_if_events_match', q, 'after', head));
END $$;

SELECT es_create_application('dcb_course');
SELECT course_define('c1', 2);
SELECT course_define('c1', 3);                       -- exists
SELECT course_change_capacity('c0', 3);              -- no such course
SELECT course_change_capacity('c1', 2);              -- unchanged
SELECT course_subscribe('s1', 'c0');                 -- no such course
SELECT course_subscribe('s1', 'c1');
SELECT course_subscribe('s1', 'c1');                 -- already subscribed
SELECT course_subscribe('s2', 'c1');
SELECT course_subscribe('s3', 'c1');                 -- fully booked
SELECT course_change_capacity('c1', 3);
SELECT course_subscribe('s3', 'c1');
SELECT course_define('c' || i, 10) FROM generate_series(2, 6) AS i;
SELECT course_subscribe('s1', 'c' || i) FROM generate_series(2, 5) AS i;
SELECT course_subscribe('s1', 'c6');                 -- a sixth course
-- a decision taken on a stale read is refused by the condition
SELECT es_dcb_append('dcb_course',
    '[{"type": "StudentSubscribedToCourse", "data": {"studentId": "s9", "courseId": "c1"}, "tags": ["student:s9", "course:c1"]}]',
    '{"fail_if_events_match": [{"types": ["CourseDefined", "CourseCapacityChanged", "StudentSubscribedToCourse"], "tags": ["course:c1"]}], "after": 3}');
\echo :LAST_ERROR_SQLSTATE
SELECT position, type, data ->> 'studentId' AS student, data ->> 'courseId' AS course, tags
FROM es_dcb_read('dcb_course', '[{"tags": ["course:c1"]}]');
SELECT count(*) AS subscriptions_of_s1 FROM es_dcb_read('dcb_course', '[{"types": ["StudentSubscribedToCourse"], "tags": ["student:s1"]}]');

DROP FUNCTION course_define(text, int), course_change_capacity(text, int), course_subscribe(text, text);
