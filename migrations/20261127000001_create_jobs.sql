-- The job state machine, its history, its steps and its log lines.
--
-- `jobs` holds one narrow row per job that is updated on every transition and
-- lease change; everything that only grows (events, step attempts, log lines) lives
-- in its own table, so the hot row stays small and its updates stay HOT.

create type job_state as enum (
    'queued', 'cloning', 'building', 'pushing', 'running',
    'succeeded', 'failed', 'cancelled'
);

create type job_step as enum ('clone', 'build', 'push', 'run');

create table jobs (
    id               uuid primary key,
    state            job_state   not null default 'queued',
    -- 1 for the first attempt; a lease that is lost or a retry adds one.
    attempt          integer     not null default 1,
    -- The submission as accepted, with defaults filled in.
    spec             jsonb       not null,
    traceparent      text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    -- The job may not start (again) before this time.
    run_after        timestamptz not null default now(),
    -- The lease of the attempt in flight: who holds it and until when.
    lease_owner      text,
    lease_worker     text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    -- Outputs of the steps, each pinned when its step ends.
    commit_sha       text,
    image_id         text,
    pushed_ref       text,
    container_id     text,
    exit_code        bigint,
    error_code       text,
    error            text,
    finished_at      timestamptz
) with (fillfactor = 70);

-- What the claim scans: jobs that are not finished and not leased.
create index jobs_runnable on jobs (run_after, id)
    where lease_token is null and state not in ('succeeded', 'failed', 'cancelled');
create index jobs_state_id on jobs (state, id);

-- One row per transition; never updated, never deleted but with its job.
create table job_events (
    id         bigint generated always as identity primary key,
    job_id     uuid        not null references jobs (id) on delete cascade,
    at         timestamptz not null default now(),
    from_state job_state,
    to_state   job_state   not null,
    attempt    integer     not null,
    worker     text,
    reason     text
);
create index job_events_job on job_events (job_id, id);

-- One row per step of each attempt, with its times and outcome.
create table job_steps (
    job_id      uuid        not null references jobs (id) on delete cascade,
    attempt     integer     not null,
    step        job_step    not null,
    worker      text,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    outcome     text check (outcome in ('succeeded', 'failed')),
    error_code  text,
    error       text,
    primary key (job_id, attempt, step)
);

-- The output of every step, line by line, in the order it was produced.
create table job_logs (
    id      bigint generated always as identity primary key,
    job_id  uuid        not null references jobs (id) on delete cascade,
    attempt integer     not null,
    step    job_step    not null,
    stream  text        not null check (stream in ('stdout', 'stderr', 'system')),
    at      timestamptz not null,
    line    text        not null
);
create index job_logs_job on job_logs (job_id, id);
