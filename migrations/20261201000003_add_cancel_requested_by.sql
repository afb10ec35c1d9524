-- Who asked for a job's cancel (a token's prefix and name), for the history row of
-- its `cancelled` transition, whenever that is written.
alter table jobs add column cancel_requested_by text;
