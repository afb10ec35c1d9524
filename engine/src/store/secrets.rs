//! Project secrets as stored: sealed values and who set them. This file never sees a
//! value in clear; sealing and opening is [`crate::secrets::keyring`]'s.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::auth::ProjectId;
use crate::secrets::MAX_PER_PROJECT;
use crate::secrets::keyring::Sealed;

/// A secret as lists show it: never its value.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SecretRow {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// A sealed value, where it is stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedRow {
    pub project_id: ProjectId,
    pub name: String,
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl SealedRow {
    pub fn sealed(&self) -> Sealed {
        Sealed { key_id: self.key_id.clone(), nonce: self.nonce.clone(), ciphertext: self.ciphertext.clone() }
    }
}

/// What storing a secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
    /// The project holds [`MAX_PER_PROJECT`] secrets already.
    Full,
}

const SEALED_COLUMNS: &str = "project_id, name, key_id, nonce, ciphertext";

impl Store {
    /// Stores (or replaces) a sealed value.
    pub async fn put_secret(
        &self,
        project: ProjectId,
        name: &str,
        sealed: &Sealed,
        by: &str,
    ) -> Result<PutOutcome, StoreError> {
        // A new name counts against the project's cap; a replaced one does not.
        let created: Option<bool> = sqlx::query_scalar(
            "insert into project_secrets as s (project_id, name, key_id, nonce, ciphertext, updated_by)
             select $1, $2, $3, $4, $5, $6
             where exists (select 1 from project_secrets where project_id = $1 and name = $2)
                or (select count(*) from project_secrets where project_id = $1) < $7
             on conflict (project_id, name) do update
                 set key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                     updated_by = excluded.updated_by, updated_at = now()
             returning (s.created_at = s.updated_at)",
        )
        .bind(project)
        .bind(name)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(by)
        .bind(MAX_PER_PROJECT)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match created {
            None => PutOutcome::Full,
            Some(true) => PutOutcome::Created,
            Some(false) => PutOutcome::Updated,
        })
    }

    /// A project's secrets, by name.
    pub async fn secrets(&self, project: ProjectId) -> Result<Vec<SecretRow>, StoreError> {
        Ok(sqlx::query_as(
            "select name, created_at, updated_at, updated_by from project_secrets where project_id = $1 order by name",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a secret; false when there was none of that name.
    pub async fn delete_secret(&self, project: ProjectId, name: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("delete from project_secrets where project_id = $1 and name = $2")
            .bind(project)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// The sealed values of the named secrets of a project (those that exist).
    pub async fn sealed_secrets(&self, project: ProjectId, names: &[String]) -> Result<Vec<SealedRow>, StoreError> {
        let statement =
            format!("select {SEALED_COLUMNS} from project_secrets where project_id = $1 and name = any($2)");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(project).bind(names).fetch_all(&self.pool).await?)
    }

    /// Every sealed value of a project.
    pub async fn all_sealed_secrets(&self, project: ProjectId) -> Result<Vec<SealedRow>, StoreError> {
        let statement = format!("select {SEALED_COLUMNS} from project_secrets where project_id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(project).fetch_all(&self.pool).await?)
    }

    /// Up to `limit` values sealed under a key other than `key_id`.
    pub async fn sealed_under_other_keys(&self, key_id: &str, limit: i64) -> Result<Vec<SealedRow>, StoreError> {
        let statement = format!("select {SEALED_COLUMNS} from project_secrets where key_id <> $1 limit $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(key_id).bind(limit).fetch_all(&self.pool).await?)
    }

    /// Replaces `old` by `new` (the same value under another key), unless the value
    /// changed meanwhile; true when it was replaced. `updated_at` stays: the value
    /// did not change.
    pub async fn reseal(&self, old: &SealedRow, new: &Sealed) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "update project_secrets set key_id = $3, nonce = $4, ciphertext = $5
             where project_id = $1 and name = $2 and key_id = $6 and nonce = $7",
        )
        .bind(old.project_id)
        .bind(&old.name)
        .bind(&new.key_id)
        .bind(&new.nonce)
        .bind(&new.ciphertext)
        .bind(&old.key_id)
        .bind(&old.nonce)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The secret a project's clones use for one git host by default.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GitDefaultRow {
    pub host: String,
    pub secret: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl Store {
    /// Sets the default credentials of `host`; true when it had none.
    pub async fn put_git_default(
        &self,
        project: ProjectId,
        host: &str,
        secret: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "insert into project_git_credentials as g (project_id, host, secret, updated_by) values ($1, $2, $3, $4)
             on conflict (project_id, host) do update
                 set secret = excluded.secret, updated_by = excluded.updated_by, updated_at = now()
             returning (xmax = 0)",
        )
        .bind(project)
        .bind(host)
        .bind(secret)
        .bind(by)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn git_defaults(&self, project: ProjectId) -> Result<Vec<GitDefaultRow>, StoreError> {
        Ok(sqlx::query_as(
            "select host, secret, updated_at, updated_by from project_git_credentials where project_id = $1 order by host",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The secret named for `host`, if any.
    pub async fn git_default_for(&self, project: ProjectId, host: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("select secret from project_git_credentials where project_id = $1 and host = $2")
            .bind(project)
            .bind(host)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn delete_git_default(&self, project: ProjectId, host: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("delete from project_git_credentials where project_id = $1 and host = $2")
            .bind(project)
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }
}
