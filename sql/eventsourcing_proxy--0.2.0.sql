-- eventsourcing_proxy 0.2.0: the install script of the proxy database.
--
-- The proxy database holds no events: it knows the shards (servers, each with
-- the eventsourcing extension) and on which one each application lives, and
-- has a function of the same name and signature for every call of the
-- eventsourcing API, written in PL/Proxy, that runs the call on the
-- application's shard.  A client connected to the proxy uses the same SQL as
-- against one server.  See "Scaling out" in README.md.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION eventsourcing_proxy" to load this file. \quit

--------------------------------------------------------------------------
-- The shards and the placement of applications
--------------------------------------------------------------------------

CREATE TABLE @extschema@.es_proxy_shards (
    shard     integer PRIMARY KEY CONSTRAINT es_proxy_shards_shard_check CHECK (shard >= 0),
    connstr   text NOT NULL,
    added_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.es_proxy_shards IS
    'The shards: libpq connection strings of databases with the eventsourcing extension, numbered from 0 (PL/Proxy partition numbers). Written by es_proxy_add_shard and es_proxy_set_shard.';

CREATE TABLE @extschema@.es_proxy_placements (
    application  text COLLATE "C" PRIMARY KEY,
    shard        integer NOT NULL REFERENCES @extschema@.es_proxy_shards (shard),
    placed_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.es_proxy_placements IS
    'Where each application lives (recorded by es_create_application through the proxy, es_proxy_adopt and es_proxy_move).';

CREATE TABLE @extschema@.es_proxy_cluster (
    version  integer NOT NULL
);
COMMENT ON TABLE @extschema@.es_proxy_cluster IS
    'One row: the version of the shard list, bumped by every change of es_proxy_shards, so that PL/Proxy reloads it (plproxy.get_cluster_version).';
INSERT INTO @extschema@.es_proxy_cluster VALUES (1);

CREATE TABLE @extschema@.es_proxy_settings (
    key  text PRIMARY KEY,
    val  text
);
COMMENT ON TABLE @extschema@.es_proxy_settings IS
    'PL/Proxy settings of the cluster (plproxy.get_cluster_config): connection_lifetime, query_timeout, keepidle, ...; modular_mapping must stay 1 (partition = shard number).';
INSERT INTO @extschema@.es_proxy_settings VALUES ('modular_mapping', '1');

SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_proxy_shards', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_proxy_placements', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_proxy_cluster', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_proxy_settings', '');
-- Connection strings may hold passwords: the tables are the owner's.
REVOKE ALL ON @extschema@.es_proxy_shards, @extschema@.es_proxy_placements,
    @extschema@.es_proxy_cluster, @extschema@.es_proxy_settings FROM PUBLIC;

CREATE FUNCTION @extschema@.es_proxy_bump_version()
RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE @extschema@.es_proxy_cluster SET version = version + 1;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_bump_version() IS
    'Trigger: a change of the shard list makes PL/Proxy reload it.';
CREATE TRIGGER es_proxy_shards_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_proxy_shards
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_proxy_bump_version();

--------------------------------------------------------------------------
-- The PL/Proxy cluster 'eventsourcing', read from those tables
-- (PL/Proxy's configuration functions; other clusters of this database can
-- be defined with SQL/MED, which PL/Proxy looks at first)
--------------------------------------------------------------------------

CREATE SCHEMA IF NOT EXISTS plproxy;
-- PL/Proxy calls them as the caller, whoever that is (they read the
-- tables as their owner).
GRANT USAGE ON SCHEMA plproxy TO PUBLIC;

CREATE FUNCTION plproxy.get_cluster_version(cluster_name text)
RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cluster_name = 'eventsourcing' THEN
        RETURN (SELECT c.version FROM @extschema@.es_proxy_cluster c);
    END IF;
    RAISE EXCEPTION 'unknown PL/Proxy cluster "%"', cluster_name USING ERRCODE = '42704';
END $$;
COMMENT ON FUNCTION plproxy.get_cluster_version(text) IS
    'PL/Proxy: the version of the shard list of cluster eventsourcing.';

CREATE FUNCTION plproxy.get_cluster_partitions(cluster_name text)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cluster_name <> 'eventsourcing' THEN
        RAISE EXCEPTION 'unknown PL/Proxy cluster "%"', cluster_name USING ERRCODE = '42704';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.es_proxy_shards) THEN
        RAISE EXCEPTION 'the eventsourcing proxy has no shards'
            USING ERRCODE = '55000', HINT = 'Add them with es_proxy_add_shard(connstr).';
    END IF;
    RETURN QUERY SELECT s.connstr FROM @extschema@.es_proxy_shards s ORDER BY s.shard;
END $$;
COMMENT ON FUNCTION plproxy.get_cluster_partitions(text) IS
    'PL/Proxy: the connection strings of the shards, in shard order (partition n is shard n).';

CREATE FUNCTION plproxy.get_cluster_config(IN cluster_name text, OUT key text, OUT val text)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.key, s.val FROM @extschema@.es_proxy_settings s WHERE cluster_name = 'eventsourcing'
$$;
COMMENT ON FUNCTION plproxy.get_cluster_config(text) IS
    'PL/Proxy: the settings of cluster eventsourcing (es_proxy_settings).';

