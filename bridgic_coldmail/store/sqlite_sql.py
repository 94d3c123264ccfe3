"""The SQLite schema's numbered migrations, recorded in ``coldmail_schema`` and applied on open.

Each migration is a list of SQL statements, written out in full: no migration shares a
constant with another, so editing one can never change one that has shipped. Append new
migrations; never edit a shipped one — with one exception, made for safety in 0.5:
migration 2 used to *sign* the snapshots it found, so a database writer could recreate a
schema-1 database holding an unsigned pickle and have this package sign it on the next open
(code execution on the next resume). It now leaves them unsigned; such runs are refused until
an operator trusts them explicitly (``ColdMailAgent.trust_unsigned``).

All migrations run in the same ``BEGIN IMMEDIATE`` transaction as the version check, so
concurrent openers apply each once.
"""

from __future__ import annotations

from .migrations import Migration

V1_RUNS = (
    """CREATE TABLE runs (
    interaction_id        TEXT PRIMARY KEY,
    status                TEXT NOT NULL
                          CHECK (status IN ('awaiting_feedback', 'resuming', 'completed')),
    brief_json            TEXT NOT NULL,
    draft_json            TEXT NOT NULL,
    question              TEXT NOT NULL,
    snapshot              BLOB,
    serialization_version TEXT NOT NULL,
    feedback              TEXT,
    final_json            TEXT,
    last_error            TEXT,
    claim_token           TEXT,
    claim_expires_at      TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    completed_at          TEXT
)""",
    "CREATE INDEX runs_by_status_and_age ON runs (status, created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_age ON runs (created_at DESC, interaction_id DESC)",
)
"""Schema 1 (bridgic-coldmail 0.1), kept verbatim: tests build old databases from it."""

V2_SIGNATURES_AND_HISTORY = (
    "ALTER TABLE runs ADD COLUMN signature BLOB",
    """CREATE TABLE run_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    interaction_id TEXT NOT NULL,
    at             TEXT NOT NULL,
    kind           TEXT NOT NULL
                   CHECK (kind IN ('paused', 'feedback', 'failed', 'completed')),
    detail         TEXT
)""",
    "CREATE INDEX run_events_by_run ON run_events (interaction_id, id)",
    "CREATE INDEX runs_by_status_and_update ON runs (status, updated_at)",
    "CREATE TABLE coldmail_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Runs paused by 0.1 were stored unsigned, and stay so (see the module docstring).
    # Their history so far, from the timestamps schema 1 kept:
    "INSERT INTO run_events (interaction_id, at, kind) "
    "SELECT interaction_id, created_at, 'paused' FROM runs ORDER BY created_at",
    "INSERT INTO run_events (interaction_id, at, kind, detail) "
    "SELECT interaction_id, completed_at, 'completed', feedback FROM runs "
    "WHERE status = 'completed' ORDER BY completed_at",
)

V3_HISTORY_BY_TRIGGERS = (
    """CREATE TRIGGER run_paused AFTER INSERT ON runs BEGIN
    INSERT INTO run_events (interaction_id, at, kind)
    VALUES (NEW.interaction_id, NEW.created_at, 'paused');
END""",
    """CREATE TRIGGER run_claimed AFTER UPDATE OF status ON runs
WHEN NEW.status = 'resuming' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'feedback', NEW.feedback);
END""",
    """CREATE TRIGGER run_released AFTER UPDATE OF status ON runs
WHEN OLD.status = 'resuming' AND NEW.status = 'awaiting_feedback' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'failed', NEW.last_error);
END""",
    """CREATE TRIGGER run_completed AFTER UPDATE OF status ON runs
WHEN NEW.status = 'completed' AND OLD.status <> 'completed' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'completed', NEW.feedback);
END""",
    """CREATE TRIGGER run_deleted AFTER DELETE ON runs BEGIN
    DELETE FROM run_events WHERE interaction_id = OLD.interaction_id;
END""",
)

