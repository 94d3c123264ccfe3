"""The PostgreSQL schema's numbered migrations, recorded in ``coldmail.coldmail_schema``.

Every table lives in the ``coldmail`` schema (namespace), so a database shared with other
applications keeps our tables apart from theirs and no ``search_path`` is ever set (a
session setting would not survive PgBouncer's transaction pooling). Statements name their
tables in full.

Rules for this list, the same as SQLite's: each migration is a list of statements written out
in full; append new migrations, never edit a shipped one. All of them run in one transaction
that holds ``pg_advisory_xact_lock(MIGRATION_LOCK)``, so hosts that open the database at the
same moment apply each migration once — and therefore a migration must be transactional:
**no** ``CREATE INDEX CONCURRENTLY`` (PostgreSQL refuses it inside a transaction; a big table
that needs one gets it from an operator, not from ``open``), no ``VACUUM``, no
``ALTER TYPE … ADD VALUE`` used in the same migration. ``tests/integration/test_postgres.py``
checks it.

Column types are chosen so the MACs of ``base.py`` see the same values as from SQLite:
``review`` is a ``smallint`` (a boolean would come back as ``True`` and MAC differently from
``1``), JSON is kept as ``text`` (``jsonb`` would reorder keys), and timestamps are
``timestamptz`` written from the server's clock (``base.iso`` renders them identically).
``interaction_id`` is ``COLLATE "C"`` so ordering is bytewise, as in SQLite. ``legacy_mark``
exists for the shared row format; a PostgreSQL store never holds a run of a release before
0.5, so it stays empty.
"""

from __future__ import annotations

from .migrations import Migration

SCHEMA = "coldmail"
MIGRATION_LOCK = 0x636F6C646D61696C
"""The advisory lock key that serializes migrations: the bytes of 'coldmail'."""


V1_RUNS_HISTORY_META = (
    """CREATE TABLE coldmail.runs (
    interaction_id        text COLLATE "C" PRIMARY KEY,
    status                text NOT NULL
                          CHECK (status IN ('awaiting_feedback', 'resuming', 'awaiting_review',
                                            'completed', 'rejected')),
    review                smallint NOT NULL DEFAULT 0,
    round                 integer,
    max_rounds            integer,
    fields_json           text,
    brief_json            text NOT NULL,
    draft_json            text NOT NULL,
    question              text NOT NULL,
    feedback              text,
    sequence_json         text,
    rejection             text,
    decided_json          text,
    pending_json          text,
    last_error            text,
    pause_id              text,
    serialization_version text NOT NULL,
    event_count           integer NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    completed_at          timestamptz,
    claim_token           text,
    claim_expires_at      timestamptz,
    row_mac               bytea,
    legacy_mark           bytea,
    signature             bytea,
    snapshot              bytea
)""",
    "CREATE INDEX runs_by_status_and_age ON coldmail.runs "
    "(status, created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_age ON coldmail.runs (created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_status_and_update ON coldmail.runs (status, updated_at)",
    # No foreign key to runs: the history is written and deleted by the store in the same
    # transaction as its run (purge deletes both), exactly as on SQLite.
    """CREATE TABLE coldmail.run_events (
    interaction_id text COLLATE "C" NOT NULL,
    seq            integer NOT NULL,
    at             timestamptz NOT NULL,
    kind           text NOT NULL
                   CHECK (kind IN ('paused', 'feedback', 'failed', 'review', 'approved',
                                   'revised', 'edited', 'rejected', 'completed')),
    round          integer,
    actor          text,
    detail         text,
    sequence_json  text,
    mac            bytea,
    PRIMARY KEY (interaction_id, seq)
)""",
    "CREATE TABLE coldmail.coldmail_meta (key text PRIMARY KEY, value text NOT NULL)",
)

# Reaching the reviewer: a run's notify policy (MACed with its id) and the outbox, one row
# per notification, written in the same transaction as the state change it announces.
V2_NOTIFICATIONS_OUTBOX = (
    "ALTER TABLE coldmail.runs ADD COLUMN policy_json text",
    "ALTER TABLE coldmail.runs ADD COLUMN policy_mac bytea",
    """CREATE TABLE coldmail.notifications (
    id              text COLLATE "C" PRIMARY KEY,
    interaction_id  text COLLATE "C" NOT NULL,
    event           text NOT NULL,
    destination     text NOT NULL,
    record_json     text NOT NULL,
    mac             bytea,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    lease_token     text,
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz
)""",
    "CREATE INDEX notifications_due ON coldmail.notifications (status, next_attempt_at)",
    "CREATE INDEX notifications_by_run ON coldmail.notifications (interaction_id, created_at)",
)

# Forks: every pause's signed snapshot kept (see store/forks.py), and a fork's MACed link to
# its parent, its parent_id indexed for the family's lookups.
V3_KEPT_PAUSES_AND_FORKS = (
    """CREATE TABLE coldmail.pauses (
    interaction_id        text COLLATE "C" NOT NULL,
    round                 integer NOT NULL,
    pause_id              text NOT NULL,
    serialization_version text NOT NULL,
    sequence_json         text,
    created_at            timestamptz NOT NULL,
    mac                   bytea,
    snapshot              bytea,
    PRIMARY KEY (interaction_id, round)
)""",
    'ALTER TABLE coldmail.runs ADD COLUMN parent_id text COLLATE "C"',
    "ALTER TABLE coldmail.runs ADD COLUMN fork_json text",
    "ALTER TABLE coldmail.runs ADD COLUMN fork_mac bytea",
    "CREATE INDEX runs_by_parent ON coldmail.runs (parent_id) WHERE parent_id IS NOT NULL",
)


