-- Everything the API says about the recorded data, in a deterministic text
-- form.  Run before and after the upgrade (psql -v times=on: with the recorded
-- timestamps, which must survive the upgrade too) and in the fresh database
-- (times=off: timestamps differ between databases, nothing else may).
-- Read-only: es_state may store snapshots, so it all runs in a transaction
-- that is rolled back.  The snapshots themselves (es_snapshots) are not
-- compared: they are a cache, which an upgrade may drop (0.2.0's does) and
-- es_state rebuilds; what es_state returns at every version is compared.
\pset null '(null)'
\pset format unaligned
\pset tuples_only on
\if :times
\set t_event ', n.recorded_at'
\set t_seal ', s.sealed_at'
\set t_app ', a.created_at'
\else
\set t_event ''
\set t_seal ''
\set t_app ''
\endif
BEGIN;
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
CREATE TEMP TABLE aggs ON COMMIT DROP AS
    SELECT DISTINCT a.name AS app, n.originator_id AS id
    FROM es_applications a, LATERAL es_select(a.name, 1, 100000) n;

\echo == applications
SELECT a.id, a.name, a.fold_function, a.fold_generation, a.snapshot_every :t_app
FROM es_applications a ORDER BY a.name;
\echo == folds
SELECT a.name, f.topic, f.operations FROM es_folds f JOIN es_applications a ON a.id = f.application_id ORDER BY 1, 2;
\echo == seals
SELECT a.name, s.seal_id, s.after_notification_id, s.last_notification_id, s.event_count, pg_temp.gap_ids(s.gaps::text),
       encode(s.previous_digest, 'hex'), encode(s.digest, 'hex') :t_seal
FROM es_seals s JOIN es_applications a ON a.id = s.application_id ORDER BY 1, 2;
\echo == es_max_notification_id, es_channel
SELECT a.name, es_max_notification_id(a.name), es_channel(a.name) FROM es_applications a ORDER BY 1;
\echo == es_tracking_position
SELECT a.name, u.name, es_tracking_position(a.name, u.name) FROM es_applications a, es_applications u ORDER BY 1, 2;
\echo == es_select: the whole log
SELECT a.name, n.id, n.originator_id, n.originator_version, n.topic, convert_from(n.state, 'UTF8'),
       encode(n.event_hash, 'hex') :t_event
FROM es_applications a, LATERAL es_select(a.name, 1, 100000) n ORDER BY 1, 2;
\echo == es_select: pages, stop, topics, consumer groups
SELECT a.name, 'page', array_agg(n.id ORDER BY n.id) FROM es_applications a, LATERAL es_select(a.name, 3, 4) n GROUP BY 1 ORDER BY 1;
SELECT a.name, 'stop', array_agg(n.id ORDER BY n.id) FROM es_applications a, LATERAL es_select(a.name, 2, 100, stop => 9) n GROUP BY 1 ORDER BY 1;
SELECT a.name, 'topics', array_agg(n.id ORDER BY n.id)
FROM es_applications a, LATERAL es_select(a.name, 1, 100, topics => ARRAY['shop:Cart.ItemAdded', 'billing:Account.Opened']) n
GROUP BY 1 ORDER BY 1;
SELECT a.name, 'member ' || m, array_agg(n.id ORDER BY n.id)
FROM es_applications a, generate_series(0, 2) m, LATERAL es_select(a.name, 1, 100, group_member => m, group_size => 3) n
GROUP BY 1, 2 ORDER BY 1, 2;
\echo == aggregates: head, partition, verification
SELECT g.app, g.id, encode(es_head(g.app, g.id), 'hex'), es_partition(g.id, 3), v.*,
       (es_verify(g.app, g.id, es_head(g.app, g.id))).ok AS own_head_ok
FROM aggs g, LATERAL es_verify(g.app, g.id) v ORDER BY 1, 2;
\echo == es_events: every event, and historical, descending, limited reads
SELECT g.app, g.id, e.originator_version, e.topic, convert_from(e.state, 'UTF8'), encode(e.event_hash, 'hex')
FROM aggs g, LATERAL es_events(g.app, g.id) e ORDER BY 1, 2, 3;
SELECT g.app, g.id, 'gt 1 lte 3', array_agg(e.originator_version ORDER BY e.originator_version)
FROM aggs g, LATERAL es_events(g.app, g.id, gt => 1, lte => 3) e GROUP BY 1, 2 ORDER BY 1, 2;
SELECT g.app, g.id, 'descending, 2', array_agg(e.originator_version)
FROM aggs g, LATERAL es_events(g.app, g.id, descending => true, max_count => 2) e GROUP BY 1, 2 ORDER BY 1, 2;
\echo == es_state at every version, es_replay in its three forms
SELECT g.app, g.id, e.originator_version, es_state(g.app, g.id, e.originator_version)
FROM aggs g, LATERAL es_events(g.app, g.id) e ORDER BY 1, 2, 3;
SELECT g.app, g.id, es_state(g.app, g.id),
       (SELECT es_replay(g.app, e) FROM es_events(g.app, g.id) e),
       (SELECT es_replay(g.app, e.originator_id, e.originator_version, e.topic, e.state) FROM es_events(g.app, g.id) e),
       (SELECT es_replay(g.app, e, 'billing_fold') FROM es_events(g.app, g.id) e)
FROM aggs g ORDER BY 1, 2;
\echo == es_verify_log
SELECT a.name, p.* FROM es_applications a, LATERAL es_verify_log(a.name) p ORDER BY 1, 2, 3, 4, 5, 6;
ROLLBACK;
