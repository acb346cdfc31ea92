//! Turns on the Postgres tests (`cfg(mde_pg_tests)`) when `MDE_SYNC_TEST_POSTGRES_URL` is set, so
//! that without it `cargo test` lists them as ignored, with the reason, instead of hiding a skip.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(mde_pg_tests)");
    println!("cargo::rerun-if-env-changed=MDE_SYNC_TEST_POSTGRES_URL");
    if std::env::var_os("MDE_SYNC_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=mde_pg_tests");
    }
}
