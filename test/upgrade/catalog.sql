-- The catalog of the eventsourcing extension, normalized, one line per fact:
--   <object> | <what> | <value>
-- Run in two databases (one upgraded, one with a fresh CREATE EXTENSION) and
-- diff the outputs: any difference is a difference a user or pg_dump can see.
-- Covers every object that belongs to the extension (pg_depend deptype 'e').
-- Normalized: the extension's schema becomes @extschema@, the library's
-- directory $libdir; columns are numbered by position among the non-dropped
-- ones (attnum differs after ALTER TABLE ... DROP COLUMN), so a different
-- column order shows as a difference, a dropped column does not.  Column
-- options named pg_attver (this server build stamps each new column with the
-- WAL position of its creation) are left out: they differ in any two databases.
SET search_path = pg_catalog;      -- deparsed text names every schema
\pset format unaligned
\pset tuples_only on
\pset null '(null)'

WITH ext AS (
    SELECT e.oid, e.extname, e.extversion, e.extrelocatable, e.extconfig, e.extcondition,
           n.nspname AS schema, r.rolname AS owner,
           (SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR') AS pkglibdir
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    JOIN pg_roles r ON r.oid = e.extowner
    WHERE e.extname = 'eventsourcing'
),
members AS (
    SELECT d.classid, d.objid, d.objsubid,
           (pg_identify_object(d.classid, d.objid, d.objsubid)).type AS type,
           (pg_identify_object(d.classid, d.objid, d.objsubid)).identity AS identity
    FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    -- and the partitions of member tables (each application's log), which are
    -- not members but what es_create_application (or the upgrade) made: every
    -- fact below applies to them too
    UNION ALL
    SELECT 'pg_class'::regclass, h.inhrelid, 0, 'partition (not a member)',
           (pg_identify_object('pg_class'::regclass, h.inhrelid, 0)).identity
    FROM pg_depend d, ext, pg_inherits h
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
      AND d.classid = 'pg_class'::regclass AND h.inhparent = d.objid
      AND NOT EXISTS (SELECT FROM pg_depend x WHERE x.classid = 'pg_class'::regclass AND x.objid = h.inhrelid
                        AND x.refclassid = 'pg_extension'::regclass)
),
facts(obj, what, val) AS (
    -- the extension itself
    SELECT 'extension'::text, 'name'::text, extname::text FROM ext   -- text, not name: no truncation
    UNION ALL SELECT 'extension', 'version', extversion FROM ext
    UNION ALL SELECT 'extension', 'relocatable', extrelocatable::text FROM ext
    UNION ALL SELECT 'extension', 'schema', schema FROM ext
    UNION ALL SELECT 'extension', 'owner', owner FROM ext
    UNION ALL SELECT 'extension', 'requires', coalesce(string_agg(r.extname, ',' ORDER BY r.extname), '')
        FROM ext LEFT JOIN pg_depend d ON d.classid = 'pg_extension'::regclass AND d.objid = ext.oid
             AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'n'
        LEFT JOIN pg_extension r ON r.oid = d.refobjid
    UNION ALL SELECT 'extension', 'comment', coalesce(obj_description(ext.oid, 'pg_extension'), '(none)') FROM ext
    -- pg_extension_config_dump registrations: a set (the order in extconfig
    -- is the order of registration, which an upgrade script may change)
    UNION ALL SELECT 'extension', 'config dump ' || c.oid::regclass::text, 'condition ' || quote_literal(cond)
        FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(reloid, cond)
        JOIN pg_class c ON c.oid = u.reloid
    UNION ALL SELECT 'extension', 'config dump count', coalesce(cardinality(extconfig), 0)::text FROM ext

    -- every member: its description, comment and initial privileges
    UNION ALL SELECT m.type || ' ' || m.identity, 'member', pg_describe_object(m.classid, m.objid, m.objsubid)
        FROM members m
    UNION ALL SELECT m.type || ' ' || m.identity, 'comment', coalesce(ds.description, '(none)')
        FROM members m LEFT JOIN pg_description ds
             ON ds.classoid = m.classid AND ds.objoid = m.objid AND ds.objsubid = 0
    UNION ALL SELECT m.type || ' ' || m.identity, 'init privs ' || ip.objsubid || ' ' || ip.privtype::text,
                     ip.initprivs::text
        FROM members m JOIN pg_init_privs ip ON ip.classoid = m.classid AND ip.objoid = m.objid

    -- functions, procedures, aggregates
    UNION ALL SELECT m.type || ' ' || m.identity, x.what, x.val
        FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
        JOIN pg_language l ON l.oid = p.prolang, ext,
        LATERAL (VALUES
            ('kind', p.prokind::text),
            ('arguments', pg_get_function_arguments(p.oid)),          -- names and defaults too
            ('identity arguments', pg_get_function_identity_arguments(p.oid)),
            ('result', pg_get_function_result(p.oid)),
            ('language', l.lanname),
            ('volatility', p.provolatile::text),
            ('parallel', p.proparallel::text),
            ('strict', p.proisstrict::text),
            ('security definer', p.prosecdef::text),
            ('leakproof', p.proleakproof::text),
            ('returns set', p.proretset::text),
            ('cost', p.procost::text),
            ('rows', p.prorows::text),
            ('support', p.prosupport::regproc::text),
            ('config', coalesce(p.proconfig::text, '(none)')),
            ('acl', coalesce(p.proacl::text, '(default)')),
            ('source', p.prosrc),
            ('library', coalesce(CASE WHEN p.probin LIKE ext.pkglibdir || '/%'
                                      THEN '$libdir' || substr(p.probin, length(ext.pkglibdir) + 1)
                                      ELSE p.probin END, '(none)'))
        ) AS x(what, val)
    UNION ALL SELECT m.type || ' ' || m.identity, 'aggregate ' || x.what, x.val
        FROM members m JOIN pg_aggregate a ON m.classid = 'pg_proc'::regclass AND a.aggfnoid = m.objid,
        LATERAL (VALUES
            ('kind', a.aggkind::text),
            ('direct args', a.aggnumdirectargs::text),
            ('transition function', a.aggtransfn::regprocedure::text),
            ('final function', CASE WHEN a.aggfinalfn = 0 THEN '-' ELSE a.aggfinalfn::regprocedure::text END),
            ('final extra', a.aggfinalextra::text),
            ('final modify', a.aggfinalmodify::text),
            ('combine function', CASE WHEN a.aggcombinefn = 0 THEN '-' ELSE a.aggcombinefn::regprocedure::text END),
            ('serial function', CASE WHEN a.aggserialfn = 0 THEN '-' ELSE a.aggserialfn::regprocedure::text END),
            ('deserial function', CASE WHEN a.aggdeserialfn = 0 THEN '-' ELSE a.aggdeserialfn::regprocedure::text END),
            ('moving', concat_ws(' ', a.aggmtransfn::regproc, a.aggminvtransfn::regproc, a.aggmfinalfn::regproc,
                                 format_type(a.aggmtranstype, NULL), a.aggmtransspace, a.aggminitval)),
            ('sort operator', CASE WHEN a.aggsortop = 0 THEN '-' ELSE a.aggsortop::regoperator::text END),
            ('state type', format_type(a.aggtranstype, NULL)),
            ('state space', a.aggtransspace::text),
            ('initial value', coalesce(a.agginitval, '(null)'))
        ) AS x(what, val)

    -- tables, views, sequences, ...
    UNION ALL SELECT m.type || ' ' || m.identity, x.what, x.val
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
        LEFT JOIN pg_am am ON am.oid = c.relam,
        LATERAL (VALUES
            ('relkind', c.relkind::text),
            ('persistence', c.relpersistence::text),
            ('access method', coalesce(am.amname, '-')),
            ('options', coalesce(c.reloptions::text, '(none)')),
            ('acl', coalesce(c.relacl::text, '(default)')),
            ('row security', c.relrowsecurity::text || ' force ' || c.relforcerowsecurity::text),
            ('replica identity', c.relreplident::text),
            ('partition', c.relispartition::text),
            ('definition', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) ELSE '-' END)
        ) AS x(what, val)
    -- columns, by position among the non-dropped columns
    UNION ALL SELECT m.type || ' ' || m.identity, 'column ' || lpad(a.pos::text, 3, '0'),
               concat_ws(' ', quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
                         CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                         'DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid),
                         'COLLATE ' || CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END,
                         'IDENTITY ' || nullif(a.attidentity::text, ''),
                         'GENERATED ' || nullif(a.attgenerated::text, ''),
                         'STORAGE ' || a.attstorage::text,
                         'COMPRESSION ' || nullif(a.attcompression::text, ''),
                         'STATISTICS ' || nullif(a.attstattarget, -1),
                         'OPTIONS ' || nullif(array(SELECT o FROM unnest(a.attoptions) o
                                                    WHERE o NOT LIKE 'pg\_attver=%' ORDER BY o)::text, '{}'),
                         'ACL ' || a.attacl::text)
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid,
        LATERAL (SELECT at.*, row_number() OVER (ORDER BY at.attnum) AS pos
                 FROM pg_attribute at WHERE at.attrelid = c.oid AND at.attnum > 0 AND NOT at.attisdropped) a
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    UNION ALL SELECT m.type || ' ' || m.identity, 'column ' || quote_ident(a.attname) || ' comment', ds.description
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_description ds ON ds.classoid = 'pg_class'::regclass AND ds.objoid = c.oid AND ds.objsubid = a.attnum
    -- constraints (with their comments)
    UNION ALL SELECT m.type || ' ' || m.identity, 'constraint ' || quote_ident(k.conname),
               pg_get_constraintdef(k.oid) || ' (' || k.contype::text || CASE WHEN k.convalidated THEN '' ELSE ', not valid' END || ')'
        FROM members m JOIN pg_constraint k ON m.classid = 'pg_class'::regclass AND k.conrelid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'constraint ' || quote_ident(k.conname) || ' comment', ds.description
        FROM members m JOIN pg_constraint k ON m.classid = 'pg_class'::regclass AND k.conrelid = m.objid
        JOIN pg_description ds ON ds.classoid = 'pg_constraint'::regclass AND ds.objoid = k.oid
    -- indexes (with their comments)
    UNION ALL SELECT m.type || ' ' || m.identity, 'index ' || quote_ident(ic.relname),
               pg_get_indexdef(i.indexrelid)
               || CASE WHEN i.indisclustered THEN ' CLUSTERED' ELSE '' END
               || CASE WHEN i.indisreplident THEN ' REPLICA IDENTITY' ELSE '' END
               || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END
        FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
        JOIN pg_class ic ON ic.oid = i.indexrelid
    UNION ALL SELECT m.type || ' ' || m.identity, 'index ' || quote_ident(ic.relname) || ' comment', ds.description
        FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_description ds ON ds.classoid = 'pg_class'::regclass AND ds.objoid = ic.oid AND ds.objsubid = 0
    -- triggers (not the internal ones of foreign keys; those are the constraints)
    UNION ALL SELECT m.type || ' ' || m.identity, 'trigger ' || quote_ident(t.tgname),
               pg_get_triggerdef(t.oid) || ' (enabled ' || t.tgenabled::text || ')'
        FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid
        WHERE NOT t.tgisinternal
    UNION ALL SELECT m.type || ' ' || m.identity, 'trigger ' || quote_ident(t.tgname) || ' comment', ds.description
        FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid
        JOIN pg_description ds ON ds.classoid = 'pg_trigger'::regclass AND ds.objoid = t.oid
        WHERE NOT t.tgisinternal
    -- rules and row-level security policies
    UNION ALL SELECT m.type || ' ' || m.identity, 'rule ' || quote_ident(r.rulename), pg_get_ruledef(r.oid)
        FROM members m JOIN pg_rewrite r ON m.classid = 'pg_class'::regclass AND r.ev_class = m.objid
        WHERE r.rulename <> '_RETURN'
    UNION ALL SELECT m.type || ' ' || m.identity, 'policy ' || quote_ident(p.polname),
               concat_ws(' ', p.polcmd, p.polpermissive, p.polroles::regrole[]::text,
                         pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
        FROM members m JOIN pg_policy p ON m.classid = 'pg_class'::regclass AND p.polrelid = m.objid
    -- inheritance
    UNION ALL SELECT m.type || ' ' || m.identity, 'inherits ' || h.inhseqno, h.inhparent::regclass::text
        FROM members m JOIN pg_inherits h ON m.classid = 'pg_class'::regclass AND h.inhrelid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'partitioning', concat_ws(' ', pg_get_partkeydef(c.oid),
                     pg_get_expr(c.relpartbound, c.oid), 'kind', c.relkind::text)
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
        WHERE c.relkind = 'p' OR c.relispartition
    -- sequences: parameters (not their current value) and ownership
    UNION ALL SELECT m.type || ' ' || m.identity, 'sequence',
               concat_ws(' ', format_type(s.seqtypid, NULL), 'start', s.seqstart, 'increment', s.seqincrement,
                         'min', s.seqmin, 'max', s.seqmax, 'cache', s.seqcache, 'cycle', s.seqcycle)
        FROM members m JOIN pg_sequence s ON m.classid = 'pg_class'::regclass AND s.seqrelid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'owned by (' || d.deptype::text || ')',
               pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid AND c.relkind = 'S'
        JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
    -- identity sequences of member tables (when not members themselves)
    UNION ALL SELECT m.type || ' ' || m.identity, 'identity sequence of ' || quote_ident(a.attname),
               concat_ws(' ', sc.oid::regclass, format_type(s.seqtypid, NULL), 'start', s.seqstart,
                         'increment', s.seqincrement, 'min', s.seqmin, 'max', s.seqmax,
                         'cache', s.seqcache, 'cycle', s.seqcycle, 'acl', sc.relacl)
        FROM members m JOIN pg_attribute a ON m.classid = 'pg_class'::regclass AND a.attrelid = m.objid
             AND a.attidentity <> '' AND NOT a.attisdropped
        JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
             AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.deptype = 'i'
        JOIN pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S'
        JOIN pg_sequence s ON s.seqrelid = sc.oid

    -- types
    UNION ALL SELECT m.type || ' ' || m.identity, x.what, x.val
        FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid,
        LATERAL (VALUES
            ('typtype', t.typtype::text),
            ('acl', coalesce(t.typacl::text, '(default)')),
            ('base', CASE WHEN t.typtype = 'd'
                          THEN concat_ws(' ', format_type(t.typbasetype, t.typtypmod),
                                         CASE WHEN t.typnotnull THEN 'NOT NULL' END,
                                         'DEFAULT ' || t.typdefault,
                                         'COLLATE ' || CASE WHEN t.typcollation <> 0 THEN t.typcollation::regcollation::text END)
                          WHEN t.typtype = 'b'
                          THEN concat_ws(' ', t.typinput, t.typoutput, t.typreceive, t.typsend,
                                         t.typlen, t.typbyval, t.typalign, t.typstorage, t.typcategory)
                          ELSE '-' END)
        ) AS x(what, val)
    UNION ALL SELECT m.type || ' ' || m.identity, 'attribute ' || lpad(a.pos::text, 3, '0'),
               concat_ws(' ', quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
                         'COLLATE ' || CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END)
        FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid AND t.typrelid <> 0,
        LATERAL (SELECT at.*, row_number() OVER (ORDER BY at.attnum) AS pos
                 FROM pg_attribute at WHERE at.attrelid = t.typrelid AND at.attnum > 0 AND NOT at.attisdropped) a
    UNION ALL SELECT m.type || ' ' || m.identity, 'attribute ' || quote_ident(a.attname) || ' comment', ds.description
        FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid AND t.typrelid <> 0
        JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_description ds ON ds.classoid = 'pg_class'::regclass AND ds.objoid = t.typrelid AND ds.objsubid = a.attnum
    UNION ALL SELECT m.type || ' ' || m.identity, 'label ' || lpad(row_number() OVER (PARTITION BY m.objid ORDER BY e.enumsortorder)::text, 3, '0'),
               e.enumlabel
        FROM members m JOIN pg_enum e ON m.classid = 'pg_type'::regclass AND e.enumtypid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'constraint ' || quote_ident(k.conname), pg_get_constraintdef(k.oid)
        FROM members m JOIN pg_constraint k ON m.classid = 'pg_type'::regclass AND k.contypid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'range',
               concat_ws(' ', format_type(r.rngsubtype, NULL), r.rngsubopc::regclass, r.rngcanonical, r.rngsubdiff)
        FROM members m JOIN pg_range r ON m.classid = 'pg_type'::regclass AND r.rngtypid = m.objid

    -- a few other kinds an extension may own
    UNION ALL SELECT m.type || ' ' || m.identity, 'operator',
               concat_ws(' ', o.oprcode::regprocedure, o.oprrest, o.oprjoin, o.oprcanmerge, o.oprcanhash,
                         o.oprcom::regoperator, o.oprnegate::regoperator)
        FROM members m JOIN pg_operator o ON m.classid = 'pg_operator'::regclass AND o.oid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'cast',
               concat_ws(' ', CASE WHEN k.castfunc <> 0 THEN k.castfunc::regprocedure::text END, k.castcontext, k.castmethod)
        FROM members m JOIN pg_cast k ON m.classid = 'pg_cast'::regclass AND k.oid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'event trigger',
               concat_ws(' ', v.evtevent, v.evtfoid::regprocedure, v.evtenabled, v.evttags::text)
        FROM members m JOIN pg_event_trigger v ON m.classid = 'pg_event_trigger'::regclass AND v.oid = m.objid
    UNION ALL SELECT m.type || ' ' || m.identity, 'schema acl', coalesce(n.nspacl::text, '(default)')
        FROM members m JOIN pg_namespace n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid
)
SELECT line FROM (
    SELECT replace(f.obj, quote_ident(ext.schema) || '.', '@extschema@.')
           || ' | ' || replace(f.what, quote_ident(ext.schema) || '.', '@extschema@.')
           || ' | ' || replace(coalesce(f.val, '(null)'), quote_ident(ext.schema) || '.', '@extschema@.') AS line
    FROM facts f, ext) l
ORDER BY line COLLATE "C";
