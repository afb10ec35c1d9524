-- The identity of this Slipway installation. Containers and images are labelled
-- with it, so that a sweep removes only what this installation left on an engine,
-- never what another installation sharing the engine still uses.
create table slipway_instance (
    id         uuid primary key default gen_random_uuid(),
    created_at timestamptz not null default now(),
    singleton  boolean not null default true unique check (singleton)
);
insert into slipway_instance default values;
