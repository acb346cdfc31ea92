//! The outbox's store contract (`actions`, [`ActionStore`]): the same story on every backend.

mod common;

use common::{Backend, TestDb};
use mde_sync::{
    store::{
        self, SharedStore,
        actions::{ActionFields, ActionState, Finish, NewAction, TargetKind},
    },
    tenant::TenantId,
    timestamp::Timestamp,
};

const TENANT: &str = "00000000-0000-4000-a000-000000000001";

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

async fn fresh(backend: Backend, label: &str) -> (SharedStore, TestDb) {
    let db = TestDb::new(backend, label).await;
    let store = store::open(&mde_sync::config::DatabaseSettings::from_url(
        db.url.clone(),
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

fn request(target: &str, status: &str, comment: Option<&str>) -> NewAction {
    NewAction {
        tenant: TenantId::parse(TENANT).unwrap(),
        kind: TargetKind::Alert,
        target_id: target.into(),
        fields: ActionFields {
            status: Some(status.into()),
            comment: comment.map(Into::into),
            ..ActionFields::default()
        },
        requested_by: "analyst@example.com".into(),
        requested_at: ts("2026-01-01T10:00:00.1234567Z"),
        expected_last_update: Some(ts("2026-01-01T09:00:00.123456Z")),
        force: false,
    }
}

/// Requests come back open in the order they were made; sending marks them `applying` once per
/// attempt and keeps the first comment time; a finished request is final; counts and pruning see
/// every state, and pruning never touches an open request.
async fn requests_keep_their_order_and_their_outcome(backend: Backend) {
    let (s, _db) = fresh(backend, "actions-order").await;
    let tenant = TenantId::parse(TENANT).unwrap();
    let first = s
        .insert_action(&request("da1", "InProgress", Some("looking")))
        .await
        .unwrap();
    let second = s
        .insert_action(&request("da1", "Resolved", None))
        .await
        .unwrap();
    let open = s.open_actions(&tenant).await.unwrap();
    assert_eq!(
        open.iter().map(|a| a.id).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(open[0].state, ActionState::Pending);
    assert_eq!(open[0].fields.comment.as_deref(), Some("looking"));
    assert_eq!(open[0].requested_by, "analyst@example.com");
    // Postgres keeps microseconds
    assert_eq!(
        open[0].requested_at.floor_micros(),
        ts("2026-01-01T10:00:00.123456Z")
    );
    assert_eq!(
        open[0].expected_last_update,
        Some(ts("2026-01-01T09:00:00.123456Z"))
    );

    s.mark_sending(&tenant, first, Some(ts("2026-01-01T10:00:01Z")))
        .await
        .unwrap();
    s.mark_sending(&tenant, first, Some(ts("2026-01-01T10:00:09Z")))
        .await
        .unwrap();
    let a = s.action(first).await.unwrap().unwrap();
    assert_eq!(a.state, ActionState::Applying);
    assert_eq!(a.attempts, 2);
    assert_eq!(a.comment_sent_at, Some(ts("2026-01-01T10:00:01Z")));

    let applied = Finish {
        state: ActionState::Applied,
        outcome: "applied".into(),
        at: ts("2026-01-01T10:00:10Z"),
        result_last_update: Some(ts("2026-01-01T10:00:09.5Z")),
    };
    s.finish_action(first, &applied).await.unwrap();
    // a second finish (another replica, a retry) leaves the first outcome alone
    let failed = Finish {
        state: ActionState::Failed,
        outcome: "late".into(),
        at: ts("2026-01-01T10:00:11Z"),
        result_last_update: None,
    };
    s.finish_action(first, &failed).await.unwrap();
    let a = s.action(first).await.unwrap().unwrap();
    assert_eq!(a.state, ActionState::Applied);
    assert_eq!(a.result_last_update, Some(ts("2026-01-01T10:00:09.5Z")));
    assert_eq!(a.applied_at, Some(ts("2026-01-01T10:00:10Z")));
    assert_eq!(
        s.open_actions(&tenant)
            .await
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect::<Vec<_>>(),
        [second]
    );

    let counts = s.action_counts().await.unwrap();
    let count = |st: ActionState| counts.iter().find(|c| c.state == st).map_or(0, |c| c.count);
    assert_eq!(
        (count(ActionState::Applied), count(ActionState::Pending)),
        (1, 1)
    );
    let recent = s.recent_actions(10).await.unwrap();
    assert_eq!(
        recent.iter().map(|a| a.id).collect::<Vec<_>>(),
        [second, first]
    );

    // retention: the finished request goes, the pending one of the same age stays
    assert_eq!(
        s.prune_actions(ts("2026-02-01T00:00:00Z")).await.unwrap(),
        1
    );
    assert!(s.action(first).await.unwrap().is_none());
    assert!(s.action(second).await.unwrap().is_some());
}

/// A tool that can only INSERT names the tenant, the alert and what to set: the rest has
/// defaults (state `pending`, `requested_at` now, not forced).
async fn a_plain_sql_insert_is_a_request(backend: Backend) {
    let (s, db) = fresh(backend, "actions-sql").await;
    let sql = "INSERT INTO actions (tenant_id, target_id, status, classification, determination, requested_by) \
               VALUES ('00000000-0000-4000-a000-000000000001', 'da9', 'Resolved', 'TruePositive', 'Malware', 'soar')";
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    }
    let open = s
        .open_actions(&TenantId::parse(TENANT).unwrap())
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    let a = &open[0];
    assert_eq!(
        (a.kind, a.state, a.force, a.attempts),
        (TargetKind::Alert, ActionState::Pending, false, 0)
    );
    assert_eq!(a.fields.determination.as_deref(), Some("Malware"));
    let age =
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()).ticks() - a.requested_at.ticks();
    assert!(
        (0..600_000_000).contains(&age),
        "requested_at defaults to now"
    );
}

on_both_backends!(
    requests_keep_their_order_and_their_outcome,
    a_plain_sql_insert_is_a_request,
);

/// The Postgres role docs/write-back.md describes may insert requests (its name becomes
/// `requested_by`) and read outcomes, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn the_documented_postgres_role_may_insert_requests_and_read_outcomes_only() {
    let (s, db) = fresh(Backend::Postgres, "actions-role").await;
    let role = format!("soc_writer_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    let db_name = db.url.rsplit('/').next().unwrap().to_owned();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/write-back.md"))
        .unwrap();
    let sql = doc
        .split("```sql\nCREATE ROLE soc_writer")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .map(|rest| format!("CREATE ROLE soc_writer{rest}"))
        .expect("the role's SQL in docs/write-back.md");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await;
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let stmt: String = stmt
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("soc_writer", &role)
            .replace("DATABASE mde", &format!("DATABASE {db_name}"));
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&admin)
            .await
            .unwrap();
    }
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("change-me")).unwrap();
    let writer = sqlx::PgPool::connect(url.as_str()).await.unwrap();
    sqlx::query(
        "INSERT INTO actions (tenant_id, target_id, status, comment) \
         VALUES ('00000000-0000-4000-a000-000000000001', 'da1', 'Resolved', 'done')",
    )
    .execute(&writer)
    .await
    .unwrap();
    let (by, state): (String, String) = sqlx::query_as("SELECT requested_by, state FROM actions")
        .fetch_one(&writer)
        .await
        .unwrap();
    assert_eq!((by.as_str(), state.as_str()), (role.as_str(), "pending"));
    for forbidden in [
        "UPDATE actions SET state = 'applied'",
        "DELETE FROM actions",
        "INSERT INTO actions (tenant_id, target_id, requested_by) VALUES ('x', 'y', 'someone else')",
        "SELECT * FROM sync_runs",
    ] {
        let e = sqlx::query(forbidden).execute(&writer).await.unwrap_err();
        assert!(
            e.to_string().contains("permission denied"),
            "{forbidden}: {e}"
        );
    }
    writer.close().await;
    drop(s);
    for cleanup in [
        format!("DROP OWNED BY {role}"),
        format!("REVOKE ALL ON DATABASE {db_name} FROM {role}"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(cleanup))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    let _ = db;
}

