//! The `mde-sync` binary: everything lives in the library; see `mde_sync::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mde_sync::cli::main()
}
