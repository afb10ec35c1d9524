-- Who may do what: projects own jobs, API tokens act for a project (or, as owner
-- tokens, for the whole installation), and every side effect is in the audit log.

create table projects (
    id uuid primary key default gen_random_uuid(),
    -- 1–63 lowercase letters, digits and `-`, not at either end.
    name text not null unique check (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    created_at timestamptz not null default now()
);

-- Jobs submitted before projects belong to `default`.
insert into projects (name) values ('default');
alter table jobs add column project_id uuid references projects (id);
update jobs set project_id = (select id from projects where name = 'default');
alter table jobs alter column project_id set not null;
create index jobs_project on jobs (project_id, id desc);

create type token_role as enum ('read', 'submit', 'admin', 'owner');

-- A token is shown once; only its SHA-256 is kept. `prefix` (`slp_` and 8
-- characters) tells tokens apart in lists and logs and finds the row.
create table api_tokens (
    id uuid primary key default gen_random_uuid(),
    prefix text not null unique,
    hash bytea not null,
    name text not null,
    role token_role not null,
    -- Null for owner tokens, which act for the whole installation.
    project_id uuid references projects (id),
    created_by uuid references api_tokens (id),
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz,
    check ((role = 'owner') = (project_id is null))
);

-- Append-only: every side effect, who caused it, and how it ended.
create table audit_log (
    id bigserial primary key,
    at timestamptz not null default now(),
    actor_token uuid references api_tokens (id),
    actor_name text not null,
    action text not null,
    project_id uuid references projects (id),
    target text,
    request_id text,
    client_addr text,
    outcome text not null
);
create index audit_log_project on audit_log (project_id, id);

-- Who caused a transition (a token's prefix and name), where a person did.
alter table job_events add column actor text;

-- The last use of each token.
create view token_last_use as
select t.prefix, t.name, t.role, p.name as project, t.created_at, t.expires_at, t.revoked_at, t.last_used_at
from api_tokens t left join projects p on p.id = t.project_id;
