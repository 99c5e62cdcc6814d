fn main() -> std::process::ExitCode {
    quarry_host::cli::main()
}
