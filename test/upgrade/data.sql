-- Records data with the 0.1.0 API (run in `upgraded` under 0.1.0, and in
-- `fresh` under the new version: the outputs must be the same).  Two
-- applications: shop (carts a1, a2, a3) and billing (accounts b1, b2), which
-- follows shop with tracked appends.  Every append form, a rolled-back append
-- and a rolled-back subtransaction (permanent gaps), folds, snapshots, seals.
-- Every state is JSON so that every aggregate can be folded.
\pset null '(null)'
\pset format unaligned
\pset tuples_only on
\set a1 'a1000000-0000-4000-8000-000000000001'
\set a2 'a2000000-0000-4000-8000-000000000002'
\set a3 'a3000000-0000-4000-8000-000000000003'
\set b1 'b1000000-0000-4000-8000-000000000001'
\set b2 'b2000000-0000-4000-8000-000000000002'
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
-- runs a statement that must fail and returns its SQLSTATE (00000 if it did not)
CREATE FUNCTION pg_temp.sqlstate_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN '00000';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;

SELECT es_create_application('shop');
SELECT es_create_application('billing');
SELECT es_create_application('shop');            -- exists: does nothing

\echo -- es_append(application, originator_id, originator_version, topic, state)
SELECT es_append('shop', :'a1', 1, 'shop:Cart.Created', convert_to('{"owner": "ann"}', 'UTF8'));
\echo -- es_append(application, es_event), a first version 0
SELECT es_append('shop', ROW(:'a2', 0, 'shop:Cart.Created', convert_to('{"owner": "bob"}', 'UTF8'))::es_event);
\echo -- es_append(application, es_event[]): several aggregates in one call
SELECT es_append('shop', ARRAY[
    ROW(:'a1', 2, 'shop:Cart.ItemAdded', convert_to('{"item": "apple"}', 'UTF8')),
    ROW(:'a2', 1, 'shop:Cart.ItemAdded', convert_to('{"item": "pear"}', 'UTF8')),
    ROW(:'a3', 1, 'shop:Cart.Created', convert_to('{"owner": "cy"}', 'UTF8')),
    ROW(:'a1', 3, 'shop:Cart.ItemAdded', convert_to('{"item": "plum"}', 'UTF8'))]::es_event[]);
\echo -- a rolled-back append: its id is a permanent gap
BEGIN;
SELECT es_append('shop', :'a3', 2, 'shop:Cart.ItemAdded', convert_to('{"item": "ghost"}', 'UTF8'));
ROLLBACK;
SELECT es_append('shop', :'a3', 2, 'shop:Cart.ItemAdded', convert_to('{"item": "fig"}', 'UTF8'));
\echo -- a rolled-back subtransaction: another gap
BEGIN;
SAVEPOINT s;
SELECT es_append('shop', :'a2', 2, 'shop:Cart.ItemAdded', convert_to('{"item": "ghost"}', 'UTF8'));
ROLLBACK TO SAVEPOINT s;
SELECT es_append('shop', :'a2', 2, 'shop:Cart.ItemRemoved', convert_to('{"item": "pear"}', 'UTF8'));
COMMIT;
\echo -- a refused append (conflict) takes no id
SELECT pg_temp.sqlstate_of(format('SELECT es_append(%L, %L::uuid, 3, %L, %L::bytea)',
    'shop', :'a1', 'shop:Cart.ItemAdded', convert_to('{"item": "late"}', 'UTF8')));
SELECT es_append('shop', :'a1', 4, 'shop:Cart.ItemRemoved', convert_to('{"item": "apple"}', 'UTF8'));

\echo -- folds and snapshots
SELECT es_define_fold('shop', 'shop:Cart.Created',
    '[{"op": "set", "path": "owner", "from": "owner"}, {"op": "set", "path": "items", "value": []}]');
SELECT es_define_fold('shop', 'shop:Cart.ItemAdded', '[{"op": "append", "path": "items", "from": "item"}]');
SELECT es_define_fold('shop', 'shop:Cart.ItemRemoved', '[{"op": "remove", "path": "items", "from": "item"}]');
SELECT es_set_snapshot_every('shop', 2);
SELECT es_state('shop', :'a1');                  -- folds 4 events: stores a snapshot
SELECT es_snapshot('shop', :'a2');
SELECT es_snapshot('shop', :'a3');

\echo -- a seal, then more events
SELECT seal_id, after_notification_id, last_notification_id, event_count, pg_temp.gap_ids(gaps::text), encode(digest, 'hex')
FROM es_seal('shop');

\echo -- billing follows shop: tracked appends
SELECT es_append('billing', ARRAY[ROW(:'b1', 1, 'billing:Account.Opened', convert_to('{"cart": "a1", "total": 0}', 'UTF8'))]::es_event[],
                 'shop', 3);
SELECT es_append('billing', ARRAY[
    ROW(:'b1', 2, 'billing:Account.Charged', convert_to('{"amount": 12}', 'UTF8')),
    ROW(:'b2', 1, 'billing:Account.Opened', convert_to('{"cart": "a2", "total": 0}', 'UTF8'))]::es_event[],
                 'shop', 6);
\echo -- the position alone
SELECT es_append('billing', '{}'::es_event[], 'shop', 7);
SELECT es_tracking_position('billing', 'shop');
\echo -- a stale position is refused
SELECT pg_temp.sqlstate_of($$SELECT es_append('billing', '{}'::es_event[], 'shop', 7)$$);
SELECT es_append('billing', :'b2', 2, 'billing:Account.Charged', convert_to('{"amount": 3}', 'UTF8'));

\echo -- a fold function for billing
CREATE FUNCTION billing_fold(state jsonb, topic text, event jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE topic
        WHEN 'billing:Account.Opened' THEN event
        WHEN 'billing:Account.Charged' THEN jsonb_set(state, '{total}', to_jsonb((state->>'total')::numeric + (event->>'amount')::numeric))
        ELSE state END
$$;
SELECT es_set_fold_function('billing', 'billing_fold');
SELECT es_state('billing', :'b1');

\echo -- more shop events after the seal (covered only by their chains until the next seal)
SELECT es_append('shop', :'a3', 3, 'shop:Cart.ItemAdded', convert_to('{"item": "date"}', 'UTF8'));
SELECT es_append('shop', :'a1', 5, 'shop:Cart.ItemAdded', convert_to('{"item": "kiwi"}', 'UTF8'));
SELECT seal_id, after_notification_id, last_notification_id, event_count, pg_temp.gap_ids(gaps::text), encode(digest, 'hex')
FROM es_seal('shop');
SELECT es_append('shop', :'a1', 6, 'shop:Cart.ItemAdded', convert_to('{"item": "lime"}', 'UTF8'));
SELECT es_append('shop', :'a2', 3, 'shop:Cart.ItemAdded', convert_to('{"item": "nut"}', 'UTF8'));
\echo -- billing sealed last: nothing after its seal
SELECT seal_id, after_notification_id, last_notification_id, event_count, pg_temp.gap_ids(gaps::text), encode(digest, 'hex')
FROM es_seal('billing');
SELECT es_state('shop', :'a1');