# SQLite lays a row out in column order and a 4-5 KB snapshot spills into overflow pages:
# with the snapshot in the middle, reading any later column walked those pages, and listing
# 50 runs of a 100,000-run store cost 1.6x more than of a 1,000-run one (benchmarks/). The
# table is rebuilt with the blobs last.
V4_SNAPSHOT_LAST = (
    """CREATE TABLE runs_v4 (
    interaction_id        TEXT PRIMARY KEY,
    status                TEXT NOT NULL
                          CHECK (status IN ('awaiting_feedback', 'resuming', 'completed')),
    brief_json            TEXT NOT NULL,
    draft_json            TEXT NOT NULL,
    question              TEXT NOT NULL,
    serialization_version TEXT NOT NULL,
    feedback              TEXT,
    final_json            TEXT,
    last_error            TEXT,
    claim_token           TEXT,
    claim_expires_at      TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    completed_at          TEXT,
    snapshot              BLOB,
    signature             BLOB
)""",
    """INSERT INTO runs_v4 (interaction_id, status, brief_json, draft_json, question,
    serialization_version, feedback, final_json, last_error, claim_token, claim_expires_at,
    created_at, updated_at, completed_at, snapshot, signature)
SELECT interaction_id, status, brief_json, draft_json, question, serialization_version,
    feedback, final_json, last_error, claim_token, claim_expires_at, created_at, updated_at,
    completed_at, snapshot, signature FROM runs""",
    "DROP TABLE runs",
    "ALTER TABLE runs_v4 RENAME TO runs",
    "CREATE INDEX runs_by_status_and_age ON runs (status, created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_age ON runs (created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_status_and_update ON runs (status, updated_at)",
    """CREATE TRIGGER run_paused AFTER INSERT ON runs BEGIN
    INSERT INTO run_events (interaction_id, at, kind)
    VALUES (NEW.interaction_id, NEW.created_at, 'paused');
END""",
    """CREATE TRIGGER run_claimed AFTER UPDATE OF status ON runs
WHEN NEW.status = 'resuming' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'feedback', NEW.feedback);
END""",
    """CREATE TRIGGER run_released AFTER UPDATE OF status ON runs
WHEN OLD.status = 'resuming' AND NEW.status = 'awaiting_feedback' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'failed', NEW.last_error);
END""",
    """CREATE TRIGGER run_completed AFTER UPDATE OF status ON runs
WHEN NEW.status = 'completed' AND OLD.status <> 'completed' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'completed', NEW.feedback);
END""",
    """CREATE TRIGGER run_deleted AFTER DELETE ON runs BEGIN
    DELETE FROM run_events WHERE interaction_id = OLD.interaction_id;
END""",
)

# 0.5: review rounds (two statuses, the round, the sequence under review, the decision that
# led there and the one being applied), merge fields, a MAC over what people read, and a
# history written by the store itself — numbered and signed per event — instead of by
# triggers, so each event can carry its MAC. Rows and events stored before have no MAC: they
# are shown flagged as unverified, never signed after the fact. The store then gives each run
# already present a `legacy_mark` (a MAC of its id alone, in Python: it needs the key), so
# that a row of this release stripped of its MAC cannot pass for one of an earlier release.
V5_REVIEW_ROUNDS_AND_ROW_MACS = (
    "DROP TRIGGER IF EXISTS run_paused",
    "DROP TRIGGER IF EXISTS run_claimed",
    "DROP TRIGGER IF EXISTS run_released",
    "DROP TRIGGER IF EXISTS run_completed",
    "DROP TRIGGER IF EXISTS run_deleted",
    """CREATE TABLE run_events_v5 (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    interaction_id TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    at             TEXT NOT NULL,
    kind           TEXT NOT NULL
                   CHECK (kind IN ('paused', 'feedback', 'failed', 'review', 'approved',
                                   'revised', 'edited', 'rejected', 'completed')),
    round          INTEGER,
    actor          TEXT,
    detail         TEXT,
    sequence_json  TEXT,
    mac            BLOB,
    UNIQUE (interaction_id, seq)
)""",
    """INSERT INTO run_events_v5 (id, interaction_id, seq, at, kind, detail)
SELECT id, interaction_id,
       ROW_NUMBER() OVER (PARTITION BY interaction_id ORDER BY id), at, kind, detail
FROM run_events""",
    "DROP TABLE run_events",
    "ALTER TABLE run_events_v5 RENAME TO run_events",
    """CREATE TABLE runs_v5 (
    interaction_id        TEXT PRIMARY KEY,
    status                TEXT NOT NULL
                          CHECK (status IN ('awaiting_feedback', 'resuming', 'awaiting_review',
                                            'completed', 'rejected')),
    review                INTEGER NOT NULL DEFAULT 0,
    round                 INTEGER,
    max_rounds            INTEGER,
    fields_json           TEXT,
    brief_json            TEXT NOT NULL,
    draft_json            TEXT NOT NULL,
    question              TEXT NOT NULL,
    feedback              TEXT,
    sequence_json         TEXT,
    rejection             TEXT,
    decided_json          TEXT,
    pending_json          TEXT,
    last_error            TEXT,
    pause_id              TEXT,
    serialization_version TEXT NOT NULL,
    event_count           INTEGER NOT NULL DEFAULT 0,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    completed_at          TEXT,
    claim_token           TEXT,
    claim_expires_at      TEXT,
    row_mac               BLOB,
    legacy_mark           BLOB,
    signature             BLOB,
    snapshot              BLOB
)""",
    """INSERT INTO runs_v5 (interaction_id, status, brief_json, draft_json, question, feedback,
    sequence_json, last_error, pause_id, serialization_version, event_count, created_at,
    updated_at, completed_at, claim_token, claim_expires_at, signature, snapshot, pending_json)
SELECT interaction_id, status, brief_json, draft_json, question, feedback, final_json,
    last_error, interaction_id, serialization_version,
    (SELECT COUNT(*) FROM run_events e WHERE e.interaction_id = runs.interaction_id),
    created_at, updated_at, completed_at, claim_token, claim_expires_at, signature, snapshot,
    CASE WHEN status = 'resuming' AND feedback IS NOT NULL
         THEN json_object('kind', 'feedback', 'text', feedback, 'sequence', NULL,
                          'reviewer', NULL, 'round', NULL) END
FROM runs""",
    "DROP TABLE runs",
    "ALTER TABLE runs_v5 RENAME TO runs",
    "CREATE INDEX runs_by_status_and_age ON runs (status, created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_age ON runs (created_at DESC, interaction_id DESC)",
    "CREATE INDEX runs_by_status_and_update ON runs (status, updated_at)",
)

