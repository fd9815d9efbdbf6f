-- eventsourcing 0.1.0 -> 0.2.0: privileges per application, seals with gap
-- ranges, snapshots bound to the chain, parallel labels.
\echo Use "ALTER EXTENSION eventsourcing UPDATE" to load this file. \quit

--------------------------------------------------------------------------
-- Privileges per application
--------------------------------------------------------------------------

CREATE TABLE @extschema@.es_grants (
    application_id  integer NOT NULL,
    grantee         regrole NOT NULL,
    privilege       text COLLATE "C" NOT NULL
        CONSTRAINT es_grants_privilege_check CHECK (privilege IN ('read', 'append', 'track', 'verify', 'seal', 'admin', 'create')),
    granted_by      regrole NOT NULL,
    granted_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT es_grants_pkey PRIMARY KEY (application_id, grantee, privilege)
);
COMMENT ON TABLE @extschema@.es_grants IS
    'Privileges on applications (application_id 0: every application, and the database-wide create), granted to roles (grantee 0: PUBLIC). Written by es_grant, es_revoke and es_create_application; shown by the view es_privileges.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_grants', '');

-- 0.1.0's table privileges become the same rights on every application, and
-- then go: from 0.2.0 on only the functions touch the tables.
DO $migrate$
DECLARE
    r record;
    owner oid := (SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'eventsourcing');
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee, m.privilege
        FROM pg_catalog.pg_class c
        CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
        JOIN (VALUES ('es_stored_events', 'SELECT', 'read'),
                     ('es_stored_events', 'SELECT', 'verify'),
                     ('es_stored_events', 'INSERT', 'append'),
                     ('es_tracking', 'UPDATE', 'track'),
                     ('es_seals', 'INSERT', 'seal'),
                     ('es_applications', 'INSERT', 'create')) AS m(relname, acl, privilege)
          ON m.relname = c.relname AND m.acl = a.privilege_type
        WHERE c.relnamespace = '@extschema@'::regnamespace
          AND a.grantee <> c.relowner
    LOOP
        INSERT INTO @extschema@.es_grants (application_id, grantee, privilege, granted_by)
        VALUES (0, r.grantee, r.privilege, owner) ON CONFLICT DO NOTHING;
    END LOOP;
    FOR r IN
        SELECT DISTINCT c.oid::regclass AS rel, a.grantee
        FROM pg_catalog.pg_class c
        CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
        WHERE c.relnamespace = '@extschema@'::regnamespace
          AND c.relname IN ('es_applications', 'es_stored_events', 'es_tracking', 'es_watermarks',
                            'es_seals', 'es_folds', 'es_snapshots', 'es_applications_id_seq')
          AND a.grantee <> c.relowner
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %s', r.rel,
            CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.grantee::regrole::text) END);
    END LOOP;
END
$migrate$;
REVOKE ALL ON @extschema@.es_grants FROM PUBLIC;

COMMENT ON TABLE @extschema@.es_stored_events IS
    'All recorded events: each in its aggregate''s version sequence and its application''s notification log. Written by es_append only; roles read and append through the functions, with privileges per application (es_grant).';
COMMENT ON FUNCTION @extschema@.es_create_application(text) IS
    'Creates an application (its own aggregates and notification log) and makes the caller its admin; creating one that exists and that the caller may see does nothing. Needs the create privilege.';

CREATE FUNCTION @extschema@.es_grant(application text, role text, privilege text)
RETURNS void
AS 'MODULE_PATHNAME', 'es_grant'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_grant(text, text, text) IS
    'Grants a privilege on an application (read, append, track, verify, seal, admin) to a role or PUBLIC; with a NULL application, on every application and (privilege create) the right to create them, which only the extension''s owner may grant. Needs admin on the application.';

CREATE FUNCTION @extschema@.es_revoke(application text, role text, privilege text)
RETURNS void
AS 'MODULE_PATHNAME', 'es_revoke'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_revoke(text, text, text) IS
    'Revokes a privilege granted with es_grant (same arguments).';

