-- Cancellation requests and idempotent submissions.

-- Set when a user asks to cancel a leased job; the job ends `cancelled` when its
-- worker has stopped it, or when its lease expires if the worker is gone.
alter table jobs add column cancel_requested_at timestamptz;

-- What lease expiry scans: the leased jobs (a few per worker slot). The key is the
-- token, which changes only when a lease is granted or ended, so that heartbeats,
-- which move `lease_expires_at` every second, stay heap-only (HOT) updates.
create index jobs_leased on jobs (lease_token) where lease_token is not null;

-- One row per `Idempotency-Key`: the job it created. A repeat is compared with that
-- job's stored spec, so that the same key with another body is refused.
create table idempotency_keys (
    key        text primary key,
    job_id     uuid        not null references jobs (id) on delete cascade,
    created_at timestamptz not null default now()
);
