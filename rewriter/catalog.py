"""What PostgreSQL ships: built-in functions, operators and catalog relations, and which are denied.

The name lists are package data generated once from a PostgreSQL 15 cluster (see the header of each
file); everything not in them is a user object and is refused unless the policy lists it.

>>> function_denial("pg_catalog", "pg_read_file")
'denied_function'
>>> function_denial(None, "lower") is None
True
>>> function_denial(None, "leak_orders")
'unlisted_function'
>>> function_denial("public", "lower")
'unlisted_function'
>>> relation_denial("pg_catalog", "pg_stat_activity")
'catalog'
>>> relation_denial("information_schema", "columns") is None
True
"""

from __future__ import annotations

from functools import cache
from importlib import resources

CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Functions that read files, run SQL given as text, reach other sessions or servers, or change shared
# server state.  Exact names first, then prefixes (whole families such as lo_* or pg_stat_get_*).
DENIED_FUNCTIONS = frozenset({
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
    "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    "ts_stat", "ts_rewrite",  # both accept a query as text
    "loread", "lowrite",
    "setval",  # sequences are shared by every tenant
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_current_logfile", "pg_promote", "pg_log_backend_memory_contexts",
    "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_isolation_test_session_is_blocked",
    "pg_lock_status", "pg_prepared_xact", "pg_get_backend_memory_contexts",
    "pg_show_all_file_settings", "pg_hba_file_rules", "pg_ident_file_mappings", "pg_config",
    "pg_import_system_collations", "pg_nextoid", "pg_truncate_visibility_map",
    "pg_get_shmem_allocations", "pg_notification_queue_usage",
    "brin_summarize_new_values", "brin_summarize_range", "brin_desummarize_range",
    "gin_clean_pending_list", "pg_get_replication_slots", "pg_event_trigger_ddl_commands",
    "pg_event_trigger_dropped_objects", "pg_event_trigger_table_rewrite_oid",
    # a pooled backend holds other sessions' prepared statements and cursors (with their literals)
    "pg_prepared_statement", "pg_cursor",
    # file nodes change when a relation is rewritten (sizes read as NULL: sidechannels.SIZE_FUNCTIONS)
    "pg_relation_filenode", "pg_relation_filepath", "pg_filenode_relation",
    # follows any row's update chain by physical address (another tenant's updates; the table's
    # size in pages by probing block numbers); replication origins are server-wide state
    "currtid2", "currtid", "pg_show_replication_origin_status",
    # sequence state: shared sequences count every tenant's rows; currval/lastval of a pooled backend
    # are the previous session's
    "pg_sequence_last_value", "currval", "lastval",
    # transaction and multixact counters, snapshots and commit times: every tenant's activity
    "pg_visible_in_snapshot", "pg_export_snapshot", "pg_get_multixact_members", "mxid_age",
    "pg_walfile_name", "pg_walfile_name_offset",
    "setseed",  # seeds random() for whoever uses the backend next
})
DENIED_FUNCTION_PREFIXES = (
    "pg_read_", "pg_ls_", "pg_stat_", "pg_file_", "lo_", "dblink",
    "pg_replication_", "pg_logical_", "pg_create_", "pg_drop_", "pg_copy_", "pg_wal_", "pg_switch_",
    "pg_backup_", "pg_start_backup", "pg_stop_backup", "pg_control_", "binary_upgrade_",
    "pg_terminate_", "pg_cancel_", "pg_signal_",
    "txid_", "pg_current_", "pg_snapshot_", "pg_xact_", "pg_last_",  # xids, snapshots, WAL positions
)

# Catalog relations that show other sessions' statements, sample values of tenant rows, locks,
# large objects or credentials.
DENIED_RELATIONS = frozenset({
    "pg_locks", "pg_prepared_xacts", "pg_largeobject", "pg_largeobject_metadata", "pg_authid",
    "pg_shadow", "pg_user_mapping", "pg_user_mappings", "pg_hba_file_rules", "pg_ident_file_mappings",
    "pg_file_settings", "pg_backend_memory_contexts", "pg_replication_slots", "pg_replication_origin",
    "pg_replication_origin_status", "pg_shmem_allocations", "pg_config", "pg_subscription",
    "_pg_user_mappings", "user_mappings", "user_mapping_options", "pg_statistic", "pg_statistic_ext_data",
    "pg_prepared_statements", "pg_cursors",  # other sessions' statements on a pooled backend
    "pg_sequences",  # last_value of sequences every tenant draws from
})
# Catalog relations tenants read through a derived table that hides the columns showing other
# tenants' volume and activity (see sidechannels.masked_select).
MASKED_RELATIONS = frozenset({("pg_catalog", "pg_class")})
# pg_stat_* and pg_statio_* (activity, counters), pg_stats* (sampled column values); the
# definitions in pg_statistic_ext stay readable for psql's \d.
DENIED_RELATION_PREFIXES = ("pg_stat_", "pg_statio_", "pg_stats")


def is_denied_function(name: str) -> bool:
    """True for a built-in function tenants may never call (by its lower-case name)."""
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES)


def _lines(filename: str) -> list[str]:
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@cache
def builtin_functions() -> frozenset[str]:
    """Allowed built-ins: 'name' for pg_catalog, 'information_schema.name' for that schema."""
    return frozenset(n for n in _lines("builtin_functions.txt") if not is_denied_function(n.split(".")[-1]))


@cache
def builtin_operators() -> frozenset[str]:
    return frozenset(_lines("builtin_operators.txt"))


@cache
def catalog_relations() -> frozenset[str]:
    """'schema.name' of every relation PostgreSQL ships in pg_catalog and information_schema."""
    return frozenset(_lines("builtin_relations.txt"))


def function_denial(schema: str | None, name: str) -> str | None:
    """Why calling schema.name(...) is refused (a reason code), or None when it is allowed.

    Unqualified names resolve to pg_catalog first, as PostgreSQL does; a name that is not a
    built-in there is a user function.
    """
    if schema is None or schema == "pg_catalog":
        if is_denied_function(name):
            return "denied_function"
        return None if name in builtin_functions() else "unlisted_function"
    if schema == "information_schema":
        return None if f"{schema}.{name}" in builtin_functions() else "unlisted_function"
    return "unlisted_function"


def operator_denial(schema: str | None, name: str) -> str | None:
    """Operators run functions too: only PostgreSQL's own are allowed."""
    if schema not in (None, "pg_catalog") or name not in builtin_operators():
        return "unlisted_operator"
    return None


def unqualified_catalog_relation(name: str) -> bool:
    """pg_catalog is searched before search_path, so `pg_class` means pg_catalog.pg_class."""
    return f"pg_catalog.{name}" in catalog_relations()


def relation_denial(schema: str, name: str) -> str | None:
    """For a relation in a catalog schema: 'catalog' when it is denied or unknown, else None."""
    if f"{schema}.{name}" not in catalog_relations():
        return "catalog"
    if name in DENIED_RELATIONS or name.startswith(DENIED_RELATION_PREFIXES):
        return "catalog"
    return None
