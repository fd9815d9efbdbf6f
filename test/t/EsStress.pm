# Shared by the TAP tests of test/t: clusters set up for the extension, and
# the stress driver (test/stress/ordering_stress.py) run against them.
package EsStress;

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use Exporter 'import';
our @EXPORT = qw($ES_EXT %ES_WIDENED_LOAD es_node es_driver_cmd es_run_driver es_start_driver es_finish_driver
  es_summary es_children es_widen_inflight_window);

# pg_regress (its --config-auth sets up authentication in init) when the
# caller did not say where it is (test/scripts/test.sh does).
BEGIN
{
	if (!defined $ENV{PG_REGRESS})
	{
		my $pgxs = `pg_config --pgxs 2>/dev/null`;
		chomp $pgxs;
		$pgxs = '/usr/lib/postgresql/15/lib/pgxs/src/makefiles/pgxs.mk' if $pgxs eq '';
		$ENV{PG_REGRESS} = dirname(dirname(dirname($pgxs))) . '/src/test/regress/pg_regress';
	}
}

our $ROOT   = $ENV{ES_ROOT} // abs_path(dirname(__FILE__) . '/../..');
our $DRIVER = "$ROOT/test/stress/ordering_stress.py";
# Debian's python3-psycopg is installed for the system interpreter only.
our $PYTHON = '/usr/bin/python3';
# The extension (and library) under test.  Another name lets a deliberately
# broken build, installed under that name, be run through the same tests to
# see them fail (ES_EXTENSION=eventsourcing_mut).
our $ES_EXT = $ENV{ES_EXTENSION} // 'eventsourcing';

# A new cluster (not started) that preloads the extension and has room for
# the driver's connections and prepared transactions.
sub es_node
{
	my ($name, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%params);
	$node->append_conf(
		'postgresql.conf', qq(
shared_preload_libraries = '$ES_EXT'
max_connections = 64
max_prepared_transactions = 32
shared_buffers = 32MB
log_statement = none
));
	return $node;
}

sub es_driver_cmd
{
	my (%o) = @_;
	my @cmd = ($PYTHON, $DRIVER);
	for my $k (sort keys %o)
	{
		my $flag = '--' . ($k =~ tr/_/-/r);
		if (!defined $o{$k})    # a flag without a value
		{
			push @cmd, $flag;
		}
		else
		{
			push @cmd, $flag, $o{$k};
		}
	}
	return \@cmd;
}

# Runs the driver to its end; returns (exit status, stdout, stderr).
sub es_run_driver
{
	my (%o) = @_;
	my $cmd = es_driver_cmd(%o);
	my ($out, $err) = ('', '');
	note "running: @$cmd";
	IPC::Run::run($cmd, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default * 2));
	my $rc = $? >> 8;
	note $out;
	note "stderr: $err" if $err ne '';
	return ($rc, $out, $err);
}

sub es_start_driver
{
	my (%o) = @_;
	my $cmd = es_driver_cmd(%o);
	my ($out, $err) = ('', '');
	note "starting: @$cmd";
	my $h = IPC::Run::start($cmd, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default * 2));
	return { h => $h, out => \$out, err => \$err };
}

sub es_finish_driver
{
	my ($d) = @_;
	$d->{h}->finish;
	my $rc = $d->{h}->result(0);
	note ${ $d->{out} };
	note "stderr: ${ $d->{err} }" if ${ $d->{err} } ne '';
	return ($rc, ${ $d->{out} }, ${ $d->{err} });
}

# The driver's SUMMARY line, decoded (undef if missing).
sub es_summary
{
	my ($out) = @_;
	return undef unless $out =~ /^SUMMARY (\{.*\})$/m;
	return JSON::PP::decode_json($1);
}

# Widens the window in which an id has been handed out but its tuple is not
# yet in the primary key index: an index whose expression sleeps 100 ms for
# every 29th id, placed before the primary key in the order in which
# es_append fills the indexes (by OID: the primary key is re-created after
# it).  During that window only the writer's in-flight slot (on the primary)
# or the watermark (on a standby) stops a reader from taking the missing id
# for a permanent gap.  Run the driver with %ES_WIDENED_LOAD (no transaction
# held open, so that followers reach the head of the log while the window is
# open): a build without slots or watermark is then caught at once.  Returns
# the table's index names in insertion order.
sub es_widen_inflight_window
{
	my ($node, $app) = @_;
	$node->safe_psql('postgres', "SELECT es_create_application('$app')");
	my $app_id =
	  $node->safe_psql('postgres', "SELECT id FROM es_applications WHERE name = '$app'");
	# Only the events of that application sleep (not the rows already there,
	# which CREATE INDEX evaluates).
	$node->safe_psql(
		'postgres', qq{
CREATE FUNCTION es_test_slow(app integer, id bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS \$\$
BEGIN
	IF app = $app_id AND id % 29 = 0 THEN
		PERFORM pg_sleep(0.1);
	END IF;
	RETURN id;
END \$\$;
CREATE INDEX es_test_slow_idx ON es_stored_events_$app_id (es_test_slow(application_id, notification_id));
SET eventsourcing.allow_rewrite = on;  -- a partition's keys are guarded (es_drop_guard)
ALTER TABLE es_stored_events_$app_id DROP CONSTRAINT es_stored_events_${app_id}_pkey,
	ADD CONSTRAINT es_stored_events_${app_id}_pkey PRIMARY KEY (application_id, notification_id);
});
	# (the application's partition of es_stored_events: its indexes, in the
	# order inserts fill them)
	return $node->safe_psql('postgres',
		"SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY indexrelid) "
		  . "FROM pg_index WHERE indrelid = 'es_stored_events_$app_id'::regclass");
}

our %ES_WIDENED_LOAD = (hold_fraction => 0, prepared_fraction => 0, rollback_fraction => 0.05);

# The pids of the children of a process.
sub es_children
{
	my ($ppid) = @_;
	my @kids;
	for my $d (glob '/proc/[0-9]*')
	{
		open my $fh, '<', "$d/stat" or next;
		my $s = <$fh>;
		close $fh;
		next unless defined $s && $s =~ /^(\d+) \(.*\) \S+ (\d+) /s;
		push @kids, $1 if $2 == $ppid;
	}
	return @kids;
}

1;
