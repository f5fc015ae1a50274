//! The `herald` command.

/// mimalloc for Rust's allocations and, through `override`, for the bundled SQLite's too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    herald::cli::main()
}
