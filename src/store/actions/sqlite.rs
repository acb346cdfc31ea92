//! The outbox on SQLite: times as the fixed seven-digit text, `custom_tags` as a JSON array.

use sqlx::{Row, sqlite::SqliteRow};

use super::{
    Action, ActionCount, ActionFields, ActionStore, Finish, NewAction, kind_of, state_of, time_of,
};
use crate::{
    BoxFuture,
    store::{StoreError, sqlite::SqliteStore},
    tenant::TenantId,
    timestamp::Timestamp,
};

const COLUMNS: &str = "id, tenant_id, target_kind, target_id, status, classification, determination, \
    assigned_to, comment, custom_tags, requested_by, requested_at, expected_last_update, force, state, \
    outcome, attempts, comment_sent_at, applied_at, result_last_update";

fn action(r: &SqliteRow) -> Result<Action, StoreError> {
    let tags: Option<String> = r.try_get("custom_tags")?;
    let custom_tags = tags
        .map(|t| {
            serde_json::from_str::<Vec<String>>(&t).map_err(|_| {
                StoreError::Corrupt(format!(
                    "actions.custom_tags {t:?} is not a JSON array of strings"
                ))
            })
        })
        .transpose()?;
    Ok(Action {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        kind: kind_of(&r.try_get::<String, _>("target_kind")?)?,
        target_id: r.try_get("target_id")?,
        fields: ActionFields {
            status: r.try_get("status")?,
            classification: r.try_get("classification")?,
            determination: r.try_get("determination")?,
            assigned_to: r.try_get("assigned_to")?,
            comment: r.try_get("comment")?,
            custom_tags,
        },
        requested_by: r.try_get("requested_by")?,
        requested_at: time_of(r.try_get("requested_at")?)?.unwrap_or(Timestamp::MIN_TICK),
        expected_last_update: time_of(r.try_get("expected_last_update")?)?,
        force: r.try_get::<i64, _>("force")? != 0,
        state: state_of(&r.try_get::<String, _>("state")?)?,
        outcome: r.try_get("outcome")?,
        attempts: r.try_get("attempts")?,
        comment_sent_at: time_of(r.try_get("comment_sent_at")?)?,
        applied_at: time_of(r.try_get("applied_at")?)?,
        result_last_update: time_of(r.try_get("result_last_update")?)?,
    })
}

impl ActionStore for SqliteStore {
    fn insert_action<'a>(&'a self, a: &'a NewAction) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let tags = a
                .fields
                .custom_tags
                .as_ref()
                .map(|t| serde_json::to_string(t).expect("strings serialise"));
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO actions (tenant_id, target_kind, target_id, status, classification, determination, \
                 assigned_to, comment, custom_tags, requested_by, requested_at, expected_last_update, force) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(a.tenant.as_str())
            .bind(a.kind.as_str())
            .bind(&a.target_id)
            .bind(&a.fields.status)
            .bind(&a.fields.classification)
            .bind(&a.fields.determination)
            .bind(&a.fields.assigned_to)
            .bind(&a.fields.comment)
            .bind(tags)
            .bind(&a.requested_by)
            .bind(a.requested_at.to_db())
            .bind(a.expected_last_update.map(Timestamp::to_db))
            .bind(i64::from(a.force))
            .fetch_one(self.pool())
            .await?;
            Ok(id)
        })
    }

    fn open_actions<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<Action>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM actions WHERE tenant_id = ? AND state IN ('pending', 'applying') ORDER BY id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant.as_str())
                .fetch_all(self.pool())
                .await?;
            rows.iter().map(action).collect()
        })
    }

    fn action(&self, id: i64) -> BoxFuture<'_, Result<Option<Action>, StoreError>> {
        Box::pin(async move {
            let sql = format!("SELECT {COLUMNS} FROM actions WHERE id = ?");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
            row.as_ref().map(action).transpose()
        })
    }

    fn recent_actions(&self, finished: i64) -> BoxFuture<'_, Result<Vec<Action>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM actions WHERE state IN ('pending', 'applying') \
                 UNION ALL SELECT * FROM (SELECT {COLUMNS} FROM actions WHERE state NOT IN ('pending', 'applying') ORDER BY id DESC LIMIT ?) \
                 ORDER BY id DESC"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(finished)
                .fetch_all(self.pool())
                .await?;
            rows.iter().map(action).collect()
        })
    }

    fn mark_sending<'a>(
        &'a self,
        _tenant: &'a TenantId,
        id: i64,
        comment_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE actions SET state = 'applying', attempts = attempts + 1, \
                 comment_sent_at = COALESCE(comment_sent_at, ?) \
                 WHERE id = ? AND state IN ('pending', 'applying')",
            )
            .bind(comment_at.map(Timestamp::to_db))
            .bind(id)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn finish_action<'a>(
        &'a self,
        id: i64,
        f: &'a Finish,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE actions SET state = ?, outcome = ?, applied_at = ?, result_last_update = ? \
                 WHERE id = ? AND state IN ('pending', 'applying')",
            )
            .bind(f.state.as_str())
            .bind(&f.outcome)
            .bind(f.at.to_db())
            .bind(f.result_last_update.map(Timestamp::to_db))
            .bind(id)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn action_counts(&self) -> BoxFuture<'_, Result<Vec<ActionCount>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
                "SELECT tenant_id, state, COUNT(*), MIN(requested_at) FROM actions \
                 GROUP BY tenant_id, state ORDER BY tenant_id, state",
            )
            .fetch_all(self.pool())
            .await?;
            rows.into_iter()
                .map(|(tenant_id, state, count, oldest)| {
                    Ok(ActionCount {
                        tenant_id,
                        state: state_of(&state)?,
                        count,
                        oldest: time_of(oldest)?,
                    })
                })
                .collect()
        })
    }

    fn prune_actions(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM actions WHERE requested_at < ? AND state NOT IN ('pending', 'applying')",
            )
            .bind(before.to_db())
            .execute(self.pool())
            .await?;
            Ok(done.rows_affected())
        })
    }
}
