# Attacks that need their own server: a database owner who is not a
# superuser plants operators and functions on the database's search_path for
# the background worker (running as superuser) to call, with seals off and
# on; and a tenant of one database who tries to use up the server's id
# counters for every other database.
use strict;
use warnings;
use EsStress;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = es_node('security');
$node->append_conf('postgresql.conf', qq(
eventsourcing.max_applications = 24
eventsourcing.max_applications_per_database = 8
eventsourcing.worker_naptime = 10ms
));
$node->start;

# 1. The search_path attack on the worker.
$node->safe_psql('postgres', q(
	CREATE ROLE mallory LOGIN;
	CREATE DATABASE malloryland OWNER mallory;
	REVOKE CREATE ON SCHEMA public FROM PUBLIC;
));
$node->safe_psql('malloryland', qq(
	CREATE EXTENSION $ES_EXT;
	SELECT es_grant(NULL, 'mallory', 'create');
));
# Everything the worker's statements could resolve through the search_path:
# comparison, equality and arithmetic operators on the types in use, and
# functions named like the ones it calls.  Each tries to make mallory a
# superuser, and logs who called it.
$node->safe_psql('malloryland', q{
	CREATE SCHEMA evil;
	CREATE TABLE evil.calls (who text, at timestamptz DEFAULT now());
	GRANT INSERT ON evil.calls TO PUBLIC;
	CREATE FUNCTION evil.escalate() RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO evil.calls (who) VALUES (current_user);
		BEGIN
			EXECUTE 'ALTER ROLE mallory SUPERUSER';
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
	END $$;
	CREATE FUNCTION evil.lt8(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.<) $2; END $$;
	CREATE FUNCTION evil.eq4(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
	CREATE FUNCTION evil.eq8(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
	CREATE FUNCTION evil.eqt(text, text) RETURNS boolean LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
	CREATE FUNCTION evil.plus8(bigint, integer) RETURNS bigint LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.+) $2; END $$;
	CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN pg_catalog.now(); END $$;
	CREATE FUNCTION evil.es_seal(text) RETURNS void LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); END $$;
	CREATE FUNCTION evil.greatest(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS
		$$ BEGIN PERFORM evil.escalate(); RETURN $1; END $$;
	CREATE OPERATOR evil.< (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.lt8);
	CREATE OPERATOR evil.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.eq4);
	CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.eq8);
	CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eqt);
	CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = evil.plus8);
	ALTER SCHEMA evil OWNER TO mallory;
	ALTER TABLE evil.calls OWNER TO mallory;
	ALTER FUNCTION evil.escalate() OWNER TO mallory;
});
# The database owner (not a superuser) puts it first on everybody's path.
$node->safe_psql('malloryland',
	"ALTER DATABASE malloryland SET search_path = evil, pg_catalog, public",
	extra_params => [ '-U', 'mallory' ]);

# the attack would work on anything that calls the operators
$node->safe_psql('malloryland', 'SELECT 1::bigint < 2::bigint', extra_params => [ '-U', 'mallory' ]);
is($node->safe_psql('malloryland', 'SELECT count(*) > 0 FROM evil.calls'), 't',
	'the planted operator is picked up by ordinary statements on that search_path');
$node->safe_psql('malloryland', 'TRUNCATE evil.calls');

