-- What the TTL sweep scans: finished jobs by the time they ended, and pushed
-- references (to keep a manifest another kept job pushed too).
create index jobs_finished on jobs (finished_at) where state in ('succeeded', 'failed', 'cancelled');
create index jobs_pushed_ref on jobs (pushed_ref) where pushed_ref is not null;
