//! The `quarry` CLI, built inside the test package so end-to-end tests can run it as a process.
fn main() -> std::process::ExitCode {
    quarry_cli::main()
}
