-- Runs on ECS Fargate: the task of the attempt, how it stopped, and how far its
-- CloudWatch log has been read (stored with the lines it covers, so that a worker
-- taking over resumes after them).
alter table jobs
    add column task_arn       text,
    add column stop_code      text,
    add column stopped_reason text,
    add column log_cursor     text;
