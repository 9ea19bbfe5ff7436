fn main() -> std::process::ExitCode {
    tagbase::cli::main()
}