--------------------------------------------------------------------------
-- Routing
--------------------------------------------------------------------------

-- The shard of an application not placed yet: a hash of its name modulo the
-- number of shards.  Placements are recorded when applications are created
-- through the proxy (and by es_proxy_adopt), so adding a shard moves none.
CREATE FUNCTION @extschema@.es_proxy_default_shard(application text)
RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := (SELECT count(*) FROM @extschema@.es_proxy_shards);
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'the eventsourcing proxy has no shards'
            USING ERRCODE = '55000', HINT = 'Add them with es_proxy_add_shard(connstr).';
    END IF;
    RETURN (hashtext(application) & 2147483647) % n;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_default_shard(text) IS
    'The shard an application that is not placed yet goes to: a hash of its name modulo the number of shards.';

-- Every routed call goes through here (PL/Proxy's RUN ON), in the caller's
-- transaction.  The shared advisory lock, held to the end of that
-- transaction, is what es_proxy_move waits for; a call that finds the
-- application being moved fails at once with 55000 instead of queueing.
CREATE FUNCTION @extschema@.es_proxy_partition(application text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    IF application IS NULL THEN
        RETURN 0;        -- (the shard reports the NULL argument)
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(1702064248, hashtext(application)) THEN
        RAISE EXCEPTION 'application "%" is being moved to another shard', application
            USING ERRCODE = '55000', HINT = 'Retry when es_proxy_move has finished.';
    END IF;
    SELECT x.shard INTO p FROM @extschema@.es_proxy_placements x
    WHERE x.application = es_proxy_partition.application;
    IF NOT FOUND THEN
        RETURN @extschema@.es_proxy_default_shard(application);
    END IF;
    RETURN p.shard;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_partition(text) IS
    'The shard (PL/Proxy partition) an application''s calls run on; 55000 while it is being moved.';

-- es_create_application: places the application (if it is not yet) and
-- creates it on that shard.
CREATE FUNCTION @extschema@.es_proxy_place(application text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s integer := @extschema@.es_proxy_partition(application);
BEGIN
    IF application IS NOT NULL THEN
        INSERT INTO @extschema@.es_proxy_placements (application, shard) VALUES (application, s)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN s;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_place(text) IS
    'Records where an application goes (its current shard, or the default one) and returns it.';

CREATE FUNCTION @extschema@.es_proxy_shard_of(application text, OUT shard integer, OUT connstr text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.shard, regexp_replace(s.connstr, 'password\s*=\s*(''([^''\\]|\\.)*''|\S*)', '', 'g')
    FROM @extschema@.es_proxy_shards s
    WHERE s.shard = coalesce((SELECT x.shard FROM @extschema@.es_proxy_placements x
                              WHERE x.application = es_proxy_shard_of.application),
                             @extschema@.es_proxy_default_shard(application))
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_shard_of(text) IS
    'The shard that holds the application and its connection string (without password): where its followers LISTEN.';

--------------------------------------------------------------------------
-- Types: the same as the eventsourcing extension's
--------------------------------------------------------------------------

CREATE TYPE @extschema@.es_event AS (
    originator_id       uuid,
    originator_version  bigint,
    topic               text,
    state               bytea
);
COMMENT ON TYPE @extschema@.es_event IS 'As in the eventsourcing extension: an event to append.';

CREATE TYPE @extschema@.es_notification AS (
    id                  bigint,
    originator_id       uuid,
    originator_version  bigint,
    topic               text,
    state               bytea,
    recorded_at         timestamptz,
    event_hash          bytea
);
COMMENT ON TYPE @extschema@.es_notification IS 'As in the eventsourcing extension: a recorded event with its notification id.';

CREATE TYPE @extschema@.es_stored_event AS (
    originator_id       uuid,
    originator_version  bigint,
    topic               text,
    state               bytea,
    recorded_at         timestamptz,
    event_hash          bytea
);
COMMENT ON TYPE @extschema@.es_stored_event IS 'As in the eventsourcing extension: a recorded event of one aggregate.';

CREATE TYPE @extschema@.es_verification AS (
    ok                  boolean,
    events              bigint,
    originator_version  bigint,
    problem             text,
    detail              text
);
COMMENT ON TYPE @extschema@.es_verification IS 'As in the eventsourcing extension: the result of es_verify.';

CREATE TYPE @extschema@.es_log_problem AS (
    kind                text,
    originator_id       uuid,
    originator_version  bigint,
    notification_id     bigint,
    seal_id             bigint,
    problem             text,
    detail              text
);
COMMENT ON TYPE @extschema@.es_log_problem IS 'As in the eventsourcing extension: a problem found by es_verify_log.';

CREATE TYPE @extschema@.es_seals AS (
    application_id         integer,
    seal_id                bigint,
    after_notification_id  bigint,
    last_notification_id   bigint,
    event_count            bigint,
    gaps                   int8multirange,
    previous_digest        bytea,
    digest                 bytea,
    sealed_at              timestamptz
);
COMMENT ON TYPE @extschema@.es_seals IS 'As the eventsourcing extension''s table es_seals: a seal, as es_seal returns it (application_id is the shard''s).';

CREATE TYPE @extschema@.es_dcb_event AS (
    "position"   bigint,
    type         text,
    data         jsonb,
    tags         text[],
    data_bytes   bytea,
    recorded_at  timestamptz,
    event_id     uuid
);
COMMENT ON TYPE @extschema@.es_dcb_event IS 'As in the eventsourcing extension: a tagged event.';

--------------------------------------------------------------------------
-- The API, each call run on the application's shard.  PL/Proxy runs each
-- one in a transaction of its own on the shard (autocommit).
--------------------------------------------------------------------------

CREATE FUNCTION @extschema@.es_proxy_create_on(shard integer, name text)
RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON shard;
    SELECT @extschema@.es_create_application(name);
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_create_on(integer, text) IS
    'es_create_application on the given shard.';

CREATE FUNCTION @extschema@.es_create_application(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.es_proxy_create_on(@extschema@.es_proxy_place(name), name);
END $$;
COMMENT ON FUNCTION @extschema@.es_create_application(text) IS
    'Through the proxy: places the application on a shard (a hash of its name modulo the number of shards, recorded) and creates it there.';

CREATE FUNCTION @extschema@.es_append(application text, events @extschema@.es_event[])
RETURNS SETOF bigint
LANGUAGE plproxy ROWS 10 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append(text, @extschema@.es_event[]) IS 'Through the proxy: es_append on the application''s shard.';

CREATE FUNCTION @extschema@.es_append(application text, events @extschema@.es_event[],
    upstream_application text, upstream_notification_id bigint)
RETURNS SETOF bigint
LANGUAGE plproxy ROWS 10 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append(text, @extschema@.es_event[], text, bigint) IS 'Through the proxy: es_append with tracking on the application''s shard (the position is recorded there).';

CREATE FUNCTION @extschema@.es_append(application text, event @extschema@.es_event)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append(text, @extschema@.es_event) IS 'Through the proxy: es_append of one event.';

CREATE FUNCTION @extschema@.es_append(application text, originator_id uuid,
    originator_version bigint, topic text, state bytea)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append(text, uuid, bigint, text, bytea) IS 'Through the proxy: es_append of one event, field by field.';

CREATE FUNCTION @extschema@.es_append_json(application text, originator_id uuid,
    originator_version bigint, topic text, state jsonb)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append_json(text, uuid, bigint, text, jsonb) IS 'Through the proxy: es_append_json of one event.';

CREATE FUNCTION @extschema@.es_append_json(application text, events jsonb)
RETURNS SETOF bigint
LANGUAGE plproxy ROWS 10 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append_json(text, jsonb) IS 'Through the proxy: es_append_json of a JSON array of events.';

CREATE FUNCTION @extschema@.es_append_json(application text, events jsonb,
    upstream_application text, upstream_notification_id bigint)
RETURNS SETOF bigint
LANGUAGE plproxy ROWS 10 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_append_json(text, jsonb, text, bigint) IS 'Through the proxy: es_append_json with tracking.';

CREATE FUNCTION @extschema@.es_select(application text, start bigint, max_count integer,
    stop bigint DEFAULT NULL, topics text[] DEFAULT NULL,
    group_member integer DEFAULT NULL, group_size integer DEFAULT NULL)
RETURNS SETOF @extschema@.es_notification
LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_select(text, bigint, integer, bigint, text[], integer, integer) IS 'Through the proxy: es_select on the application''s shard.';

CREATE FUNCTION @extschema@.es_events(application text, originator_id uuid,
    gt bigint DEFAULT NULL, lte bigint DEFAULT NULL, descending boolean DEFAULT false,
    max_count integer DEFAULT NULL)
RETURNS SETOF @extschema@.es_stored_event
LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_events(text, uuid, bigint, bigint, boolean, integer) IS 'Through the proxy: es_events on the application''s shard.';

CREATE FUNCTION @extschema@.es_max_notification_id(application text)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_max_notification_id(text) IS 'Through the proxy: es_max_notification_id.';

CREATE FUNCTION @extschema@.es_tracking_position(application text, upstream_application text)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_tracking_position(text, text) IS 'Through the proxy: es_tracking_position, read on the shard of the follower (application).';

CREATE FUNCTION @extschema@.es_head(application text, originator_id uuid)
RETURNS bytea
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_head(text, uuid) IS 'Through the proxy: es_head.';

CREATE FUNCTION @extschema@.es_verify(application text, originator_id uuid,
    expected_head bytea DEFAULT NULL)
RETURNS @extschema@.es_verification
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_verify(text, uuid, bytea) IS 'Through the proxy: es_verify.';

-- PL/Proxy cannot pass a multirange: the gaps travel as text.
CREATE FUNCTION @extschema@.es_proxy_seal(application text,
    OUT application_id integer, OUT seal_id bigint, OUT after_notification_id bigint,
    OUT last_notification_id bigint, OUT event_count bigint, OUT gaps text,
    OUT previous_digest bytea, OUT digest bytea, OUT sealed_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
    SELECT s.application_id, s.seal_id, s.after_notification_id, s.last_notification_id, s.event_count,
           s.gaps::text AS gaps, s.previous_digest, s.digest, s.sealed_at
    FROM @extschema@.es_seal(application) s;
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_seal(text) IS 'es_seal on the application''s shard, the gaps as text.';

CREATE FUNCTION @extschema@.es_seal(application text)
RETURNS @extschema@.es_seals
LANGUAGE sql VOLATILE AS $$
    SELECT s.application_id, s.seal_id, s.after_notification_id, s.last_notification_id, s.event_count,
           s.gaps::pg_catalog.int8multirange, s.previous_digest, s.digest, s.sealed_at
    FROM @extschema@.es_proxy_seal(application) s
$$;
COMMENT ON FUNCTION @extschema@.es_seal(text) IS 'Through the proxy: es_seal.';

CREATE FUNCTION @extschema@.es_verify_log(application text)
RETURNS SETOF @extschema@.es_log_problem
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_verify_log(text) IS 'Through the proxy: es_verify_log.';

CREATE FUNCTION @extschema@.es_channel(application text)
RETURNS text
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_channel(text) IS 'Through the proxy: es_channel, the channel to LISTEN on at the application''s shard (es_proxy_shard_of).';

CREATE FUNCTION @extschema@.es_wait(application text, after bigint, timeout_ms integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_wait(text, bigint, integer) IS 'Through the proxy: es_wait, a blocking call on the application''s shard.';

CREATE FUNCTION @extschema@.es_define_fold(application text, topic text, operations jsonb)
RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_define_fold(text, text, jsonb) IS 'Through the proxy: es_define_fold.';

CREATE FUNCTION @extschema@.es_set_snapshot_every(application text, events integer)
RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_set_snapshot_every(text, integer) IS 'Through the proxy: es_set_snapshot_every.';

CREATE FUNCTION @extschema@.es_state(application text, originator_id uuid, at_version bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_state(text, uuid, bigint) IS 'Through the proxy: es_state, folded on the application''s shard.';

CREATE FUNCTION @extschema@.es_snapshot(application text, originator_id uuid)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_snapshot(text, uuid) IS 'Through the proxy: es_snapshot.';

CREATE FUNCTION @extschema@.es_configure(application text, compression boolean DEFAULT NULL,
    encryption boolean DEFAULT NULL)
RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_configure(text, boolean, boolean) IS 'Through the proxy: es_configure.';

CREATE FUNCTION @extschema@.es_forget(application text, originator_id uuid)
RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_forget(text, uuid) IS 'Through the proxy: es_forget.';

CREATE FUNCTION @extschema@.es_set_compression_dictionary(application text, dictionary bytea)
RETURNS integer
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_set_compression_dictionary(text, bytea) IS 'Through the proxy: es_set_compression_dictionary.';

CREATE FUNCTION @extschema@.es_select_stored(application text, start bigint, max_count integer)
RETURNS TABLE (id bigint, originator_id uuid, originator_version bigint, topic text,
    stored_form smallint, stored_state bytea, event_hash bytea)
LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_select_stored(text, bigint, integer) IS 'Through the proxy: es_select_stored.';

CREATE FUNCTION @extschema@.es_has_privilege(application text, privilege text)
RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_has_privilege(text, text) IS 'Through the proxy: es_has_privilege on the application''s shard (database-wide, NULL: on shard 0).';

CREATE FUNCTION @extschema@.es_dcb_append(application text, events jsonb, condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_dcb_append(text, jsonb, jsonb) IS 'Through the proxy: es_dcb_append.';

CREATE FUNCTION @extschema@.es_dcb_read(application text, query jsonb DEFAULT NULL,
    after bigint DEFAULT NULL, max_count integer DEFAULT NULL)
RETURNS SETOF @extschema@.es_dcb_event
LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_dcb_read(text, jsonb, bigint, integer) IS 'Through the proxy: es_dcb_read.';

CREATE FUNCTION @extschema@.es_dcb_head(application text, query jsonb DEFAULT NULL, after bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON @extschema@.es_proxy_partition(application);
$$;
COMMENT ON FUNCTION @extschema@.es_dcb_head(text, jsonb, bigint) IS 'Through the proxy: es_dcb_head.';

-- Grants: on the application's shard; database-wide ones (NULL application)
-- on every shard, one after the other.
CREATE FUNCTION @extschema@.es_proxy_grant_on(shard integer, application text, role text, privilege text, revoke boolean)
RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON shard;
    SELECT CASE WHEN revoke THEN @extschema@.es_revoke(application, role, privilege)
                ELSE @extschema@.es_grant(application, role, privilege) END;
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_grant_on(integer, text, text, text, boolean) IS
    'es_grant (or es_revoke) on the given shard.';

CREATE FUNCTION @extschema@.es_grant(application text, role text, privilege text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s integer;
BEGIN
    IF application IS NOT NULL THEN
        PERFORM @extschema@.es_proxy_grant_on(@extschema@.es_proxy_partition(application), application, role, privilege, false);
        RETURN;
    END IF;
    FOR s IN SELECT generate_series(0, (SELECT count(*)::integer FROM @extschema@.es_proxy_shard_list()) - 1) LOOP
        PERFORM @extschema@.es_proxy_grant_on(s, application, role, privilege, false);
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.es_grant(text, text, text) IS
    'Through the proxy: es_grant on the application''s shard; with a NULL application, on every shard.';

CREATE FUNCTION @extschema@.es_revoke(application text, role text, privilege text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s integer;
BEGIN
    IF application IS NOT NULL THEN
        PERFORM @extschema@.es_proxy_grant_on(@extschema@.es_proxy_partition(application), application, role, privilege, true);
        RETURN;
    END IF;
    FOR s IN SELECT generate_series(0, (SELECT count(*)::integer FROM @extschema@.es_proxy_shard_list()) - 1) LOOP
        PERFORM @extschema@.es_proxy_grant_on(s, application, role, privilege, true);
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.es_revoke(text, text, text) IS
    'Through the proxy: es_revoke on the application''s shard; with a NULL application, on every shard.';

-- es_jsonb needs no shard: the same conversion, here.
CREATE FUNCTION @extschema@.es_jsonb(state bytea)
RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT pg_catalog.convert_from(state, 'UTF8')::jsonb
$$;
COMMENT ON FUNCTION @extschema@.es_jsonb(bytea) IS
    'A state''s bytes as jsonb, computed in the proxy (as es_jsonb of the eventsourcing extension).';

--------------------------------------------------------------------------
-- Calls over all shards, merged
--------------------------------------------------------------------------

CREATE FUNCTION @extschema@.es_proxy_status(
    OUT application text, OUT events bigint, OUT head_id bigint, OUT readable_id bigint,
    OUT watermark_id bigint, OUT announced_id bigint, OUT last_seal_id bigint,
    OUT sealed_through_id bigint, OUT last_seal_age interval, OUT followers bigint,
    OUT max_follower_lag bigint, OUT compression boolean, OUT encryption boolean,
    OUT compression_dictionary integer, OUT worker_running boolean)
RETURNS SETOF record
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON ALL;
    SELECT s.* FROM @extschema@.es_status s;
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_status() IS 'es_status of every shard.';

CREATE VIEW @extschema@.es_status AS SELECT * FROM @extschema@.es_proxy_status();
COMMENT ON VIEW @extschema@.es_status IS
    'Through the proxy: es_status of every shard, merged (followers and max_follower_lag count the tracking rows on the application''s own shard only).';
GRANT SELECT ON @extschema@.es_status TO PUBLIC;

CREATE FUNCTION @extschema@.es_proxy_followers(OUT application text, OUT follower text, OUT "position" bigint)
RETURNS SETOF record
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON ALL;
    SELECT f.application, f.follower, f."position" FROM @extschema@.es_followers f;
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_followers() IS 'The tracking rows of es_followers of every shard.';

CREATE VIEW @extschema@.es_followers AS
SELECT f.application, f.follower, f."position", s.head_id, s.head_id - f."position" AS lag
FROM @extschema@.es_proxy_followers() f
LEFT JOIN @extschema@.es_status s ON s.application = f.application;
COMMENT ON VIEW @extschema@.es_followers IS
    'Through the proxy: each follower''s position (from its own shard) and its lag behind the upstream''s head (from the upstream''s shard).';
GRANT SELECT ON @extschema@.es_followers TO PUBLIC;

--------------------------------------------------------------------------
-- Administration (the extension's owner)
--------------------------------------------------------------------------

CREATE FUNCTION @extschema@.es_proxy_shard_list(OUT shard integer, OUT connstr text)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.shard, regexp_replace(s.connstr, 'password\s*=\s*(''([^''\\]|\\.)*''|\S*)', '', 'g')
    FROM @extschema@.es_proxy_shards s ORDER BY s.shard
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_shard_list() IS
    'The shards and their connection strings (without passwords).';

CREATE FUNCTION @extschema@.es_proxy_applications_on(shard integer)
RETURNS SETOF text
LANGUAGE plproxy AS $$
    CLUSTER 'eventsourcing';
    RUN ON shard;
    SELECT a.name FROM @extschema@.es_applications a;
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_applications_on(integer) IS
    'The names of the applications of one shard (read as the caller: a superuser).';

CREATE FUNCTION @extschema@.es_proxy_adopt()
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s integer;
    n integer := 0;
    k integer;
BEGIN
    FOR s IN SELECT x.shard FROM @extschema@.es_proxy_shards x ORDER BY x.shard LOOP
        INSERT INTO @extschema@.es_proxy_placements (application, shard)
        SELECT a, s FROM @extschema@.es_proxy_applications_on(s) a
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_adopt() IS
    'Records the placement of every application found on a shard that has none yet (created there directly, say); returns how many.';

-- Connection strings are readable by every caller of the proxy (PL/Proxy
-- reads them through plproxy.get_cluster_partitions as the caller), so they
-- must not carry secrets: passwords go in the proxy server's ~/.pgpass.
CREATE FUNCTION @extschema@.es_proxy_check_connstr(connstr text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF connstr IS NULL OR btrim(connstr) = '' THEN
        RAISE EXCEPTION 'connstr must be a libpq connection string' USING ERRCODE = '22023';
    END IF;
    IF connstr ~* '(^|[^a-z_])(ssl)?password\s*=' OR connstr ~ '^postgres(ql)?://[^/@?]*:[^/@?]*@' THEN
        RAISE EXCEPTION 'connstr must not hold a password'
            USING ERRCODE = '22023',
                  DETAIL = 'Every role that calls the proxy can read the connection strings of the shards.',
                  HINT = 'Put the password in the proxy server''s ~/.pgpass (or PGPASSFILE) instead.';
    END IF;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_check_connstr(text) IS
    'Refuses an empty connection string or one that holds a password (22023): every caller of the proxy can read them.';

CREATE FUNCTION @extschema@.es_proxy_add_shard(connstr text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM @extschema@.es_proxy_check_connstr(connstr);
    -- No application is placed by the old shard count while this runs.
    LOCK TABLE @extschema@.es_proxy_placements IN EXCLUSIVE MODE;
    LOCK TABLE @extschema@.es_proxy_shards IN EXCLUSIVE MODE;
    -- Applications not placed yet would otherwise move with the new count.
    IF EXISTS (SELECT FROM @extschema@.es_proxy_shards) THEN
        PERFORM @extschema@.es_proxy_adopt();
    END IF;
    n := (SELECT count(*) FROM @extschema@.es_proxy_shards);
    INSERT INTO @extschema@.es_proxy_shards (shard, connstr) VALUES (n, connstr);
    -- And those on the new shard.
    INSERT INTO @extschema@.es_proxy_placements (application, shard)
    SELECT a, n FROM @extschema@.es_proxy_applications_on(n) a
    ON CONFLICT DO NOTHING;
    RETURN n;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_add_shard(text) IS
    'Adds a shard (a libpq connection string of a database with the eventsourcing extension) and returns its number; records the placement of the applications already on the shards (and on the new one), so that none moves.';

CREATE FUNCTION @extschema@.es_proxy_configure(connstrs text[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c text;
BEGIN
    IF EXISTS (SELECT FROM @extschema@.es_proxy_shards) THEN
        RAISE EXCEPTION 'the eventsourcing proxy has shards already'
            USING ERRCODE = '55000', HINT = 'Use es_proxy_add_shard or es_proxy_set_shard.';
    END IF;
    FOREACH c IN ARRAY connstrs LOOP
        PERFORM @extschema@.es_proxy_add_shard(c);
    END LOOP;
    RETURN (SELECT count(*) FROM @extschema@.es_proxy_shards);
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_configure(text[]) IS
    'Sets up the shards of a new proxy, numbered in array order from 0; returns how many.';

CREATE FUNCTION @extschema@.es_proxy_set_shard(shard integer, connstr text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.es_proxy_check_connstr(connstr);
    UPDATE @extschema@.es_proxy_shards s SET connstr = es_proxy_set_shard.connstr
    WHERE s.shard = es_proxy_set_shard.shard;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no shard %', shard USING ERRCODE = '42704';
    END IF;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_set_shard(integer, text) IS
    'Points a shard at another connection string (the same database, say its promoted standby).';

-- A connection string for dblink: the shard's, as the current user.
CREATE FUNCTION @extschema@.es_proxy_dblink_connstr(shard integer)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s.connstr ~ '\muser\s*=' THEN s.connstr
                ELSE s.connstr || ' user=''' || replace(replace(current_user, '\', '\\'), '''', '\''') || '''' END
    FROM @extschema@.es_proxy_shards s WHERE s.shard = es_proxy_dblink_connstr.shard
$$;
COMMENT ON FUNCTION @extschema@.es_proxy_dblink_connstr(integer) IS
    'The connection string es_proxy_move opens a shard with (the current user unless it names one).';

-- The search_path of the functions that call dblink: wherever it is installed.
-- (No SET clause of its own: that would undo the change when it returns.)
CREATE FUNCTION @extschema@.es_proxy_use_dblink()
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', pg_catalog.format('pg_catalog, %I, pg_temp',
        (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
         WHERE e.extname OPERATOR(pg_catalog.=) 'dblink')), true);
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_use_dblink() IS
    'es_proxy_move: puts dblink''s schema on the (function-local) search_path.';

-- Copies the rows of one table of one application from the source to the
-- target connection, application_id rewritten, in pages of 5000 rows (by
-- notification_id for the events, which their primary key serves; by ctid
-- for the rest; the source is read in one REPEATABLE READ transaction);
-- returns how many.
CREATE FUNCTION @extschema@.es_proxy_copy_table(tbl text, key text, old_id integer, new_id integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    page json;
    n bigint := 0;
    k bigint;
    last text := NULL;
    q text;
BEGIN
    PERFORM @extschema@.es_proxy_use_dblink();
    LOOP
        q := format('SELECT json_agg(jsonb_set(to_jsonb(t) - ''es_key'', ''{application_id}'', to_jsonb(%s)) ORDER BY t.es_key), '
                    'count(*), max(t.es_key)::text FROM (SELECT x.%I AS es_key, x.* FROM @extschema@.%I x '
                    'WHERE x.application_id = %s %s ORDER BY x.%I LIMIT 5000) t',
                    new_id, key, tbl, old_id,
                    CASE WHEN last IS NULL THEN ''
                         ELSE format('AND x.%I > %L::%s', key, last, CASE WHEN key = 'ctid' THEN 'tid' ELSE 'bigint' END) END,
                    key);
        SELECT r.page, r.k, r.last INTO page, k, last
        FROM dblink('es_proxy_move_src', q) AS r(page json, k bigint, last text);
        EXIT WHEN k = 0;
        PERFORM dblink_exec('es_proxy_move_tgt',
            format('INSERT INTO @extschema@.%I SELECT * FROM json_populate_recordset(NULL::@extschema@.%I, %L)',
                   tbl, tbl, page));
        n := n + k;
        EXIT WHEN k < 5000;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_copy_table(text, text, integer, integer) IS
    'es_proxy_move: copies one table''s rows of an application between its open dblink connections.';

CREATE FUNCTION @extschema@.es_proxy_summary(conn text, app_id integer)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.es_proxy_use_dblink();
    RETURN (SELECT r.s FROM dblink(conn, format(
        'SELECT count(*) || '' events, highest id '' || coalesce(max(e.notification_id), 0) || '', hashes '' || '
        'md5(coalesce(string_agg(e.notification_id || '':'' || encode(e.event_hash, ''hex''), '','' ORDER BY e.notification_id), '''')) '
        'FROM @extschema@.es_stored_events e WHERE e.application_id = %s', app_id)) AS r(s text));
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_summary(text, integer) IS
    'es_proxy_move: count, highest id and a digest of every id and event hash of an application, over a dblink connection.';

-- Moves an application to another shard, offline for that application only
-- (one transaction of the proxy):
--  1. takes the application's advisory lock: waits for the calls in flight
--     (each holds it shared to the end of its transaction), and from then on
--     its calls fail with 55000 (es_proxy_partition);
--  2. in one transaction on the target: creates it (a new application_id),
--     copies its rows with that id (events with their ids and hashes, seals,
--     tracking, watermark, folds, snapshots, grants, dictionaries, forgotten
--     keys, es_dcb_index), verifies there (es_verify_log finds nothing; the
--     count, the highest id and every event's hash are the source's) and
--     commits;
--  3. points the placement at the target, deletes the application on the
--     source (eventsourcing.allow_rewrite), and returns; the placement and
--     the lock change hands when the proxy's transaction commits.
-- Refuses applications with data keys (encrypted states): wrapped keys are
-- bound to the application_id.  A superuser of the proxy and of both shards.
CREATE FUNCTION @extschema@.es_proxy_move(application text, target integer)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src integer;
    old_id integer;
    new_id integer;
    a jsonb;
    n bigint;
    src_sum text;
    tgt_sum text;
    problems bigint;
    copied text := '';
    t record;
BEGIN
    PERFORM @extschema@.es_proxy_use_dblink();
    IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'es_proxy_move needs a superuser' USING ERRCODE = '42501';
    END IF;
    IF application IS NULL OR target IS NULL THEN
        RAISE EXCEPTION 'application and target must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.es_proxy_shards s WHERE s.shard = target) THEN
        RAISE EXCEPTION 'no shard %', target USING ERRCODE = '42704';
    END IF;
    -- Calls in flight hold the lock shared to the end of their transaction;
    -- new ones find it taken and fail with 55000.
    PERFORM pg_advisory_xact_lock(1702064248, hashtext(application));
    src := coalesce((SELECT p.shard FROM @extschema@.es_proxy_placements p WHERE p.application = es_proxy_move.application),
                    @extschema@.es_proxy_default_shard(application));
    IF src = target THEN
        RAISE EXCEPTION 'application "%" is on shard % already', application, target USING ERRCODE = '55000';
    END IF;

    BEGIN
        PERFORM dblink_connect('es_proxy_move_src', @extschema@.es_proxy_dblink_connstr(src));
        PERFORM dblink_connect('es_proxy_move_tgt', @extschema@.es_proxy_dblink_connstr(target));
        PERFORM dblink_exec('es_proxy_move_src', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
        SELECT r.id, r.a INTO old_id, a FROM dblink('es_proxy_move_src', format(
            'SELECT a.id, to_jsonb(a) - ''id'' - ''name'' FROM @extschema@.es_applications a WHERE a.name = %L', application))
            AS r(id integer, a jsonb);
        IF old_id IS NULL THEN
            RAISE EXCEPTION 'application "%" does not exist on shard %', application, src USING ERRCODE = '42704';
        END IF;
        SELECT r.n INTO n FROM dblink('es_proxy_move_src', format(
            'SELECT count(*) FROM @extschema@.es_keys k WHERE k.application_id = %s AND k.wrapped_key IS NOT NULL', old_id))
            AS r(n bigint);
        IF n > 0 THEN
            RAISE EXCEPTION 'application "%" cannot be moved: it has % data keys of encrypted aggregates, bound to its application_id on shard %',
                application, n, src
                USING ERRCODE = '0A000', HINT = 'Applications with encrypted states stay on their shard.';
        END IF;
        src_sum := @extschema@.es_proxy_summary('es_proxy_move_src', old_id);

        PERFORM dblink_exec('es_proxy_move_tgt', 'BEGIN');
        IF (SELECT r.n FROM dblink('es_proxy_move_tgt', format(
                'SELECT count(*) FROM @extschema@.es_applications a WHERE a.name = %L', application)) AS r(n bigint)) > 0 THEN
            RAISE EXCEPTION 'application "%" exists on shard % already', application, target USING ERRCODE = '42710';
        END IF;
        PERFORM * FROM dblink('es_proxy_move_tgt', format('SELECT @extschema@.es_create_application(%L)::text', application))
            AS r(x text);
        SELECT r.id INTO new_id FROM dblink('es_proxy_move_tgt', format(
            'SELECT a.id FROM @extschema@.es_applications a WHERE a.name = %L', application)) AS r(id integer);
        PERFORM dblink_exec('es_proxy_move_tgt', format(
            'UPDATE @extschema@.es_applications a SET (created_at, fold_function, fold_generation, snapshot_every, '
            'compression, encryption, compression_dictionary) = (SELECT r.created_at, r.fold_function, r.fold_generation, '
            'r.snapshot_every, r.compression, r.encryption, r.compression_dictionary '
            'FROM jsonb_populate_record(NULL::@extschema@.es_applications, %L) r) WHERE a.id = %s', a, new_id));
        -- The creator's admin grant: the source's grants replace it.
        PERFORM dblink_exec('es_proxy_move_tgt', format(
            'DELETE FROM @extschema@.es_grants g WHERE g.application_id = %s', new_id));
        FOR t IN SELECT * FROM (VALUES ('es_stored_events', 'notification_id'), ('es_dcb_index', 'ctid'),
                                      ('es_seals', 'ctid'), ('es_tracking', 'ctid'), ('es_watermarks', 'ctid'),
                                      ('es_folds', 'ctid'), ('es_snapshots', 'ctid'), ('es_grants', 'ctid'),
                                      ('es_dictionaries', 'ctid'), ('es_keys', 'ctid')) v(tbl, key)
        LOOP
            n := @extschema@.es_proxy_copy_table(t.tbl, t.key, old_id, new_id);
            copied := copied || format(', %s %s', t.tbl, n);
        END LOOP;

        -- Verified on the target before it commits.
        tgt_sum := @extschema@.es_proxy_summary('es_proxy_move_tgt', new_id);
        IF tgt_sum IS DISTINCT FROM src_sum THEN
            RAISE EXCEPTION 'the copy of application "%" differs from its source (%; source: %)',
                application, tgt_sum, src_sum USING ERRCODE = 'XX001';
        END IF;
        SELECT r.n INTO problems FROM dblink('es_proxy_move_tgt', format(
            'SELECT count(*) FROM @extschema@.es_verify_log(%L)', application)) AS r(n bigint);
        IF problems <> 0 THEN
            RAISE EXCEPTION 'the copy of application "%" on shard % does not verify: es_verify_log reports % problems',
                application, target, problems USING ERRCODE = 'XX001';
        END IF;
        PERFORM dblink_exec('es_proxy_move_tgt', 'COMMIT');
    EXCEPTION WHEN OTHERS THEN
        -- Nothing was committed on the target: closing rolls it back.
        IF 'es_proxy_move_tgt' = ANY (coalesce(dblink_get_connections(), '{}')) THEN
            PERFORM dblink_disconnect('es_proxy_move_tgt');
        END IF;
        IF 'es_proxy_move_src' = ANY (coalesce(dblink_get_connections(), '{}')) THEN
            PERFORM dblink_disconnect('es_proxy_move_src');
        END IF;
        RAISE;
    END;

    -- The target holds it: route there (seen when this transaction
    -- commits), and delete it on the source.
    INSERT INTO @extschema@.es_proxy_placements AS p (application, shard) VALUES (es_proxy_move.application, target)
    ON CONFLICT ON CONSTRAINT es_proxy_placements_pkey DO UPDATE SET shard = excluded.shard, placed_at = now();
    PERFORM dblink_exec('es_proxy_move_src', 'COMMIT');
    PERFORM dblink_exec('es_proxy_move_src', format(
        'BEGIN; SET LOCAL eventsourcing.allow_rewrite = on; '
        'DELETE FROM @extschema@.es_dcb_index WHERE application_id = %1$s; '
        'DROP TABLE @extschema@.es_stored_events_%1$s; '   -- the application's partition
        'DELETE FROM @extschema@.es_seals WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_tracking WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_watermarks WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_folds WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_snapshots WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_grants WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_dictionaries WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_keys WHERE application_id = %1$s; '
        'DELETE FROM @extschema@.es_applications WHERE id = %1$s; COMMIT', old_id));
    PERFORM dblink_disconnect('es_proxy_move_src');
    PERFORM dblink_disconnect('es_proxy_move_tgt');
    RETURN format('moved application "%s" from shard %s (application_id %s) to shard %s (application_id %s): %s%s',
                  application, src, old_id, target, new_id, src_sum, copied);
END $$;
COMMENT ON FUNCTION @extschema@.es_proxy_move(text, integer) IS
    'Moves an application to another shard, offline for that application only: its ids, hashes, seals and tracking positions kept, verified on the target before the placement changes; refuses applications with data keys. A superuser of the proxy and of both shards; returns what it copied.';

REVOKE EXECUTE ON FUNCTION @extschema@.es_proxy_adopt(), @extschema@.es_proxy_add_shard(text),
    @extschema@.es_proxy_configure(text[]), @extschema@.es_proxy_set_shard(integer, text),
    @extschema@.es_proxy_applications_on(integer), @extschema@.es_proxy_dblink_connstr(integer),
    @extschema@.es_proxy_use_dblink(), @extschema@.es_proxy_summary(text, integer),
    @extschema@.es_proxy_copy_table(text, text, integer, integer),
    @extschema@.es_proxy_move(text, integer) FROM PUBLIC;
