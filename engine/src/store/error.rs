//! Store errors, with `sqlx::Error` translated in this one place.

/// What went wrong with a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write was fenced off: the lease token is no longer the job's current one,
    /// or the job already finished.
    #[error("the lease is no longer held")]
    LeaseLost,
    #[error("no such job")]
    NotFound,
    /// A job cannot end in a state that is not final.
    #[error("a job cannot finish in state {}", .0.as_str())]
    InvalidTransition(crate::job::JobState),
    /// Postgres could not be reached or dropped the connection; trying again may work.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(String),
    /// The report committer has stopped (the process is shutting down).
    #[error("the report committer has stopped")]
    CommitterStopped,
    /// A text holds what Postgres cannot store (a NUL character): the request's
    /// fault, whichever field it was.
    #[error("a text holds a NUL character")]
    UnstorableText(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e)
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // Class 08 (connection exception), 57P01-03 (admin shutdown, crash
                // shutdown, cannot connect now), 53300 (too many connections).
                Some(code) if code.starts_with("08") || code.starts_with("57P") || code == "53300" => {
                    StoreError::Unavailable(e)
                }
                // 22021: invalid byte sequence (a NUL in text); 22P05: untranslatable
                // character (`\u0000` in jsonb).
                Some("22021" | "22P05") => StoreError::UnstorableText(e),
                _ => StoreError::Database(e),
            },
            _ => StoreError::Database(e),
        }
    }
}
