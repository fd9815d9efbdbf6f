# What the extension says when it cannot append: without
# shared_preload_libraries (reads still work), past
# eventsourcing.max_applications, and on a hot standby; and that its worker
# does not keep DROP DATABASE from working.
use strict;
use warnings;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# 1. Not preloaded: CREATE EXTENSION and reads work, es_append says what to do.
my $plain = PostgreSQL::Test::Cluster->new('not_preloaded');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', "CREATE EXTENSION $ES_EXT; SELECT es_create_application('a')");
is($plain->safe_psql('postgres', "SELECT count(*) FROM es_select('a', 1, 10)"), '0',
	'without preloading, es_select works');
my ($ret, $out, $err) = $plain->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT es_append('a', gen_random_uuid(), 1, 'T', '')");
isnt($ret, 0, 'without preloading, es_append fails');
like($err, qr/55000: es_append requires eventsourcing to be loaded via shared_preload_libraries/,
	'... with SQLSTATE 55000 and a clear message');
like($err, qr/HINT:  Add eventsourcing to shared_preload_libraries/, '... and a hint');
is($plain->safe_psql('postgres', "SELECT count(*) FROM es_stored_events"), '0', '... and nothing written');
$plain->stop;

# 2. More applications appended to than eventsourcing.max_applications.
my $node = es_node('few_apps', allows_streaming => 1);
$node->append_conf('postgresql.conf', "eventsourcing.max_applications = 16\n");
$node->start;
$node->safe_psql('postgres', "CREATE EXTENSION $ES_EXT");
$node->safe_psql('postgres',
	"SELECT es_create_application('app' || i) FROM generate_series(1, 40) i");
my $appended = 0;
for my $i (1 .. 40)
{
	my ($r, $o, $e) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT es_append('app$i', gen_random_uuid(), 1, 'T', '')");
	if ($r != 0)
	{
		like($e, qr/53400: too many applications/, "application $i: SQLSTATE 53400");
		like($e, qr/Raise eventsourcing.max_applications \(currently 16\)/, '... naming the setting');
		last;
	}
	$appended++;
}
is($appended, 16, 'exactly eventsourcing.max_applications applications could be appended to');
cmp_ok($appended, '<', 40, 'the limit is enforced');

# 3. A hot standby reads, and refuses appends as a read-only server.
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', "SELECT count(*) FROM es_select('app1', 1, 10)"), '1',
	'the standby reads the log');
($ret, $out, $err) = $standby->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT es_append('app1', gen_random_uuid(), 1, 'T', '')");
like($err, qr/25006: cannot execute es_append\(\) in a read-only transaction/,
	'es_append on a standby: SQLSTATE 25006');
# 4. The database's background worker does not keep DROP DATABASE from working:
# it leaves after two idle seconds (DROP DATABASE waits up to five).
my $dnode = es_node('dropdb');
$dnode->start;
$dnode->safe_psql('postgres', 'CREATE DATABASE dropme');
$dnode->safe_psql('dropme',
	"CREATE EXTENSION $ES_EXT; SELECT es_create_application('x'); SELECT es_append('x', gen_random_uuid(), 1, 'T', '')");
ok($dnode->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'eventsourcing worker' AND datname = 'dropme'"),
	'an append starts the database\'s worker');
($ret, $out, $err) = $dnode->psql('postgres', 'DROP DATABASE dropme');
is($ret, 0, 'DROP DATABASE works all the same') or diag($err);

done_testing();
