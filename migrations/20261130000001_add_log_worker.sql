-- The worker that sent each log line, as its report said: with `attempt`, the
-- history shows who wrote every row.
alter table job_logs add column worker text;
