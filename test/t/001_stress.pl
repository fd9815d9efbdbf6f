# The ordering properties under load, on one server: 16 writers appending in
# transactions of every shape (batches, conflicts on hot aggregates,
# rollbacks, transactions held open, savepoints rolled back, prepared
# transactions) while followers in READ COMMITTED, REPEATABLE READ and
# SERIALIZABLE tail the log with es_select.  Every follower must see exactly
# the committed ids, in order; the ids missing from the log must all be ids
# of aborted transactions.  test/stress/ordering_stress.py does the work.
#
# Then a self-check of the test's power: the same load with followers that
# ignore gaps (a plain scan of the table) must be caught skipping ids.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = es_node('primary');
$node->start;
$node->safe_psql('postgres', "CREATE EXTENSION $ES_EXT");
$node->safe_psql('postgres', "SELECT es_create_application('stress')");

my ($rc, $out) = es_run_driver(
	writer_dsn          => $node->connstr('postgres'),
	app                 => 'stress',
	writers             => 16,
	duration            => 10,
	followers_per_level => 2,
	levels              => 'rc,rr,ser');
is($rc, 0, 'stress: every follower saw exactly the committed ids, in order, and every gap is an abort')
  or diag join("\n", grep { /VIOLATION|ERROR/ } split /\n/, $out);
my $s = es_summary($out);
ok($s, 'stress: the driver printed its summary');
if ($s)
{
	my $w = $s->{writers};
	cmp_ok($s->{result}{committed}, '>', 500, "stress: $s->{result}{committed} events committed");
	ok($w->{conflicts} > 0 && $w->{rolled_back} > 0 && $w->{savepoints} > 0
		  && $w->{held} > 0 && $w->{batches} > 0 && $w->{prepared} > 0,
		"stress: the load had conflicts ($w->{conflicts}), rollbacks ($w->{rolled_back}), "
		  . "savepoints ($w->{savepoints}), held transactions ($w->{held}), "
		  . "batches ($w->{batches}) and prepared transactions ($w->{prepared})");
	cmp_ok($s->{result}{missing}, '>', 0,
		"stress: the log has gaps ($s->{result}{missing} ids of aborted transactions)");
	my @f = values %{ $s->{followers} };
	is(scalar(@f), 6, 'stress: six followers, two per isolation level');
	ok(!(grep { $_->{skipped_gaps} == 0 } @f), 'stress: every follower skipped permanent gaps');
	ok((grep { $_->{held_back} > 0 } @f),
		'stress: followers were held back at ids still in flight');
}

$node->safe_psql('postgres', q{
	CREATE VIEW es_events_of_stress AS SELECT e.* FROM es_stored_events e
		JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'stress'});

# The log as a whole, read again now that nothing is in flight.
my $committed = $node->safe_psql('postgres',
	"SELECT count(*) FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'stress'");
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select('stress', 1, 1000000)"),
	$committed, 'stress: es_select from 1 returns every committed event');

# Conflicting writers of the hot aggregates never both passed the version
# check, and each chained to the event that really came before (appends hold
# an aggregate's lock only from the check to the insert, then later writers
# wait for their transaction: append.c).
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT originator_id FROM es_events_of_stress GROUP BY originator_id
		HAVING count(*) <> max(originator_version) - min(originator_version) + 1) s}),
	'0', 'stress: every aggregate\'s versions follow each other');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT DISTINCT originator_id FROM es_events_of_stress) g,
		LATERAL es_verify('stress', g.originator_id) v WHERE NOT v.ok}),
	'0', 'stress: every aggregate\'s hash chain verifies');
cmp_ok($node->safe_psql('postgres', q{
	SELECT max(n) FROM (SELECT count(*) n FROM es_events_of_stress GROUP BY originator_id) s}),
	'>', 10, 'stress: some aggregates were hot (more than 10 events)');

# Again with a widened window between taking an id and indexing its tuple,
# which only the writers' in-flight slots cover (rule (a) of ordering.c).
like(es_widen_inflight_window($node, 'widened'),
	qr/es_test_slow_idx.*es_stored_events_\d+_pkey/,
	'widened: a slow index is filled before the primary key');
($rc, $out) = es_run_driver(
	writer_dsn          => $node->connstr('postgres'),
	app                 => 'widened',
	%ES_WIDENED_LOAD,
	writers             => 16,
	duration            => 8,
	followers_per_level => 2,
	levels              => 'rc,rr,ser');
is($rc, 0, 'widened: every follower saw exactly the committed ids, in order')
  or diag join("\n", grep { /VIOLATION|ERROR/ } split /\n/, $out);
$s = es_summary($out);
ok($s && $s->{result}{committed} > 200,
	'widened: events committed (' . ($s ? $s->{result}{committed} : 'none') . ')');

# Self-check: followers that ignore gaps are caught.
($rc, $out) = es_run_driver(
	writer_dsn          => $node->connstr('postgres'),
	app                 => 'naive',
	writers             => 16,
	duration            => 3,
	followers_per_level => 1,
	levels              => 'rc,rr',
	naive_reader        => undef);
is($rc, 1, 'self-check: a reader that ignores gaps fails the test');
like($out, qr/VIOLATION: follower-\S+ .*never returned \d+ committed ids/,
	'self-check: ... because it skipped committed ids');

$node->stop;
done_testing();
