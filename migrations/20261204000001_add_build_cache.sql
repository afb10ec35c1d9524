-- The build cache: what each build took from cache, the key that says which
-- builds share layers, and the views that show the hit rate and the misses.

-- Of a build step: the steps it ran and how many came from cache.
alter table job_steps add column cache_hits integer, add column cache_steps integer;

-- The cache key of a job's build: its project, repository, Dockerfile and
-- context. Builds with the same key share most layers; a worker names the keys
-- it built in its ping, and a build takes its cache from the last image pushed
-- for its key. Written once, here: the column is computed from the row.
create function build_cache_key(project uuid, spec jsonb) returns text
language sql immutable parallel safe
return left(encode(sha256(convert_to(
    project::text || chr(10) || coalesce(spec->>'repo', '') || chr(10) ||
    coalesce(spec->>'dockerfile', '') || chr(10) || coalesce(spec->>'context', ''), 'UTF8')), 'hex'), 32);

alter table jobs add column cache_key text generated always as (build_cache_key(project_id, spec)) stored;

-- The last pushed image of a key, found at each claim.
create index jobs_pushed_by_cache_key on jobs (cache_key, created_at desc) where pushed_ref is not null;

-- Why a job went to the worker it went to, when the build cache decided it; said
-- in the history row of the job's first step, then cleared.
alter table jobs add column dispatch_reason text;

-- Each finished build with its cache count and key.
create view build_cache_builds as
select j.id as job_id, p.name as project, j.spec->>'repo' as repository, j.spec->>'dockerfile' as dockerfile,
       j.spec->>'context' as context, j.cache_key, s.attempt, s.worker, s.started_at, s.finished_at,
       s.cache_hits, s.cache_steps
from job_steps s
join jobs j on j.id = s.job_id
join projects p on p.id = j.project_id
where s.step = 'build' and s.outcome = 'succeeded' and s.cache_steps is not null;

-- The hit rate per repository per day.
create view build_cache as
select b.project, b.repository, date_trunc('day', b.finished_at) as day,
       count(*) as builds,
       sum(b.cache_steps) as steps,
       sum(b.cache_hits) as cache_hits,
       round(sum(b.cache_hits)::numeric / nullif(sum(b.cache_steps), 0), 3) as hit_rate,
       count(*) filter (where b.cache_hits = 0 and b.cache_steps > 0) as cold_builds
from build_cache_builds b
group by b.project, b.repository, date_trunc('day', b.finished_at);

-- "Why did it miss?": builds that took nothing from cache while an earlier build
-- of the same key had succeeded, with where each ran.
create view build_cache_misses as
select b.job_id, b.project, b.repository, b.dockerfile, b.context, b.worker, b.finished_at, b.cache_steps,
       e.job_id as earlier_job_id, e.worker as earlier_worker, e.finished_at as earlier_finished_at
from build_cache_builds b
join lateral (
    select x.job_id, x.worker, x.finished_at from build_cache_builds x
    where x.cache_key = b.cache_key and x.finished_at < b.started_at
    order by x.finished_at desc limit 1
) e on true
where b.cache_hits = 0 and b.cache_steps > 0;
