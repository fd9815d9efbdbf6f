// JSON states in and out of the extension through node-postgres, the way a
// Node.js application would use it: es_append_json with a JS object as the
// jsonb parameter (no escaping by hand), es_jsonb to read states back, a
// conflict as SQLSTATE 23505.  Run by test/scripts/test.sh:
//   ES_TEST_DSN=postgresql://... node --test test/client/node/json_test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pg from 'pg';

const app = `node_${randomUUID().slice(0, 8)}`;
let client;

before(async () => {
  client = new pg.Client({ connectionString: process.env.ES_TEST_DSN });
  await client.connect();
  await client.query('CREATE EXTENSION IF NOT EXISTS eventsourcing');
  await client.query('SELECT es_create_application($1)', [app]);
});

after(async () => { await client.end(); });

const tricky = {
  name: 'Zoé \\ "the" \n dog 🐕',
  path: 'C:\\dogs\\zoe',
  tags: ['a\tb', 'ü', ''],
  nested: { unicode: '\u00e9\u4e2d\u6587', quote: "it's" },
};

test('one JSON event goes in and comes out intact', async () => {
  const dog = randomUUID();
  const { rows } = await client.query(
    'SELECT es_append_json($1, $2, 1, $3, $4::jsonb) AS id', [app, dog, 'Dog.Registered', JSON.stringify(tricky)]);
  assert.ok(Number(rows[0].id) >= 1);
  const read = await client.query(
    'SELECT es_jsonb(state) AS state FROM es_events($1, $2)', [app, dog]);
  assert.deepEqual(read.rows[0].state, tricky);
});

test('a JSON array of events is appended atomically, ids in order', async () => {
  const dog = randomUUID();
  const events = [
    { originator_id: dog, originator_version: 1, topic: 'Dog.Registered', state: { name: 'Fido' } },
    { originator_id: dog, originator_version: 2, topic: 'Dog.TrickAdded', state: { trick: 'roll\nover' } },
    { originator_id: dog, originator_version: 3, topic: 'Dog.TrickAdded', state: { trick: 'fetch "ball"' } },
  ];
  const { rows } = await client.query('SELECT es_append_json($1, $2::jsonb) AS id', [app, JSON.stringify(events)]);
  const ids = rows.map((r) => Number(r.id));
  assert.equal(ids.length, 3);
  assert.deepEqual(ids, [ids[0], ids[0] + 1, ids[0] + 2]);
  const read = await client.query(
    'SELECT id, topic, es_jsonb(state) AS state FROM es_select($1, $2, 10)', [app, ids[0]]);
  assert.deepEqual(read.rows.map((r) => r.state), events.map((e) => e.state));
  const state = await client.query("SELECT es_state($1, $2) AS s", [app, dog]);
  assert.equal(state.rows[0].s.trick, 'fetch "ball"');
});

test('a conflict is SQLSTATE 23505 and records nothing', async () => {
  const dog = randomUUID();
  await client.query('SELECT es_append_json($1, $2, 1, $3, $4::jsonb)', [app, dog, 'Dog.Registered', '{"name": "Rex"}']);
  const before = await client.query('SELECT es_max_notification_id($1) AS m', [app]);
  await assert.rejects(
    client.query('SELECT es_append_json($1, $2, 1, $3, $4::jsonb)', [app, dog, 'Dog.Registered', '{"name": "Rex"}']),
    (err) => err.code === '23505');
  const after = await client.query('SELECT es_max_notification_id($1) AS m', [app]);
  assert.equal(after.rows[0].m, before.rows[0].m);
});