# 0.6: reaching the reviewer. A run keeps where its notifications go (its notify policy,
# MACed with its id; appended after the snapshot, so only the statements that read the
# snapshot anyway read it), and the outbox: one row per notification, written in the same
# transaction as the state change it announces, claimed by workers with a lease.
V6_NOTIFICATIONS_OUTBOX = (
    "ALTER TABLE runs ADD COLUMN policy_json TEXT",
    "ALTER TABLE runs ADD COLUMN policy_mac BLOB",
    """CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    interaction_id  TEXT NOT NULL,
    event           TEXT NOT NULL,
    destination     TEXT NOT NULL,
    record_json     TEXT NOT NULL,
    mac             BLOB,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    lease_token     TEXT,
    lease_until     TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT
)""",
    "CREATE INDEX notifications_due ON notifications (status, next_attempt_at)",
    "CREATE INDEX notifications_by_run ON notifications (interaction_id, created_at)",
)

# 0.6: forks. Every pause keeps its signed snapshot (one row per run and round, round 0 the
# audience question, MACed over run, round and bytes: see store/forks.py), and a run forked
# from one of them carries a link to its parent with a MAC of its own (its parent_id indexed
# for the family's lookups). Runs already stored keep only the snapshot of their current pause.
V7_KEPT_PAUSES_AND_FORKS = (
    """CREATE TABLE pauses (
    interaction_id        TEXT NOT NULL,
    round                 INTEGER NOT NULL,
    pause_id              TEXT NOT NULL,
    serialization_version TEXT NOT NULL,
    sequence_json         TEXT,
    created_at            TEXT NOT NULL,
    mac                   BLOB,
    snapshot              BLOB,
    PRIMARY KEY (interaction_id, round)
)""",
    "ALTER TABLE runs ADD COLUMN parent_id TEXT",
    "ALTER TABLE runs ADD COLUMN fork_json TEXT",
    "ALTER TABLE runs ADD COLUMN fork_mac BLOB",
    "CREATE INDEX runs_by_parent ON runs (parent_id) WHERE parent_id IS NOT NULL",
)


# Issue 23: personalized lines at scale. A batch is one `personalize` of a completed run
# with one lead list (its digest): its settings, its status, the sample's approval, the
# guidance given, and — while the sample waits for a person — the paused Bridgic automa's
# signed snapshot (last, as in `runs`). One row per lead: its columns, its state, its line,
# claimed by workers with a lease and written fenced by the lease token. Both tables MACed.
# Numbered 8: 7 belongs to the kept snapshots of issue 22 (the runner applies any migration
# not yet recorded, so the two can land in either order).
V8_PERSONALIZATION_BATCHES = (
    """CREATE TABLE batches (
    batch_id              TEXT PRIMARY KEY,
    interaction_id        TEXT NOT NULL,
    leads_digest          TEXT NOT NULL,
    settings_json         TEXT NOT NULL,
    lead_count            INTEGER NOT NULL,
    sample_size           INTEGER NOT NULL,
    status                TEXT NOT NULL
                          CHECK (status IN ('sampling', 'awaiting_approval', 'writing', 'done')),
    sample_approved       INTEGER NOT NULL DEFAULT 0,
    round                 INTEGER NOT NULL DEFAULT 1,
    guidance_json         TEXT NOT NULL,
    pause_id              TEXT,
    pending_json          TEXT,
    serialization_version TEXT,
    claim_token           TEXT,
    claim_expires_at      TEXT,
    last_error            TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    row_mac               BLOB,
    signature             BLOB,
    snapshot              BLOB,
    UNIQUE (interaction_id, leads_digest)
)""",
    """CREATE TABLE batch_leads (
    batch_id    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    lead_row    INTEGER,
    email       TEXT NOT NULL,
    lead_json   TEXT NOT NULL,
    in_sample   INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'claimed', 'written', 'skipped')),
    line        TEXT,
    writer      TEXT,
    round       INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_until TEXT,
    error       TEXT,
    calls       INTEGER NOT NULL DEFAULT 0,
    tokens      INTEGER NOT NULL DEFAULT 0,
    written_at  TEXT,
    mac         BLOB,
    PRIMARY KEY (batch_id, position)
)""",
    "CREATE INDEX batch_leads_open ON batch_leads (batch_id, state, position)",
)