sub attack_round
{
	my ($label) = @_;
	# mallory's own application, appended to, tracked, sealed, snapshotted,
	# with folds: everything that runs SQL inside the extension.  (The calls
	# name the extension's schema: on this search_path an unqualified
	# es_seal() is mallory's evil.es_seal, as PostgreSQL resolves it for
	# anyone; see README.md, Security.)
	$node->safe_psql('malloryland', qq{
		SELECT public.es_create_application('$label');
		SELECT public.es_append('$label', gen_random_uuid(), 1, 'Created', '{}') FROM generate_series(1, 20);
		SELECT public.es_append('$label', ARRAY[]::es_event[], 'upstream', 5);
		SELECT public.es_tracking_position('$label', 'upstream');
		SELECT public.es_define_fold('$label', 'Created', '[{"op": "set", "path": "c", "value": 1}]');
		SELECT public.es_state('$label', originator_id) FROM public.es_select('$label', 1, 3);
		SELECT public.es_snapshot('$label', originator_id) FROM public.es_select('$label', 1, 3);
		SELECT public.es_seal('$label');
		SELECT count(*) FROM public.es_verify_log('$label');
		SELECT public.es_grant('$label', 'PUBLIC', 'read');
	}, extra_params => [ '-U', 'mallory' ]);
	# as a superuser too (a trusting administrator in that database)
	$node->safe_psql('malloryland', qq{
		SELECT public.es_append('$label', gen_random_uuid(), 1, 'Created', '{}') FROM generate_series(1, 5);
		SELECT public.es_seal('$label');
		SELECT public.es_state('$label', originator_id) FROM public.es_select('$label', 1, 3);
	});
	# events after the last explicit seal: only the worker seals these
	$node->safe_psql('malloryland',
		"SELECT public.es_append('$label', gen_random_uuid(), 1, 'Created', '{}') FROM generate_series(1, 3)",
		extra_params => [ '-U', 'mallory' ]);
	# the worker has published the watermark of every id appended
	ok($node->poll_query_until('malloryland', qq{
		SELECT w.notification_id OPERATOR(pg_catalog.=) 28 FROM public.es_watermarks w
		JOIN public.es_applications a ON a.id OPERATOR(pg_catalog.=) w.application_id
		WHERE a.name OPERATOR(pg_catalog.=) '$label'}),
		"$label: the worker published watermarks and announcements in that database");
}

attack_round('seals_off');
$node->append_conf('postgresql.conf', "eventsourcing.seal_interval = 1\n");
$node->reload;
attack_round('seals_on');
ok($node->poll_query_until('malloryland', q{
	SELECT count(*) > 0 FROM public.es_seals s
	JOIN public.es_applications a ON a.id OPERATOR(pg_catalog.=) s.application_id
	WHERE a.name OPERATOR(pg_catalog.=) 'seals_on' AND s.last_notification_id OPERATOR(pg_catalog.=) 28}),
	'seals_on: the worker sealed the application');
sleep(3);    # more worker rounds and seals
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'"), 'f',
	'mallory is not a superuser');
is($node->safe_psql('malloryland', 'SELECT count(*) FROM evil.calls'), '0',
	'no planted operator or function was ever called, by the worker or inside the extension\'s functions')
  or diag($node->safe_psql('malloryland', 'SELECT who, count(*) FROM evil.calls GROUP BY who'));

# 2. Id counters: a database's share is eventsourcing.max_applications_per_database.
$node->safe_psql('postgres', q(
	CREATE DATABASE tenant_a; CREATE DATABASE tenant_b; CREATE DATABASE tenant_c;
));
sub appendable
{
	my ($db, $n) = @_;
	$node->safe_psql($db, "CREATE EXTENSION IF NOT EXISTS $ES_EXT");
	my $count = 0;
	my $err = '';
	for my $i (1 .. $n)
	{
		$node->safe_psql($db, "SELECT es_create_application('t$i')");
		my ($r, $o, $e) = $node->psql($db,
			"\\set VERBOSITY verbose\nSELECT es_append('t$i', gen_random_uuid(), 1, 'T', '{}')");
		if ($r != 0) { $err = $e; last; }
		$count++;
	}
	return ($count, $err);
}
my ($a_count, $a_err) = appendable('tenant_a', 20);
is($a_count, 8, 'a tenant gets eventsourcing.max_applications_per_database counters');
like($a_err, qr/53400: too many applications of this database/, '... then SQLSTATE 53400');
like($a_err, qr/eventsourcing\.max_applications_per_database \(currently 8\)/, '... naming the setting');
my ($b_count) = appendable('tenant_b', 8);
is($b_count, 8, 'another database still gets its share');
# malloryland holds 2, tenant_a 8, tenant_b 8: 18 of 24.  A dropped
# database's counters are given back when the server runs out.
$node->safe_psql('postgres', 'DROP DATABASE tenant_a WITH (FORCE)');
my ($c_count, $c_err) = appendable('tenant_c', 8);
is($c_count, 8, 'a dropped database\'s counters are given back to others') or diag($c_err);

$node->stop;
done_testing();
