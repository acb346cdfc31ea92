//! The outbox on Postgres: times as `timestamptz` (read back as the seven-digit text),
//! `custom_tags` as `text[]`, `force` as a boolean.

use sqlx::{AssertSqlSafe, Row, postgres::PgRow};

use super::{
    Action, ActionCount, ActionFields, ActionStore, Finish, NewAction, kind_of, state_of, time_of,
};
use crate::{
    BoxFuture,
    store::{StoreError, postgres::PostgresStore},
    tenant::TenantId,
    timestamp::Timestamp,
};

/// A `timestamptz` column as the fixed seven-digit text.
fn ts(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"0Z\"') AS {col}")
}

/// A time as bound: floored to the microsecond `timestamptz` keeps (Postgres would round).
fn db_time(t: Timestamp) -> String {
    t.floor_micros().to_db()
}

fn columns() -> String {
    format!(
        "id, tenant_id, target_kind, target_id, status, classification, determination, assigned_to, \
         comment, custom_tags, requested_by, {}, {}, force, state, outcome, attempts::int8 AS attempts, {}, {}, {}",
        ts("requested_at"),
        ts("expected_last_update"),
        ts("comment_sent_at"),
        ts("applied_at"),
        ts("result_last_update"),
    )
}

fn action(r: &PgRow) -> Result<Action, StoreError> {
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
            custom_tags: r.try_get("custom_tags")?,
        },
        requested_by: r.try_get("requested_by")?,
        requested_at: time_of(r.try_get("requested_at")?)?.unwrap_or(Timestamp::MIN_TICK),
        expected_last_update: time_of(r.try_get("expected_last_update")?)?,
        force: r.try_get("force")?,
        state: state_of(&r.try_get::<String, _>("state")?)?,
        outcome: r.try_get("outcome")?,
        attempts: r.try_get("attempts")?,
        comment_sent_at: time_of(r.try_get("comment_sent_at")?)?,
        applied_at: time_of(r.try_get("applied_at")?)?,
        result_last_update: time_of(r.try_get("result_last_update")?)?,
    })
}

impl ActionStore for PostgresStore {
    fn insert_action<'a>(&'a self, a: &'a NewAction) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO actions (tenant_id, target_kind, target_id, status, classification, determination, \
                 assigned_to, comment, custom_tags, requested_by, requested_at, expected_last_update, force) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::timestamptz, $12::timestamptz, $13) RETURNING id",
            )
            .bind(a.tenant.as_str())
            .bind(a.kind.as_str())
            .bind(&a.target_id)
            .bind(&a.fields.status)
            .bind(&a.fields.classification)
            .bind(&a.fields.determination)
            .bind(&a.fields.assigned_to)
            .bind(&a.fields.comment)
            .bind(&a.fields.custom_tags)
            .bind(&a.requested_by)
            .bind(db_time(a.requested_at))
            .bind(a.expected_last_update.map(db_time))
            .bind(a.force)
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
                "SELECT {} FROM actions WHERE tenant_id = $1 AND state IN ('pending', 'applying') ORDER BY id",
                columns()
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(tenant.as_str())
                .fetch_all(self.pool())
                .await?;
            rows.iter().map(action).collect()
        })
    }

    fn action(&self, id: i64) -> BoxFuture<'_, Result<Option<Action>, StoreError>> {
        Box::pin(async move {
            let sql = format!("SELECT {} FROM actions WHERE id = $1", columns());
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
            row.as_ref().map(action).transpose()
        })
    }

    fn recent_actions(&self, finished: i64) -> BoxFuture<'_, Result<Vec<Action>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT * FROM (SELECT {c} FROM actions WHERE state IN ('pending', 'applying')) o \
                 UNION ALL SELECT * FROM (SELECT {c} FROM actions WHERE state NOT IN ('pending', 'applying') ORDER BY id DESC LIMIT $1) f \
                 ORDER BY id DESC",
                c = columns()
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(finished)
                .fetch_all(self.pool())
                .await?;
            rows.iter().map(action).collect()
        })
    }

    fn mark_sending<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: i64,
        comment_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await?;
            crate::store::lease::fence(&mut tx, self.book(), tenant.as_str()).await?;
            sqlx::query(
                "UPDATE actions SET state = 'applying', attempts = attempts + 1, \
                 comment_sent_at = COALESCE(comment_sent_at, $1::timestamptz) \
                 WHERE id = $2 AND state IN ('pending', 'applying')",
            )
            .bind(comment_at.map(db_time))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
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
                "UPDATE actions SET state = $1, outcome = $2, applied_at = $3::timestamptz, \
                 result_last_update = $4::timestamptz \
                 WHERE id = $5 AND state IN ('pending', 'applying')",
            )
            .bind(f.state.as_str())
            .bind(&f.outcome)
            .bind(db_time(f.at))
            .bind(f.result_last_update.map(db_time))
            .bind(id)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn action_counts(&self) -> BoxFuture<'_, Result<Vec<ActionCount>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT tenant_id, state, COUNT(*)::int8 AS n, {} FROM \
                 (SELECT tenant_id, state, requested_at FROM actions) a GROUP BY tenant_id, state ORDER BY tenant_id, state",
                "to_char(MIN(requested_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"0Z\"') AS oldest"
            )))
            .fetch_all(self.pool())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ActionCount {
                        tenant_id: r.try_get("tenant_id")?,
                        state: state_of(&r.try_get::<String, _>("state")?)?,
                        count: r.try_get("n")?,
                        oldest: time_of(r.try_get("oldest")?)?,
                    })
                })
                .collect()
        })
    }

    fn prune_actions(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM actions WHERE requested_at < $1::timestamptz AND state NOT IN ('pending', 'applying')",
            )
            .bind(db_time(before))
            .execute(self.pool())
            .await?;
            Ok(done.rows_affected())
        })
    }
}
