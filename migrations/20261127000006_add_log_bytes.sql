-- Bytes of log lines stored for the job, to enforce the per-job log limit.
alter table jobs add column log_bytes bigint not null default 0;
