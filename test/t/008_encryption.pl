# Encryption at rest and the master key: a marker string in encrypted states
# appears in no table file, WAL segment, pg_waldump output or dump, and the
# master key in none of them nor in the server log (log_statement = all),
# while the functions return the plaintext; a missing, a wrong and a rotated
# master key; forgetting survives a dump and restore.
use strict;
use warnings;
use EsStress;
use Cwd ();
use File::Find;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = es_node('encryption');
my $keydir = Cwd::abs_path($node->basedir);
my $key1 = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);
my $key2 = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);
sub write_key
{
	my ($file, $key) = @_;
	open(my $fh, '>', "$keydir/$file") or die $!;
	print $fh "$key\n";
	close($fh);
	chmod(0600, "$keydir/$file");
}
write_key('key1', $key1);
write_key('key2', $key2);
$node->append_conf('postgresql.conf', qq(
eventsourcing.key_command = 'cat $keydir/key1'
log_statement = all
log_min_messages = debug1
));
$node->start;
like(slurp_file($node->logfile), qr/eventsourcing: master key loaded/, 'the master key is loaded at start');

# The marker is never written literally in a statement (the log records
# statements): it is put together in the server.
my $marker = 'ZEBRA' . 'CROSSING' . '4417';
my $marker_sql = "'ZEBRA' || 'CROSSING' || '4417'";
$node->safe_psql('postgres', qq{
	CREATE EXTENSION $ES_EXT;
	SELECT es_create_application('secret');
	SELECT es_create_application('open');
	SELECT es_configure('secret', compression => true, encryption => true);
	SELECT es_append('secret', ('00000000-0000-0000-0000-00000000000' || i)::uuid, 1, 'Registered',
		convert_to('{"name": "' || $marker_sql || '", "n": ' || i || '}', 'UTF8')) FROM generate_series(1, 5) i;
	SELECT es_append('secret', '00000000-0000-0000-0000-000000000001', 2, 'Renamed',
		convert_to('{"name": "' || $marker_sql || '-2"}', 'UTF8'));
	SELECT es_snapshot('secret', '00000000-0000-0000-0000-000000000001');
	SELECT es_append('open', '00000000-0000-0000-0000-000000000009', 1, 'Registered',
		convert_to('{"name": "' || 'OPEN' || 'MARKER' || '77"}', 'UTF8'));
	CHECKPOINT;
});
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select('secret', 1, 100) WHERE position($marker_sql IN convert_from(state, 'UTF8')) > 0"),
	'6', 'es_select returns the plaintext');
like($node->safe_psql('postgres', "SELECT es_state('secret', '00000000-0000-0000-0000-000000000001')"),
	qr/${marker}-2/, 'es_state returns the plaintext (from the encrypted snapshot)');

# Where the bytes are: table files, WAL segments, pg_waldump, a dump, the log.
sub files_containing
{
	my ($dir, $needle) = @_;
	my @hits;
	find(sub {
		return unless -f $_;
		open(my $fh, '<:raw', $_) or return;
		local $/;
		my $content = <$fh>;
		close($fh);
		push @hits, $File::Find::name if index($content, $needle) >= 0;
	}, $dir);
	return @hits;
}
my $pgdata = $node->data_dir;
my $raw_key1 = pack('H*', $key1);
ok(scalar(files_containing("$pgdata/base", 'OPENMARKER77')) > 0,
	'control: a state in clear is found in the table files');
is(join(',', files_containing("$pgdata/base", $marker)), '', 'the marker is in no table file');
ok(scalar(files_containing("$pgdata/pg_wal", 'OPENMARKER77')) > 0, 'control: a state in clear is found in the WAL');
is(join(',', files_containing("$pgdata/pg_wal", $marker)), '', 'the marker is in no WAL segment');
my $waldump = '';
for my $seg (sort glob("$pgdata/pg_wal/0000*"))
{
	my ($out, $err) = run_command([ 'pg_waldump', $seg ]);
	$waldump .= $out;
}
ok(length($waldump) > 0, 'pg_waldump read the WAL');
unlike($waldump, qr/$marker/, 'the marker is not in pg_waldump\'s output');
my $dumpfile = "$keydir/dump.sql";
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dumpfile ], 'pg_dump');
my $dump = slurp_file($dumpfile);
like($dump, qr/OPENMARKER77|4f50454e4d41524b45523737/i, 'control: a state in clear is in the dump');
unlike($dump, qr/$marker/, 'the marker is not in the dump');
unlike($dump, qr/\Q@{[unpack('H*', $marker)]}\E/i, '... nor its hex encoding');
for my $where ([ 'the table files', "$pgdata/base" ], [ 'the WAL', "$pgdata/pg_wal" ],
	[ 'the data directory', $pgdata ])
{
	is(join(',', files_containing($where->[1], $key1), files_containing($where->[1], $raw_key1)), '',
		"the master key is not in $where->[0]");
}
unlike($dump, qr/$key1/i, 'the master key is not in the dump');
unlike(slurp_file($node->logfile), qr/$key1/i, 'the master key is not in the server log');
unlike(slurp_file($node->logfile), qr/$marker/, 'the marker is not in the server log');
my ($ret, $out, $err) = $node->psql('postgres', 'SHOW eventsourcing.key_command',
	extra_params => [ '-c', 'SET ROLE pg_monitor' ]);
