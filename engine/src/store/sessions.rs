//! Dashboard sessions: opened with an API token, found by the hash of the id the
//! browser holds, valid while neither they nor their token have expired and the
//! token is not revoked.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::access::{TOKEN_COLUMNS, TokenRow};
use super::{Store, StoreError};

/// A session that is still good, with its token.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub token: TokenRow,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Opens a session (and drops the expired ones of everybody).
    pub async fn open_session(
        &self,
        id_hash: &[u8],
        token_id: Uuid,
        csrf: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("delete from web_sessions where expires_at < now()").execute(&self.pool).await?;
        sqlx::query("insert into web_sessions (id_hash, token_id, csrf, expires_at) values ($1, $2, $3, $4)")
            .bind(id_hash)
            .bind(token_id)
            .bind(csrf)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The session, if it and its token are still good.
    pub async fn session(&self, id_hash: &[u8]) -> Result<Option<SessionRow>, StoreError> {
        let statement = format!(
            "select {TOKEN_COLUMNS}, s.csrf, s.expires_at as session_expires_at
             from web_sessions s join api_tokens t on t.id = s.token_id left join projects p on p.id = t.project_id
             where s.id_hash = $1 and s.expires_at > now() and t.revoked_at is null
               and (t.expires_at is null or t.expires_at > now())"
        );
        let row: Option<SessionJoin> =
            sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(id_hash).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| SessionRow { token: r.token, csrf: r.csrf, expires_at: r.session_expires_at }))
    }

    /// Ends a session (sign-out); ending one that is gone is not an error.
    pub async fn close_session(&self, id_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query("delete from web_sessions where id_hash = $1").bind(id_hash).execute(&self.pool).await?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct SessionJoin {
    #[sqlx(flatten)]
    token: TokenRow,
    csrf: String,
    session_expires_at: DateTime<Utc>,
}