/// On replicas, a write is marked as being sent only by the replica holding the tenant's lease:
/// another one is refused (and so sends nothing), as its alert writes are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn only_the_replica_holding_the_lease_marks_a_write_as_sent() {
    let (a, db) = fresh(Backend::Postgres, "actions-fence").await;
    let b = store::open(&mde_sync::config::DatabaseSettings::from_url(
        db.url.clone(),
    ))
    .await
    .unwrap();
    let (la, lb) = (a.leases().unwrap(), b.leases().unwrap());
    la.join("a").unwrap();
    lb.join("b").unwrap();
    let ttl = std::time::Duration::from_secs(30);
    la.register(&[TENANT.to_owned()]).await.unwrap();
    la.heartbeat("host-a", 1, ttl).await.unwrap();
    lb.heartbeat("host-b", 2, ttl).await.unwrap();
    assert_eq!(la.claim(&[TENANT.to_owned()], ttl).await.unwrap().len(), 1);
    let tenant = TenantId::parse(TENANT).unwrap();
    let id = a
        .insert_action(&request("da1", "Resolved", Some("c")))
        .await
        .unwrap();
    let refused = b
        .mark_sending(&tenant, id, Some(ts("2026-01-01T00:00:00Z")))
        .await;
    assert!(
        matches!(refused, Err(store::StoreError::LeaseLost { .. })),
        "{refused:?}"
    );
    let row = a.action(id).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.attempts, row.comment_sent_at),
        (ActionState::Pending, 0, None)
    );
    a.mark_sending(&tenant, id, Some(ts("2026-01-01T00:00:00Z")))
        .await
        .unwrap();
    assert_eq!(a.action(id).await.unwrap().unwrap().attempts, 1);
}
