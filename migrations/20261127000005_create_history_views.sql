-- Views over the history, for people asking questions in SQL.

-- One row per transition, with the time spent in the state it left.
create view job_history as
select e.job_id, e.id as event_id, e.at, e.from_state, e.to_state, e.attempt, e.worker, e.reason,
       e.at - lag(e.at) over (partition by e.job_id order by e.id) as time_in_previous_state
from job_events e;

-- One row per step of each attempt, with how long it took.
create view job_step_durations as
select s.job_id, s.attempt, s.step, s.worker, s.started_at, s.finished_at,
       s.finished_at - s.started_at as duration, s.outcome, s.error_code
from job_steps s;

-- How long each job waited from submission to the start of its first step.
create view job_queue_wait as
select j.id as job_id, j.created_at, first.started_at as first_step_started_at,
       first.started_at - j.created_at as queue_wait
from jobs j
left join lateral (
    select min(s.started_at) as started_at from job_steps s where s.job_id = j.id
) first on true;

-- Jobs that should be moving and are not: leased with the lease expired (the
-- next heartbeat of any orchestrator ends it), or running past their deadline.
create view jobs_stuck as
select j.id as job_id, j.state, j.attempt, j.lease_worker, j.lease_expires_at,
       case when j.lease_token is not null and j.lease_expires_at < now() then 'lease_expired'
            else 'past_deadline' end as why
from jobs j
where j.state not in ('succeeded', 'failed', 'cancelled')
  and ((j.lease_token is not null and j.lease_expires_at < now())
       or (j.state = 'running' and exists (
             select 1 from job_steps s
             where s.job_id = j.id and s.attempt = j.attempt and s.step = 'run' and s.finished_at is null
               and s.started_at + make_interval(secs => coalesce((j.spec->'run'->>'timeout_seconds')::double precision, 86400)) < now())));

-- Attempts that failed and were followed by another attempt, by error class.
create view retries_by_error_class as
select coalesce(s.error_code, 'unknown') as error_code, count(*) as retries, max(s.finished_at) as last_at
from job_steps s
where s.outcome = 'failed'
  and exists (select 1 from job_steps n where n.job_id = s.job_id and n.attempt > s.attempt)
group by coalesce(s.error_code, 'unknown');
