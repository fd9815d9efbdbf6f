# Applications sharded over three servers behind a proxy database
# (eventsourcing_proxy, PL/Proxy), all on local sockets:
#   1. set-up as README's "Scaling out" says; the DogSchool through the
#      proxy (the same SQL as against one server), errors passed through
#      with their SQLSTATE, the calls over all shards merged;
#   2. the ordered-log stress through the proxy (test/stress/proxy_stress.py:
#      writers over several applications on every shard, a follower per
#      application) while one shard's postmaster is killed with SIGKILL and
#      started again: calls for its applications fail cleanly meanwhile,
#      the others go on, and afterwards every follower has seen exactly the
#      committed ids of its application, in order, nothing lost or skipped;
#   3. moving an application to another shard: ids, hashes, chains
#      (es_verify_log), seals, tracking positions, folds and tagged events
#      intact, appends continue after the moved ids, calls fail with 55000
#      while it moves, and an application with data keys is refused.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use IPC::Run;
use Cwd;

my $keydir = Cwd::abs_path(PostgreSQL::Test::Utils::tempdir());
open my $kf, '>', "$keydir/key" or die;
print $kf ('ab' x 32);
close $kf;

# Three shards, each a server with the extension in a database of its own name.
my @shards;
for my $i (0 .. 2)
{
	my $node = es_node("shard$i");
	$node->append_conf('postgresql.conf', "eventsourcing.key_command = 'cat $keydir/key'\n");
	$node->start;
	$node->safe_psql('postgres', "CREATE DATABASE es_shard$i");
	$node->safe_psql("es_shard$i", "CREATE EXTENSION $ES_EXT");
	push @shards, $node;
}
my @connstr = map { 'host=' . $shards[$_]->host . ' port=' . $shards[$_]->port . " dbname=es_shard$_" } 0 .. 2;

my $proxy = PostgreSQL::Test::Cluster->new('proxy');
$proxy->init;
$proxy->append_conf('postgresql.conf', "max_connections = 64\n");
$proxy->start;
$proxy->safe_psql('postgres', 'CREATE DATABASE es_proxy');
my $pdb = 'es_proxy';
sub P { return $proxy->safe_psql($pdb, $_[0]); }
# A statement expected to fail: its error with the SQLSTATE.
sub P_err
{
	my ($rc, $out, $err) = $proxy->psql($pdb, "\\set VERBOSITY verbose\n$_[0]");
	return $rc == 0 ? 'no error' : $err;
}

P('CREATE EXTENSION eventsourcing_proxy CASCADE');
is(P("SELECT es_proxy_configure(ARRAY['" . join("', '", @connstr) . "'])"), '3', 'proxy: three shards configured');
like(P_err("SELECT es_proxy_set_shard(0, '$connstr[0] password=secret')"), qr/22023.*must not hold a password/s,
	'proxy: a connection string with a password is refused (every caller could read it)');
like(P_err("SELECT es_proxy_add_shard('postgresql://u:secret\@localhost/x')"), qr/22023.*must not hold a password/s,
	'proxy: and a URI with one');

# --- 1. The DogSchool through the proxy -----------------------------------
P("SELECT es_create_application('dogschool')");
my $dog = '4f9c2b4e-0000-4000-8000-000000000001';
is(P("SELECT es_append_json('dogschool', '$dog', 1, 'dogschool:Dog.Registered', '{\"name\": \"Fido\"}')"), '1',
	'dogschool: registered through the proxy');
