-- After the upgrade (and in the fresh database, whose output must be the
-- same): the API keeps working on the data recorded before.  Lines
-- "CHECK|<description>|t" are checks (the harness turns them into ok / not
-- ok); everything else is output compared with the fresh database's.
\pset null '(null)'
\pset format unaligned
\pset tuples_only on
\set a1 'a1000000-0000-4000-8000-000000000001'
\set a2 'a2000000-0000-4000-8000-000000000002'
\set a3 'a3000000-0000-4000-8000-000000000003'
\set a4 'a4000000-0000-4000-8000-000000000004'
\set b1 'b1000000-0000-4000-8000-000000000001'
CREATE FUNCTION pg_temp.sqlstate_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN '00000';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
-- A seal's gaps as a sorted bigint[] of ids, whichever way the version stores
-- them (0.1.0: bigint[]; 0.2.0: int8multirange): compares the information,
-- not the representation.
CREATE FUNCTION pg_temp.gap_ids(gaps text) RETURNS bigint[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN gaps ~ '[\[(]' THEN
        coalesce((SELECT array_agg(i ORDER BY i)
                  FROM regexp_matches(gaps, '([\[(])(\d+),(\d+)([\])])', 'g') m,
                       generate_series(m[2]::bigint + (m[1] = '(')::int, m[3]::bigint - (m[4] = ')')::int) i),
                 '{}')
    ELSE gaps::bigint[] END
$$;
-- The documented hash of an event (README, Integrity).
CREATE FUNCTION pg_temp.expected_hash(prev bytea, app text, id uuid, v bigint, topic text, state bytea)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256('es-event-v1'::bytea || prev
                  || int4send(octet_length(app)) || convert_to(app, 'UTF8')
                  || uuid_send(id) || int8send(v)
                  || int4send(octet_length(topic)) || convert_to(topic, 'UTF8')
                  || int4send(octet_length(state)) || state)
$$;

-- What was there before any new append (identical to before the upgrade:
-- the harness compares state.sql's outputs).
CREATE TEMP TABLE old_aggs AS
    SELECT a.name AS app, n.originator_id AS id, max(n.originator_version) AS v,
           es_head(a.name, n.originator_id) AS head, es_state(a.name, n.originator_id) AS state
    FROM es_applications a, LATERAL es_select(a.name, 1, 100000) n GROUP BY 1, 2;
CREATE TEMP TABLE old_seals AS
    SELECT DISTINCT ON (a.name) a.name AS app, s.seal_id, s.last_notification_id, s.digest
    FROM es_seals s JOIN es_applications a ON a.id = s.application_id ORDER BY a.name, s.seal_id DESC;
SELECT es_max_notification_id('shop') AS shop_max, es_max_notification_id('billing') AS billing_max,
       es_tracking_position('billing', 'shop') AS billing_pos \gset

\echo == sealing with nothing new returns the last seal
SELECT 'CHECK|es_seal with nothing new returns the last seal made before the upgrade|'
       || (s.seal_id = o.seal_id AND s.digest = o.digest AND s.last_notification_id = o.last_notification_id)
FROM es_seal('billing') s, old_seals o WHERE o.app = 'billing';

\echo == appends in every form continue the id sequence and the chains
SELECT es_append('shop', :'a1', 7, 'shop:Cart.ItemAdded', convert_to('{"item": "yuzu"}', 'UTF8')) AS id1 \gset
SELECT es_append('shop', ROW(:'a2', 4, 'shop:Cart.ItemAdded', convert_to('{"item": "oat"}', 'UTF8'))::es_event) AS id2 \gset
SELECT array_agg(x) AS ids FROM es_append('shop', ARRAY[
    ROW(:'a3', 4, 'shop:Cart.ItemRemoved', convert_to('{"item": "fig"}', 'UTF8')),
    ROW(:'a4', 1, 'shop:Cart.Created', convert_to('{"owner": "dee"}', 'UTF8')),
    ROW(:'a4', 2, 'shop:Cart.ItemAdded', convert_to('{"item": "rye"}', 'UTF8'))]::es_event[]) x \gset
\echo :id1 :id2 :ids
SELECT 'CHECK|es_append(fields) after the upgrade takes the next id after the old ones|' || (:id1 = :shop_max + 1);
SELECT 'CHECK|es_append(es_event) takes the next id|' || (:id2 = :id1 + 1);
SELECT 'CHECK|es_append(es_event[]) takes the next ids in input order|'
       || (:'ids'::bigint[] = ARRAY[:id2 + 1, :id2 + 2, :id2 + 3]::bigint[]);
BEGIN;
SELECT es_append('shop', :'a1', 8, 'shop:Cart.ItemAdded', convert_to('{"item": "ghost"}', 'UTF8')) AS gap \gset
ROLLBACK;
SELECT es_append('shop', :'a1', 8, 'shop:Cart.ItemRemoved', convert_to('{"item": "yuzu"}', 'UTF8')) AS id3 \gset
\echo :gap :id3
SELECT 'CHECK|a rolled-back append after the upgrade leaves a gap that readers skip|'
       || (:gap = :id2 + 4 AND :id3 = :gap + 1
           AND (SELECT array_agg(id ORDER BY id) FROM es_select('shop', :shop_max + 1, 100))
               = ARRAY[:id1, :id2, :id2 + 1, :id2 + 2, :id2 + 3, :id3]::bigint[]);
SELECT 'CHECK|an append of an existing version still fails with 23505 and takes no id|'
       || (pg_temp.sqlstate_of(format('SELECT es_append(%L, %L::uuid, 8, %L, %L::bytea)',
                                      'shop', :'a1', 'shop:Cart.ItemAdded', '{}')) = '23505'
           AND es_max_notification_id('shop') = :id3);

\echo == tracked appends continue from the recorded position
SELECT array_agg(x) AS tids FROM es_append('billing',
    ARRAY[ROW(:'b1', 3, 'billing:Account.Charged', convert_to('{"amount": 5}', 'UTF8'))]::es_event[], 'shop', :id3) x \gset
\echo :tids
SELECT 'CHECK|es_append(tracked) takes the next id and records the position|'
       || (:'tids'::bigint[] = ARRAY[:billing_max + 1]::bigint[] AND es_tracking_position('billing', 'shop') = :id3);
SELECT 'CHECK|a tracking position not above the one recorded before the upgrade fails with 23505|'
       || (pg_temp.sqlstate_of(format('SELECT es_append(%L, %L::es_event[], %L, %s)', 'billing', '{}', 'shop', :billing_pos)) = '23505');

\echo == the new events chain on the old heads
SELECT o.app, o.id, o.v + 1, e.event_hash = pg_temp.expected_hash(o.head, o.app, o.id, e.originator_version, e.topic, e.state)
FROM old_aggs o, LATERAL es_events(o.app, o.id, gt => o.v, max_count => 1) e ORDER BY 1, 2;
SELECT 'CHECK|the first new event of every old aggregate chains on its head from before the upgrade|'
       || bool_and(e.event_hash = pg_temp.expected_hash(o.head, o.app, o.id, e.originator_version, e.topic, e.state)
                   AND e.originator_version = o.v + 1)
FROM old_aggs o, LATERAL es_events(o.app, o.id, gt => o.v, max_count => 1) e;
SELECT 'CHECK|every event, old and new, hashes as documented, chained on its predecessor|' || bool_and(chained)
FROM (SELECT e.event_hash = pg_temp.expected_hash(
                 coalesce(lag(e.event_hash) OVER w, '\x0000000000000000000000000000000000000000000000000000000000000000'),
                 a.name, e.originator_id, e.originator_version, e.topic, e.state) AS chained
      FROM es_applications a, LATERAL es_select(a.name, 1, 100000) e
      WINDOW w AS (PARTITION BY a.name, e.originator_id ORDER BY e.originator_version)) c;

\echo == verification
SELECT a.name, n.originator_id, (es_verify(a.name, n.originator_id)).*
FROM es_applications a, LATERAL (SELECT DISTINCT originator_id FROM es_select(a.name, 1, 100000)) n ORDER BY 1, 2;
SELECT 'CHECK|es_verify(app, id) is ok for every aggregate|' || bool_and((es_verify(a.name, n.originator_id)).ok)
FROM es_applications a, LATERAL (SELECT DISTINCT originator_id FROM es_select(a.name, 1, 100000)) n;
SELECT 'CHECK|es_verify(app, id, head kept before the upgrade) is ok|' || bool_and((es_verify(o.app, o.id, o.head)).ok)
FROM old_aggs o;
SELECT seal_id, after_notification_id, last_notification_id, event_count, pg_temp.gap_ids(gaps::text), encode(digest, 'hex') FROM es_seal('shop');
SELECT 'CHECK|a new seal chains on the last seal made before the upgrade and covers the new events|'
       || (s.previous_digest = o.digest AND s.seal_id = o.seal_id + 1 AND s.last_notification_id = :id3
           AND pg_temp.gap_ids(s.gaps::text) = ARRAY[:gap]::bigint[])
FROM es_seals s JOIN es_applications a ON a.id = s.application_id AND a.name = 'shop', old_seals o
WHERE o.app = 'shop' AND s.seal_id = (SELECT max(seal_id) FROM es_seals WHERE application_id = a.id);
SELECT a.name, p.* FROM es_applications a, LATERAL es_verify_log(a.name) p;
SELECT 'CHECK|es_verify_log returns no rows for either application|'
       || ((SELECT count(*) FROM es_applications a, LATERAL es_verify_log(a.name)) = 0);

\echo == states: the old versions unchanged, the new ones folded
SELECT o.app, o.id, es_state(o.app, o.id) FROM old_aggs o ORDER BY 1, 2;
SELECT 'CHECK|es_state at each old version equals the state before the new appends|'
       || bool_and(es_state(o.app, o.id, o.v) = o.state) FROM old_aggs o;
SELECT 'CHECK|es_state equals es_replay over es_events for every aggregate|'
       || bool_and(es_state(a.name, n.originator_id)
                   = (SELECT es_replay(a.name, e) FROM es_events(a.name, n.originator_id) e))
FROM es_applications a, LATERAL (SELECT DISTINCT originator_id FROM es_select(a.name, 1, 100000)) n;
SELECT es_snapshot('shop', :'a1') AS snap \gset
SELECT es_define_fold('shop', 'shop:Cart.Emptied', '[{"op": "set", "path": "items", "value": []}]');
SELECT es_append('shop', :'a1', 9, 'shop:Cart.Emptied', '{}');
SELECT 'CHECK|es_snapshot, es_define_fold and es_state work on old and new events|'
       || (:snap = 8 AND es_state('shop', :'a1') = '{"items": [], "owner": "ann"}'
           AND es_state('shop', :'a1', 8) = (SELECT es_replay('shop', e) FROM es_events('shop', :'a1', lte => 8) e));
SELECT es_state('billing', :'b1');
SELECT 'CHECK|the fold function set before the upgrade is still used|'
       || (es_state('billing', :'b1') = '{"cart": "a1", "total": 17}');

\echo == following
SELECT 'CHECK|es_wait returns the highest readable id|' || (es_wait('shop', :shop_max, 5000) = es_max_notification_id('shop'));
SELECT 'CHECK|es_wait times out with NULL when nothing is new|' || (es_wait('billing', es_max_notification_id('billing'), 50) IS NULL);

\echo == a new application after the upgrade
SELECT es_create_application('after');
SELECT es_append('after', :'a1', 1, 'after:Created', '{}') AS after_id \gset
SELECT 'CHECK|a new application numbers its log from 1|' || (:after_id = 1);
