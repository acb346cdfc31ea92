//! Why a Postgres connection could not be opened, said once, with the server, the database and
//! the user, and the likely fix: the first connection is opened directly (a refused port fails at
//! once instead of after the pool's `database.connect_timeout` of retries).

use std::time::Duration;

use sqlx::{ConnectOptions, postgres::PgConnectOptions};

use super::StoreError;

/// `host:port` (or the socket) the options point at, for errors.
pub(super) fn server_of(opts: &PgConnectOptions) -> String {
    match opts.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    }
}

/// Opens and closes one connection, so that a server that cannot be used is named with the
/// reason before any pool retries it.
pub(super) async fn first_connection(
    opts: &PgConnectOptions,
    timeout: Duration,
) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, opts.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            Ok(())
        }
        Ok(Err(e)) => Err(explain(opts, &e)),
        Err(_) => Err(no_answer(opts, timeout)),
    }
}

pub(super) fn no_answer(opts: &PgConnectOptions, timeout: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot connect to Postgres at {}: no answer within database.connect_timeout ({}s): check the host name and port in database.url and any firewall in between",
        server_of(opts),
        timeout.as_secs_f64()
    ))
}

/// A connection error as one line: where, as whom, what the server said, and the likely fix.
pub(super) fn explain(opts: &PgConnectOptions, e: &sqlx::Error) -> StoreError {
    let server = server_of(opts);
    let database = opts.get_database().unwrap_or(opts.get_username());
    let user = opts.get_username();
    let (cause, fix) = match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => (
            format!("connection refused at {server}"),
            "is Postgres running there and listening on that address and port (listen_addresses, port in postgresql.conf)?".to_owned(),
        ),
        sqlx::Error::Io(io) => (
            io.to_string(),
            "check the host name and port in database.url and the network".to_owned(),
        ),
        sqlx::Error::Tls(t) => (
            format!("TLS failed: {t}"),
            "check database.sslmode and database.ssl_root_cert".to_owned(),
        ),
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            (format!("{} (SQLSTATE {code})", d.message()), fix_for(&code, user, database))
        }
        other => (
            other.to_string(),
            "check database.url".to_owned(),
        ),
    };
    StoreError::Unavailable(format!(
        "cannot connect to Postgres at {server} (database {database}, user {user}): {cause}: {fix}"
    ))
}

/// The likely fix for a refusal by the server, by SQLSTATE.
fn fix_for(code: &str, user: &str, database: &str) -> String {
    match code {
        "28000" => format!(
            "check the user in database.url, or create the role (CREATE ROLE {user} LOGIN) and allow it from this host in pg_hba.conf"
        ),
        "28P01" => "check the password: database.password_file, the systemd credential database-password, or the one in database.url".to_owned(),
        "3D000" => format!(
            "create the database (CREATE DATABASE {database} OWNER {user}) or fix its name in database.url"
        ),
        "42501" => format!("grant the role access: GRANT CONNECT ON DATABASE {database} TO {user}"),
        "53300" => "the server has no free connection: lower database.max_connections or raise the server's max_connections".to_owned(),
        "57P03" => "the server is starting up or shutting down: try again in a moment".to_owned(),
        _ => "check database.url and the server's log".to_owned(),
    }
}
