# The ordering properties on a hot standby: writers append on the primary
# while followers tail the log on a streaming standby, where es_select has no
# in-flight slots to look at and passes a gap only below the watermark that
# the primary's background worker publishes through WAL.  Every follower must
# see exactly the committed ids, in order (SERIALIZABLE is not allowed on a
# standby: its followers run REPEATABLE READ, so there are two levels there).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = es_node('primary', allows_streaming => 1);
$primary->start;
$primary->safe_psql('postgres', "CREATE EXTENSION $ES_EXT");
$primary->safe_psql('postgres', "SELECT es_create_application('stress')");

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

my ($rc, $out) = es_run_driver(
	writer_dsn          => $primary->connstr('postgres'),
	follower_dsn        => $standby->connstr('postgres'),
	app                 => 'stress',
	writers             => 16,
	duration            => 10,
	followers_per_level => 2,
	levels              => 'rc,rr,ser',
	standby             => undef);
is($rc, 0,
	'standby: every follower on the standby saw exactly the committed ids, in order, and every gap is an abort')
  or diag join("\n", grep { /VIOLATION|ERROR/ } split /\n/, $out);
like($out, qr/NOTE: SERIALIZABLE is not allowed on a hot standby/,
	'standby: SERIALIZABLE followers ran as REPEATABLE READ');
my $s = es_summary($out);
ok($s, 'standby: the driver printed its summary');
if ($s)
{
	cmp_ok($s->{result}{committed}, '>', 500, "standby: $s->{result}{committed} events committed");
	cmp_ok($s->{result}{missing}, '>', 0,
		"standby: the log has gaps ($s->{result}{missing} ids of aborted transactions)");
	my @f = values %{ $s->{followers} };
	is(scalar(@f), 6, 'standby: six followers');
	ok(!(grep { $_->{skipped_gaps} == 0 } @f), 'standby: every follower skipped permanent gaps');
	ok((grep { $_->{held_back} > 0 } @f),
		'standby: followers were held back at ids not yet below the watermark or still in flight');
}

# Once replay has caught up, the standby's log is the primary's.
$primary->wait_for_catchup($standby);
my $q_all = "SELECT string_agg(id::text, ',' ORDER BY id) FROM es_select('stress', 1, 1000000)";
my $q_table = "SELECT string_agg(notification_id::text, ',' ORDER BY notification_id) "
  . "FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'stress'";
my $committed = $primary->safe_psql('postgres', $q_table);
ok($committed ne '', 'standby: the primary has events');
is($standby->safe_psql('postgres', $q_all), $committed,
	'standby: es_select from 1 on the standby returns exactly the committed ids');
my $q_mark = "SELECT w.notification_id >= (SELECT max(notification_id) FROM es_stored_events) "
  . "FROM es_watermarks w JOIN es_applications a ON a.id = w.application_id WHERE a.name = 'stress'";
ok($committed ne '' && $standby->poll_query_until('postgres', $q_mark),
	'standby: the replayed watermark reaches the highest committed id');

# Again with a widened window between taking an id and indexing its tuple:
# on the standby only the watermark covers it.
like(es_widen_inflight_window($primary, 'widened'),
	qr/es_test_slow_idx.*es_stored_events_\d+_pkey/,
	'widened: a slow index is filled before the primary key');
($rc, $out) = es_run_driver(
	writer_dsn          => $primary->connstr('postgres'),
	follower_dsn        => $standby->connstr('postgres'),
	app                 => 'widened',
	%ES_WIDENED_LOAD,
	writers             => 16,
	duration            => 8,
	followers_per_level => 2,
	levels              => 'rc,rr',
	standby             => undef);
is($rc, 0, 'widened: every follower on the standby saw exactly the committed ids, in order')
  or diag join("\n", grep { /VIOLATION|ERROR/ } split /\n/, $out);
$s = es_summary($out);
ok($s && $s->{result}{committed} > 200,
	'widened: events committed (' . ($s ? $s->{result}{committed} : 'none') . ')');

# Tagged events (dcb.c) on the standby: read up to the watermark, as es_select.
$primary->safe_psql('postgres', q{
SELECT es_create_application('tagged');
SELECT es_dcb_append('tagged', '[{"type": "T", "data": 1, "tags": ["x", "y"]}, {"type": "U", "data": 2, "tags": ["y"]}]');
SELECT es_dcb_append('tagged', '[{"type": "T", "data": 3, "tags": ["x"]}]',
                     '{"fail_if_events_match": [{"tags": ["x"]}], "after": 1}');
});
$primary->wait_for_catchup($standby);
my $q_tagged_mark = "SELECT w.notification_id >= 3 FROM es_watermarks w "
  . "JOIN es_applications a ON a.id = w.application_id WHERE a.name = 'tagged'";
ok($standby->poll_query_until('postgres', $q_tagged_mark), 'tagged: the watermark reaches the tagged events');
my $q_x = q{SELECT string_agg(position || ':' || type, ',' ORDER BY position) FROM es_dcb_read('tagged', '[{"tags": ["x"]}]')};
is($standby->safe_psql('postgres', $q_x), $primary->safe_psql('postgres', $q_x),
	'tagged: es_dcb_read on the standby returns what the primary does');
is($standby->safe_psql('postgres', q{SELECT es_dcb_head('tagged', '[{"types": ["U"]}]')}), '2',
	'tagged: es_dcb_head on the standby');
my ($rc2, $out2, $err2) = $standby->psql('postgres',
	q{SELECT es_dcb_append('tagged', '[{"type": "T", "data": 4, "tags": ["x"]}]')});
like($err2, qr/read-only transaction/, 'tagged: es_dcb_append on the standby is refused (25006)');

$standby->stop;
$primary->stop;
done_testing();