$node->safe_psql('postgres', 'CREATE ROLE nobody');
($ret, $out, $err) = $node->psql('postgres', "SET ROLE nobody; SHOW eventsourcing.key_command");
isnt($ret, 0, 'ordinary roles cannot see eventsourcing.key_command');

# Forgetting survives a dump and restore (same master key, same server).
$node->safe_psql('postgres', "SELECT es_forget('secret', '00000000-0000-0000-0000-000000000002')");
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', "$keydir/forgot.dump" ], 'pg_dump after es_forget');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('restored'), "$keydir/forgot.dump" ], 'pg_restore');
is($node->safe_psql('restored', q{
	SELECT string_agg(originator_id::text || ':' || (state IS NULL)::text, ',' ORDER BY id) FROM es_select('secret', 1, 100)}),
	'00000000-0000-0000-0000-000000000001:false,00000000-0000-0000-0000-000000000002:true,'
	  . '00000000-0000-0000-0000-000000000003:false,00000000-0000-0000-0000-000000000004:false,'
	  . '00000000-0000-0000-0000-000000000005:false,00000000-0000-0000-0000-000000000001:false',
	'restored: the forgotten aggregate stays forgotten, the others read');
is($node->safe_psql('restored', "SELECT count(*) FROM es_verify_log('secret')"), '0',
	'restored: the log verifies');

# No master key: plain applications work, encrypted states are refused with 55000.
$node->append_conf('postgresql.conf', "eventsourcing.key_command = ''\n");
$node->restart;
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select('open', 1, 10)"), '1',
	'without the master key, plain applications read');
($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT count(*) FROM es_select('secret', 1, 10)");
like($err, qr/55000: the eventsourcing master key is not loaded/, 'encrypted reads: 55000');
($ret, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT es_append('secret', gen_random_uuid(), 1, 'T', '{}')");
like($err, qr/55000: the eventsourcing master key is not loaded/, 'appends to an encrypting application: 55000');
is($node->safe_psql('postgres', "SELECT count(*) FROM es_verify_log('secret')"), '0',
	'verification needs no key');
is($node->safe_psql('postgres', "SELECT state IS NULL FROM es_select('secret', 2, 1)"), 't',
	'a forgotten aggregate reads (state NULL) without a key');
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select_stored('secret', 1, 100)"), '6',
	'the stored form reads without a key');

# A command that fails: logged, no key, no crash.
$node->append_conf('postgresql.conf', "eventsourcing.key_command = 'exit 3'\n");
$node->restart;
like(slurp_file($node->logfile), qr/eventsourcing.key_command failed \(exit status 3\); no master key/,
	'a failing key command is logged');

# A wrong master key: refused, nothing returned.
$node->append_conf('postgresql.conf', "eventsourcing.key_command = 'cat $keydir/key2'\n");
$node->restart;
($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT state FROM es_select('secret', 1, 1)");
like($err, qr/55000: the data key of aggregate 00000000-0000-0000-0000-000000000001 was wrapped by another master key/,
	'a wrong master key: 55000 naming the aggregate');
is($out, '', '... and nothing returned');

# Rotation: the new key current, the old one previous; rewrap; then the old one goes.
$node->append_conf('postgresql.conf', "eventsourcing.previous_key_command = 'cat $keydir/key1'\n");
$node->restart;
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select('secret', 1, 100) WHERE state IS NOT NULL"), '5',
	'rotating: events read with the previous key');
$node->safe_psql('postgres', "SELECT es_append('secret', '00000000-0000-0000-0000-000000000007', 1, 'T', '{\"after\": \"rotation\"}')");
is($node->safe_psql('postgres', 'SELECT es_rewrap_keys()'), '4', 'es_rewrap_keys rewraps the data keys made with the old key (4: one was forgotten)');
is($node->safe_psql('postgres', 'SELECT es_rewrap_keys()'), '0', '... once');
$node->append_conf('postgresql.conf', "eventsourcing.previous_key_command = ''\n");
$node->restart;
is($node->safe_psql('postgres', "SELECT count(*) FROM es_select('secret', 1, 100) WHERE state IS NOT NULL"), '6',
	'after the rotation, every event reads with the new key alone');
like($node->safe_psql('postgres', "SELECT es_state('secret', '00000000-0000-0000-0000-000000000001')"),
	qr/${marker}-2/, '... and states too');
is($node->safe_psql('postgres', "SELECT count(*) FROM es_verify_log('secret')"), '0',
	'no event was rewritten: the log verifies');

$node->stop;
done_testing();
