# The ordering properties across crashes.  Writers and followers run against
# one server (test/stress/ordering_stress.py --reconnect) while it crashes
# twice:
#   1. SIGKILL to the postmaster; its orphaned children exit (those still
#      there after a few seconds get SIGKILL too), and the server is started
#      again: new shared memory, so every id counter is set up anew from the
#      index.
#   2. SIGKILL to one writer's backend: the postmaster's crash restart
#      (restart_after_crash) kills every backend and reinitializes shared
#      memory.
# Writers and followers reconnect and go on.  The driver then checks: every
# acknowledged commit is there; the ids are unique; every id handed out after
# a restart lies above every id committed before it and above every position
# a follower had passed; a follower reading across both crashes saw exactly
# the committed ids, in order; missing ids are aborts (or ids of the es_append
# calls that the crashes cut off, no more of them than those calls had events).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = es_node('crash');
$node->append_conf('postgresql.conf', "restart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', "CREATE EXTENSION $ES_EXT");
$node->safe_psql('postgres', "SELECT es_create_application('stress')");

my $started = PostgreSQL::Test::Utils::tempdir() . '/started';
my $driver = es_start_driver(
	writer_dsn          => $node->connstr('postgres'),
	app                 => 'stress',
	writers             => 16,
	duration            => 14,
	followers_per_level => 2,
	levels              => 'rc,rr,ser',
	reconnect           => undef,
	started_file        => $started);

sub wait_for_file
{
	my ($f, $secs) = @_;
	for (1 .. $secs * 10)
	{
		return 1 if -e $f;
		usleep(100_000);
	}
	return 0;
}

sub committed_count
{
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'stress'");
}

ok(wait_for_file($started, 60), 'crash: the writers are committing');
sleep 3;
my $before = committed_count();
cmp_ok($before, '>', 0, "crash: $before events committed before the first crash");

# 1. SIGKILL to the postmaster, in the middle of the load.  Stopped first so
# that it forks no child we do not know of.
my $pm = $node->{_pid};
kill 'STOP', $pm;
my @children = es_children($pm);
note "postmaster $pm, children @children";
$node->kill9;    # kill 'KILL', $node->{_pid}
kill 'CONT', $pm;
# The orphans notice the postmaster's death at their next wait; the new
# postmaster cannot start while one of them still uses the shared memory.
my $waited = 0;
while ((grep { kill 0, $_ } @children) && $waited < 50)
{
	usleep(100_000);
	$waited++;
}
my @left = grep { kill 0, $_ } @children;
note "still alive after " . ($waited / 10) . " s, now killed: @left" if @left;
kill 'KILL', @left if @left;
while (grep { kill 0, $_ } @left) { usleep(50_000); }
$node->start;
ok(1, 'crash: the server restarted after SIGKILL of the postmaster');

sleep 3;
my $middle = committed_count();
cmp_ok($middle, '>', $before, "crash: appends go on after the restart ($middle events committed)");

# 2. SIGKILL to a writer's backend: crash restart of the whole server.
my $victim = '';
for (1 .. 100)
{
	$victim = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'es_stress_writer%' "
		  . "ORDER BY state = 'active' DESC, random() LIMIT 1");
	last if $victim =~ /^\d+$/;
	usleep(100_000);
}
ok($victim =~ /^\d+$/, "crash: found a writer backend ($victim)");
kill 'KILL', $victim;
ok($node->poll_query_until('postgres', "SELECT pg_postmaster_start_time() IS NOT NULL"),
	'crash: the server is back after the crash restart');
ok($node->log_contains(qr/server process \(PID $victim\) was terminated by signal 9/),
	'crash: the postmaster went through a crash restart');

my ($rc, $out) = es_finish_driver($driver);
is($rc, 0, 'crash: acknowledged commits survived; ids after each restart lie above everything before; '
	  . 'followers saw exactly the committed ids, in order')
  or diag join("\n", grep { /VIOLATION|ERROR/ } split /\n/, $out);
my $s = es_summary($out);
ok($s, 'crash: the driver printed its summary');
if ($s)
{
	is($s->{epochs}, 3, 'crash: the driver saw three lifetimes of the server');
	cmp_ok($s->{followers_across_all_epochs}, '>=', 1,
		"crash: $s->{followers_across_all_epochs} followers read across both crashes");
	cmp_ok($s->{writers}{reconnects}, '>', 0,
		"crash: writers lost their connections ($s->{writers}{reconnects}) and reconnected");
}

# After everything: a new append gets an id above every id in the log, and
# es_select from 1 returns every committed event.
my $max = $node->safe_psql('postgres', 'SELECT max(notification_id) FROM es_stored_events');
my $new = $node->safe_psql('postgres',
	"SELECT es_append('stress', gen_random_uuid(), 1, 'AfterCrash', '\\x00')");
cmp_ok($new, '>', $max, "crash: a new append gets id $new, above the highest id $max");
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select('stress', 1, 1000000)"),
	committed_count(), 'crash: es_select from 1 returns every committed event');

$node->stop;
done_testing();
