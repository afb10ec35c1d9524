//! Projects, API tokens and the audit log: who may act, and what they did.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::auth::token::NewToken;
use crate::auth::{ProjectId, Role};

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProjectRow {
    #[schema(schema_with = crate::api::openapi::project_id)]
    pub id: ProjectId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A token as stored: its hash, never its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: Uuid,
    pub prefix: String,
    pub hash: Vec<u8>,
    pub name: String,
    pub role: Role,
    pub project_id: Option<ProjectId>,
    /// The project's name; `None` for an owner token.
    pub project: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a new token is for.
#[derive(Debug, Clone)]
pub struct TokenGrant<'a> {
    pub name: &'a str,
    pub role: Role,
    /// `None` for an owner token, and only for one.
    pub project: Option<ProjectId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<Uuid>,
}

/// One row of the audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub actor_token: Option<Uuid>,
    pub actor_name: &'a str,
    pub action: &'a str,
    pub project: Option<ProjectId>,
    pub target: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub client_addr: Option<&'a str>,
    pub outcome: &'a str,
}

/// One row of the audit log, as read back.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub project: Option<String>,
    pub target: Option<String>,
    pub client_addr: Option<String>,
    pub outcome: String,
}

pub(super) const TOKEN_COLUMNS: &str = "t.id, t.prefix, t.hash, t.name, t.role, t.project_id, p.name as project, \
                             t.created_at, t.expires_at, t.last_used_at, t.revoked_at";

impl Store {
    /// A new project; `None` when the name is taken.
    pub async fn create_project(&self, name: &str) -> Result<Option<ProjectRow>, StoreError> {
        let row = sqlx::query_as::<_, ProjectRow>(
            "insert into projects (name) values ($1) on conflict (name) do nothing returning id, name, created_at",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        Ok(sqlx::query_as("select id, name, created_at from projects order by name").fetch_all(&self.pool).await?)
    }

    pub async fn project_named(&self, name: &str) -> Result<Option<ProjectRow>, StoreError> {
        // No project has a name that is not one; such text is not sent to Postgres.
        if !crate::auth::is_project_name(name) {
            return Ok(None);
        }
        Ok(sqlx::query_as("select id, name, created_at from projects where name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Stores a new token's hash and what it may do.
    pub async fn create_token(&self, token: &NewToken, grant: &TokenGrant<'_>) -> Result<TokenRow, StoreError> {
        let statement = format!(
            "with t as (
                 insert into api_tokens (prefix, hash, name, role, project_id, expires_at, created_by)
                 values ($1, $2, $3, $4, $5, $6, $7) returning *
             )
             select {TOKEN_COLUMNS} from t left join projects p on p.id = t.project_id"
        );
        let row = sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(statement))
            .bind(&token.prefix)
            .bind(&token.hash)
            .bind(grant.name)
            .bind(grant.role)
            .bind(grant.project)
            .bind(grant.expires_at)
            .bind(grant.created_by)
            .fetch_one(&self.pool)
            .await?;
        Ok(row)
    }

    /// The token with this prefix (one indexed lookup), revoked or expired ones too.
    pub async fn token_by_prefix(&self, prefix: &str) -> Result<Option<TokenRow>, StoreError> {
        let statement = format!(
            "select {TOKEN_COLUMNS} from api_tokens t left join projects p on p.id = t.project_id where t.prefix = $1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(prefix).fetch_optional(&self.pool).await?)
    }

    /// Notes a token's use, at most once a minute (so that a busy token does not
    /// turn every request into a write).
    pub async fn touch_token(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "update api_tokens set last_used_at = now()
             where id = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tokens of a project (`None`: the owner tokens), newest first.
    pub async fn tokens(&self, project: Option<ProjectId>) -> Result<Vec<TokenRow>, StoreError> {
        let statement = format!(
            "select {TOKEN_COLUMNS} from api_tokens t left join projects p on p.id = t.project_id
             where t.project_id is not distinct from $1 order by t.created_at desc"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(project).fetch_all(&self.pool).await?)
    }

    /// Revokes a token of `project` (`None`: an owner token); false when there is
    /// no such token there, or it was revoked already.
    pub async fn revoke_token(&self, project: Option<ProjectId>, id: Uuid) -> Result<bool, StoreError> {
        let revoked = sqlx::query(
            "update api_tokens set revoked_at = now()
             where id = $1 and project_id is not distinct from $2 and revoked_at is null",
        )
        .bind(id)
        .bind(project)
        .execute(&self.pool)
        .await?;
        if revoked.rows_affected() == 1 {
            sqlx::query("select pg_notify($1, $2)")
                .bind(super::TOKENS_CHANNEL)
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        }
        Ok(revoked.rows_affected() == 1)
    }

    /// Whether a token still works: not revoked, not expired.
    pub async fn token_works(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "select exists (select 1 from api_tokens where id = $1 and revoked_at is null
                            and (expires_at is null or expires_at > now()))",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether any owner token that still works exists.
    pub async fn has_owner(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "select exists (select 1 from api_tokens where role = 'owner' and revoked_at is null
                            and (expires_at is null or expires_at > now()))",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The audit log after row `after`, oldest first, of one project (or every one)
    /// and one action (or every one).
    pub async fn audit_rows(
        &self,
        project: Option<ProjectId>,
        action: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as(
            "select a.id, a.at, a.actor_name as actor, a.action, p.name as project, a.target, a.client_addr, a.outcome
             from audit_log a left join projects p on p.id = a.project_id
             where a.id > $1 and ($2::uuid is null or a.project_id = $2) and ($3::text is null or a.action = $3)
             order by a.id limit $4",
        )
        .bind(after)
        .bind(project)
        .bind(action)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "insert into audit_log (actor_token, actor_name, action, project_id, target, request_id, client_addr, outcome)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(entry.actor_token)
        .bind(entry.actor_name)
        .bind(entry.action)
        .bind(entry.project)
        .bind(entry.target)
        .bind(entry.request_id)
        .bind(entry.client_addr)
        .bind(entry.outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