# Issue 23: personalization batches and one row per lead (see sqlite_sql.py's migration 8).
# Numbered 4: 3 belongs to the kept snapshots of issue 22; the runner applies any migration
# not yet recorded, so the two can land in either order.
V4_PERSONALIZATION_BATCHES = (
    """CREATE TABLE coldmail.batches (
    batch_id              text COLLATE "C" PRIMARY KEY,
    interaction_id        text COLLATE "C" NOT NULL,
    leads_digest          text NOT NULL,
    settings_json         text NOT NULL,
    lead_count            integer NOT NULL,
    sample_size           integer NOT NULL,
    status                text NOT NULL
                          CHECK (status IN ('sampling', 'awaiting_approval', 'writing', 'done')),
    sample_approved       smallint NOT NULL DEFAULT 0,
    round                 integer NOT NULL DEFAULT 1,
    guidance_json         text NOT NULL,
    pause_id              text,
    pending_json          text,
    serialization_version text,
    claim_token           text,
    claim_expires_at      timestamptz,
    last_error            text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    row_mac               bytea,
    signature             bytea,
    snapshot              bytea,
    UNIQUE (interaction_id, leads_digest)
)""",
    """CREATE TABLE coldmail.batch_leads (
    batch_id    text COLLATE "C" NOT NULL,
    position    integer NOT NULL,
    lead_row    integer,
    email       text NOT NULL,
    lead_json   text NOT NULL,
    in_sample   smallint NOT NULL DEFAULT 0,
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'claimed', 'written', 'skipped')),
    line        text,
    writer      text,
    round       integer,
    attempts    integer NOT NULL DEFAULT 0,
    lease_token text,
    lease_until timestamptz,
    error       text,
    calls       integer NOT NULL DEFAULT 0,
    tokens      integer NOT NULL DEFAULT 0,
    written_at  timestamptz,
    mac         bytea,
    PRIMARY KEY (batch_id, position)
)""",
    "CREATE INDEX batch_leads_open ON coldmail.batch_leads (batch_id, state, position)",
)


# Issue 20: each snapshot stored once (see sqlite_sql.py's migration 9): the copies of a
# run's current pause that `pauses` held since migration 3 go.
V5_EACH_SNAPSHOT_ONCE = (
    """DELETE FROM coldmail.pauses AS p USING coldmail.runs AS r
    WHERE r.interaction_id = p.interaction_id
      AND r.snapshot IS NOT NULL
      AND p.round = COALESCE(r.round, 0)
      AND p.pause_id = r.pause_id
      AND p.serialization_version = r.serialization_version
      AND p.snapshot = r.snapshot""",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, signed history, metadata", V1_RUNS_HISTORY_META),
    Migration(2, "notify policies and the notifications outbox", V2_NOTIFICATIONS_OUTBOX),
    Migration(3, "kept pauses and fork links", V3_KEPT_PAUSES_AND_FORKS),
    Migration(4, "personalization batches and their leads", V4_PERSONALIZATION_BATCHES),
    Migration(5, "each snapshot stored once", V5_EACH_SNAPSHOT_ONCE),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

EXPECTED_RELATIONS = {
    ("r", "coldmail_schema"),
    ("r", "coldmail_meta"),
    ("r", "runs"),
    ("r", "run_events"),
    ("i", "coldmail_schema_pkey"),
    ("i", "coldmail_meta_pkey"),
    ("i", "runs_pkey"),
    ("i", "run_events_pkey"),
    ("i", "runs_by_status_and_age"),
    ("i", "runs_by_age"),
    ("i", "runs_by_status_and_update"),
    ("r", "notifications"),
    ("i", "notifications_pkey"),
    ("i", "notifications_due"),
    ("i", "notifications_by_run"),
    ("r", "pauses"),
    ("i", "pauses_pkey"),
    ("i", "runs_by_parent"),
    ("r", "batches"),
    ("r", "batch_leads"),
    ("i", "batches_pkey"),
    ("i", "batches_interaction_id_leads_digest_key"),
    ("i", "batch_leads_pkey"),
    ("i", "batch_leads_open"),
}
"""Every relation (``pg_class.relkind``, name) the current schema holds in ``coldmail``. With
no trigger and no rule on them: anything else was planted by a database writer — a trigger
or a rule could undo the claim's write inside the store's own transaction and let two
resumers through — and the database is refused. Each migration that adds one adds it here."""


# --------------------------------------------------------------------------- the migration runner
# (the hooks of store/migrations.py: each runs in the transaction holding MIGRATION_LOCK)

ENCODING_AND_TIMEOUTS = (
    "SELECT pg_catalog.current_setting('server_encoding') AS encoding, "
    "pg_catalog.set_config('lock_timeout', %s, true), "
    "pg_catalog.set_config('statement_timeout', %s, true)"
)
TAKE_MIGRATION_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock(%s)"
TABLES = (
    "SELECT c.relname AS name FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v')"
)
CREATE_SCHEMA = f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"
CREATE_VERSION_TABLE = """CREATE TABLE coldmail.coldmail_schema (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp())"""
APPLIED = "SELECT version FROM coldmail.coldmail_schema"
FINGERPRINT = "SELECT value FROM coldmail.coldmail_meta WHERE key = 'key_fingerprint'"
HOLDS_RUNS = "SELECT 1 AS one FROM coldmail.runs LIMIT 1"
RECORD_MIGRATION = "INSERT INTO coldmail.coldmail_schema (version, name) VALUES (%s, %s)"
REMEMBER_FINGERPRINT = (
    "INSERT INTO coldmail.coldmail_meta (key, value) VALUES ('key_fingerprint', %s)"
)