is(P(qq{SELECT string_agg(r::text, ',') FROM es_append_json('dogschool', '[
	{"originator_id": "$dog", "originator_version": 2, "topic": "dogschool:Dog.TrickAdded", "state": {"trick": "roll over"}},
	{"originator_id": "$dog", "originator_version": 3, "topic": "dogschool:Dog.TrickAdded", "state": {"trick": "play dead"}}]') r}),
	'2,3', 'dogschool: two tricks in one atomic call');
like(P_err("SELECT es_append_json('dogschool', '$dog', 3, 'dogschool:Dog.TrickAdded', '{}')"), qr/ERROR:  23505: .*version 3 of aggregate $dog in application "dogschool" already exists/,
	'dogschool: a conflict through the proxy is 23505, with the shard\'s message');
like(P_err("SELECT es_max_notification_id('nosuchapp')"), qr/ERROR:  42704: .*application "nosuchapp" does not exist/, 'an unknown application is 42704 through the proxy');
is(P("SELECT string_agg(originator_version || ':' || es_jsonb(state)::text, ' ' ORDER BY originator_version) FROM es_events('dogschool', '$dog')"),
	'1:{"name": "Fido"} 2:{"trick": "roll over"} 3:{"trick": "play dead"}', 'dogschool: es_events and es_jsonb through the proxy');
is(P("SELECT count(*) FROM es_events('dogschool', '$dog', lte => 2)"), '2', 'dogschool: a historical version');
P(q{SELECT es_define_fold('dogschool', 'dogschool:Dog.Registered', '[{"op": "set", "path": "name", "from": "name"}]');
SELECT es_define_fold('dogschool', 'dogschool:Dog.TrickAdded', '[{"op": "append", "path": "tricks", "from": "trick"}]')});
is(P("SELECT es_state('dogschool', '$dog')::text"), '{"name": "Fido", "tricks": ["roll over", "play dead"]}',
	'dogschool: es_state folds on the shard');
is(P("SELECT string_agg(id::text, ',') FROM es_select('dogschool', 2, 10, topics => '{dogschool:Dog.TrickAdded}')"), '2,3',
	'dogschool: es_select with named defaults through the proxy');
is(P("SELECT (es_verify('dogschool', '$dog')).ok"), 't', 'dogschool: es_verify');
is(P("SELECT last_notification_id || ' ' || gaps::text FROM es_seal('dogschool')"), '3 {}', 'dogschool: es_seal');
is(P("SELECT count(*) FROM es_verify_log('dogschool')"), '0', 'dogschool: es_verify_log');
is(P("SELECT es_channel('dogschool') || ' ' || es_wait('dogschool', 0, 100) || ' ' || coalesce(es_wait('dogschool', 3, 50)::text, 'timeout')"),
	'es:dogschool 3 timeout', 'dogschool: es_channel and es_wait through the proxy');
P("SELECT es_create_application('dogschool_projection')");
P("SELECT es_append('dogschool_projection', ARRAY[]::es_event[], 'dogschool', 3)");
is(P("SELECT es_tracking_position('dogschool_projection', 'dogschool')"), '3', 'tracking through the proxy');
is(P(q{SELECT es_dcb_append('dogschool', '[{"type": "Enrolled", "data": {"dog": 1}, "tags": ["course:a"]}]')}), '4',
	'tagged events through the proxy');
is(P(q{SELECT string_agg(position || ':' || type, ',') FROM es_dcb_read('dogschool', '[{"tags": ["course:a"]}]')}), '4:Enrolled',
	'es_dcb_read through the proxy');
is(P(q{SELECT es_dcb_head('dogschool', '[{"tags": ["course:a"]}]')}), '4', 'es_dcb_head through the proxy');

# Several applications over the shards.
my @apps = map { "app$_" } 1 .. 9;
P("SELECT es_create_application('$_')") for @apps;
my %shard_of = map { $_ => P("SELECT shard FROM es_proxy_shard_of('$_')") } (@apps, 'dogschool', 'dogschool_projection');
my %on = ();
push @{ $on{ $shard_of{$_} } }, $_ for @apps;
is(scalar(keys %on), 3, 'applications are spread over the three shards: '
	  . join('; ', map { "shard $_: @{$on{$_}}" } sort keys %on));
is($shards[ $shard_of{app1} ]->safe_psql("es_shard$shard_of{app1}", "SELECT count(*) FROM es_applications WHERE name = 'app1'"),
	'1', 'an application lives on the shard es_proxy_shard_of names');
is(P("SELECT count(*) FROM es_status"), '11', 'es_status through the proxy lists the applications of every shard');
is(P("SELECT follower || ' ' || position || ' ' || head_id || ' ' || lag FROM es_followers"),
	'dogschool_projection 3 4 1', 'es_followers through the proxy: the position from one shard, the head from another');

# Privileges as an ordinary role: PL/Proxy connects to the shard as the
# calling role, and the shard checks its privileges per application.
$shards[$_]->safe_psql("es_shard$_", 'CREATE ROLE clerk LOGIN') for 0 .. 2;
P('CREATE ROLE clerk LOGIN');
P("SELECT es_grant('app1', 'clerk', 'read')");
is(P("SET ROLE clerk; SELECT count(*) FROM es_select('app1', 1, 10)"), '0', 'privileges: a role with read reads through the proxy');
like(P_err("SET ROLE clerk; SELECT es_append('app1', gen_random_uuid(), 1, 'T', '\\x00')"),
	qr/ERROR:  42501: .*\[es_shard\d\] REMOTE ERROR: .*app1/, 'privileges: ... but may not append (42501 from its shard)');
like(P_err("SET ROLE clerk; SELECT es_max_notification_id('app2')"), qr/ERROR:  42704: /,
	'privileges: ... and an application it holds nothing on is unknown to it (42704)');
is(P("SET ROLE clerk; SELECT count(*) FROM es_status"), '1', 'privileges: es_status through the proxy lists what it may see');

# --- 2. The ordered-log stress, a shard killed mid-load ----------------------
my $victim = $shard_of{app1};
my $victim_node = $shards[$victim];
my $started = PostgreSQL::Test::Utils::tempdir() . '/started';
my @cmd = ('/usr/bin/python3', "$EsStress::ROOT/test/stress/proxy_stress.py",
	'--proxy-dsn', $proxy->connstr($pdb), (map { ('--shard-dsn', $_) } @connstr),
	'--apps', join(',', @apps), '--writers', 8, '--followers-per-app', 1,
	'--duration', 16, '--down-shards', $victim, '--started-file', $started);
note "starting: @cmd";
my ($sout, $serr) = ('', '');
my $h = IPC::Run::start(\@cmd, '>', \$sout, '2>', \$serr,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default * 2));
for (1 .. 300) { last if -e $started; usleep(100_000); }
ok(-e $started, 'stress: the writers are committing through the proxy');
sleep 3;

# SIGKILL to the victim's postmaster (stopped first so that it forks no
# child we do not know of); its orphans go once they notice.
my $pm = $victim_node->{_pid};
kill 'STOP', $pm;
my @children = es_children($pm);
$victim_node->kill9;
kill 'CONT', $pm;
my $waited = 0;
while ((grep { kill 0, $_ } @children) && $waited < 50) { usleep(100_000); $waited++; }
my @left = grep { kill 0, $_ } @children;
kill 'KILL', @left if @left;
while (grep { kill 0, $_ } @left) { usleep(50_000); }
note "shard $victim killed";

# While it is down: its applications fail with an error naming it, the
# others work.
my $down_app = $on{$victim}[0];
like(P_err("SELECT es_max_notification_id('$down_app')"), qr/ERROR:  XX000: PL\/Proxy function .*\[es_shard$victim\] .*connection to server .* failed/,
	"down: a call for $down_app fails with PL/Proxy's error naming the shard's database and the failed connection");
my @up_apps = grep { $shard_of{$_} != $victim } @apps;
my %before = map { $_ => P("SELECT coalesce(es_max_notification_id('$_'), 0)") } @up_apps;
sleep 2;
my @grew = grep { P("SELECT coalesce(es_max_notification_id('$_'), 0)") > $before{$_} } @up_apps;
is(scalar(@grew), scalar(@up_apps), 'down: the applications of the other shards kept being appended to (' . scalar(@grew) . ' of ' . scalar(@up_apps) . ')');
like(P_err('SELECT count(*) FROM es_status'), qr/\[es_shard$victim\]/, 'down: es_status, which asks every shard, fails too');

$victim_node->start;
ok(1, "shard $victim restarted");

$h->finish;
my $src = $h->result(0);
note $sout;
note "stderr: $serr" if $serr ne '';
is($src, 0, 'stress: every follower saw exactly the committed ids of its application, in order; every returned id is '
	  . 'committed; only the killed shard\'s applications had failed calls')
  or diag join("\n", grep { /VIOLATION|FATAL|Error/ } split /\n/, $sout . $serr);
my $s = es_summary($sout);
ok($s, 'stress: the driver printed its summary');
if ($s)
{
	my @a = values %{ $s->{apps} };
	my $failed = 0;
	$failed += $_->{failed_calls} for grep { $_->{shard} == $victim } @a;
	cmp_ok($failed, '>', 0, "stress: calls for the killed shard's applications failed while it was down ($failed)");
	ok(!(grep { $_->{committed} < 20 } @a), 'stress: every application got events ('
		  . join(', ', map { "$_ $s->{apps}{$_}{committed}" } sort keys %{ $s->{apps} }) . ')');
	cmp_ok($s->{writers}{conflicts}, '>', 0, "stress: version conflicts passed through as 23505 ($s->{writers}{conflicts})");
}
# Afterwards, on every shard: chains intact, and a new append lands above
# everything (the counters after the crash).
for my $app (@apps)
{
	my $max = P("SELECT es_max_notification_id('$app')");
	is(P("SELECT es_append('$app', gen_random_uuid(), 1, 'After', '\\x00') > $max"), 't',
		"after: $app appends above its highest id $max") if $app eq $down_app || $app eq $up_apps[0];
}
is(P("SELECT count(*) FROM (SELECT unnest(ARRAY['" . join("','", @apps) . "']) a) x, LATERAL es_verify_log(x.a)"), '0',
	'after: every application\'s log verifies (es_verify_log through the proxy)');

# --- 3. Moving an application between shards --------------------------------
my $mover = $down_app;    # app1: clerk may read it
my $from = $shard_of{$mover};
my $to = ($from + 1) % 3;
P("SELECT es_append('$mover', ARRAY[]::es_event[], 'dogschool', 2)");
P(q{SELECT es_define_fold('} . $mover . q{', 'After', '[{"op": "set", "path": "after", "value": true}]')});
P(qq{SELECT es_dcb_append('$mover', '[{"type": "T", "data": {"i": 1}, "tags": ["x", "y"]}]')});
P("SELECT es_seal('$mover')");
my $listing = "SELECT count(*) || ' ' || max(id) || ' ' || md5(string_agg(id || ':' || encode(event_hash, 'hex'), ',' ORDER BY id)) FROM es_select('$mover', 1, 1000000)";
my $before_move = P($listing);
my $seals_before = $shards[$from]->safe_psql("es_shard$from",
	"SELECT string_agg(seal_id || ':' || last_notification_id || ':' || encode(digest, 'hex'), ',' ORDER BY seal_id) FROM es_seals s JOIN es_applications a ON a.id = s.application_id WHERE a.name = '$mover'");
my $tagged_before = P(qq{SELECT string_agg(position || ':' || tags::text, ',') FROM es_dcb_read('$mover', '[{"tags": ["y"]}]')});

# A reader holds the application (its call's transaction is open): the move
# waits for it, and meanwhile other calls for it fail with 55000.
my ($bin, $bout, $berr) = ('', '', '');
my $bg = IPC::Run::start([ 'psql', '-X', '-At', '-d', $proxy->connstr($pdb) ], '<', \$bin, '>', \$bout, '2>', \$berr,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
$bin .= "BEGIN;\nSELECT es_max_notification_id('$mover');\n";
$bg->pump until $bout =~ /^\d+$/m;
my ($mout, $merr) = ('', '');
my $mh = IPC::Run::start([ 'psql', '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-d', $proxy->connstr($pdb),
		'-c', "SELECT es_proxy_move('$mover', $to)" ], '>', \$mout, '2>', \$merr);
usleep(500_000);
like(P_err("SELECT es_max_notification_id('$mover')"), qr/ERROR:  55000: .*application "$mover" is being moved/,
	'move: calls for the moving application fail with 55000');
is(P("SELECT count(*) > 0 FROM es_select('$up_apps[0]', 1, 10)"), 't', 'move: other applications work meanwhile');
$bin .= "COMMIT;\n\\q\n";
$bg->finish;
$mh->finish;
like($mout, qr/moved application "$mover" from shard $from .* to shard $to/, 'move: es_proxy_move reports the move')
  or diag "$mout $merr";
note $mout;
is(P("SELECT shard FROM es_proxy_shard_of('$mover')"), $to, 'move: the placement names the target');
is($shards[$from]->safe_psql("es_shard$from",
	"SELECT (SELECT count(*) FROM es_applications WHERE name = '$mover') + (SELECT count(*) FROM es_stored_events e WHERE NOT EXISTS (SELECT FROM es_applications a WHERE a.id = e.application_id)) + (SELECT count(*) FROM pg_inherits h WHERE h.inhparent = 'es_stored_events'::regclass AND NOT EXISTS (SELECT FROM es_applications a WHERE h.inhrelid::regclass::text = 'es_stored_events_' || a.id))"),
	'0', 'move: nothing of it is left on the source (no row, no partition)');
is(P($listing), $before_move, 'move: the same ids and event hashes on the target');
is(P("SELECT count(*) FROM es_verify_log('$mover')"), '0', 'move: its chains and seals verify on the target');
is($shards[$to]->safe_psql("es_shard$to",
	"SELECT string_agg(seal_id || ':' || last_notification_id || ':' || encode(digest, 'hex'), ',' ORDER BY seal_id) FROM es_seals s JOIN es_applications a ON a.id = s.application_id WHERE a.name = '$mover'"),
	$seals_before, 'move: the seals are the same');
is(P("SELECT es_tracking_position('$mover', 'dogschool')"), '2', 'move: its tracking position is kept');
is(P("SET ROLE clerk; SELECT count(*) > 0 FROM es_select('$mover', 1, 10)"), 't', 'move: its grants are kept (clerk reads it on the target)');
is(P(qq{SELECT string_agg(position || ':' || tags::text, ',') FROM es_dcb_read('$mover', '[{"tags": ["y"]}]')}), $tagged_before,
	'move: its tagged events are found by tag on the target');
my $max = P("SELECT es_max_notification_id('$mover')");
my $next = P("SELECT es_append('$mover', gen_random_uuid(), 1, 'After', '{}')");
is($next, $max + 1, "move: the next append on the target gets id $next, right after the moved ids");
is(P("SELECT es_state('$mover', originator_id)::text FROM es_select('$mover', $next, 1)"), '{"after": true}',
	'move: its folds work on the target');
P("SELECT es_seal('$mover')");
is(P("SELECT count(*) FROM es_verify_log('$mover')"), '0', 'move: a new seal on the target verifies with the moved ones');
my $new_max = P("SELECT max(id) FROM es_select('$mover', 1, 1000000)");
is($new_max, $next, 'move: es_select on the target returns the moved ids and the new one');

# An application with encrypted states is refused, and stays where it is.
P("SELECT es_create_application('secret')");
P("SELECT es_configure('secret', encryption => true)");
P("SELECT es_append_json('secret', gen_random_uuid(), 1, 'T', '{\"card\": 1}')");
my $secret_from = P("SELECT shard FROM es_proxy_shard_of('secret')");
like(P_err("SELECT es_proxy_move('secret', " . (($secret_from + 1) % 3) . ")"), qr/ERROR:  0A000: application "secret" cannot be moved: it has 1 data keys/, 'move: an application with data keys is refused');
is(P("SELECT shard FROM es_proxy_shard_of('secret')") . ' ' . P("SELECT es_jsonb(state)::text FROM es_select('secret', 1, 1)"),
	"$secret_from {\"card\": 1}", 'move: ... and stays where it was, readable');

$proxy->stop;
$_->stop for @shards;
done_testing();
