-- How many of a job's attempts ended because their worker went silent (killed,
-- crashed, cut off): a job that keeps taking workers down shows it here.
alter table jobs add column workers_lost integer not null default 0;
