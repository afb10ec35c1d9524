-- Dashboard sign-ins: the browser holds a random session id in an HttpOnly cookie;
-- only its SHA-256 is stored, with the token it was opened with (whose role and
-- project apply, and whose revocation ends it) and the CSRF token its forms carry.
create table web_sessions (
    id_hash bytea primary key,
    token_id uuid not null references api_tokens (id) on delete cascade,
    csrf text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index web_sessions_expires_at on web_sessions (expires_at);
