-- The job a job re-runs (`POST /v1/jobs/{id}/rerun`); null once that job is swept.
alter table jobs add column rerun_of uuid references jobs (id) on delete set null;