CREATE FUNCTION @extschema@.es_has_privilege(application text, privilege text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'es_has_privilege'
LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_has_privilege(text, text) IS
    'Whether the current user holds the privilege (NULL: any) on the application (NULL: database-wide); false for an unknown application.';

CREATE VIEW @extschema@.es_privileges WITH (security_barrier) AS
SELECT a.name AS application,
       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::text END AS grantee,
       g.privilege,
       g.granted_by::text AS granted_by,
       g.granted_at
FROM @extschema@.es_grants g
LEFT JOIN @extschema@.es_applications a ON a.id = g.application_id
WHERE CASE WHEN g.application_id = 0
           THEN g.grantee = 0
                OR @extschema@.es_has_privilege(NULL, 'admin')
                OR g.grantee IN (SELECT r.oid FROM pg_catalog.pg_roles r WHERE pg_catalog.pg_has_role(r.oid, 'USAGE'))
           ELSE @extschema@.es_has_privilege(a.name, NULL) END;
COMMENT ON VIEW @extschema@.es_privileges IS
    'Who holds which privilege on which application (NULL: every application), for the applications the current user has a privilege on.';
GRANT SELECT ON @extschema@.es_privileges TO PUBLIC;

--------------------------------------------------------------------------
-- Seals keep their gaps as ranges (a gap of any width costs one range)
--------------------------------------------------------------------------

CREATE FUNCTION @extschema@.es_gaps_to_ranges(gaps bigint[])
RETURNS int8multirange LANGUAGE sql IMMUTABLE
AS $$ SELECT coalesce(pg_catalog.range_agg(pg_catalog.int8range(g, g + 1)), '{}'::pg_catalog.int8multirange)
      FROM pg_catalog.unnest(gaps) AS g $$;
ALTER TABLE @extschema@.es_seals ALTER COLUMN gaps TYPE int8multirange
    USING @extschema@.es_gaps_to_ranges(gaps);
DROP FUNCTION @extschema@.es_gaps_to_ranges(bigint[]);
COMMENT ON TABLE @extschema@.es_seals IS
    'Seals of the notification log: each a SHA-256 digest over the events in (after_notification_id, last_notification_id], chained to the previous seal, with the ids that were permanent gaps then (gaps). Made by es_seal, checked by es_verify_log.';

--------------------------------------------------------------------------
-- Snapshots record the event hash they were made at (old ones are dropped:
-- they are a cache, and es_state makes new ones)
--------------------------------------------------------------------------

DELETE FROM @extschema@.es_snapshots;
ALTER TABLE @extschema@.es_snapshots ADD COLUMN event_hash bytea NOT NULL;
ALTER TABLE @extschema@.es_snapshots ALTER COLUMN state DROP NOT NULL;
ALTER TABLE @extschema@.es_snapshots ADD COLUMN stored_state bytea;
ALTER TABLE @extschema@.es_snapshots ADD CONSTRAINT es_snapshots_state_check
    CHECK ((state IS NULL) <> (stored_state IS NULL));
COMMENT ON TABLE @extschema@.es_snapshots IS
    'Snapshots of aggregates'' states, written by es_state and es_snapshot only; used by es_state when made with the current fold definitions (fold_generation) and while event_hash is still the hash of that version in the log. In state, or for encrypting applications in stored_state, encrypted under the aggregate''s data key.';

--------------------------------------------------------------------------
-- Stored form: compression and encryption, forgetting
--------------------------------------------------------------------------

ALTER TABLE @extschema@.es_applications
    ADD COLUMN compression boolean NOT NULL DEFAULT false,
    ADD COLUMN encryption boolean NOT NULL DEFAULT false,
    ADD COLUMN compression_dictionary integer;
ALTER TABLE @extschema@.es_stored_events
    ADD COLUMN stored_form smallint NOT NULL DEFAULT 0
        CONSTRAINT es_stored_events_stored_form_check CHECK (stored_form IN (0, 1));
COMMENT ON TABLE @extschema@.es_stored_events IS
    'All recorded events: each in its aggregate''s version sequence and its application''s notification log. Written by es_append only; roles read and append through the functions, with privileges per application (es_grant). stored_form 0: state as given; 1: a header, then the state compressed and/or encrypted (es_configure).';

CREATE TABLE @extschema@.es_keys (
    application_id  integer NOT NULL,
    originator_id   uuid NOT NULL,
    master_key_id   bytea,
    wrapped_key     bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    forgotten_at    timestamptz,
    CONSTRAINT es_keys_pkey PRIMARY KEY (application_id, originator_id)
);
COMMENT ON TABLE @extschema@.es_keys IS
    'The data key of every aggregate with encrypted states, wrapped (AES-256-GCM) by the master key whose id is master_key_id; NULL with forgotten_at once es_forget destroyed it.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_keys', '');
