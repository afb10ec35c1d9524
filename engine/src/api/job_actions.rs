//! What a caller may do to jobs, whoever asks: the API's handlers and the
//! dashboard's forms call these, so that a job is seen, cancelled and re-run by
//! one set of rules, with one history row and one audit entry each.

use slipway_observability::{metrics, trace};
use tracing::Instrument;

use super::auth::Principal;
use super::clients::ClientAddr;
use super::{ApiError, AppState};
use crate::auth::ProjectId;
use crate::error::Code;
use crate::job::{JobId, JobState};
use crate::store::{CancelOutcome, JobRow, Store, Submitted, Submitter};

/// The projects a listing (or a cancel by filter) keeps to: a token's own project;
/// an owner's every project (`Some(None)`), or the one named. `None`: a project the
/// caller cannot see, or none of that name, so nothing matches.
pub(crate) async fn listing_scope(
    store: &Store,
    caller: &Principal,
    named: Option<&str>,
) -> Result<Option<Option<ProjectId>>, ApiError> {
    Ok(match (caller.scope(), named) {
        (Some(own), None) => Some(Some(own)),
        (Some(own), Some(name)) if caller.project.as_ref().is_some_and(|(_, n)| n == name) => Some(Some(own)),
        (Some(_), Some(_)) => None,
        (None, None) => Some(None),
        (None, Some(name)) => store.project_named(name).await?.map(|p| Some(p.id)),
    })
}

/// A repository or image a filter names: compared with what jobs were submitted
/// with, so 1-4096 characters and no control character (nothing Postgres cannot
/// store, nothing no job could hold).
pub(crate) fn check_filter_text(field: &str, text: Option<&str>) -> Result<(), ApiError> {
    match text {
        Some(t) if t.is_empty() || t.len() > 4096 || t.chars().any(char::is_control) => {
            Err(ApiError::invalid(field, "1-4096 characters, none of them control characters"))
        }
        _ => Ok(()),
    }
}

/// The job, if the caller may see it: a job of another project is as missing as
/// one that never was.
pub(crate) async fn visible(store: &Store, caller: &Principal, id: JobId) -> Result<JobRow, ApiError> {
    let row = store.job(id).await?;
    if caller.sees(row.project_id) { Ok(row) } else { Err(ApiError::not_found("job")) }
}

/// How a cancel went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// The job held no lease: it is `cancelled` now.
    Now,
    /// Its worker is told to stop it; it ends `cancelled`.
    Stopping,
}

/// Asks a job the caller sees to stop; `409 already_finished` when it had ended.
pub(crate) async fn cancel_job(
    state: &AppState,
    caller: &Principal,
    client: Option<ClientAddr>,
    id: JobId,
) -> Result<Cancelled, ApiError> {
    let job = visible(&state.store, caller, id).await?;
    let cancelled = match state.store.request_cancel(id, Some(&caller.label())).await? {
        CancelOutcome::Cancelled => {
            metrics::JOBS_FINISHED.inc(&[JobState::Cancelled.as_str()]);
            Cancelled::Now
        }
        CancelOutcome::Requested => Cancelled::Stopping,
        CancelOutcome::AlreadyFinished(state) => {
            return Err(ApiError::new(
                Code::AlreadyFinished,
                format!("the job has already ended ({})", state.as_str()),
            ));
        }
    };
    tracing::info!(job.id = %id, by = %caller.prefix, "cancel requested");
    let target = id.to_string();
    super::access::audit(state, caller, client, "job.cancel", Some(job.project_id), Some(&target)).await;
    Ok(cancelled)
}

/// A new job with the specification of one the caller sees, in its project; with
/// `same_commit`, pinned to the commit that job built.
pub(crate) async fn rerun_job(
    state: &AppState,
    caller: &Principal,
    client: Option<ClientAddr>,
    original: JobId,
    same_commit: bool,
) -> Result<JobRow, ApiError> {
    let store = &state.store;
    let original = visible(store, caller, original).await?;
    let mut spec = original.spec.0;
    if same_commit {
        let Some(commit) = original.commit_sha else {
            return Err(ApiError {
                field: Some("same_commit".into()),
                ..ApiError::new(
                    Code::Conflict,
                    format!("job {} has no commit to pin: it ended or stands before its clone", original.id),
                )
            });
        };
        spec.git_ref = Some(commit);
    }
    let id = JobId::new();
    let span = tracing::info_span!("job.submit", job.id = %id);
    let traceparent = trace::traceparent_of(&span).unwrap_or_else(trace::random_traceparent);
    let reason = match (&spec.git_ref, same_commit) {
        (Some(commit), true) => format!("re-run of {} at commit {commit}", original.id),
        _ => format!("re-run of {}", original.id),
    };
    let by =
        Submitter { project: original.project_id, actor: Some(caller.label()), reason, rerun_of: Some(original.id) };
    crate::secrets::for_job::check_submission(&state.vault, original.project_id, &spec).await?;
    let Submitted::Created(row) = store.submit(id, &spec, Some(&traceparent), None, &by).instrument(span).await? else {
        unreachable!("a submission without a key always creates its job")
    };
    tracing::info!(job.id = %row.id, rerun_of = %original.id, by = %caller.prefix, "job re-run");
    metrics::JOBS_SUBMITTED.inc(&[]);
    let target = format!("{} (re-run of {})", row.id, original.id);
    super::access::audit(state, caller, client, "job.rerun", Some(row.project_id), Some(&target)).await;
    Ok(*row)
}
