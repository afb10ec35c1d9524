-- The workers orchestrators ping, as last seen: what `GET /v1/workers` and the
-- dashboard show. One row per worker address, written by every orchestrator that
-- pings it (at most every few seconds when nothing changes).
create table workers (
    url text primary key,
    -- The worker's own id, labels and runtimes, from its last answer.
    worker_id text,
    labels jsonb not null default '{}',
    runtimes text[] not null default '{}',
    slots_total integer not null default 0,
    slots_busy integer not null default 0,
    -- Why it takes no job now (its engine is wedged), as it said.
    unhealthy text,
    -- Whether the last ping was answered, and when one last was.
    reachable boolean not null,
    last_answer_at timestamptz,
    -- The orchestrator that wrote the row last, and when.
    seen_by text not null,
    seen_at timestamptz not null default now()
);