REVOKE ALL ON @extschema@.es_keys FROM PUBLIC;

CREATE TABLE @extschema@.es_dictionaries (
    application_id  integer NOT NULL,
    dictionary_id   integer NOT NULL,
    dictionary      bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT es_dictionaries_pkey PRIMARY KEY (application_id, dictionary_id)
);
COMMENT ON TABLE @extschema@.es_dictionaries IS
    'Preset compression dictionaries of applications (es_set_compression_dictionary), every one kept for the events compressed with it. Stored in clear.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_dictionaries', '');
REVOKE ALL ON @extschema@.es_dictionaries FROM PUBLIC;

CREATE FUNCTION @extschema@.es_configure(application text, compression boolean DEFAULT NULL,
    encryption boolean DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'es_configure'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_configure(text, boolean, boolean) IS
    'Sets how the application''s new events are stored: compressed with zlib (when it makes them smaller) and/or encrypted with AES-256-GCM under each aggregate''s own data key; NULL leaves a setting as it is. Recorded events keep their form. Needs admin.';

CREATE FUNCTION @extschema@.es_forget(application text, originator_id uuid)
RETURNS void
AS 'MODULE_PATHNAME', 'es_forget'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_forget(text, uuid) IS
    'Destroys the aggregate''s data key and deletes its snapshots: its events keep their ids, versions, topics and hashes, and read with state NULL. Needs admin.';

CREATE FUNCTION @extschema@.es_rewrap_keys()
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_rewrap_keys'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_rewrap_keys() IS
    'After a master key rotation: wraps again under the current master key every data key of this database wrapped by the previous one (eventsourcing.previous_key_command); returns how many. The extension''s owner only.';

CREATE FUNCTION @extschema@.es_select_stored(application text, start bigint, max_count integer)
RETURNS TABLE (id bigint, originator_id uuid, originator_version bigint, topic text,
    stored_form smallint, stored_state bytea, event_hash bytea)
AS 'MODULE_PATHNAME', 'es_select_stored'
LANGUAGE C STABLE PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION @extschema@.es_select_stored(text, bigint, integer) IS
    'The notification log as stored: states in their stored form (0: as given; 1: header, then compressed and/or encrypted), for backups to other systems or clients that decrypt themselves. Needs read; the ordering guarantee of es_select.';


--------------------------------------------------------------------------
-- Functions that take fresh snapshots or write cannot run in parallel mode
--------------------------------------------------------------------------

ALTER FUNCTION @extschema@.es_select(text, bigint, integer, bigint, text[], integer, integer) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_events(text, uuid, bigint, bigint, boolean, integer) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_max_notification_id(text) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_tracking_position(text, text) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_head(text, uuid) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_verify(text, uuid, bytea) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_verify_log(text) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_channel(text) PARALLEL UNSAFE;
ALTER FUNCTION @extschema@.es_wait(text, bigint, integer) PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.es_set_compression_dictionary(application text, dictionary bytea)
RETURNS integer
AS 'MODULE_PATHNAME', 'es_set_compression_dictionary'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_set_compression_dictionary(text, bytea) IS
    'Makes the bytes (at most 32 kB, typical of the application''s events, never personal data: they are stored in clear) the preset zlib dictionary of its new compressed events; returns its id. NULL stops using one. Needs admin.';

--------------------------------------------------------------------------
-- Support functions out of the API's way
--------------------------------------------------------------------------

CREATE SCHEMA eventsourcing_internal;
COMMENT ON SCHEMA eventsourcing_internal IS
    'Support functions of the eventsourcing extension (trigger functions, es_replay''s transition and final functions): not an API.';
ALTER FUNCTION @extschema@.es_append_only_guard() SET SCHEMA eventsourcing_internal;
ALTER FUNCTION @extschema@.es_replay_step(internal, text, @extschema@.es_stored_event) SET SCHEMA eventsourcing_internal;
ALTER FUNCTION @extschema@.es_replay_fold_step(internal, text, @extschema@.es_stored_event, regproc) SET SCHEMA eventsourcing_internal;
ALTER FUNCTION @extschema@.es_replay_fields_step(internal, text, uuid, bigint, text, bytea) SET SCHEMA eventsourcing_internal;
ALTER FUNCTION @extschema@.es_replay_final(internal) SET SCHEMA eventsourcing_internal;

--------------------------------------------------------------------------
-- No silent loss: DROP EXTENSION (and what drops it) is refused while events exist
--------------------------------------------------------------------------

CREATE FUNCTION eventsourcing_internal.es_drop_guard()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'es_drop_guard'
LANGUAGE C;
COMMENT ON FUNCTION eventsourcing_internal.es_drop_guard() IS
    'Event trigger refusing DROP EXTENSION eventsourcing, DROP SCHEMA of its schema and DROP OWNED BY its owner while recorded events exist, and DROP TABLE or DETACH PARTITION of an application''s partition of es_stored_events while it holds events, unless eventsourcing.allow_rewrite is on.';
CREATE EVENT TRIGGER es_drop_guard ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED', 'DROP TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION eventsourcing_internal.es_drop_guard();
COMMENT ON EVENT TRIGGER es_drop_guard IS
    'Refuses to drop the extension, its schema or its owner''s objects while recorded events exist, and to drop or detach an application''s partition of es_stored_events that holds events (eventsourcing.allow_rewrite: the administrative way out).';

--------------------------------------------------------------------------
-- JSON states: appended as jsonb, read back as jsonb
--------------------------------------------------------------------------

CREATE FUNCTION @extschema@.es_append_json(application text, originator_id uuid,
    originator_version bigint, topic text, state jsonb)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_append_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_append_json(text, uuid, bigint, text, jsonb) IS
    'Records one event whose state is JSON (stored as its text, UTF-8); returns its notification id.';

CREATE FUNCTION @extschema@.es_append_json(application text, events jsonb)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'es_append_json_events'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 10;
COMMENT ON FUNCTION @extschema@.es_append_json(text, jsonb) IS
    'Records all the events of a JSON array [{"originator_id", "originator_version", "topic", "state"}, ...] atomically, like es_append; returns their ids in order.';

CREATE FUNCTION @extschema@.es_append_json(application text, events jsonb,
    upstream_application text, upstream_notification_id bigint)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'es_append_json_tracked'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 10;
COMMENT ON FUNCTION @extschema@.es_append_json(text, jsonb, text, bigint) IS
    'Like es_append_json(application, events), and atomically records the tracking position, like es_append''s tracking form.';

CREATE FUNCTION @extschema@.es_jsonb(state bytea)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'es_jsonb'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.es_jsonb(bytea) IS
    'A state''s bytes as jsonb: SELECT id, es_jsonb(state) FROM es_select(...). NULL (a forgotten event) stays NULL.';

-- Tagged events (DCB): a column for their tags.
ALTER TABLE @extschema@.es_stored_events ADD COLUMN tags text[] COLLATE "C";
COMMENT ON TABLE @extschema@.es_stored_events IS
    'All recorded events: each in its aggregate''s version sequence and its application''s notification log. Written by es_append only; roles read and append through the functions, with privileges per application (es_grant). stored_form 0: state as given; 1: a header, then the state compressed and/or encrypted (es_configure). tags: NULL for aggregate events; for tagged events (es_dcb_append) their tags, and topic is their type.';

--------------------------------------------------------------------------
-- Dynamic Consistency Boundaries: tagged events and conditional appends
-- (src/dcb.c).  Tagged events live in es_stored_events beside aggregate
-- events (one log, one sequence of ids), each as the only event of an
-- aggregate of its own; es_dcb_index serves queries by tag and by type.
--------------------------------------------------------------------------

CREATE TABLE @extschema@.es_dcb_index (
    application_id   integer NOT NULL,
    kind             "char" NOT NULL CONSTRAINT es_dcb_index_kind_check CHECK (kind IN ('g', 'y')),
    value            text COLLATE "C" NOT NULL,
    notification_id  bigint NOT NULL,
    CONSTRAINT es_dcb_index_pkey PRIMARY KEY (application_id, kind, value, notification_id)
);
COMMENT ON TABLE @extschema@.es_dcb_index IS
    'For every tagged event (es_dcb_append), one row per tag (kind g) and one for its type (kind y), with its position: conditions and queries find matching events by tag or type and position. Written with the events, never changed.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_dcb_index', '');