# Issue 20: each snapshot stored once. The pause a run waits at is its own snapshot in
# `runs`; `pauses` keeps the earlier ones (store/forks.py). Databases written since migration
# 7 also hold the current pause there: those copies (same run, round, pause and bytes) go.
V9_EACH_SNAPSHOT_ONCE = (
    """DELETE FROM pauses WHERE EXISTS (
    SELECT 1 FROM runs AS r
    WHERE r.interaction_id = pauses.interaction_id
      AND r.snapshot IS NOT NULL
      AND pauses.round = COALESCE(r.round, 0)
      AND pauses.pause_id = r.pause_id
      AND pauses.serialization_version = r.serialization_version
      AND pauses.snapshot = r.snapshot
)""",
)


EXPECTED_OBJECTS = {
    ("table", "coldmail_schema"),
    ("table", "coldmail_meta"),
    ("table", "runs"),
    ("table", "run_events"),
    ("table", "sqlite_sequence"),
    ("index", "runs_by_status_and_age"),
    ("index", "runs_by_age"),
    ("index", "runs_by_status_and_update"),
    ("table", "notifications"),
    ("index", "notifications_due"),
    ("index", "notifications_by_run"),
    ("table", "pauses"),
    ("index", "runs_by_parent"),
    ("table", "batches"),
    ("table", "batch_leads"),
    ("index", "batch_leads_open"),
}
"""Everything the current schema holds (besides SQLite's own ``sqlite_autoindex_*``): no
trigger and no view. Anything else was planted — a trigger could undo a write inside the
store's own transaction — and the database is refused."""

LEGACY_MARK_VERSION = 5
"""Crossing this version marks the runs already stored as legacy (see above)."""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs table", V1_RUNS),
    Migration(2, "snapshot signatures, run history, metadata", V2_SIGNATURES_AND_HISTORY),
    Migration(3, "history written by triggers", V3_HISTORY_BY_TRIGGERS),
    Migration(4, "snapshot and signature as the last columns", V4_SNAPSHOT_LAST),
    Migration(5, "review rounds, merge fields, row and event MACs", V5_REVIEW_ROUNDS_AND_ROW_MACS),
    Migration(6, "notify policies and the notifications outbox", V6_NOTIFICATIONS_OUTBOX),
    Migration(7, "kept pauses and fork links", V7_KEPT_PAUSES_AND_FORKS),
    Migration(8, "personalization batches and their leads", V8_PERSONALIZATION_BATCHES),
    Migration(9, "each snapshot stored once", V9_EACH_SNAPSHOT_ONCE),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# --------------------------------------------------------------------------- the migration runner
# (the hooks of store/migrations.py: each runs inside the open's BEGIN IMMEDIATE)

TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
CREATE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS coldmail_schema (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   applied_at TEXT NOT NULL)"""
APPLIED = "SELECT version FROM coldmail_schema"
FINGERPRINT = "SELECT value FROM coldmail_meta WHERE key = 'key_fingerprint'"
HOLDS_RUNS = "SELECT 1 FROM runs LIMIT 1"
RECORD_MIGRATION = "INSERT INTO coldmail_schema (version, name, applied_at) VALUES (?, ?, ?)"
RUN_IDS = "SELECT interaction_id FROM runs"
MARK_LEGACY = "UPDATE runs SET legacy_mark = ? WHERE interaction_id = ?"
REMEMBER_FINGERPRINT = "INSERT INTO coldmail_meta (key, value) VALUES ('key_fingerprint', ?)"
