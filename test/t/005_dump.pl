# pg_dump keeps the data: events, applications (and their id sequence),
# tracking positions, folds, snapshots and seals survive a dump and restore,
# the restored log verifies, and appends go on with ids above the old ones.
use strict;
use warnings;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = es_node('dump');
$node->start;
$node->safe_psql('postgres', qq{
CREATE DATABASE src;
});
$node->safe_psql('src', qq{
CREATE EXTENSION $ES_EXT;
SELECT es_create_application('a');
SELECT es_create_application('b');
SELECT es_append('a', gen_random_uuid(), 1, 'Created', convert_to('{"n": ' || i || '}', 'UTF8')) FROM generate_series(1, 20) i;
SELECT es_append('b', ARRAY[]::es_event[], 'a', 20);
SELECT es_define_fold('a', 'Created', '[{"op": "set", "path": "n", "from": "n"}]');
SELECT es_snapshot('a', (SELECT originator_id FROM es_select('a', 1, 1)));
SELECT es_seal('a');
SELECT es_create_application('d');
SELECT es_dcb_append('d', '[{"type": "T", "data": {"i": 1}, "tags": ["x", "y"]}, {"type": "U", "data_base64": "AAE=", "tags": ["y"]}]');
SELECT es_dcb_append('d', '[{"type": "T", "data": {"i": 2}, "tags": ["x"]}]');
});
my $before = $node->safe_psql('src', q{
SELECT string_agg(id || ':' || encode(event_hash, 'hex'), ',' ORDER BY id) FROM es_select('a', 1, 1000)});

my $tagged_before = $node->safe_psql('src', q{
SELECT string_agg(position || ':' || type || ':' || tags::text || ':' || encode(data_bytes, 'hex'), ',' ORDER BY position)
FROM es_dcb_read('d', '[{"tags": ["y"]}, {"types": ["T"]}]')});

my $dump = $node->basedir . '/src.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('src'), '-f', $dump ], 'pg_dump of a database with the extension');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('dst'), '-f', $dump ],
	'the dump restores');

is($node->safe_psql('dst', q{
SELECT string_agg(id || ':' || encode(event_hash, 'hex'), ',' ORDER BY id) FROM es_select('a', 1, 1000)}),
	$before, 'the notification log, with its hashes, is the same');
is($node->safe_psql('dst', "SELECT count(*) FROM es_verify_log('a')"), '0', 'the restored log verifies against its seal');
is($node->safe_psql('dst', "SELECT es_tracking_position('b', 'a')"), '20', 'tracking positions are kept');
is($node->safe_psql('dst', "SELECT es_state('a', (SELECT originator_id FROM es_select('a', 1, 1)))::text"),
	'{"n": 1}', 'folds and snapshots are kept');
is($node->safe_psql('dst', q{
SELECT string_agg(position || ':' || type || ':' || tags::text || ':' || encode(data_bytes, 'hex'), ',' ORDER BY position)
FROM es_dcb_read('d', '[{"tags": ["y"]}, {"types": ["T"]}]')}),
	$tagged_before, 'tagged events and their index are kept');
is($node->safe_psql('dst', q{SELECT count(*) FROM es_verify_log('d')}), '0', 'tagged events verify after the restore');
my ($rc, $out, $err) = $node->psql('dst', q{SELECT es_dcb_append('d', '[{"type": "T", "data": 3, "tags": ["x"]}]',
	'{"fail_if_events_match": [{"tags": ["x"]}], "after": 1}')});
like($err, qr/position 3 of application "d" matches it/, 'a condition checks the restored index');
is($node->safe_psql('dst', q{SELECT es_dcb_append('d', '[{"type": "T", "data": 3, "tags": ["x"]}]',
	'{"fail_if_events_match": [{"tags": ["x"]}], "after": 3}')}), '4', 'and a condition that holds appends after the restored positions');
$node->safe_psql('dst', "SELECT es_create_application('c')");
is($node->safe_psql('dst', "SELECT count(*) FROM es_applications"), '4',
	'a new application gets a new id (the id sequence is dumped too)');
is($node->safe_psql('dst', "SELECT es_append('a', gen_random_uuid(), 1, 'Created', '{}')"), '21',
	'appends go on after the highest restored id');
done_testing();