REVOKE ALL ON @extschema@.es_dcb_index FROM PUBLIC;
CREATE TRIGGER es_append_only BEFORE UPDATE OR DELETE ON @extschema@.es_dcb_index
    FOR EACH ROW EXECUTE FUNCTION eventsourcing_internal.es_append_only_guard();
CREATE TRIGGER es_append_only_truncate BEFORE TRUNCATE ON @extschema@.es_dcb_index
    FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_internal.es_append_only_guard();

CREATE TYPE @extschema@.es_dcb_event AS (
    "position"   bigint,
    type         text,
    data         jsonb,
    tags         text[],
    data_bytes   bytea,
    recorded_at  timestamptz,
    event_id     uuid
);
COMMENT ON TYPE @extschema@.es_dcb_event IS
    'A tagged event as es_dcb_read returns it: its position in the log, type, data (NULL when its bytes are not JSON text), tags, data as bytes (NULL for both once forgotten), when it was recorded, and its own id (its originator_id in the log: es_forget and es_verify take it).';

CREATE FUNCTION @extschema@.es_dcb_append(application text, events jsonb, condition jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_dcb_append'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_dcb_append(text, jsonb, jsonb) IS
    'Records tagged events [{"type", "data" or "data_base64", "tags"}, ...] atomically, unless condition {"fail_if_events_match": [query items], "after": position} matches an event after that position (23505); returns the position of the last event. Needs the append privilege.';

CREATE FUNCTION @extschema@.es_dcb_read(application text, query jsonb DEFAULT NULL,
    after bigint DEFAULT NULL, max_count integer DEFAULT NULL)
RETURNS SETOF @extschema@.es_dcb_event
AS 'MODULE_PATHNAME', 'es_dcb_read'
LANGUAGE C STABLE PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION @extschema@.es_dcb_read(text, jsonb, bigint, integer) IS
    'The tagged events matching query [{"types": [...], "tags": [...]}, ...] (NULL or []: all) after position after, in position order, never past a position that could still become visible; at most max_count. Needs the read privilege.';

CREATE FUNCTION @extschema@.es_dcb_head(application text, query jsonb DEFAULT NULL, after bigint DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_dcb_head'
LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_dcb_head(text, jsonb, bigint) IS
    'The position of the last tagged event matching query that es_dcb_read would return after position after (after itself, or 0, if none): what a writer passes as "after" in its condition. Needs the read privilege.';

--------------------------------------------------------------------------
-- The events table partitioned by application (issue #15): the old table's
-- rows move into one partition per application.  Views over it are made
-- after this (below), so they name the new table.
--------------------------------------------------------------------------

ALTER TABLE @extschema@.es_stored_events RENAME TO es_stored_events_0_1_0;
CREATE TABLE @extschema@.es_stored_events (
    application_id      integer NOT NULL,
    notification_id     bigint NOT NULL,
    originator_id       uuid NOT NULL,
    originator_version  bigint NOT NULL,
    topic               text COLLATE "C" NOT NULL,
    state               bytea NOT NULL,
    recorded_at         timestamptz NOT NULL,
    event_hash          bytea NOT NULL,
    stored_form         smallint NOT NULL DEFAULT 0
        CONSTRAINT es_stored_events_stored_form_check CHECK (stored_form IN (0, 1)),
    tags                text[] COLLATE "C"
) PARTITION BY LIST (application_id);
COMMENT ON TABLE @extschema@.es_stored_events IS
    'All recorded events: each in its aggregate''s version sequence and its application''s notification log. Written by es_append only; roles read and append through the functions, with privileges per application (es_grant). stored_form 0: state as given; 1: a header, then the state compressed and/or encrypted (es_configure). tags: NULL for aggregate events; for tagged events (es_dcb_append) their tags, and topic is their type. Partitioned by application: es_create_application makes each application''s partition, es_stored_events_<id>, with the primary key (application_id, notification_id) and the unique key (application_id, originator_id, originator_version).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_stored_events', '');
REVOKE ALL ON @extschema@.es_stored_events FROM PUBLIC;
CREATE TRIGGER es_append_only BEFORE UPDATE OR DELETE ON @extschema@.es_stored_events
    FOR EACH ROW EXECUTE FUNCTION eventsourcing_internal.es_append_only_guard();
CREATE TRIGGER es_append_only_truncate BEFORE TRUNCATE ON @extschema@.es_stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_internal.es_append_only_guard();

-- Takes every privilege on a table from everyone but its owner: what
-- ALTER DEFAULT PRIVILEGES (of whoever creates or restores it) granted too.
CREATE FUNCTION eventsourcing_internal.es_lock_down(rel regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    g oid;
BEGIN
    FOR g IN SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = rel AND a.grantee <> c.relowner LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s CASCADE', rel,
                       CASE WHEN g = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g)) END);
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION eventsourcing_internal.es_lock_down(regclass) FROM PUBLIC;
COMMENT ON FUNCTION eventsourcing_internal.es_lock_down(regclass) IS
    'Revokes every privilege on a table of the extension from everyone but its owner (new partitions, and tables attached to es_stored_events).';

