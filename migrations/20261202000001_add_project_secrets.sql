-- Project secrets, sealed at rest (XChaCha20-Poly1305). `key_id` names the key that
-- sealed the value (derived from the key, never the key); the value is bound to its
-- project and name, so a sealed value copied to another row does not open. Jobs name
-- secrets; their specs never hold a value.
create table project_secrets (
    project_id uuid not null references projects (id),
    name text not null check (name ~ '^[A-Za-z_][A-Za-z0-9_.-]{0,127}$'),
    key_id text not null,
    nonce bytea not null,
    ciphertext bytea not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- Who set the value last (a token's prefix and name).
    updated_by text not null,
    primary key (project_id, name)
);
-- `slipway secret rotate-key` finds the values sealed under an older key.
create index project_secrets_key on project_secrets (key_id);

-- The secret a project's clones use for a git host when a job names none
-- (`git.credentials`), filled into the job's spec at submission.
create table project_git_credentials (
    project_id uuid not null references projects (id),
    -- A host name or address, lowercase, without port.
    host text not null check (host ~ '^[a-z0-9.:\[\]-]{1,255}$'),
    secret text not null check (secret ~ '^[A-Za-z_][A-Za-z0-9_.-]{0,127}$'),
    updated_at timestamptz not null default now(),
    updated_by text not null,
    primary key (project_id, host)
);