-- Each application's events live in a partition of their own (LIST by
-- application_id), made by es_create_application: the indexes an append and a
-- read descend grow with that application's log only, and the C code scans
-- and inserts into the partition directly.  The parent has no indexes: each
-- partition carries its own primary and unique keys (which hold per
-- application, as the keys always did), so pg_dump can restore partitions,
-- which are not members of the extension, on their own.
CREATE FUNCTION eventsourcing_internal.es_add_log_partition(app integer)
RETURNS regclass
LANGUAGE plpgsql
-- (the caller's session settings do not choose where or how the log is stored)
SET search_path = pg_catalog, pg_temp
SET default_tablespace = ''
SET default_table_access_method = heap
AS $fn$
DECLARE
    part text := 'es_stored_events_' || app;
BEGIN
    EXECUTE format('CREATE TABLE @extschema@.%I (LIKE @extschema@.es_stored_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)', part);
    EXECUTE format('ALTER TABLE @extschema@.%I ADD CONSTRAINT %I PRIMARY KEY (application_id, notification_id), '
                   'ADD CONSTRAINT %I UNIQUE (application_id, originator_id, originator_version)',
                   part, part || '_pkey', part || '_version_key');
    PERFORM eventsourcing_internal.es_lock_down(format('@extschema@.%I', part)::regclass);
    -- Row triggers are cloned from the parent; TRUNCATE triggers are not.
    EXECUTE format('CREATE TRIGGER es_append_only_truncate BEFORE TRUNCATE ON @extschema@.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_internal.es_append_only_guard()', part);
    EXECUTE format('COMMENT ON TABLE @extschema@.%I IS %L', part,
                   'The events of application ' || app || ': its partition of es_stored_events, made by es_create_application.');
    -- ATTACH takes a SHARE UPDATE EXCLUSIVE lock on the parent, which appends
    -- and reads (which lock only partitions) do not wait for; two creations
    -- wait for each other's transactions.
    EXECUTE format('ALTER TABLE @extschema@.es_stored_events ATTACH PARTITION @extschema@.%I FOR VALUES IN (%s)', part, app);
    RETURN format('@extschema@.%I', part)::regclass;
END
$fn$;
REVOKE ALL ON FUNCTION eventsourcing_internal.es_add_log_partition(integer) FROM PUBLIC;
COMMENT ON FUNCTION eventsourcing_internal.es_add_log_partition(integer) IS
    'Makes an application''s partition of es_stored_events (called by es_create_application, as the extension''s owner).';

-- A partition per application, not a member of the extension (as
-- es_create_application makes them), then the rows, then the old table
-- (dropped from the extension first, which also takes it off the list of
-- tables pg_dump dumps the data of).
DO $do$
DECLARE
    app integer;
BEGIN
    FOR app IN SELECT id FROM @extschema@.es_applications ORDER BY id LOOP
        PERFORM eventsourcing_internal.es_add_log_partition(app);
        EXECUTE pg_catalog.format('ALTER EXTENSION eventsourcing DROP TABLE @extschema@.%I', 'es_stored_events_' || app);
    END LOOP;
END
$do$;
INSERT INTO @extschema@.es_stored_events (application_id, notification_id, originator_id, originator_version,
                                          topic, state, recorded_at, event_hash, stored_form, tags)
SELECT application_id, notification_id, originator_id, originator_version,
       topic, state, recorded_at, event_hash, stored_form, tags
FROM @extschema@.es_stored_events_0_1_0;
ALTER EXTENSION eventsourcing DROP TABLE @extschema@.es_stored_events_0_1_0;
DROP TABLE @extschema@.es_stored_events_0_1_0;
--------------------------------------------------------------------------
-- Status at a glance
--------------------------------------------------------------------------

CREATE VIEW @extschema@.es_status WITH (security_barrier) AS
SELECT a.name AS application,
       (SELECT pg_catalog.count(*) FROM @extschema@.es_stored_events e WHERE e.application_id = a.id) AS events,
       (SELECT pg_catalog.max(e.notification_id) FROM @extschema@.es_stored_events e WHERE e.application_id = a.id) AS head_id,
       CASE WHEN @extschema@.es_has_privilege(a.name, 'read')
            THEN COALESCE(@extschema@.es_wait(a.name, COALESCE(w.announced_id, 0), 0), w.announced_id, 0) END AS readable_id,
       w.notification_id AS watermark_id,
       w.announced_id,
       s.seal_id AS last_seal_id,
       s.last_notification_id AS sealed_through_id,
       pg_catalog.now() - s.sealed_at AS last_seal_age,
       (SELECT pg_catalog.count(*) FROM @extschema@.es_tracking t WHERE t.upstream_application = a.name) AS followers,
       (SELECT pg_catalog.max(h.head - t.notification_id) FROM @extschema@.es_tracking t,
            LATERAL (SELECT pg_catalog.max(e.notification_id) AS head FROM @extschema@.es_stored_events e
                     WHERE e.application_id = a.id) h
        WHERE t.upstream_application = a.name) AS max_follower_lag,
       a.compression,
       a.encryption,
       a.compression_dictionary,
       EXISTS (SELECT FROM pg_catalog.pg_stat_activity p
               WHERE p.backend_type = 'eventsourcing worker' AND p.datname = pg_catalog.current_database()) AS worker_running
FROM @extschema@.es_applications a
LEFT JOIN @extschema@.es_watermarks w ON w.application_id = a.id
LEFT JOIN LATERAL (SELECT x.seal_id, x.last_notification_id, x.sealed_at FROM @extschema@.es_seals x
                   WHERE x.application_id = a.id ORDER BY x.seal_id DESC LIMIT 1) s ON true
WHERE @extschema@.es_has_privilege(a.name, NULL);
COMMENT ON VIEW @extschema@.es_status IS
    'Per application the caller has a privilege on: events, head id, the highest id readers can be given, the standby watermark, the last announcement, the last seal and its age, followers (tracking rows naming it as upstream) and the largest lag, storage settings, whether the database''s worker runs.';
GRANT SELECT ON @extschema@.es_status TO PUBLIC;

CREATE VIEW @extschema@.es_followers WITH (security_barrier) AS
SELECT t.upstream_application AS application,
       f.name AS follower,
       t.notification_id AS position,
       h.head AS head_id,
       h.head - t.notification_id AS lag
FROM @extschema@.es_tracking t
JOIN @extschema@.es_applications f ON f.id = t.application_id
LEFT JOIN @extschema@.es_applications u ON u.name = t.upstream_application
LEFT JOIN LATERAL (SELECT pg_catalog.max(e.notification_id) AS head FROM @extschema@.es_stored_events e
                   WHERE e.application_id = u.id) h ON true
WHERE @extschema@.es_has_privilege(f.name, NULL) OR @extschema@.es_has_privilege(t.upstream_application, NULL);
COMMENT ON VIEW @extschema@.es_followers IS
    'Each follower''s recorded position in an upstream application''s log and its lag behind the head, for the applications the caller has a privilege on.';
GRANT SELECT ON @extschema@.es_followers TO PUBLIC;


-- Default privileges of the role that installs (or upgrades) the extension
-- do not reach its tables and sequences: only their owner touches them.
SELECT eventsourcing_internal.es_lock_down(c.oid::pg_catalog.regclass)
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype = 'e'
  AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
  AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'eventsourcing')
  AND c.relkind IN ('r', 'p', 'S');
